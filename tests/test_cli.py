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
