import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import theory
from experiments.cli import main

TESTS = Path(__file__).resolve().parent


def test_module_entry_point_prints_version():
    out = subprocess.run([sys.executable, "-m", "experiments", "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == f"deeplimits {theory.__version__}"


def test_help_describes_the_tool():
    out = subprocess.run([sys.executable, "-m", "experiments", "--help"], capture_output=True, text=True,
                         check=True)
    assert "infinite-width" in out.stdout


# -- subcommands (the toy experiment of tests/toy_experiment.py, found through DEEPLIMITS_EXPERIMENT_MODULES) --


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLIMITS_EXPERIMENT_MODULES", "toy_experiment")
    monkeypatch.delenv("DEEPLIMITS_TOY_LOG", raising=False)
    monkeypatch.delenv("DEEPLIMITS_TOY_DELAY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"\n    {command} " in out for command in ("list", "run", "report"))


def test_python_m_experiments_lists_an_experiment_from_the_environment():
    env = {**os.environ, "DEEPLIMITS_EXPERIMENT_MODULES": "toy_experiment",
           "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-m", "experiments", "list"], capture_output=True, text=True, check=True,
                         env=env)
    toy = [line for line in out.stdout.splitlines() if line.split()[:1] == ["toy"]]
    assert len(toy) == 1 and toy[0].endswith("test fixture — a seeded random number per point falling as n^-1/2")


def test_run_then_report(toy, capsys):
    assert main(["run", "toy", "--quick", "--set", "widths=4,8,16", "--set", "seeds=1",
                 "--results", "res", "--figures", "figs"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("toy: 3 points (3 computed, 0 cached) in ") and out.strip().endswith("-> figs/toy.png")
    assert {p.name for p in (toy / "figs").iterdir()} == {"toy.png", "toy.pdf", "toy.csv"}
    assert main(["run", "toy", "--quick", "--set", "widths=4,8,16", "--set", "seeds=1", "--results", "res",
                 "--no-plot"]) == 0
    assert "(0 computed, 3 cached)" in capsys.readouterr().out

    assert main(["report", "--results", "res", "--figures", "figs"]) == 0
    report = capsys.readouterr().out
    assert report.startswith("# deeplimits results\n")
    assert "## toy" in report and "- records: 3 (code versions: `" in report and ", current)" in report
    assert "width ∈ {4, 8, 16}" in report and "seed ∈ {0}" in report
    assert "`figs/toy.csv`, `figs/toy.pdf`, `figs/toy.png`" in report


def test_report_of_an_empty_store(toy, capsys):
    assert main(["report"]) == 0
    report = capsys.readouterr().out
    assert "## toy" in report and "no results yet: `deeplimits run toy --quick`" in report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "tyo"], "unknown experiment 'tyo'; did you mean 'toy'? Known experiments: "),
        (["run", "toy", "--set", "widths"], "malformed --set 'widths': expected KEY=VALUE"),
        (["run", "toy", "--set", "widths=4,x"], "bad value for widths='4,x' of experiment 'toy': expected "
                                                "comma-separated ints; 'x' is not an int"),
        (["run", "toy", "--set", "depth=3"], "unknown config field 'depth' of experiment 'toy'."),
    ],
)
def test_usage_errors_exit_2(toy, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deeplimits: error: ") and message in err


def test_unwritable_results_folder_exits_1(toy, capsys):
    (toy / "blocker").write_text("")
    assert main(["run", "toy", "--quick", "--results", "blocker"]) == 1
    assert "is not writable" in capsys.readouterr().err


def test_run_records_are_json(toy):
    assert main(["run", "toy", "--quick", "--no-plot", "--results", "res"]) == 0
    files = sorted((toy / "res" / "toy").glob("*.json"))
    assert len(files) == 4 and all(json.loads(f.read_text())["experiment"] == "toy" for f in files)


def test_report_of_a_missing_results_folder_is_an_error(toy, capsys):
    assert main(["report", "--results", "no_such_folder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deeplimits: error: results folder ") and "no_such_folder (--results) does not exist" in err
    (toy / "a_file").write_text("")
    assert main(["report", "--results", "a_file"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_report_counts_stale_records_and_clean_removes_them(toy, capsys, monkeypatch):
    from experiments.registry import Experiment
    from experiments.store import RecordKey, Store

    assert main(["run", "toy", "--quick", "--no-plot", "--results", "res"]) == 0
    old = Store(toy / "res")
    for seed in range(3):  # records an older version of the code wrote
        old.put(RecordKey("toy", {"width": 64, "seed": seed}, "0.1.0+000000000000", "float64"), {"y": 1.0})
    capsys.readouterr()
    assert main(["report", "--results", "res"]) == 0
    report = capsys.readouterr().out
    assert "- records: 7 (" in report and "- stale: 3 of 7 from older code" in report
    assert report.strip().endswith("Stale records: 3 (remove them with `deeplimits clean --stale`)")

    assert main(["clean", "--results", "res"]) == 2
    assert "say what to remove: `deeplimits clean --stale`" in capsys.readouterr().err
    assert main(["clean", "--stale", "--dry-run", "--results", "res"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "would remove 3 stale records in all"
    assert len(old.records("toy")) == 7
    assert main(["clean", "--stale", "toy", "--results", "res"]) == 0
    assert capsys.readouterr().out.splitlines() == ["toy: removed 3 stale records", "removed 3 stale records in all"]
    assert len(old.records("toy")) == 4
    assert main(["report", "--results", "res"]) == 0
    assert capsys.readouterr().out.strip().endswith("Stale records: 0")

    monkeypatch.setattr(Experiment, "code_version", lambda self: "0.1.0+edited")  # the code changed again
    assert main(["clean", "--stale", "--results", "res"]) == 0
    assert "toy: removed 4 stale records" in capsys.readouterr().out and old.records("toy") == []
    assert main(["clean", "--stale", "tyo", "--results", "res"]) == 2
    assert "unknown experiment 'tyo'" in capsys.readouterr().err


def test_a_bad_experiment_module_is_a_one_line_error(toy, capsys, monkeypatch):
    monkeypatch.setenv("DEEPLIMITS_EXPERIMENT_MODULES", "toy_experiment,no_such_module_xyz")
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deeplimits: error: cannot import experiment module 'no_such_module_xyz' (from "
                          "$DEEPLIMITS_EXPERIMENT_MODULES): ModuleNotFoundError") and "Traceback" not in err
    monkeypatch.setenv("DEEPLIMITS_EXPERIMENT_MODULES", "json")  # imports, but declares no experiment
    assert main(["run", "toy"]) == 2
    assert "experiment module 'json' (from $DEEPLIMITS_EXPERIMENT_MODULES) declares no EXPERIMENT" in \
        capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jobs", "0"], "--jobs must be a positive number of worker processes, got 0"),
        (["--jobs", "-1"], "got -1"),
        (["--jobs", "2", "--scheduler", "tcp://127.0.0.1:8786"], "give --jobs"),
        (["--scheduler", "nonsense://x:1"], "is not a Dask scheduler address"),
    ],
)
def test_bad_engine_options_exit_2(toy, capsys, argv, message):
    assert main(["run", "toy", "--results", "res", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deeplimits: error: ") and message in err
    assert not (toy / "res").exists()


def test_an_unwritable_figures_folder_exits_1_before_computing(toy, capsys, monkeypatch):
    monkeypatch.setenv("DEEPLIMITS_TOY_LOG", str(toy / "log.jsonl"))
    (toy / "blocker").write_text("")
    assert main(["run", "toy", "--quick", "--results", "res", "--figures", "blocker"]) == 1
    assert "figures folder blocker is not writable" in capsys.readouterr().err
    assert not (toy / "log.jsonl").exists()  # no point was computed


def test_quick_runs_go_to_figures_quick(toy, capsys):
    assert main(["run", "toy", "--quick", "--set", "seeds=1"]) == 0
    assert capsys.readouterr().out.strip().endswith("-> figures/quick/toy.png")
    assert main(["report"]) == 0
    report = capsys.readouterr().out
    assert "- figures: none yet" in report and "- quick-run figures: `figures/quick/toy.csv`" in report
