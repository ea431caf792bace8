"""The phase-diagram experiment: its quick sweep end to end, depth scales of finite networks vs theory."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from experiments.figures import phase_diagram


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("phase-diagram")


@pytest.mark.experiments
def test_quick_run_writes_the_figure_and_the_data(quick):
    df, tmp = quick
    config = phase_diagram.EXPERIMENT.quick_config
    assert len(df) == len(phase_diagram.points(config)) == 2
    for suffix in ("png", "pdf", "csv"):
        path = tmp / "figures" / f"phase_diagram.{suffix}"
        assert path.exists() and path.stat().st_size > 0, path
    csv = pd.read_csv(tmp / "figures" / "phase_diagram.csv")
    np.testing.assert_allclose(csv["xi_mc"], df["xi_mc"], rtol=1e-12)


@pytest.mark.experiments
def test_measured_depth_scales_agree_with_theory(quick):
    """One ordered (c* = 1) and one chaotic (c* < 1) tanh point: the depth scale fitted to 64 width-256 networks
    is within 3 jackknife SE of -1 / ln chi_c, and resolved (SE < 40% of it)."""
    df, _ = quick
    assert sorted(df["c_star"] < 1) == [False, True]
    assert (np.abs(df["z"]) <= 3).all(), df[["w_var", "b_var", "xi_theory", "xi_mc", "xi_se"]]
    assert (df["xi_se"] < 0.4 * df["xi_theory"]).all()
    assert (df["last_layer"] - df["first_layer"] >= 2).all()


def test_first_layer_kernel_is_the_one_asked_for():
    """The inputs give q^1 = C_W x.x'/d + C_b = q* [[1, c], [c, 1]]."""
    x = phase_diagram._inputs(0.9, 0.3, 2.0, 0.1)
    k = 2.0 * x @ x.T / x.shape[1] + 0.1
    np.testing.assert_allclose(k, 0.9 * np.array([[1, 0.3], [0.3, 1]]), rtol=1e-12)


def test_config_validation():
    config = phase_diagram.Config()
    with pytest.raises(ValueError, match="must pair up"):
        dataclasses.replace(config, w_vars=(1.0,), b_vars=(0.1, 0.2))
    with pytest.raises(ValueError, match="need C_W > 0 and C_b >= 0"):
        dataclasses.replace(config, b_vars=(-0.1, 0.3, 0.05))
    with pytest.raises(ValueError, match="networks >= 2 \\* groups"):
        dataclasses.replace(config, networks=10, groups=8)
