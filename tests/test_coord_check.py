"""coord-check-width / coord-check-depth (quick grids) and the coord_check API: the slopes the papers predict.

Tolerances: 3 SE of the fitted slope (SE over seeds, rescaled by the fit's residuals) plus the bias a finite-size
correction puts on a log-log slope over the grid. At width ``n`` the leading corrections to a layer's change are
relative ``c n^-1/2`` (the part of the feature change not aligned with the readout, and the ``n^-1/2`` muP output
at init inside the error signal); such a term biases the slope by at most ``c/2 n_min^-1/2``, and we allow
``c = 2``: ``n_min^-1/2``. Along depth, a sum over ``L`` blocks differs from its ``L -> inf`` limit by ``O(1/L)``:
``1 / L_min``. The alternatives the checks must tell apart are ``1/2`` (width) and ``1`` (depth) away.
"""

from __future__ import annotations

import numpy as np
import pytest

import theory
from experiments import training
from experiments.figures import coord_check
from theory import parameterizations as pz


@pytest.fixture(scope="module")
def runs(quick_run):
    return {name: quick_run(name)[0] for name in ("coord-check-width", "coord-check-depth")}


@pytest.mark.experiments
def test_width_slopes_match_tp4(runs):
    df = runs["coord-check-width"]
    data = coord_check.long_frame(df, "width", "parameterization")
    slopes = training.fit_slopes(data[~data.exploded], "width", "delta_rms")
    depth = int(df.depth.iloc[0])
    allowance = float(df.width.min()) ** -0.5
    names = {"layer 1": "input", f"layer {depth}": "hidden", "output": "output"}
    checked = 0
    for name in ("standard", "mup"):
        predicted = pz.get(name).first_step_exponents(depth)  # SP: -1/2, +1/2, +1; muP: 0, 0, 0
        for rec in slopes[(slopes.parameterization == name) & (slopes.step == 1)].itertuples():
            want = predicted[names[rec.layer_name]]
            assert abs(rec.slope - want) < 3 * rec.slope_se + allowance, (name, rec, want)
            checked += 1
    assert checked == 6
    sp_out = slopes[(slopes.parameterization == "standard") & (slopes.layer_name == "output") & (slopes.step == 1)]
    assert sp_out.slope.iloc[0] > 0.5  # SP's output update grows with width; muP's does not


@pytest.mark.experiments
def test_depth_slopes_match_tp6(runs):
    df = runs["coord-check-depth"]
    data = coord_check.long_frame(df, "depth", "arm")
    top = data[(data.layer_name == "last block") & ~data.exploded]
    slopes = training.fit_slopes(top, "depth", "delta_rms", by=("arm", "layer_name", "step"))
    allowance = 1 / float(df.depth.min())
    for arm, want in (("depth-mup", 0.0), ("1/L", -1.0)):  # L^(1 - alpha - gamma): gamma = alpha for SGD's eta
        assert want == pz.DepthParameterization.from_learning_rate(coord_check.DEPTH_ARMS[arm], 0.0, "sgd") \
            .classify().update_exponent
        for rec in slopes[(slopes.arm == arm) & (slopes.step >= 1)].itertuples():
            assert abs(rec.slope - want) < 3 * max(rec.slope_se, 1e-3) + allowance, (arm, rec)
    # No branch scaling: the stream explodes with depth at init, and training diverges.
    sp = data[(data.arm == "sp") & (data.layer_name == "last block") & (data.step == 0)].groupby("depth").rms.mean()
    assert sp.iloc[-1] > 100 * sp.iloc[0]
    assert (df[df.arm == "sp"].diverged_step >= 0).any()
    assert (df[df.arm != "sp"].diverged_step < 0).all()


@pytest.mark.experiments
def test_linear_arms_lie_on_the_infinite_width_recursion(runs):
    """The finite-width linear ResNets (12 seeds) agree with theory.linear_resnet_training within 4 SE at every depth
    and step; Depth-muP's last-block change varies by less than 15% over L = 16..64 (TP VI: converges as L -> inf,
    O(1/L) apart), the 1/L arm's falls like L^-1."""
    linear = coord_check.linear_comparison(runs["coord-check-depth"])
    top = linear[linear.layer_name == "last block"]
    assert len(top) == 2 * 3 * 2 and top.seeds.min() >= 12  # arms x quick depths x steps
    assert np.all(np.abs(linear.z) < 4), linear[np.abs(linear.z) >= 4]
    mup = top[top.arm == "linear depth-mup"].pivot(index="depth", columns="step", values="theory")
    assert np.all(np.abs(mup.loc[64] / mup.loc[16] - 1) < 0.15)
    inv = top[top.arm == "linear 1/L"].pivot(index="depth", columns="step", values="theory")
    assert np.all(np.abs(np.log(inv.loc[64] / inv.loc[16]) / np.log(4) + 1) < 0.1)


@pytest.mark.experiments
def test_figures_written(runs):
    for df in runs.values():
        suffixes = {str(p).rsplit(".", 1)[-1] for p in df.attrs["figures"]}
        assert {"png", "pdf"} <= suffixes


def test_coord_check_api_returns_a_long_frame():
    df = training.coord_check(theory.MLP(2, "relu", w_std=2**0.5), "mup", widths=(16, 32), steps=2, seeds=2)
    assert {"width", "depth", "layer", "layer_name", "step", "rms", "delta_rms", "seed",
            "parameterization"} <= set(df.columns)
    assert len(df) == 2 * 2 * 3 * 3  # widths x seeds x (steps + 1) x layers
    assert np.all(df[df.step == 0].delta_rms == 0) and np.all(df[df.step > 0].delta_rms > 0)
    res = training.coord_check(theory.ResNet(2, "relu", depth_exponent=0.5), "mup", widths=(16,), depths=(2, 4),
                               steps=1, depth_parameterization=pz.depth_mup())
    assert sorted(set(res.depth)) == [2, 4]
