"""The laziness diagnostic (experiments.laziness) and the public per-block apply (experiments.networks.blocks,
apply_block): known answers (blocks linear in their parameters are their linearisation; a bilinear block's
remainder in closed form; a smooth block's remainder second order in the step; NTK blocks lazier than muP's)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import laziness, networks, training
from experiments.networks import Weights
from theory import layers as nn
from theory import parameterizations as pz

DATA = training.teacher(24, 6, seed=0)


def _mixed_net() -> nn.Serial:
    # a one-layer block (linear in its parameters for any phi) and two bilinear blocks Residual(Dense, Dense)
    bilinear = nn.Residual(nn.Dense(b_std=0.3), nn.Dense(b_std=0.3), scale=0.5)
    return theory.serial(nn.Dense(), nn.Residual(nn.Elementwise("tanh"), nn.Dense(b_std=0.2), scale=0.5),
                         bilinear, bilinear, nn.Elementwise("tanh"), nn.Dense())


@pytest.fixture(scope="module")
def trained():
    return training.train(_mixed_net(), "mup", DATA, 40, config=training.TrainConfig(learning_rate=0.3, steps=4))


def test_blocks_chain_to_the_network_output(trained):
    net, params, x = trained.network, jax.tree.map(jnp.asarray, trained.params), jnp.asarray(DATA.x)
    found = networks.blocks(net, params, x)
    assert [b.name for b in found] == list(net.recorded_names()) and len(found) == 5
    h = x
    for b in found[:-1]:
        np.testing.assert_allclose(b.inputs, h, rtol=1e-13, atol=1e-13)
        h = networks.apply_block(b.layer, b.params, h)
    _, recorded = networks.apply(net, params, x, per_layer=True)
    np.testing.assert_allclose(h, recorded[3], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(found[-1].inputs, jnp.tanh(h), rtol=1e-13)  # the readout reads tanh(stream)
    out = networks.apply_block(found[-1].layer, found[-1].params, found[-1].inputs)
    np.testing.assert_allclose(out, networks.apply(net, params, x), rtol=1e-12, atol=1e-12)
    # the per-block apply under jit equals the eager one
    b = found[2]
    jitted = jax.jit(lambda p, h: networks.apply_block(b.layer, p, h))(b.params, b.inputs)
    np.testing.assert_allclose(jitted, networks.apply_block(b.layer, b.params, b.inputs), rtol=1e-13)


def test_distance_known_answers(trained):
    # Dense layers and the one-layer block W tanh(h) + b are linear in their parameters: d = 0 to rounding.
    # Residual(Dense_1, Dense_2) with no activation: F = h + s L2(L1 h), bilinear in (theta_1, theta_2), so
    # F(theta) - F(theta0) - J dtheta = s L2[dW2, 0](L1[dW1, db1](h)) exactly (L[W, b] h = m_W W h + m_b b).
    net, x = trained.network, jnp.asarray(DATA.x)
    names, d = laziness.linearisation_distance(net, trained.init_params, trained.params, DATA.x)
    assert names == net.recorded_names() and d.dtype == np.float64
    assert d[0] < 1e-12 and d[1] < 1e-12 and d[-1] < 1e-12, d
    after = networks.blocks(net, jax.tree.map(jnp.asarray, trained.params), x)
    before = networks.blocks(net, jax.tree.map(jnp.asarray, trained.init_params), x)
    for k in (2, 3):
        b, b0 = after[k], before[k]
        d1, d2 = b.layer.branch
        (w1, w2), (v1, v2) = b.params, b0.params
        remainder = b.layer.scale * d2.apply(Weights(w2.W - v2.W, jnp.zeros_like(w2.b)),
                                             d1.apply(Weights(w1.W - v1.W, w1.b - v1.b), b.inputs))
        change = networks.apply_block(b.layer, b.params, b.inputs) - networks.apply_block(b.layer, b0.params, b.inputs)
        want = float(jnp.linalg.norm(remainder) / jnp.linalg.norm(change))
        assert d[k] == pytest.approx(want, rel=1e-9)
        assert 1e-4 < want < 1  # a test that can fail: the remainder is there and is not the whole change
    assert np.isnan(laziness.linearisation_distance(net, trained.init_params, trained.init_params, DATA.x)[1]).all()


def test_laziness_frame_and_bad_input(trained):
    # same arch, width, config and seed as the fixture: the same run (and the same compiled training loop)
    df = laziness.laziness(_mixed_net(), "mup", DATA, 40, steps=(4,), config=training.TrainConfig(learning_rate=0.3))
    assert list(df.columns) == ["step", "layer", "layer_name", "distance", "width", "depth", "diverged"]
    assert len(df) == 5 and set(df.step) == {4} and not df.diverged.any()
    _, d = laziness.linearisation_distance(trained.network, trained.init_params, trained.params, DATA.x)
    np.testing.assert_allclose(df.distance, d, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="steps must name"):
        laziness.laziness(theory.ResNet(2), "mup", DATA, 16, steps=())
    with pytest.raises(ValueError, match="width must be a positive integer"):
        laziness.laziness(theory.ResNet(2), "mup", DATA, 0)
    net = pz.parameterize(theory.ResNet(2), "mup", 8)
    params = networks.init(net, 8, jax.random.key(0), features=6, n_out=1)
    with pytest.raises(ValueError, match="do not belong to this program"):
        laziness.linearisation_distance(pz.parameterize(theory.ResNet(3), "mup", 8), params, params, DATA.x)


@pytest.mark.slow
def test_distance_grows_over_training():
    df = laziness.laziness(_mixed_net(), "mup", DATA, 16, steps=(1, 3), config=training.TrainConfig(learning_rate=0.3))
    assert sorted(set(df.step)) == [1, 3] and len(df) == 2 * 5
    # after one step the remainder is second order in a small step; it grows as the parameters move on
    for layer in (2, 3):
        one, three = df[df.layer == layer].sort_values("step").distance
        assert three > one > 0


def _two_layer_blocks(depth: int) -> nn.Serial:
    block = nn.Residual(nn.Dense(), nn.Elementwise("tanh"), nn.Dense(), scale=depth**-0.5)
    return theory.serial(nn.Dense(), *([block] * depth), nn.Dense())


@pytest.mark.slow
def test_smooth_blocks_remainder_is_second_order_and_ntk_is_lazier_than_mup():
    # a smooth block's remainder is O(dtheta^2) against an O(dtheta) change: d is proportional to the step size
    # for small steps (one SGD step, eta and eta / 4: ratio 4 to 10%)
    one = training.TrainConfig(steps=1)
    d = [laziness.laziness(_two_layer_blocks(2), "mup", DATA, 128, steps=(1,),
                           config=dataclasses.replace(one, learning_rate=lr)).distance.to_numpy()[1:3]
         for lr in (0.04, 0.01)]
    np.testing.assert_allclose(d[0] / d[1], 4.0, rtol=0.1)
    # NTK vs muP at the same base learning rate: the NTK network's blocks are much nearer their linearisation
    # (measured d = 0.0032, 0.0008, 0.0018 under NTK and 0.014-0.018 under muP at widths 64, 256, 1024, 3 steps)
    config = training.TrainConfig(learning_rate=0.5, steps=3)
    for n in (256, 1024):
        ntk, mup = (laziness.laziness(_two_layer_blocks(2), name, DATA, n, steps=(3,), config=config)
                    .distance.to_numpy()[1:3] for name in ("ntk", "mup"))
        assert np.all(ntk < mup / 4), (n, ntk, mup)


@pytest.mark.slow
def test_completep_claim_depth_mup_blocks_turn_lazy_with_depth():
    # CompleteP (Dey et al. 2025, Sec. 4): with two-layer blocks, alpha = 1/2 blocks move by L^-1/2 and approach
    # their linearisation, d ~ L^-1/2; alpha = 1 blocks keep d = O(1). Adam, muP, width 128, 5 steps; measured
    # mean d over blocks 0.0034, 0.0019, 0.0009 (alpha 1/2) and 0.0064, 0.0069, 0.0067 (alpha 1) at L = 4, 16, 64.
    data = training.teacher(32, 8, seed=0)
    config = training.TrainConfig(optimizer="adam", learning_rate=0.01)
    depths = np.array([4, 16, 64])
    block = nn.Residual(nn.Dense(), nn.Elementwise("tanh"), nn.Dense())
    slopes = {}
    for alpha in (0.5, 1.0):
        d = []
        for depth in depths:
            net = theory.serial(nn.Dense(), *([block] * int(depth)), nn.Dense())
            df = laziness.laziness(net, "mup", data, 128, steps=(5,), config=config,
                                   depth_parameterization=pz.depth_family(alpha))
            assert not df.diverged.any()
            d.append(df.distance.to_numpy()[1:-1].mean())
        slopes[alpha] = float(np.polyfit(np.log(depths), np.log(d), 1)[0])
    assert slopes[0.5] == pytest.approx(-0.5, abs=0.1), slopes
    assert abs(slopes[1.0]) < 0.1, slopes
