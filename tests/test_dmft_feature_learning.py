"""dmft-feature-learning: the deviation estimator on synthetic data with a known answer; the DMFT's first step against
the exact infinite-width kernel prediction; and the quick sweep's science (the widest networks follow the DMFT
within their combined standard errors, richer networks align their tangent kernel with the targets more)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd
import pytest

import theory
from experiments.figures import dmft_feature_learning as fig
from theory import dmft, grokking


def _frame(bias: dict[int, float], spread: float, dmft_se: float, seeds: int = 6, steps: int = 5) -> pd.DataFrame:
    """A DMFT row and, per width, networks whose curves are the DMFT's plus ``bias[width]`` plus seed noise of
    standard deviation exactly ``spread`` (+- spread around the mean)."""
    ref = np.linspace(1.0, 0.2, steps + 1)
    rows = [{"kind": "dmft", "gamma": 1.0, "width": 0, "seed": 0, "train_loss": ref.tolist(),
             "train_loss_se": [dmft_se] * (steps + 1)}]
    signs = np.array([1.0, -1.0] * (seeds // 2))
    scale = spread / np.std(signs, ddof=1)
    for width, b in bias.items():
        for s in range(seeds):
            rows.append({"kind": "network", "gamma": 1.0, "width": width, "seed": s,
                         "train_loss": (ref + b + scale * signs[s]).tolist(),
                         "train_loss_se": [math.nan] * (steps + 1)})
    return pd.DataFrame(rows)


def test_deviations_recover_a_known_bias_and_spread():
    df = _frame({128: 0.04, 512: 0.01}, spread=0.02, dmft_se=0.003)
    table = fig.deviations(df).set_index("width")
    assert table.loc[128, "bias"] == pytest.approx(0.04, rel=1e-12)
    assert table.loc[512, "bias"] == pytest.approx(0.01, rel=1e-12)
    np.testing.assert_allclose(table["spread"], 0.02, rtol=1e-12)
    # the SE of a constant gap is the per-step SE: seeds' sqrt(spread^2 / k) and the DMFT's, in quadrature
    want = math.sqrt(0.02**2 / 6 + 0.003**2) / math.sqrt(5)
    np.testing.assert_allclose(table["bias_se"], want, rtol=1e-12)
    np.testing.assert_allclose(table["noise_floor"], math.sqrt(0.02**2 / 6 + 0.003**2), rtol=1e-12)
    np.testing.assert_allclose(table["spread_se"], 0.02 / math.sqrt(10), rtol=1e-12)


@pytest.mark.slow
def test_dmft_first_step_is_the_exact_kernel_prediction():
    """At t = 0 and after one step only the initial NTK acts: the DMFT's loss after one step and its t = 0 NTK are
    theory.kernels' within 4 of the solver's standard errors."""
    point = {**fig._common(fig.Config()), "kind": "dmft", "gamma": 1.0, "seed": 0}
    arch, task = fig.setup(point)
    sol = dmft.solve(arch, task.x_train, task.y_train, task.x_test, gamma=1.0, learning_rate=1.0, steps=1,
                     key=jax.random.key(3), samples=512, replicas=4, kernels="equal_time")
    x_all = np.concatenate([task.x_train, task.x_test])
    ntk = np.asarray(theory.kernels(arch, x_all, get="ntk").ntk)
    assert np.all(np.abs(sol.ntk[0] - ntk) <= 4 * sol.ntk_stderr[0] + 1e-12)
    p = task.x_train.shape[0]
    train, _ = grokking.lazy_losses(ntk[:p, :p], ntk[p:, :p], task.y_train, task.y_test, 1.0, np.array([0, 1]))
    assert abs(sol.loss[1] - train[1]) < 4 * sol.loss_stderr[1]
    assert sol.loss[0] == pytest.approx(train[0], rel=1e-12)


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("dmft-feature-learning")[0]


@pytest.mark.experiments
def test_quick_sweep_widest_networks_follow_the_dmft(quick):
    config = fig.EXPERIMENT.quick_config
    widest = max(config.widths)
    for gamma, part in quick.groupby("gamma"):
        ref = part[part["kind"] == "dmft"].iloc[0]
        nets = part[(part["kind"] == "network") & (part["width"] == widest)]
        v = np.array(nets["train_loss"].tolist())[:, 1:]
        se = np.sqrt(v.var(axis=0, ddof=1) / len(v) + np.asarray(ref["train_loss_se"])[1:] ** 2)
        z = np.abs(v.mean(axis=0) - np.asarray(ref["train_loss"])[1:]) / se
        # the O(1/n) bias at n = 512 is below the SE; 4 SE at each of the steps
        assert np.all(z < 4), (gamma, z)
        assert not nets["diverged"].any()


@pytest.mark.experiments
def test_quick_sweep_richer_networks_align_their_kernel_more(quick):
    gains = {}
    for gamma, part in quick.groupby("gamma"):
        ref = part[part["kind"] == "dmft"].iloc[0]
        nets = part[part["kind"] == "network"]
        net_align = np.array(nets["ntk_alignment"].tolist()).mean(axis=0)
        gains[gamma] = (ref["ntk_alignment"][-1] - ref["ntk_alignment"][0], net_align[-1] - net_align[0])
    small, large = min(gains), max(gains)
    assert gains[large][0] > gains[small][0] + 0.05 and gains[large][1] > gains[small][1] + 0.05, gains
    # at t = 0 the widest networks' NTK alignments scatter around the infinite-width kernel's (their O(1/n) bias is
    # below the SE)
    point = quick[quick["kind"] == "dmft"].iloc[0].to_dict()
    arch, task = fig.setup(point)
    exact = grokking.kernel_alignment(theory.kernels(arch, task.x_train, get="ntk").ntk, task.y_train)
    nets = quick[(quick["kind"] == "network") & (quick["width"] == quick["width"].max())]
    first = np.array([a[0] for a in nets["ntk_alignment"]])
    assert abs(first.mean() - exact) < 4 * first.std(ddof=1) / math.sqrt(first.size)
