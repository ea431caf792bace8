"""The commute / no-commute experiments (quick grids): the contrast they exist to show."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def frames(quick_run):
    return {name: quick_run(name)[0] for name in ("commute", "no-commute")}


def _diagonal(df):
    part = df[df.width == df.depth].sort_values("width")
    return part.distance.to_numpy(), part.distance_se.to_numpy()


@pytest.mark.experiments
def test_resnet_distance_vanishes_along_n_equals_l(frames):
    d, se = _diagonal(frames["commute"])
    assert d[-1] < 0.5 * d[0] and d[0] - d[-1] > 4 * np.hypot(se[0], se[-1]), (d, se)
    # Width first (exactly n = inf): the gap to the ODE falls like 1/L.
    exact = frames["commute"].groupby("depth").distance_infinite_width.first()
    slope = np.polyfit(np.log(exact.index), np.log(exact.to_numpy()), 1)[0]
    assert -1.1 < slope < -0.9, slope


@pytest.mark.experiments
def test_mlp_distance_does_not_vanish_along_n_equals_l(frames):
    d, se = _diagonal(frames["no-commute"])
    assert np.all(d > 0.5) and d[-1] > 0.5 * d[0], (d, se)
    # At the smallest width, depth kills more and more networks (all outputs exactly 0).
    df = frames["no-commute"]
    fixed = df[df.width == df.width.min()].sort_values("depth")
    assert fixed.dead_fraction.iloc[-1] > fixed.dead_fraction.iloc[0], fixed.dead_fraction


@pytest.mark.experiments
def test_figures_and_data_are_written(frames):
    for df in frames.values():
        assert {"distance", "distance_se", "width", "depth"} <= set(df.columns)
        assert np.isfinite(df.distance).all()
        suffixes = {str(p).rsplit(".", 1)[-1] for p in df.attrs["figures"]}
        assert {"png", "pdf"} <= suffixes, df.attrs["figures"]
