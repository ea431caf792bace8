"""ntk-regime-training (quick grid: widths 64, 256, 1024; four seeds): the gap between a finite NTK-parameterized
network's loss curve and the infinite-width linear model from the same f_0 shrinks with width like n^-1/2 (the
tangent kernel's fluctuations and motion, Jacot et al. 2018; Lee et al. 2019), within 3 SE of the fitted exponent
plus the bias of a next-order n^-1 term over this grid (at most 1/2 of the exponent; we allow 0.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.figures import ntk_regime
from experiments.scaling import fit_power_law
from theory import training_dynamics as td


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("ntk-regime-training")[0]


@pytest.mark.experiments
def test_gap_shrinks_like_inverse_sqrt_width(quick):
    table = ntk_regime.gaps(quick).sort_values("width")
    first, last = table.iloc[0], table.iloc[-1]
    assert last.delta + 2 * last.delta_se < first.delta - 2 * first.delta_se, table
    fit = fit_power_law(table.width, table.delta, table.delta_se, absolute_sigma=False)
    assert abs(fit.exponent + 0.5) < 3 * fit.exponent_stderr + 0.3, fit
    assert (quick.diverged_step == -1).all()


@pytest.mark.experiments
def test_expected_loss_column_is_the_theory(quick):
    point = quick.iloc[0]
    _, data, ntk, nngp, top = ntk_regime._setup(point.to_dict())
    want = td.expected_loss(ntk, nngp, data.y, point.learning_rate, int(point.steps))
    np.testing.assert_allclose(point.expected, want, rtol=1e-10)
    assert 0 < top < 2 and point.eta_lambda_max_over_n == pytest.approx(top)
    # all networks start from the same data: the loss at step 0 averages to E L_0 within 4 SE of the seeds
    start = quick.loss.map(lambda v: v[0]).to_numpy()
    assert abs(start.mean() - want[0]) < 4 * start.std(ddof=1) / math.sqrt(start.size)
