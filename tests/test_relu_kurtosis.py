"""The relu-kurtosis experiment: its quick sweep end to end, and the Monte Carlo against the exact law."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from experiments import provenance
from experiments.figures import relu_kurtosis
from theory import finite_width

COLUMNS = {"width", "depth", "seed", "n_samples", "n_out", "features", "depth_over_width", "kurtosis", "kurtosis_se",
           "exact", "leading_order", "z", "variance", "variance_se"}


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("relu-kurtosis")


@pytest.mark.experiments
def test_quick_run_writes_the_figure_and_the_data(quick):
    df, tmp = quick
    config = relu_kurtosis.EXPERIMENT.quick_config
    assert COLUMNS <= set(df.columns)
    assert len(df) == len(relu_kurtosis.points(config)) == 12
    assert (df["depth"] <= config.max_depth_over_width * df["width"]).all()
    assert sorted(df["seed"].unique()) == list(range(config.seeds))
    for suffix in ("png", "pdf", "csv"):
        path = tmp / "figures" / f"relu_kurtosis.{suffix}"
        assert path.exists() and path.stat().st_size > 0, path
    csv = pd.read_csv(tmp / "figures" / "relu_kurtosis.csv")
    np.testing.assert_allclose(csv["kurtosis"], df["kurtosis"], rtol=1e-12)
    np.testing.assert_allclose(df["exact"], 3 * (1 + 5 / df["width"]) ** df["depth"] - 3, rtol=1e-12)
    np.testing.assert_allclose(df["leading_order"], 15 * df["depth"] / df["width"], rtol=1e-12)


@pytest.mark.experiments
def test_quick_points_agree_with_the_exact_finite_width_law(quick):
    """Every point (1000 networks, 64 pooled readout units, L/n <= 1/8) within 4 SE of 3 (1 + 5/n)^L - 3;
    and the kurtosis is resolved, not noise: at the largest L/n it is > 6 SE away from the Gaussian value 0."""
    df, _ = quick
    assert (df["kurtosis_se"] > 0).all()
    dev = np.abs(df["kurtosis"] - df["exact"]) / df["kurtosis_se"]
    assert (dev <= 4).all(), df[["width", "depth", "seed", "kurtosis", "kurtosis_se", "exact"]]
    deepest = df[df["depth_over_width"] == df["depth_over_width"].max()]
    assert (deepest["kurtosis"] > 6 * deepest["kurtosis_se"]).all()
    # the variance of the output is exactly q = 2 ||x||^2 / d = 2 at every width and depth (C_W = 2)
    assert (np.abs(df["variance"] - 2.0) <= 4 * df["variance_se"]).all()


def test_combine_seeds():
    df = pd.DataFrame({"width": [8, 8, 16], "depth": [1, 1, 2], "seed": [0, 1, 0], "n_samples": [10, 10, 10],
                       "depth_over_width": [0.125, 0.125, 0.125], "exact": [1.875, 1.875, 2.17],
                       "leading_order": [1.875, 1.875, 1.875], "kurtosis": [1.0, 2.0, 2.0],
                       "kurtosis_se": [0.3, 0.4, 0.1]})
    out = relu_kurtosis.combine_seeds(df)
    row = out[out["width"] == 8].iloc[0]
    assert row["kurtosis"] == pytest.approx(1.5)
    assert row["kurtosis_se"] == pytest.approx(0.25)  # sqrt(0.09 + 0.16) / 2
    assert row["z"] == pytest.approx((1.5 - 1.875) / 0.25)
    assert row["n_networks"] == 20 and row["seeds"] == 2


def test_config_validation_and_grid():
    config = relu_kurtosis.Config(widths=(8, 64), depths=(1, 4, 16), max_depth_over_width=0.25, seeds=3)
    pts = relu_kurtosis.points(config)
    assert {(p["width"], p["depth"]) for p in pts} == {(8, 1), (64, 1), (64, 4), (64, 16)}
    assert len(pts) == 4 * 3
    with pytest.raises(ValueError, match=r"no \(width, depth\) has depth/width <= 0\.01"):
        dataclasses.replace(config, max_depth_over_width=0.01)
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        dataclasses.replace(config, n_samples=1)
    with pytest.raises(ValueError, match="widths must be a non-empty tuple"):
        dataclasses.replace(config, widths=())


def test_the_experiment_uses_the_theory_module():
    """compute's exact column is theory.finite_width's law (no second copy of the formula)."""
    assert "theory.finite_width" in provenance.reachable_modules(relu_kurtosis.EXPERIMENT.module)
    assert finite_width.relu_output_excess_kurtosis(4, 32) == pytest.approx(3 * (1 + 5 / 32) ** 4 - 3)
