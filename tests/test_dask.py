"""The Dask engine on real clusters: local worker processes (--jobs), a running scheduler (--scheduler), faults.

The default suite starts one LocalCluster (bit-identity with a serial run) and checks bad input; the slow tests
(CI's second stage) kill workers and whole runs with signals, run two sweeps at once, and use `dask scheduler` /
`dask worker` processes. The instrumented `toy` experiment logs the pid of the process that starts each point.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import toy_experiment  # tests/ is on sys.path

import experiments
from experiments.cli import main
from experiments.cluster import ClusterError
from experiments.registry import UsageError, register
from experiments.store import Store

TESTS = Path(__file__).resolve().parent
VOLATILE = ["timestamp", "elapsed_s"]
EVERY_POINT = {(w, s) for w in (4, 8, 16, 32) for s in range(3)}


@pytest.fixture(autouse=True)
def toys_registered(monkeypatch):
    monkeypatch.setenv("DEEPLIMITS_EXPERIMENT_MODULES", "toy_experiment")
    monkeypatch.delenv("DEEPLIMITS_TOY_LOG", raising=False)
    monkeypatch.delenv("DEEPLIMITS_TOY_DELAY", raising=False)
    register(toy_experiment.EXPERIMENT)
    register(toy_experiment.JAX_EXPERIMENT)


def toy_env(log: Path, delay: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env.update(DEEPLIMITS_EXPERIMENT_MODULES="toy_experiment", DEEPLIMITS_TOY_LOG=str(log),
               DEEPLIMITS_TOY_DELAY=str(delay))
    return env


def started(log: Path) -> list[tuple[int, int, int]]:
    """(width, seed, pid) of every point started, in order."""
    if not log.exists():
        return []
    return [(e["width"], e["seed"], e["pid"]) for e in map(json.loads, log.read_text().splitlines())]


def stored(results: Path) -> set[tuple[int, int]]:
    return {(r["config"]["width"], r["config"]["seed"]) for r in Store(results).records("toy")}


def wait_for(condition, proc: subprocess.Popen | None = None, limit: float = 120.0) -> None:
    """Poll ``condition()`` (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert proc is None or proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def serial_toy(tmp_path: Path) -> pd.DataFrame:
    return experiments.run("toy", results_dir=tmp_path / "serial", plot=False, quiet=True)


def assert_same_as_serial(results: Path, tmp_path: Path) -> None:
    resumed = experiments.run("toy", results_dir=results, plot=False, quiet=True)
    assert resumed.attrs["computed"] == 0
    pd.testing.assert_frame_equal(resumed.drop(columns=VOLATILE), serial_toy(tmp_path).drop(columns=VOLATILE))
    folder = results / "toy"
    assert sorted(p.suffix for p in folder.iterdir()) == [".json"] * 12  # no claim, temporary or corrupt file


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# -- default suite -------------------------------------------------------------------------------------------
def test_jobs_2_is_bit_identical_to_serial(tmp_path, capsys):
    """float32 and float64 JAX kernels computed by two worker processes equal the serial ones bit for bit (the
    workers set JAX's x64 mode from each point's dtype, as the main process does); one progress bar."""
    serial = experiments.run("jax-toy", quick=True, results_dir=tmp_path / "a", plot=False, quiet=True)
    capsys.readouterr()
    par = experiments.run("jax-toy", quick=True, results_dir=tmp_path / "b", plot=False, quiet=True, jobs=2,
                          progress=True)
    assert par.attrs["computed"] == 2 and list(par.itemsize) == [4, 8]
    pd.testing.assert_frame_equal(serial.drop(columns=VOLATILE), par.drop(columns=VOLATILE), check_exact=True)
    err = capsys.readouterr().err
    assert "jax-toy" in err and "2/2" in err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"jobs": 0}, r"--jobs must be a positive number of worker processes, got 0"),
        ({"jobs": -1}, r"got -1"),
        ({"jobs": 1.5}, r"got 1\.5"),
        ({"jobs": True}, r"got True"),
        ({"jobs": 2, "scheduler": "tcp://127.0.0.1:8786"}, r"give --jobs .* or --scheduler .*, not both"),
        ({"scheduler": "nonsense://host:1"}, r"'nonsense://host:1' is not a Dask scheduler address .*unknown"),
        ({"scheduler": "tcp://"}, r"no host:port"),
        ({"scheduler": " "}, r"--scheduler must be a Dask scheduler address"),
        ({"jobs": 2, "executor": object()}, r"an executor, jobs or a scheduler, not more than one"),
    ],
)
def test_bad_engine_arguments(tmp_path, kwargs, match):
    with pytest.raises(UsageError, match=match):
        experiments.run("toy", results_dir=tmp_path, plot=False, quiet=True, **kwargs)
    assert not (tmp_path / "toy").exists()  # refused before anything else


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path, capsys):
    """Refused after CONNECT_TIMEOUT_S (5 s), not a hang: a ClusterError (a ConnectionError), exit code 1."""
    address = f"tcp://127.0.0.1:{closed_port()}"
    assert issubclass(ClusterError, ConnectionError)
    assert main(["run", "toy", "--results", str(tmp_path), "--scheduler", address]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"deeplimits: error: cannot reach a Dask scheduler at {address} within 5 s")
    assert "dask worker" in err and "Traceback" not in err
    assert Store(tmp_path).records("toy") == [] and not list((tmp_path / "toy").glob(".*.claim"))


# -- slow: faults, two runs, a scheduler and workers started by hand ---------------------------------------
@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_point_recomputed(tmp_path):
    log, results = tmp_path / "log.jsonl", tmp_path / "results"
    cmd = [sys.executable, "-m", "experiments", "run", "toy", "--jobs", "2", "--results", str(results), "--no-plot"]
    proc = subprocess.Popen(cmd, env=toy_env(log, delay=2.0), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: len(started(log)) >= 3, proc)  # both workers busy, one of them on its second point
        width, seed, victim = started(log)[-1]  # started within the last ~10 ms: mid-point (2 s each)
        assert victim != proc.pid
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "toy: 12 points (12 computed, 0 cached)" in out
    runs = started(log)
    assert (width, seed) in [(w, s) for w, s, pid in runs if pid != victim]  # recomputed elsewhere
    assert {(w, s) for w, s, _ in runs} == EVERY_POINT == stored(results)
    assert_same_as_serial(results, tmp_path)


@pytest.mark.slow
def test_a_killed_cluster_resumes_with_nothing_lost(tmp_path):
    log, results = tmp_path / "log.jsonl", tmp_path / "results"
    cmd = [sys.executable, "-m", "experiments", "run", "toy", "--jobs", "2", "--results", str(results), "--no-plot"]
    env = toy_env(log, delay=0.5)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: len(stored(results)) >= 3, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and every worker at once
        proc.communicate()
    wait_for(lambda: group_gone(proc.pid))
    before, first = stored(results), started(log)
    assert 3 <= len(before) < 12, "the kill must land mid-sweep"

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"({12 - len(before)} computed, {len(before)} cached)" in out.stdout
    rerun = [(w, s) for w, s, _ in started(log)[len(first):]]
    assert sorted(rerun) == sorted(EVERY_POINT - before)  # every stored point kept, each missing one computed once
    assert_same_as_serial(results, tmp_path)


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_keeps_finished_points(tmp_path):
    log, results = tmp_path / "log.jsonl", tmp_path / "results"
    cmd = [sys.executable, "-m", "experiments", "run", "toy", "--jobs", "2", "--results", str(results), "--no-plot"]
    env = toy_env(log, delay=0.5)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: len(stored(results)) >= 2, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: every process of the run
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == ("deeplimits: error: interrupted; every finished point is stored, run "
                                            "the same command again to resume")
    assert "Traceback" not in err  # the workers do not print their own KeyboardInterrupt
    wait_for(lambda: group_gone(proc.pid))  # no worker left behind
    kept = stored(results)
    assert len(kept) >= 2 and not list((results / "toy").glob(".*.claim"))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and f"({12 - len(kept)} computed, {len(kept)} cached)" in out.stdout
    assert_same_as_serial(results, tmp_path)


@pytest.mark.slow
def test_two_sweeps_at_once_in_one_folder(tmp_path):
    """A --jobs 2 sweep and a serial one, started together on one results folder: every point computed once, by
    one of them, one record each, and both finish with the whole grid."""
    log, results = tmp_path / "log.jsonl", tmp_path / "results"
    base = [sys.executable, "-m", "experiments", "run", "toy", "--results", str(results), "--no-plot"]
    env = toy_env(log, delay=0.5)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in ([*base, "--jobs", "2"], base)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = [(w, s) for w, s, _ in started(log)]
    assert sorted(runs) == sorted(EVERY_POINT)  # no point computed twice
    computed = [int(out.split("(")[1].split(" computed")[0]) for out, _ in outs]
    assert sum(computed) == 12 and all(f"{12 - c} from another run" in out or c == 12
                                       for c, (out, _) in zip(computed, outs, strict=True))
    assert_same_as_serial(results, tmp_path)


@pytest.mark.slow
def test_a_running_scheduler_and_workers(tmp_path):
    """`dask scheduler` and `dask worker` started by hand: `--scheduler ADDRESS` and `run(executor=...)` of a Client
    on it compute what a serial run does; the records are written by the main process only."""
    from distributed import Client

    log, results = tmp_path / "log.jsonl", tmp_path / "results"
    env = toy_env(log, delay=0.0)
    info = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(info)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        wait_for(lambda: info.exists() and info.stat().st_size > 0, scheduler)
        address = json.loads(info.read_text())["address"]
        worker = subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nworkers", "1", "--nthreads",
                                   "1", "--no-dashboard", "--local-directory", str(tmp_path / "scratch")],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = subprocess.run([sys.executable, "-m", "experiments", "run", "toy", "--scheduler", address,
                              "--results", str(results), "--no-plot"], env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert "toy: 12 points (12 computed, 0 cached)" in out.stdout
        assert all(pid not in (os.getpid(), worker.pid) for _, _, pid in started(log))  # in the worker process
        assert_same_as_serial(results, tmp_path)
        with Client(address, timeout=30, set_as_default=False) as client:
            viaexec = experiments.run("toy", results_dir=tmp_path / "viaexec", plot=False, quiet=True,
                                      executor=client.get_executor())
        assert viaexec.attrs["computed"] == 12
        pd.testing.assert_frame_equal(viaexec.drop(columns=VOLATILE), serial_toy(tmp_path).drop(columns=VOLATILE))
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
