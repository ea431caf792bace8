"""training.fit_slopes refuses what it cannot fit (it returned an empty frame, silently, for two widths)."""

import numpy as np
import pandas as pd
import pytest

from experiments import training


def frame(widths, layers=("layer 1", "output"), steps=(0, 1), seeds=(0, 1)):
    rows = []
    for w in widths:
        for layer in layers:
            for step in steps:
                for seed in seeds:
                    change = 0.0 if step == 0 else (1 + 0.01 * seed) * w ** -0.5  # slope -1/2, nothing at step 0
                    rows.append({"parameterization": "sp", "layer_name": layer, "step": step, "seed": seed,
                                 "width": w, "delta_rms": change})
    return pd.DataFrame(rows)


def test_three_widths_give_one_slope_per_layer_and_step():
    slopes = training.fit_slopes(frame((64, 256, 1024)), "width")
    assert list(slopes.layer_name) == ["layer 1", "output"] and set(slopes.step) == {1}  # step 0 left out
    np.testing.assert_allclose(slopes.slope, -0.5, atol=1e-9)
    assert set(slopes.n_points) == {3}


@pytest.mark.parametrize("widths", [(64, 256), (64,)])
def test_fewer_than_three_widths_is_an_error(widths):
    with pytest.raises(ValueError, match=rf"needs at least 3 values of 'width'.*got {len(widths)}: \[64"):
        training.fit_slopes(frame(widths), "width")


def test_no_group_with_three_widths_is_an_error():
    df = frame((64, 256, 1024))
    df = df[~((df.width == 1024) & (df.layer_name == "output")) & ~((df.width == 64) & (df.layer_name == "layer 1"))]
    with pytest.raises(ValueError, match=r"no group of .* has 3 values of 'width'"):
        training.fit_slopes(df, "width")
    df = frame((64, 256, 1024))
    diverged = (df.width == 1024) & (df.layer_name == "output")
    df.loc[diverged, "delta_rms"] = np.nan  # a group that diverged is left out; the others are fitted
    assert list(training.fit_slopes(df, "width").layer_name) == ["layer 1"]
