"""The experiment runner: declaration, registry, overrides, resume after a kill, figures, executors, dtypes."""

import concurrent.futures as cf
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import toy_experiment  # tests/ is on sys.path (pytest's rootdir-relative import of test modules)

import experiments
from experiments.registry import (
    ConfigError,
    Experiment,
    UnknownExperimentError,
    apply_overrides,
    get_experiment,
    grid,
    parse_set,
    register,
)
from experiments.store import CorruptRecordWarning, RecordKey, Store

TESTS = Path(__file__).resolve().parent
TOY = toy_experiment.EXPERIMENT
VOLATILE = ["timestamp", "elapsed_s"]  # the only columns that differ between two runs of the same points


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch):
    monkeypatch.setenv("DEEPLIMITS_EXPERIMENT_MODULES", "toy_experiment")
    monkeypatch.delenv("DEEPLIMITS_TOY_LOG", raising=False)
    monkeypatch.delenv("DEEPLIMITS_TOY_DELAY", raising=False)
    register(TOY)
    yield


def toy_env(log: Path | None = None, delay: float = 0.0) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env["DEEPLIMITS_EXPERIMENT_MODULES"] = "toy_experiment"
    env["DEEPLIMITS_TOY_DELAY"] = str(delay)
    if log is not None:
        env["DEEPLIMITS_TOY_LOG"] = str(log)
    return env


def log_entries(log: Path) -> list[tuple[int, int]]:
    if not log.exists():
        return []
    return [(e["width"], e["seed"]) for e in map(json.loads, log.read_text().splitlines())]


# -- declaration and registry ----------------------------------------------------------------------
def test_grid():
    assert grid(width=(1, 2), seed=range(2), act="relu") == [
        {"width": 1, "seed": 0, "act": "relu"}, {"width": 1, "seed": 1, "act": "relu"},
        {"width": 2, "seed": 0, "act": "relu"}, {"width": 2, "seed": 1, "act": "relu"},
    ]
    assert grid(depth=3) == [{"depth": 3}]


def test_registry_lists_and_finds_experiments():
    infos = experiments.list_experiments()
    assert ("toy", "test fixture", TOY.summary) in infos
    assert get_experiment("toy") is TOY and get_experiment(TOY) is TOY
    register(TOY)  # the same object again is harmless
    with pytest.raises(ValueError, match="two experiments are named 'toy'"):
        register(dataclasses.replace(TOY, summary="another"))
    with pytest.raises(UnknownExperimentError, match=r"unknown experiment 'tyo'; did you mean 'toy'\?.*toy"):
        get_experiment("tyo")
    assert TOY.stem == "toy" and dataclasses.replace(TOY, name="a-b").stem == "a_b"


def test_discovery_of_a_module_that_cannot_be_imported(monkeypatch):
    monkeypatch.setenv("DEEPLIMITS_EXPERIMENT_MODULES", "toy_experiment, no_such_module_xyz")
    with pytest.raises(ImportError, match=r"no_such_module_xyz.*DEEPLIMITS_EXPERIMENT_MODULES"):
        experiments.list_experiments()


@dataclass
class Mutable:
    widths: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class Unparseable:
    table: dict = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": "Bad Name"}, "lower-case"),
        ({"config": Mutable(), "quick_config": Mutable()}, "frozen dataclass"),
        ({"quick_config": Mutable()}, "quick_config"),
        ({"config": Unparseable(), "quick_config": Unparseable()}, "cannot be set from the command line"),
        ({"compute": 3}, "compute of experiment 'toy' must be callable"),
        ({"dtype": "float128"}, "dtype"),
    ],
)
def test_bad_declarations(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TOY, **changes)


# -- overrides ------------------------------------------------------------------------------------
def test_overrides_parse_into_field_types():
    sets = parse_set(["widths=64,128,256", "seeds=8", "scale=1e-1", "label=wide nets", "noisy=false",
                      "exponents=-1,0.5"])
    config = apply_overrides(TOY.config, sets, experiment="toy")
    assert config == toy_experiment.ToyConfig(widths=(64, 128, 256), seeds=8, scale=0.1, label="wide nets",
                                              noisy=False, exponents=(-1.0, 0.5))
    assert sorted({p["seed"] for p in TOY.points(config)}) == list(range(8))  # seeds=8: seeds 0..7
    assert apply_overrides(TOY.config, {"widths": "64"}).widths == (64,)
    assert apply_overrides(TOY.config, {"widths": [2, 3], "seeds": 1, "scale": 2}).scale == 2.0
    assert apply_overrides(TOY.config, None) is TOY.config


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        ({"widht": "64"}, r"unknown config field 'widht' of experiment 'toy'\. Did you mean 'widths'\? "
                          r"Allowed fields: widths \(comma-separated ints\), seeds \(int\), scale \(float\)"),
        ({"widths": "64,abc"}, r"bad value for widths='64,abc'.*expected comma-separated ints; 'abc' is not an int"),
        ({"widths": "64,,128"}, "empty item"),
        ({"seeds": "2.5"}, r"seeds='2\.5'.*expected int; '2\.5' is not an int"),
        ({"seeds": 2.5}, r"expected int; 2\.5 \(float\) is not an int"),
        ({"seeds": True}, "is not an int"),
        ({"scale": "big"}, "expected float; 'big' is not a float"),
        ({"noisy": "maybe"}, "not a bool"),
        ({"widths": "0,4"}, "invalid config of experiment 'toy'.*widths must be positive"),
    ],
)
def test_override_errors_name_the_field(sets, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TOY.config, sets, experiment="toy")


@pytest.mark.parametrize(("items", "match"), [(["widths"], "malformed --set 'widths': expected KEY=VALUE"),
                                              (["=3"], "malformed"),
                                              (["seeds=1", "seeds=2"], "given twice")])
def test_malformed_set(items, match):
    with pytest.raises(ConfigError, match=match):
        parse_set(items)


# -- running --------------------------------------------------------------------------------------
def test_run_stores_plots_and_caches(tmp_path, monkeypatch, capsys):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("DEEPLIMITS_TOY_LOG", str(log))
    monkeypatch.chdir(tmp_path)  # default folders: ./results and ./figures (./figures/quick for a quick run)
    df = experiments.run("toy", quick=True)
    assert list(df.columns) == ["width", "seed", "scale", "noisy", "exponent", "draws", "y", "y_err",
                                "dtype", "code_version", "timestamp", "elapsed_s", "digest"]
    assert list(zip(df.width, df.seed, strict=True)) == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert len(df.draws[0]) == 3 and set(df.dtype) == {"float64"}
    assert df.code_version[0] == TOY.code_version()
    assert df.attrs["computed"] == 4 and df.attrs["cached"] == 0 and df.attrs["from_other_runs"] == 0
    assert re.fullmatch(r"toy: 4 points \(4 computed, 0 cached\) in \d+\.\d s -> figures/quick/toy\.png",
                        df.attrs["summary"])
    assert capsys.readouterr().err.strip() == df.attrs["summary"]  # no bar: stderr is not a terminal
    quick = tmp_path / "figures" / "quick"
    for suffix in ("png", "pdf", "csv"):
        assert (quick / f"toy.{suffix}").stat().st_size > 0
    assert [Path(p).name for p in df.attrs["figures"]] == ["toy.png", "toy.pdf", "toy.csv"]
    assert (quick / "toy.png").read_bytes()[:4] == b"\x89PNG"
    assert (quick / "toy.pdf").read_bytes()[:5] == b"%PDF-"
    csv = pd.read_csv(quick / "toy.csv")
    assert list(csv.y) == list(df.y) and json.loads(csv.draws[0]) == df.draws[0]
    assert len(Store(tmp_path / "results").records("toy")) == 4
    assert len(log_entries(log)) == 4

    again = experiments.run("toy", quick=True, plot=False, quiet=True)
    assert again.attrs["computed"] == 0 and again.attrs["cached"] == 4
    assert len(log_entries(log)) == 4  # nothing recomputed
    pd.testing.assert_frame_equal(again, df)

    more = experiments.run("toy", quick=True, overrides={"widths": "4,8,16"}, plot=False, quiet=True)
    assert (more.attrs["computed"], more.attrs["cached"]) == (2, 4)
    assert len(log_entries(log)) == 6


def test_a_quick_run_never_replaces_the_full_runs_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = experiments.run("toy", quiet=True)
    assert full.attrs["summary"].endswith("-> figures/toy.png")
    before = {p.name: p.read_bytes() for p in (tmp_path / "figures").glob("toy.*")}
    assert set(before) == {"toy.png", "toy.pdf", "toy.csv"}
    experiments.run("toy", quick=True, overrides={"seeds": 1}, quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "figures").glob("toy.*")} == before
    assert len(pd.read_csv(tmp_path / "figures" / "quick" / "toy.csv")) == 2
    monkeypatch.setenv("DEEPLIMITS_FIGURES", str(tmp_path / "gallery"))  # the default folder moved: same rule
    experiments.run("toy", quick=True, quiet=True, plot=True)
    assert (tmp_path / "gallery" / "quick" / "toy.csv").exists() and not (tmp_path / "gallery" / "toy.csv").exists()


def test_progress_bar(tmp_path, capsys):
    experiments.run("toy", quick=True, results_dir=tmp_path, plot=False, progress=True, quiet=True)
    err = capsys.readouterr().err
    assert "toy" in err and "4/4" in err
    experiments.run("toy", quick=True, results_dir=tmp_path, plot=False, progress=False, quiet=True)
    assert capsys.readouterr().err == ""


def test_code_change_invalidates_the_cache(tmp_path, monkeypatch):
    first = experiments.run("toy", quick=True, results_dir=tmp_path, plot=False, quiet=True)
    monkeypatch.setattr(Experiment, "code_version", lambda self: "0.1.0+edited")  # (tests/test_provenance.py: when)
    second = experiments.run("toy", quick=True, results_dir=tmp_path, plot=False, quiet=True)
    assert second.attrs["computed"] == 4
    assert len(Store(tmp_path).records("toy")) == 8
    pd.testing.assert_frame_equal(first.drop(columns=[*VOLATILE, "digest", "code_version"]),
                                  second.drop(columns=[*VOLATILE, "digest", "code_version"]))


def test_corrupt_record_is_recomputed_not_fatal(tmp_path):
    df = experiments.run("toy", quick=True, results_dir=tmp_path, plot=False, quiet=True)
    path = tmp_path / "toy" / f"{df.digest[1]}.json"
    path.write_text(path.read_text()[:40])
    with pytest.warns(CorruptRecordWarning):
        again = experiments.run("toy", quick=True, results_dir=tmp_path, plot=False, quiet=True)
    assert (again.attrs["computed"], again.attrs["cached"]) == (1, 3)
    pd.testing.assert_frame_equal(again.drop(columns=VOLATILE), df.drop(columns=VOLATILE))


def test_executor_gives_the_same_frame(tmp_path):
    seq = experiments.run("toy", results_dir=tmp_path / "a", plot=False, quiet=True)
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        par = experiments.run("toy", results_dir=tmp_path / "b", plot=False, quiet=True, executor=pool)
    assert par.attrs["computed"] == 12
    pd.testing.assert_frame_equal(seq.drop(columns=VOLATILE), par.drop(columns=VOLATILE))


def test_results_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("")
    with pytest.raises(OSError, match="not writable"):
        experiments.run("toy", quick=True, results_dir=blocker, plot=False, quiet=True)


def test_an_unwritable_figures_folder_is_refused_before_computing(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("DEEPLIMITS_TOY_LOG", str(log))
    blocker = tmp_path / "figs"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"figures folder .*figs is not writable"):
        experiments.run("toy", quick=True, results_dir=tmp_path / "res", figures_dir=blocker, quiet=True)
    assert log_entries(log) == [] and Store(tmp_path / "res").records("toy") == []
    experiments.run("toy", quick=True, results_dir=tmp_path / "res", figures_dir=blocker, quiet=True, plot=False)
    assert len(log_entries(log)) == 4  # without a plot the folder does not matter


# -- two runs on one results folder ------------------------------------------------------------------
def test_two_runs_on_one_folder_share_the_points(tmp_path, monkeypatch):
    """Two runs at once (threads here; tests/test_dask.py has processes): each point is computed once, by one of
    them, and both return every point."""
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("DEEPLIMITS_TOY_LOG", str(log))
    monkeypatch.setenv("DEEPLIMITS_TOY_DELAY", "0.05")
    with cf.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(experiments.run, "toy", results_dir=tmp_path, plot=False, quiet=True) for _ in range(2)]
        a, b = (r.result() for r in runs)
    started = log_entries(log)
    assert sorted(started) == sorted(set(started)) and len(started) == 12  # no point twice
    assert a.attrs["computed"] + b.attrs["computed"] == 12
    assert a.attrs["computed"] + a.attrs["from_other_runs"] == 12 == b.attrs["computed"] + b.attrs["from_other_runs"]
    pd.testing.assert_frame_equal(a.drop(columns=VOLATILE), b.drop(columns=VOLATILE))
    assert len(Store(tmp_path).records("toy")) == 12 and sorted(p.suffix for p in (tmp_path / "toy").iterdir()) \
        == [".json"] * 12  # no claim file left


def test_a_point_another_run_holds_is_waited_for_or_taken_over(tmp_path, monkeypatch, capsys):
    """Two points are claimed by "another run": this run computes the rest, then reads the record that run writes
    for one of them, and computes the other itself once that run lets go of it without a record."""
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("DEEPLIMITS_TOY_LOG", str(log))
    store = Store(tmp_path)
    keys = {(p["width"], p["seed"]): RecordKey("toy", p, TOY.code_version(), "float64")
            for p in TOY.points(TOY.quick_config)}
    held = {w_s: store.claim(keys[w_s]) for w_s in [(4, 1), (8, 0)]}
    assert all(held.values())
    with cf.ThreadPoolExecutor(1) as pool:
        future = pool.submit(experiments.run, "toy", quick=True, results_dir=tmp_path, plot=False, quiet=True)
        deadline = time.monotonic() + 60
        while len(log_entries(log)) < 2:  # it computes the two free points, then waits
            assert time.monotonic() < deadline and not future.done(), "the run did not go on with the free points"
            time.sleep(0.01)
        store.put(keys[(4, 1)], {"y": 0.5, "y_err": 0.1, "draws": [0.0] * 3}, elapsed_s=0.0)  # "the other run"
        store.release(held[(4, 1)])
        store.release(held[(8, 0)])  # ... which stops before (8, 0)
        df = future.result(timeout=60)
    assert (df.attrs["computed"], df.attrs["cached"], df.attrs["from_other_runs"]) == (3, 0, 1)
    assert sorted(log_entries(log)) == [(4, 0), (8, 0), (8, 1)]
    assert df.y[1] == 0.5  # the other run's record, read as it appeared
    assert "(3 computed, 0 cached, 1 from another run)" in df.attrs["summary"]
    err = capsys.readouterr().err
    assert f"is being computed by another run (pid {os.getpid()} on {os.uname().nodename})" in err


# An experiment that reports the floating dtype JAX computes in: the runner sets x64 from the point's dtype.
@dataclass(frozen=True)
class DtypeConfig:
    dtypes: tuple[str, ...] = ("float32", "float64")


def dtype_points(config):
    return grid(dtype=config.dtypes)


def dtype_compute(point):
    import jax.numpy as jnp

    values = {"itemsize": int(jnp.zeros(1).dtype.itemsize)}
    if point.get("clash"):
        values["clash"] = 0  # the same name as a point field: an error
    return values


DTYPE_EXP = Experiment(name="dtype-check", paper="-", summary="-", config=DtypeConfig(),
                       quick_config=DtypeConfig(), points=dtype_points, compute=dtype_compute,
                       plot=lambda df, config, outdir: [], dtype="float32")


def test_point_dtype_sets_jax_precision_and_the_key(tmp_path):
    df = experiments.run(DTYPE_EXP, results_dir=tmp_path, quiet=True, figures_dir=tmp_path / "fig")
    assert dict(zip(df["dtype"], df.itemsize, strict=True)) == {"float32": 4, "float64": 8}
    assert df.attrs["figures"] == [str(tmp_path / "fig" / "dtype_check.csv")]
    assert df.digest[0] != df.digest[1]
    with pytest.raises(ValueError, match="dtype 'int8'"):
        experiments.run(DTYPE_EXP, overrides={"dtypes": "int8"}, results_dir=tmp_path, quiet=True)


def test_bad_points_and_values(tmp_path):
    twice = dataclasses.replace(DTYPE_EXP, points=lambda c: [{"a": 1}, {"a": 1}])
    with pytest.raises(ValueError, match="same point twice"):
        experiments.run(twice, results_dir=tmp_path, quiet=True)
    empty = dataclasses.replace(DTYPE_EXP, points=lambda c: [])
    with pytest.raises(ValueError, match="non-empty list"):
        experiments.run(empty, results_dir=tmp_path, quiet=True)
    clash = dataclasses.replace(DTYPE_EXP, points=lambda c: [{"clash": 1, "dtype": "float32"}])
    with pytest.raises(ValueError, match=r"returned \['clash'\], which clash"):
        experiments.run(clash, results_dir=tmp_path, quiet=True)


# -- a real process killed mid-sweep, then resumed ------------------------------------------------
def test_killed_sweep_resumes_without_recomputing_anything(tmp_path):
    log, results, figures = tmp_path / "log.jsonl", tmp_path / "results", tmp_path / "figures"
    cmd = [sys.executable, "-m", "experiments", "run", "toy", "--results", str(results), "--figures", str(figures),
           "--set", "widths=4,8,16,32", "--set", "seeds=3"]
    env = toy_env(log, delay=0.25)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(log_entries(log)) < 4:  # 3 points finished and stored, the 4th in flight
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sweep did not start"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    started = log_entries(log)
    stored = {(r["config"]["width"], r["config"]["seed"]) for r in Store(results).records("toy")}
    assert len(started) == len(set(started))
    assert 3 <= len(stored) < 12, "the kill must land mid-sweep"
    assert stored <= set(started) and len(set(started) - stored) <= 1  # at most the point in flight is lost
    assert list(figures.iterdir()) == []  # checked writable before the sweep, nothing plotted

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"toy: 12 points ({12 - len(stored)} computed, {len(stored)} cached)" in out.stdout
    everything = {(w, s) for w in (4, 8, 16, 32) for s in range(3)}
    rerun = log_entries(log)[len(started):]
    assert sorted(rerun) == sorted(everything - stored)  # each missing point once, no finished point again
    assert {p.name for p in figures.iterdir()} == {"toy.png", "toy.pdf", "toy.csv"}

    resumed = experiments.run("toy", results_dir=results, plot=False, quiet=True)  # all cached now
    assert resumed.attrs["computed"] == 0
    uninterrupted = experiments.run("toy", results_dir=tmp_path / "fresh", plot=False, quiet=True)
    assert uninterrupted.attrs["computed"] == 12
    pd.testing.assert_frame_equal(resumed.drop(columns=VOLATILE), uninterrupted.drop(columns=VOLATILE))
    csv = pd.read_csv(figures / "toy.csv")
    assert list(csv.digest) == list(uninterrupted.digest) and list(csv.y) == list(uninterrupted.y)
    assert not list((results / "toy").glob(".*.tmp"))  # the killed writer's temporary file, if any, is gone


# -- the shared figure style ------------------------------------------------------------------------
def test_style_helpers(tmp_path):
    import matplotlib as mpl
    import numpy as np

    from experiments.figures import style

    with style.context():
        assert mpl.rcParams["font.family"] == ["serif"] and mpl.rcParams["axes.grid"]
        fig, (left, right) = style.subplots(1, 2)
        n = np.array([16.0, 64.0, 256.0, 1024.0])
        fit = style.errorbar_loglog(left, n, 1 / n, 2 / n, label="error bars wider than the value", fit=True)
        assert abs(fit.exponent + 1) < 1e-12 and left.get_xscale() == "log" == left.get_yscale()
        assert style.errorbar_loglog(right, n, n**-0.5, index=1) is None
        style.guide_line(right, n, -0.5, through=(16, 0.25), label=r"$\propto n^{-1/2}$")
        right.legend()
        paths = style.save(fig, tmp_path / "out", "two_panels")
    assert [p.name for p in paths] == ["two_panels.png", "two_panels.pdf"] and all(p.stat().st_size for p in paths)
    assert mpl.rcParams["font.family"] != ["serif"] or mpl.rcParamsDefault["font.family"] == ["serif"]  # restored
    assert style.color(0) == style.color(len(style.COLORS)) and style.marker(1) != style.marker(0)


@pytest.mark.parametrize("where", ["claim", "release"])
def test_ctrl_c_while_claiming_or_releasing_leaves_no_claim_file(tmp_path, monkeypatch, where):
    """A Ctrl-C that lands just after a claim file is made, or just before it is removed, is held until the claim
    is registered (or gone), then stops the run: no claim file outlives it (tests/test_dask.py: whole runs)."""
    calls = []
    real = getattr(Store, where)

    def interrupted(*args):
        calls.append(where)
        if where == "release":
            os.kill(os.getpid(), signal.SIGINT)  # lands before the file is removed
            return real(*args)
        claim = real(*args)
        os.kill(os.getpid(), signal.SIGINT)  # lands before the runner has registered the claim
        return claim

    monkeypatch.setattr(Store, where, staticmethod(interrupted) if where == "release" else interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiments.run("toy", quick=True, results_dir=tmp_path, plot=False, quiet=True)
    assert calls and not list((tmp_path / "toy").glob(".*.claim"))
