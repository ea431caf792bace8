"""experiments.training: the finite network at init (vs experiments.networks and theory.kernels), per-layer learning
rates against a hand computation, determinism, divergence, data sets, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import networks
from experiments import training as tr
from theory import layers as nn
from theory import parameterizations as pz


@pytest.mark.parametrize("arch", [
    theory.MLP(3, "tanh", w_std=1.3, b_std=0.2),
    theory.MLP(2, "relu", w_std=1.4, b_std=0.1, weight_scaling="standard", width=32),
    theory.ResNet(4, "relu", w_std=1.2, b_std=0.3, branch_scale=0.7, depth_exponent=0.5, readout="linear",
                  stem_w_std=1.1, readout_w_std=0.9),
])
def test_same_function_as_experiments_networks(arch):
    # One architecture description, one network: training's network under the abc member of the architecture's own
    # weight scaling ("ntk" or "standard") has the same effective weights as experiments.networks' for the same key
    # (the constants sit in the initialisation instead of the multipliers), so the same outputs and layers.
    width, d = 32, 5
    x = jax.random.normal(jax.random.key(1), (7, d))
    data = tr.Dataset(np.asarray(x), np.zeros((7, 2)))
    result = tr.train(arch, None, data, width, config=tr.TrainConfig(steps=0))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), width)  # train()'s init key for seed 0
    ref = networks.init(arch, width, key, features=d, n_out=2)
    out, layers = tr.forward(result.network, result.init_params, x)
    ref_out, ref_layers = networks.apply(arch, ref, x, per_layer=True)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
    mine = [a[i] for a in layers for i in range(a.shape[0])]
    assert len(mine) == len(ref_layers) == len(result.layer_names)
    for a, b in zip(mine, ref_layers, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch,parameterization", [
    (theory.MLP(3, "relu", w_std=2**0.5, b_std=0.3), "ntk"),
    (theory.MLP(3, "relu", w_std=2**0.5, b_std=0.3), "standard"),
    pytest.param(theory.ResNet(8, "tanh", w_std=1.0, b_std=0.2, depth_exponent=0.5, readout="activation"), "ntk",
                 marks=pytest.mark.slow),
])
def test_init_output_variance_is_the_nngp(arch, parameterization):
    # Monte Carlo over networks: E[f(x) f(x')] = K_NNGP(x, x') + O(1/n) (theory.kernels). Tolerance: 4 SE of the
    # mean over networks plus the O(1/n) finite-width bias bound |K| * 4 L / n.
    width, d, n_nets, chunk = 128, 3, 1000, 200
    x = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]])
    net = theory.parameterize(arch, parameterization, width)
    keys = jax.random.split(jax.random.key(0), n_nets)
    sample = jax.jit(jax.vmap(lambda k: networks.apply(net, networks.init(net, width, k, features=d),
                                                       jnp.asarray(x))[:, 0]))
    outs = np.concatenate([np.asarray(sample(keys[i:i + chunk])) for i in range(0, n_nets, chunk)])
    prods = outs[:, :, None] * outs[:, None, :]
    mean, se = prods.mean(axis=0), prods.std(axis=0) / math.sqrt(n_nets)
    nngp = np.asarray(theory.kernels(arch, x, get="nngp").nngp)
    np.testing.assert_allclose(theory.kernels(net, x, get="nngp").nngp, nngp, rtol=1e-12)  # same NNGP
    bias = np.abs(nngp).max() * 4 * (arch.depth + 1) / width
    assert np.all(np.abs(mean - nngp) < 4 * se + bias), (mean, nngp, se)


def _scales(net):
    """(multiplier, init std, learning-rate factor) of each weight layer of a trained program (fan-in 4, 64, 64)."""
    out = []
    for layer, fan_in in zip(nn.weight_layers(net.layers), (4, 64, 64), strict=True):
        m, s, _, _ = layer.weight_scaling.multipliers(fan_in)
        out.append((m, s, layer.weight_scaling.w_lr))
    return out


def _hand_step(scales, p, x, y, eta, optimizer):
    """One step of a 2-hidden-layer ReLU MLP without biases, gradients written out by hand (NumPy)."""
    (m1, _, l1), (m2, _, l2), (m3, _, l3) = scales
    w1, w2, w3 = p[0].W, p[1].W, p[2].W
    h1 = m1 * x @ w1
    a1 = np.maximum(h1, 0)
    h2 = m2 * a1 @ w2
    a2 = np.maximum(h2, 0)
    f = m3 * a2 @ w3
    chi = (f - y) / x.shape[0]  # d(mean 1/2 |f - y|^2) / df
    g3 = m3 * a2.T @ chi
    d2 = (chi @ w3.T) * m3 * (h2 > 0)
    g2 = m2 * a1.T @ d2
    d1 = (d2 @ w2.T) * m2 * (h1 > 0)
    g1 = m1 * x.T @ d1
    def upd(g, lr):
        return -eta * lr * (g if optimizer == "sgd" else g / (np.abs(g) + 1e-8))  # Adam's first step: g / (|g| + eps)

    return [upd(g1, l1), upd(g2, l2), upd(g3, l3)]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_per_layer_learning_rates_are_applied(optimizer):
    # TP V Table 3's muP: the three groups have three different learning-rate factors at width 64
    # (SGD: 64, 1, 1/64; Adam: 1, 1/64, 1/64).
    arch = theory.MLP(2, "relu", w_std=2**0.5)
    data = tr.teacher(12, 4)
    p = pz.mup(optimizer) if optimizer == "adam" else pz.AbcParameterization(
        "tp5", pz.LayerExponents(0, 0, -1), pz.LayerExponents(0, 0.5, 0), pz.LayerExponents(0, 1, 1))
    eta = 0.05
    result = tr.train(arch, p, data, 64, config=tr.TrainConfig(optimizer=optimizer, learning_rate=eta, steps=1),
                      seed=3)
    scales = _scales(result.network)
    lrs = tuple(lr for _, _, lr in scales)
    assert lrs == ((64.0, 1.0, 1 / 64) if optimizer == "sgd" else (1.0, 1 / 64, 1 / 64))
    expected = _hand_step(scales, result.init_params, data.x, data.y, eta, optimizer)
    for i in range(3):
        got = result.params[i].W - result.init_params[i].W
        np.testing.assert_allclose(got, expected[i], rtol=1e-7, atol=1e-14 * np.abs(expected[i]).max())


def test_deterministic_given_the_seed():
    arch = theory.ResNet(3, "relu", b_std=0.1, depth_exponent=0.5)
    data = tr.teacher(32, 6)
    config = tr.TrainConfig(optimizer="adam", learning_rate=0.01, steps=4, batch_size=8)
    a = tr.train(arch, "mup", data, 32, config=config, seed=5)
    b = tr.train(arch, "mup", data, 32, config=config, seed=5)
    c = tr.train(arch, "mup", data, 32, config=config, seed=6)
    np.testing.assert_array_equal(a.rms, b.rms)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.array_equal(a.delta_rms, c.delta_rms)


def test_divergence_is_recorded_and_measurements_kept():
    # SP with a huge SGD learning rate: the output explodes within a few steps.
    arch = theory.MLP(2, "relu", w_std=2**0.5)
    config = tr.TrainConfig(learning_rate=50.0, steps=20, explode_at=1e6)
    r = tr.train(arch, "standard", tr.teacher(32, 8), 512, config=config)
    assert r.diverged_step is not None and 1 <= r.diverged_step <= 20
    assert r.diverged_layer in (*r.layer_names, "loss")
    if r.diverged_layer == "loss":  # only the loss crossed the threshold at that step
        assert not abs(r.loss[-1]) <= 1e6
    assert r.rms.shape == (r.diverged_step + 1, 3) and r.loss.shape == (r.diverged_step + 1,)
    last = r.rms[-1]
    assert not np.all(np.isfinite(last) & (last <= 1e6)) or not (abs(r.loss[-1]) <= 1e6)
    assert np.all(np.isfinite(r.rms[:-1])) and np.all(r.rms[:-1] <= 1e6)
    bad = np.flatnonzero(~(np.isfinite(last) & (last <= 1e6)))
    if bad.size:
        assert r.diverged_layer == r.layer_names[bad[0]]
    df = r.frame(width=512)
    assert set(df.diverged_step) == {r.diverged_step}
    # the same run with a tame learning rate does not diverge
    assert tr.train(arch, "standard", tr.teacher(32, 8), 512,
                    config=tr.TrainConfig(learning_rate=0.01, steps=20)).diverged_step is None


def test_digits_cross_entropy_learns():
    data = tr.digits(n_samples=400)
    assert data.x.shape == (400, 64) and data.y.max() == 9
    config = tr.TrainConfig(optimizer="adam", learning_rate=0.05, steps=40, batch_size=64, loss="cross_entropy",
                            probe_size=400)
    r = tr.train(theory.MLP(2, "relu", w_std=2**0.5), "mup", data, 128, config=config)
    assert r.diverged_step is None
    assert r.loss[-1] < 0.5 * r.loss[0]  # log(10) = 2.3 at init; a working loop gets well below half of it
    assert tr.digits(one_hot=True).y.shape == (1797, 10)


def test_depth_parameterization_sets_block_learning_rates():
    arch = theory.ResNet(16, "relu", b_std=0.1, depth_exponent=0.5)
    ruled = theory.parameterize(arch, "mup", 64, optimizer="adam", depth_rule=pz.depth_mup())
    plain = theory.parameterize(arch, "mup", 64, optimizer="adam")
    lr = [(a.weight_scaling.w_lr, a.weight_scaling.b_lr, b.weight_scaling.w_lr, b.weight_scaling.b_lr)
          for a, b in zip(nn.weight_layers(ruled.layers), nn.weight_layers(plain.layers), strict=True)]
    for w, b, w0, b0 in lr[1:-1]:  # the blocks: Adam eta / sqrt(L), weights and biases
        assert w == pytest.approx(w0 / 4) and b == pytest.approx(b0 / 4)
    assert lr[0][0] == lr[0][2] and lr[-1][0] == lr[-1][2]  # stem and readout untouched
    assert ruled.layers[1].scale == pytest.approx(0.25)


def test_bad_input():
    data = tr.teacher(8, 3)
    res = theory.ResNet(4, "relu", depth_exponent=1.0)
    with pytest.raises(ValueError, match=r"alpha = 0\.5 but the ResNet's depth_exponent is 1"):
        tr.train(res, "mup", data, 16, depth_parameterization=pz.depth_mup())
    with pytest.raises(ValueError, match=r"pass a theory\.ResNet"):
        tr.train(theory.MLP(2), "mup", data, 16, depth_parameterization=pz.depth_mup())
    with pytest.raises(ValueError, match=r"not stable at depth 2: r = -1 < 0"):
        tr.train(theory.MLP(2), "standard", data, 16, config=tr.TrainConfig(require_stable=True))
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        tr.TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="learning_rate"):
        tr.TrainConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="cannot freeze"):
        tr.TrainConfig(frozen=("stem",))
    with pytest.raises(ValueError, match="integer class labels"):
        tr.train(theory.MLP(2), "mup", data, 16, config=tr.TrainConfig(loss="cross_entropy"))
    with pytest.raises(ValueError, match="at least one hidden layer"):
        tr.train(theory.MLP(0), "mup", data, 16)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        tr.train(theory.MLP(2), "mup", data, 0)
    with pytest.raises(ValueError, match="defined for one hidden layer only"):
        tr.train(theory.MLP(3), "mean_field", data, 16)
