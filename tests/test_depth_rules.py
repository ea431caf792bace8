"""Depth rules alpha in [1/2, 1] (theory.parameterizations: depth_family, complete_p, depth_mup, depth_scales):
the papers' stated exponents, the program transform, and finite-network coordinate checks that each rule does
what it claims (gradients ~ L^-alpha, so Adam's epsilon must follow; one step moves the output by O(1) in L)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import theory
from experiments import networks, training
from theory import layers as nn
from theory import parameterizations as pz

DEPTHS = np.array([2, 4, 8, 16, 32, 64])


def _slope(values: np.ndarray, depths: np.ndarray = DEPTHS) -> float:
    return float(np.polyfit(np.log(depths), np.log(values), 1)[0])


@pytest.mark.parametrize("alpha", [0.5, 0.75, 1.0])
def test_factors_follow_the_papers_exponents(alpha):
    # CompleteP (Dey et al. 2025) Table 1 for Adam; TP VI / Bordelon et al. 2023 for SGD (gradient carries L^-alpha)
    rule = pz.depth_family(alpha)
    stated = {("branch", "adam"): -alpha, ("lr", "adam"): alpha - 1, ("lr", "sgd"): 2 * alpha - 1,
              ("eps", "adam"): -alpha, ("weight_decay", "adam"): 1 - alpha, ("weight_decay", "sgd"): 1 - 2 * alpha}
    for (field, optimizer), exponent in stated.items():
        values = np.array([getattr(rule.scales(int(d), optimizer), field) for d in DEPTHS])
        assert _slope(values) == pytest.approx(exponent, abs=1e-12)
        assert getattr(rule.scales(1, optimizer), field) == 1.0  # L = 1: the base model's hyperparameters
    # eta * lambda (the decoupled decay per step) is depth-independent
    assert rule.scales(16, "adam").lr * rule.scales(16, "adam").weight_decay == pytest.approx(1.0)
    assert rule.gamma == pytest.approx(1 - alpha)


def test_named_members():
    cp, dm = pz.complete_p(), pz.depth_mup()
    assert (cp.alpha, cp.gamma, cp.name) == (1.0, 0.0, "complete-p")
    assert (dm.alpha, dm.gamma) == (0.5, 0.5) and pz.depth_family(0.5) == dm
    s = cp.scales(8, "adam")
    assert (s.branch, s.lr, s.eps, s.weight_decay) == (0.125, 1.0, 0.125, 1.0)  # Adam lr constant in L at alpha = 1
    assert cp.scales(8, "sgd").lr == 8.0  # SGD: eta L
    s = dm.scales(16, "adam")
    assert (s.branch, s.lr, s.eps, s.weight_decay) == (0.25, 0.25, 0.25, 4.0)
    assert dm.scales(16, "sgd").lr == 1.0  # Depth-muP with SGD: eta constant (Bordelon et al.; TP VI)
    # TP VI's classification is kept: CompleteP is its "redundant" phase, Depth-muP its optimum
    assert cp.classify().phase == "redundant" and dm.classify().phase == "depth-mup"


def test_transformer_depth_counts_layers_not_blocks():
    t = theory.Transformer(3, n_heads=2)
    assert pz.residual_depth(t) == 3  # CompleteP's L: layers (2 residual blocks each), as Transformer's multiplier
    assert t.branch_multiplier == pytest.approx(3**-0.5)
    scales = pz.depth_scales(t, pz.complete_p(), "adam")
    assert len(scales) == len(nn.weight_layers(t.layers))
    assert scales[0] == pz.DepthScales() and scales[-1] == pz.DepthScales()  # embedding, readout
    assert all(s.eps == pytest.approx(1 / 3) and s.lr == 1.0 for s in scales[1:-1])
    assert pz.residual_depth(theory.ResNet(5)) == 5 and pz.residual_depth(theory.MLP(3)) == 0


def test_generic_program_gets_branch_multipliers_and_learning_rates():
    block = nn.Residual(nn.Elementwise("relu"), nn.Dense(b_std=0.1))
    net = theory.serial(nn.Dense(), block, block, block, block, nn.Dense())
    assert pz.residual_depth(net) == 4
    for alpha, optimizer, lr in [(1.0, "sgd", 4.0), (0.5, "adam", 0.5), (0.75, "adam", 4**-0.25)]:
        ruled = pz.parameterize(net, "mup", 32, optimizer=optimizer, depth_rule=pz.depth_family(alpha))
        plain = pz.parameterize(net, "mup", 32, optimizer=optimizer)
        assert [layer.scale for layer in ruled.layers[1:-1]] == pytest.approx([4**-alpha] * 4)
        pairs = list(zip(nn.weight_layers(ruled.layers), nn.weight_layers(plain.layers), strict=True))
        for i, (a, b) in enumerate(pairs):
            factor = lr if 0 < i < len(pairs) - 1 else 1.0
            assert a.weight_scaling.w_lr == pytest.approx(factor * b.weight_scaling.w_lr)
            assert a.weight_scaling.b_lr == pytest.approx(factor * b.weight_scaling.b_lr)
    # a ResNet keeps its own multiplier (depth_exponent), the rule only sets learning rates
    res = theory.ResNet(4, depth_exponent=1.0)
    assert pz.parameterize(res, "mup", 32, depth_rule=pz.complete_p()).layers[1].scale == pytest.approx(0.25)


def test_bad_input():
    with pytest.raises(ValueError, match=r"alpha must be in \[1/2, 1\]"):
        pz.depth_family(0.4)
    with pytest.raises(ValueError, match="alpha must be in"):
        pz.depth_family(1.5)
    with pytest.raises(ValueError, match="finite real exponent"):
        pz.depth_family("one")
    with pytest.raises(ValueError, match="has none"):
        pz.depth_scales(theory.MLP(2), pz.complete_p())
    with pytest.raises(ValueError, match="must be a DepthParameterization"):
        pz.depth_scales(theory.ResNet(2), 0.5)
    with pytest.raises(ValueError, match="positive integer"):
        pz.complete_p().scales(0, "adam")
    with pytest.raises(ValueError, match="unknown optimizer"):
        pz.complete_p().scales(4, "lion")


def _block_grad_rms(alpha: float, depth: int, width: int = 96, seed: int = 0) -> float:
    arch = theory.ResNet(depth, "relu", depth_exponent=alpha)
    net = pz.parameterize(arch, "mup", width, optimizer="adam")
    x = jax.random.normal(jax.random.key(1), (16, 8))
    params = networks.init(net, width, jax.random.key(seed), features=8, n_out=1)
    grads = jax.grad(lambda p: jnp.sum(networks.forward(net, p, x)[0]))(params)
    blocks = [g.W for g in list(grads)[1:-1]]
    return float(np.sqrt(np.mean([np.mean(np.asarray(g) ** 2) for g in blocks])))


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_block_gradients_scale_like_the_epsilon_rule(alpha):
    # Adam's epsilon must follow the gradients of the block weights; the rule says they are ~ L^-alpha. At width 96
    # the alpha = 1/2 stream fluctuates by O(1) between depths (measured g L^1/2 = 0.050, 0.059, 0.071, 0.056 at
    # L = 4, 16, 64, 256), so the slope is fitted over a factor 64 in depth and two seeds, to 0.1.
    depths = np.array([4, 16, 64, 256])
    rms = np.array([np.mean([_block_grad_rms(alpha, int(d), seed=s) for s in range(2)]) for d in depths])
    want = _slope(np.array([pz.depth_family(alpha).eps_scale(int(d)) for d in depths]), depths)
    assert want == pytest.approx(-alpha, abs=1e-12)
    assert _slope(rms, depths) == pytest.approx(want, abs=0.1)


def _one_step_output_change(alpha, rule, optimizer, learning_rate, depths=(8, 16, 32, 64)):
    data = training.teacher(32, 8, seed=0)
    # stem and readout frozen: their own O(1) updates would hide the blocks' depth scaling
    config = training.TrainConfig(optimizer=optimizer, learning_rate=learning_rate, steps=1,
                                  frozen=("input", "output"))
    arch = theory.ResNet(4, "relu", depth_exponent=alpha)
    df = training.coord_check(arch, "mup", widths=(128,), depths=depths, steps=1, seeds=2, data=data,
                              config=config, depth_parameterization=rule)
    df = df.copy()
    df.loc[df.layer == df.depth, "layer_name"] = "last block"
    change = training.fit_slopes(df[df.step == 1], axis="depth", by=("layer_name",))
    size = training.fit_slopes(df[df.step == 0], axis="depth", value="rms", by=("layer_name",))
    return ({name: (slope, se) for name, slope, se in zip(change.layer_name, change.slope, change.slope_se,
                                                          strict=True)},
            {name: (slope, se) for name, slope, se in zip(size.layer_name, size.slope, size.slope_se, strict=True)})


@pytest.mark.slow
@pytest.mark.parametrize("alpha, optimizer, lr, ruled, wrong", [
    (0.5, "adam", 0.01, 0.0, 0.5),    # Depth-muP with Adam: eta / sqrt(L); without it the change grows like L^1/2
    (1.0, "sgd", 0.05, 0.0, -1.0),    # CompleteP with SGD: eta L; without it the change vanishes like 1/L
])
def test_coordinate_check_over_depth(alpha, optimizer, lr, ruled, wrong):
    rule = pz.depth_family(alpha)
    with_rule, init_size = _one_step_output_change(alpha, rule, optimizer, lr)
    without, _ = _one_step_output_change(alpha, None, optimizer, lr)
    for name in ("last block", "output"):  # activations at init: O(1) in L for alpha >= 1/2
        slope, se = init_size[name]
        assert abs(slope) < 3 * se + 0.05, (name, slope, se)
    for name in ("last block", "output"):
        # within 3 standard errors of the fit (seed noise and curvature at width 128, L = 8-64) plus 0.05
        for (slope, se), want in ((with_rule[name], ruled), (without[name], wrong)):
            assert abs(slope - want) < 3 * se + 0.05, (name, slope, se, want)
            assert se < 0.1  # the check resolves the exponent: a wrong rule is off by >= 1/2


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_applies_per_parameter_eps_and_weight_decay(optimizer):
    # one full-batch step by hand: Adam's first update is g / (|g| + eps_w) (bias-corrected moments), SGD's g;
    # then the decoupled decay lambda_w w; all times eta * lr_w. CompleteP at L = 4: block eps / 4, Adam lr 1,
    # SGD lr 4, weight decay 1 (Adam) or 1/4 (SGD).
    data = training.teacher(16, 5, seed=1)
    rule = pz.complete_p()
    config = training.TrainConfig(optimizer=optimizer, learning_rate=0.01, steps=1, adam_eps=1e-2,
                                  weight_decay=0.3)
    r = training.train(theory.ResNet(4, "relu", b_std=0.2, depth_exponent=1.0), "mup", data, 24, config=config,
                       depth_parameterization=rule)
    net = r.network
    p0 = jax.tree.map(jnp.asarray, r.init_params)
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    grads = jax.grad(lambda p: 0.5 * jnp.mean(jnp.sum((networks.forward(net, p, x)[0] - y) ** 2, -1)))(p0)
    scales = pz.depth_scales(net, rule, optimizer)
    for i, (layer, s) in enumerate(zip(nn.weight_layers(net.layers), scales, strict=True)):
        inside = 0 < i < len(scales) - 1
        assert s.eps == (0.25 if inside else 1.0)
        for name, lr in (("W", layer.weight_scaling.w_lr), ("b", layer.weight_scaling.b_lr)):
            g, w0, w1 = (getattr(t[i], name) for t in (grads, p0, r.params))
            if g is None:
                continue
            u = g / (jnp.abs(g) + 1e-2 * s.eps) if optimizer == "adam" else g
            want = w0 - 0.01 * lr * (u + 0.3 * s.weight_decay * w0)
            np.testing.assert_allclose(w1, want, rtol=1e-10, atol=1e-13)
    assert scales[1].weight_decay == (1.0 if optimizer == "adam" else 0.25)


def test_depth_factor_trees():
    rule = pz.complete_p()
    net = pz.parameterize(theory.ResNet(4, b_std=0.1, depth_exponent=1.0), "mup", 8, optimizer="sgd", depth_rule=rule)
    params = networks.init(net, 8, jax.random.key(0), features=3, n_out=1)
    eps, decay = training.depth_factors(net, params, rule, "sgd")
    assert [float(np.max(w.W)) for w in eps] == [1.0, 0.25, 0.25, 0.25, 0.25, 1.0]
    assert [float(np.max(w.b)) for w in list(decay)[1:-1]] == [0.25] * 4  # SGD: 1 / (lr factor L)
    ones, _ = training.depth_factors(net, params, None, "sgd")
    assert all(float(np.min(w.W)) == 1.0 for w in ones)


def test_hand_written_adam_is_optax_adam():
    # the per-parameter-epsilon Adam of the training loop against optax.scale_by_adam (one epsilon per tree)
    keys = jax.random.split(jax.random.key(3), 4)
    params = {"a": jax.random.normal(keys[0], (3, 4)), "b": jax.random.normal(keys[1], (5,))}
    for eps in (1e-8, 0.3):
        mine = training.scale_by_adam_eps(jax.tree.map(lambda p, eps=eps: jnp.full_like(p, eps), params))
        ref = optax.scale_by_adam(eps=eps)
        s1, s2 = mine.init(params), ref.init(params)
        for t in range(3):
            g = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)) * 10.0 ** -t, params)
            u1, s1 = mine.update(g, s1, params)
            u2, s2 = ref.update(g, s2, params)
            for k in params:
                np.testing.assert_allclose(u1[k], u2[k], rtol=1e-12)
    with pytest.raises(ValueError, match="adam_eps must be a finite number >= 0"):
        training.TrainConfig(adam_eps=-1.0)
    with pytest.raises(ValueError, match="weight_decay must be"):
        training.TrainConfig(weight_decay=float("nan"))
