"""The README's quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["k"].nngp.shape == (8, 8)
    assert namespace["layers"].nngp.shape == (4, 8, 2)
    assert namespace["k_mine"].ntk.shape == (8, 8)
    assert namespace["big"].nngp.shape == (300, 300) and type(namespace["big"].nngp).__name__ == "memmap"


def test_readme_has_exactly_the_two_setup_commands():
    setup = README.read_text().split("## Set up", 1)[1]
    commands = re.findall(r"```\n(.*?)```", setup, flags=re.S)[0].strip().splitlines()
    assert commands == ['pip install -e ".[test]"', "pytest"]


def test_monte_carlo_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    assert namespace["theta"].shape == (1, 4, 4)
    assert namespace["est"].nngp.mean.shape == (4, 4)


def test_theory_tools_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[2], "README.md", "exec"), namespace)
    assert namespace["phase"].xi_c.shape == (200, 200)
    assert namespace["crit"].universality_class == "K*=0"
    assert namespace["kappa"].shape[0] == 9
    assert namespace["verdict"].regime == "unstable"
    assert set(namespace["df"]["width"]) == {64, 256, 1024}
    # what the block prints, as a reader sees it: the verdicts, then one fitted slope per layer and step
    printed = capsys.readouterr().out
    assert "Empty DataFrame" not in printed
    assert printed.splitlines()[0].startswith("unstable") and "feature learning depth-mup" in printed
    rows = [line.split() for line in printed.splitlines() if line.split()[1:2] == ["mup"]]
    assert len(rows) == 6  # 3 layers x 2 steps
    assert all(abs(float(r[-3])) < 0.2 for r in rows), rows  # muP: the change per step is width-independent


def test_layer_program_example_runs():
    import numpy as np

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[3], "README.md", "exec"), namespace)
    assert namespace["k"].nngp.shape == namespace["k"].ntk.shape == (4, 4)
    assert namespace["f"].shape == (4, 1) and namespace["theta"].shape == (1, 4, 4)
    assert namespace["est"].ntk.mean.shape == (4, 4)
    assert namespace["k_mup"].ntk.shape == (5, 5) and np.isfinite(namespace["grad"])


def test_add_your_own_layer_example_runs():
    import numpy as np

    import theory
    from theory import layers as nn

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[4], "README.md", "exec"), namespace)
    # Dense(1.5) then Scale(0.5) is Dense(0.75) for both kernels (in the NTK parameterization the first layer's
    # NTK coefficient is w_std^2 too, and Scale has no parameters)
    same = theory.kernels(theory.serial(nn.Dense(w_std=0.75), nn.Elementwise("erf"), nn.Dense()), np.eye(3))
    np.testing.assert_allclose(namespace["k_scaled"].nngp, same.nngp, rtol=1e-6)
    np.testing.assert_allclose(namespace["k_scaled"].ntk, same.ntk, rtol=1e-6)


def test_predictions_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[5], "README.md", "exec"), namespace)
    assert namespace["g"].mean.shape == (5, 1) and namespace["g"].covariance.shape == (5, 5)
    assert namespace["curve"].shape == (3, 5, 1)
    assert namespace["fx_test_t"].shape == (5, 1) and namespace["lr_max"] > 0


def test_experiments_section_commands_parse():
    """Every `deeplimits ...` line of the Experiments section is a valid command line; the SLURM example compiles
    (it needs dask-jobqueue and a cluster to run)."""
    import shlex

    from experiments.cli import build_parser

    section = README.read_text().split("## Experiments", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#", 1)[0].strip() for block in re.findall(r"```\n(.*?)```", section, flags=re.S)
             for line in block.splitlines()]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("deeplimits ")]
    assert len(commands) >= 8 and ["clean", "--stale"] in commands
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)
    assert any("--jobs" in argv for argv in commands) and any("--scheduler" in argv for argv in commands)
    slurm = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "SLURMCluster" in b]
    assert len(slurm) == 1
    compile(slurm[0], "README.md", "exec")
