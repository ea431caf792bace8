"""transformer-lr-transfer: the vectorised learning-rate sweep against an Adam step written out by hand (a transformer
with a depth rule) and against experiments.transfer.final_losses (slow); optima and drift fits on synthetic curves
with a known drift; the quick sweep end to end; bad input."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

import theory
from experiments import networks, sequence_tasks, training, transfer
from experiments.figures import transformer_lr_transfer as tlt
from theory import parameterizations as pz


def test_one_full_batch_step_equals_adam_by_hand_and_divergence_scores_inf():
    # Adam's first bias-corrected step is -eta f g / (|g| + eps): written here from the gradient, with the depth
    # factors put by hand on every parameter of the stacked blocks (segment 1: lr L^-gamma, eps L^-alpha) and 1 on the
    # embedding and readout. Depth-muP (gamma = 1/2) and 1/sqrt(L) branches without the lr factor (gamma = 0) share
    # one compilation; a learning rate of 1e30 diverges and scores inf (unless only the blocks train).
    task = sequence_tasks.markov_language(12, 3, vocab=4, seed=1)
    depth, width, eta, eps = 2, 4, 0.05, 1e-3
    arch = theory.Transformer(depth, 1, depth_exponent=0.5)
    params = networks.init(arch, width, jax.random.fold_in(jax.random.fold_in(jax.random.key(2), 0), width),
                           features=task.x.shape[1:], n_out=4)
    x, y = jnp.asarray(task.x), jnp.asarray(task.y)

    @jax.jit
    def loss(p):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(networks.apply(arch, p, x), y))

    g = jax.jit(jax.grad(loss))(params)
    got = {}
    for arm in ("depth-mup", "1/sqrt(L) only", "1/sqrt(L) only" + tlt.BLOCKS_ONLY):
        rule = tlt.depth_rule(arm)
        out = tlt.final_losses(arch, None, (task.x, task.y), width, [eta, 1e30], seeds=(2,), steps=1,
                               batch_size=None, depth_parameterization=rule, adam_eps=eps,
                               frozen=tlt.frozen_groups(arm))
        # a pre-LN network with a frozen readout cannot blow up its output: only the trained readout diverges
        assert (out[0, 1] == np.inf) != arm.endswith(tlt.BLOCKS_ONLY)
        segments = []
        for s, (p, gs) in enumerate(zip(params.segments, g.segments, strict=True)):
            # blocks only: the embedding (segment 0) and the readout (the last) do not move
            f = depth ** -rule.gamma if s == 1 else 0.0 if arm.endswith(tlt.BLOCKS_ONLY) else 1.0
            e = eps * (depth ** -rule.alpha if s == 1 else 1.0)
            segments.append(jax.tree.map(lambda w, d, f=f, e=e: w - eta * f * d / (jnp.abs(d) + e), p, gs))
        stepped = networks.NetworkParams(tuple(segments), params.counts, params.index)
        np.testing.assert_allclose(out[0, 0], float(loss(stepped)), rtol=1e-10)
        got[arm] = out[0, 0]
    assert abs(got["depth-mup"] - got["1/sqrt(L) only"]) > 1e-6  # the rule's factor moves the step
    assert abs(got["1/sqrt(L) only" + tlt.BLOCKS_ONLY] - got["1/sqrt(L) only"]) > 1e-6


@pytest.mark.slow
def test_sweep_equals_transfer_final_losses_on_a_resnet():
    # the same networks, minibatches and Adam as experiments.training.train, per seed and learning rate
    data = training.digits(n_samples=128)
    rule = tlt.depth_rule("1/sqrt(L) only")
    arch = theory.ResNet(3, "relu", w_std=math.sqrt(2), depth_exponent=rule.alpha)
    lrs = 2.0 ** np.array([-6.0, -3.0, -1.0])
    config = training.TrainConfig(optimizer="adam", steps=6, batch_size=32, loss="cross_entropy", probe_size=16)
    ref = np.stack([transfer.final_losses(arch, "mup", data, 16, config, lrs, seed=s, depth_parameterization=rule)
                    for s in (0, 3)])
    got = tlt.final_losses(arch, "mup", data, 16, lrs, seeds=(0, 3), steps=6, batch_size=32,
                           depth_parameterization=rule)
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def _synthetic(exponent: float, sizes=(2, 4, 8, 16, 32), seeds: int = 6, noise: float = 0.15) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    grid = np.arange(-12.0, 0.01, 0.5)
    rows = []
    for size in sizes:
        centre = -4.0 + exponent * math.log2(size)
        losses = [np.exp(0.2 * (grid - centre - noise * rng.standard_normal()) ** 2) for _ in range(seeds)]
        rows.append({"sweep": "depth", "arm": "a", "size": size, "log2_lr": grid.tolist(),
                     "loss": [v.tolist() for v in losses]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("exponent", [0.0, -0.5])
def test_drift_recovers_a_known_exponent(exponent):
    opt = tlt.optima(_synthetic(exponent), n_bootstrap=200)
    assert not opt.on_edge.any() and np.all(opt.log2_lr_se > 0)
    fit = tlt.drift(opt)[("depth", "a")]
    assert abs(fit.exponent - exponent) < 4 * fit.exponent_stderr + 1e-3, fit
    assert fit.ci_low < exponent < fit.ci_high


def test_points_and_bad_config():
    c = tlt.Config(depths=(2, 4), long_depths=(4, 8), widths=(64,), resnet_depths=(2,), seeds=2)
    pts = tlt.points(c)  # (arm, L) pairs once each: the long arms add L = 8 only
    assert [p["sweep"] for p in pts].count("depth") == 2 * len(c.depth_arms) + len(c.long_depth_arms)
    assert {p["sweep"] for p in pts} == {"depth", "width", "resnet-depth"}
    with pytest.raises(ValueError, match="depth arms"):
        tlt.Config(depth_arms=("nope",))
    with pytest.raises(ValueError, match="nothing"):
        tlt.Config(depths=(), widths=(), resnet_depths=())
    with pytest.raises(ValueError, match="grid"):
        tlt.Config(lr_log2_min=-3.0, lr_log2_max=-2.0)
    with pytest.raises(ValueError, match="unknown depth arm"):
        tlt.depth_rule("nope")
    assert tlt.frozen_groups("sp") == () and tlt.frozen_groups("sp" + tlt.BLOCKS_ONLY) == ("input", "output")
    task = sequence_tasks.markov_language(4, 2, vocab=3)
    arch = theory.Transformer(1, 1)
    with pytest.raises(ValueError, match="cannot freeze"):
        tlt.final_losses(arch, None, (task.x, task.y), 4, [0.1], frozen=("blocks",))
    with pytest.raises(ValueError, match="learning_rates"):
        tlt.final_losses(arch, None, (task.x, task.y), 4, [-1.0])
    with pytest.raises(ValueError, match="seeds"):
        tlt.final_losses(arch, None, (task.x, task.y), 4, [0.1], seeds=())
    with pytest.raises(ValueError, match="integer labels"):
        tlt.final_losses(arch, None, (task.x, task.y.astype(float)), 4, [0.1])
    with pytest.raises(ValueError, match="depth_exponent"):
        tlt.final_losses(theory.Transformer(2, 1, depth_exponent=0.5), None, (task.x, task.y), 4, [0.1],
                         depth_parameterization=pz.complete_p())


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("transformer-lr-transfer")[0]


@pytest.mark.experiments
def test_quick_sweep(quick):
    opt = tlt.optima(quick)
    assert len(opt) == len(tlt.points(tlt.EXPERIMENT.quick_config)) and np.isfinite(opt.log2_lr_opt).all()
    assert not opt.on_edge.any()
    assert all(Path(p).exists() for p in quick.attrs["figures"])
