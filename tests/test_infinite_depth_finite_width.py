"""The infinite-depth-finite-width experiment: its quick sweep end to end in a temporary folder."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

import theory
from experiments.figures import infinite_depth_finite_width as fig
from theory import depth_diffusion as th

VALUES = {"mean", "mean_se", "variance", "variance_se", "mean_t", "mean_se_t", "active_t", "active_se_t", "times",
          "hist", "dead_start_fraction", "dead_end_fraction", "n_used"}


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("infinite-depth-finite-width")


@pytest.mark.experiments
def test_quick_run_writes_the_figure_and_the_data(quick):
    df, tmp = quick
    config = fig.EXPERIMENT.quick_config
    assert len(df) == len(fig.points(config))
    assert VALUES | {"kind", "activation", "width", "steps", "n_paths", "checkpoints", "seed"} <= set(df.columns)
    assert set(df["kind"]) == {"network", "sde"} and set(df["activation"]) == {"abs", "relu"}
    relu_sde = df[(df["kind"] == "sde") & (df["activation"] == "relu")]
    assert sorted(relu_sde["width"]) == sorted(set(config.widths) | set(config.regime_widths))
    for suffix in ("png", "pdf", "csv"):
        path = tmp / "figures" / f"{fig.STEM}.{suffix}"
        assert path.exists() and path.stat().st_size > 0, path
    csv = pd.read_csv(tmp / "figures" / f"{fig.STEM}.csv")
    np.testing.assert_allclose(csv["variance"], df["variance"], rtol=1e-12)
    for _, row in df.iterrows():
        assert sum(row["hist"]) == row["n_used"]
        assert len(row["mean_t"]) == len(row["times"]) == row["checkpoints"] + 1


@pytest.mark.experiments
def test_quick_points_agree_with_the_theory(quick):
    """abs networks and abs SDE (Euler-Maruyama with L steps is the depth-L network in law): the exact
    finite-depth moments within 4 SE; ReLU SDE: the mean number of active units at t = 0 and the sign of E R_1
    at width 3."""
    df, _ = quick
    nets = df[(df["kind"] == "network") & (df["activation"] == "abs")]
    assert (np.abs(nets["mean"] - nets["exact_mean"]) <= 4 * nets["mean_se"]).all()
    assert (np.abs(nets["variance"] - nets["exact_variance"]) <= 4 * nets["variance_se"]).all()
    sde = df[(df["kind"] == "sde") & (df["activation"] == "abs")]
    for _, row in sde.iterrows():
        law = th.log_norm_law(int(row["width"]), 1.0)
        assert row["law_mean"] == pytest.approx(law.mean) and row["law_variance"] == pytest.approx(law.variance)
        mean, var = th.finite_depth_log_norm_moments(theory.ResNet(int(row["steps"]), "abs"), int(row["width"]))
        assert abs(row["mean"] - mean) <= 4 * row["mean_se"]
        assert abs(row["variance"] - var) <= 4 * row["variance_se"]
    relu = df[(df["kind"] == "sde") & (df["activation"] == "relu")]
    for _, row in relu.iterrows():
        n = int(row["width"])
        assert abs(row["active_t"][0] - th.relu_active_mean_at_init(n)) <= 4 * row["active_se_t"][0]
        assert row["initial_rate"] == pytest.approx(th.relu_initial_log_growth_rate(n))
    three = relu[relu["width"] == 3].iloc[0]
    assert three["mean"] < -3 * three["mean_se"]


def test_config_validation_and_grid():
    config = fig.Config(widths=(2, 3), depths=(1, 8), regime_widths=(4,), checkpoints=4, sde_steps=8)
    pts = fig.points(config)
    assert len(pts) == 2 * 2 * 2 + 2 + 3  # networks, abs SDE at (2, 3), ReLU SDE at (2, 3, 4)
    assert {p["checkpoints"] for p in pts if p["kind"] == "network" and p["steps"] == 1} == {1}
    with pytest.raises(ValueError, match="widths must be a non-empty tuple"):
        dataclasses.replace(config, widths=())
    with pytest.raises(ValueError, match="checkpoints=3 must divide sde_steps=8"):
        dataclasses.replace(config, checkpoints=3)
    with pytest.raises(ValueError, match="n_paths must be >= 4"):
        dataclasses.replace(config, n_paths=2)
