"""The kurtosis-depth-width experiment: its quick sweep end to end (4 points: relu and tanh at n = 16, L = 2,
Gaussian and orthogonal weights, 1000 networks each)."""

import numpy as np
import pandas as pd
import pytest

from experiments.figures import kurtosis_depth_width as kdw


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("kurtosis-depth-width")


@pytest.mark.experiments
def test_quick_run_writes_the_figure_and_the_data(quick):
    df, tmp = quick
    config = kdw.EXPERIMENT.quick_config
    assert len(df) == len(kdw.points(config)) == 4
    for suffix in ("png", "pdf", "csv"):
        path = tmp / "figures" / f"kurtosis_depth_width.{suffix}"
        assert path.exists() and path.stat().st_size > 0, path
    csv = pd.read_csv(tmp / "figures" / "kurtosis_depth_width.csv")
    np.testing.assert_allclose(csv["kurtosis"], df["kurtosis"], rtol=1e-12)
    relu = df[df["activation"] == "relu"]
    # the 1/n theory is 15 L/n for relu at criticality (float32 run), next to the exact law
    np.testing.assert_allclose(relu["theory"], 15 * relu["depth"] / relu["width"], rtol=1e-5)
    np.testing.assert_allclose(relu["exact"], 3 * (1 + 5 / relu["width"]) ** relu["depth"] - 3, rtol=1e-12)
    assert df.loc[df["activation"] == "tanh", "exact"].isna().all()


@pytest.mark.experiments
def test_gaussian_weights_follow_the_theory_and_orthogonal_tanh_does_not(quick):
    """Gaussian weights: within 4 SE + the O((L/n)^2) allowance 40 (L/n)^2 of the 1/n theory (relu's exact
    second-order term is 37.5 L (L-1) / n^2). Orthogonal tanh (Day et al. 2023): below the Gaussian value by > 4 SE
    (its kurtosis is O(1/n) and negative, not growing with depth)."""
    df, _ = quick
    gauss = df[df["weights"] == "gaussian"]
    allowance = 40 * gauss["depth_over_width"] ** 2
    assert (np.abs(gauss["kurtosis"] - gauss["theory"]) < 4 * gauss["kurtosis_se"] + allowance).all(), gauss
    tanh = df[df["activation"] == "tanh"].set_index("weights")
    gap = tanh.loc["gaussian", "kurtosis"] - tanh.loc["orthogonal", "kurtosis"]
    assert gap > 4 * np.hypot(tanh.loc["gaussian", "kurtosis_se"], tanh.loc["orthogonal", "kurtosis_se"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="activations must be among"):
        kdw.Config(activations=("gelu",))
    with pytest.raises(ValueError, match="weights must be among"):
        kdw.Config(weights=("uniform",))
    with pytest.raises(ValueError, match="no \\(width, depth\\)"):
        kdw.Config(widths=(4,), depths=(8,))
