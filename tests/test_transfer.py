"""experiments.transfer: the optimum of a loss curve on synthetic curves with a known optimum, the calibration of
its bootstrap standard error, the final-loss sweep against training's own probe loss, and divergence as inf."""

from __future__ import annotations

import math

import numpy as np
import pytest

import theory
from experiments import training, transfer

GRID = np.arange(-12.0, 1.0)


def test_vertex_of_a_log_parabola_is_exact():
    for u_star in (-4.37, -7.0, -0.5):
        loss = np.exp(0.3 * (GRID - u_star) ** 2 - 1.0)
        opt = transfer.optimum(GRID, loss)
        assert opt.log2_lr == pytest.approx(u_star, abs=1e-9)
        assert opt.loss == pytest.approx(math.exp(-1.0), rel=1e-9)
        assert not opt.on_edge


def test_v_shaped_curve_optimum_is_within_half_a_step():
    # not quadratic: three-point interpolation stays inside the bracket of the true minimum
    for u_star in np.linspace(-8.3, -3.1, 7):
        loss = np.exp(np.abs(GRID - u_star))
        assert abs(transfer.optimum(GRID, loss).log2_lr - u_star) < 0.5


def test_diverged_points_and_edges():
    loss = np.exp(0.3 * (GRID + 5.2) ** 2)
    loss[GRID > -5] = np.inf  # every larger learning rate diverged: the minimum is the last finite point
    opt = transfer.optimum(GRID, loss)
    assert opt.on_edge and opt.log2_lr == -5.0  # two finite points in the window: the argmin itself
    assert math.isnan(transfer.optimum(GRID, np.full(GRID.size, np.inf)).log2_lr)
    with pytest.raises(ValueError, match="increasing"):
        transfer.optimum(GRID[::-1], loss)


def test_bootstrap_standard_error_is_calibrated():
    # Each seed's curve has its minimum at u* + e_s, e_s ~ N(0, 0.3^2): the optimum of the seed average is
    # u* + mean(e) to first order, with SD 0.3 / sqrt(S). Over 120 repetitions the z-scores must have SD near 1
    # (the bootstrap's (S-1)/S bias and the SD's own sampling error of 1/sqrt(2 * 120) ~ 0.065 included).
    rng = np.random.default_rng(0)
    u_star, seeds, z = -5.3, 8, []
    for _ in range(120):
        shifts = rng.normal(0.0, 0.3, seeds)
        losses = np.exp(0.4 * (GRID[None, :] - u_star - shifts[:, None]) ** 2)
        opt = transfer.optimum_over_seeds(GRID, losses, n_bootstrap=200, seed=int(rng.integers(1 << 30)))
        z.append((opt.log2_lr - u_star) / opt.log2_lr_se)
    z = np.array(z)
    assert abs(z.mean()) < 4 / math.sqrt(z.size)
    assert 0.8 < z.std() < 1.35, z.std()


def test_final_losses_match_the_probe_loss_and_mark_divergence():
    data = training.teacher(32, 4, seed=1)
    arch = theory.MLP(2, "relu", math.sqrt(2))
    config = training.TrainConfig(optimizer="sgd", steps=5, probe_size=32)  # probe = the whole set: same number
    lrs = np.array([0.01, 0.1, 1e4])
    got = transfer.final_losses(arch, "mup", data, 64, config, lrs, seed=2)
    for lr, value in zip(lrs[:2], got[:2], strict=True):
        result = training.train(arch, "mup", data, 64, config=training.TrainConfig(
            optimizer="sgd", steps=5, probe_size=32, learning_rate=float(lr)), seed=2)
        assert value == pytest.approx(float(result.loss[-1]), rel=1e-10)
    assert got[2] == np.inf
    with pytest.raises(ValueError, match="learning_rates"):
        transfer.final_losses(arch, "mup", data, 64, config, [0.1, -1.0])
