"""``LayerNorm(affine=True)``: a learned gain and bias. Kernel against its closed form, the finite network's empirical
NTK against full autodiff Jacobians, Monte Carlo of finite networks (slow), the abc and depth rules of its
parameters (TP V Table 3: vector-like; CompleteP: the blocks' depth factors)."""

import jax
import jax.flatten_util
import numpy as np
import pytest

import theory
from experiments import monte_carlo, networks
from theory import layers as nn
from theory import parameterizations as pz

V = np.random.default_rng(7).normal(size=(3, 4))
X = np.random.default_rng(5).normal(size=(3, 5, 4))


def test_kernel_closed_form():
    """Dense(1) on vectors then LN: ``q = Theta = x.x'/d``, ``hat q = q / sqrt(q q')``. LN with ``v_g = (m_g g_0)^2``,
    ``c_g = lr_g m_g^2``, ``c_b = lr_b m_b^2``, then a unit readout: NNGP ``v_g hat q``, NTK ``v_g hat q + v_g hat q
    + c_g hat q + c_b``."""
    q = V @ V.T / V.shape[1]
    d = np.sqrt(np.diag(q))
    qh = q / np.outer(d, d)
    for scaling, (v_g, c_g, c_b) in ((None, (1.0, 1.0, 1.0)),
                                     (nn.WeightScaling(2.0, 0.5, 3.0, 1.5, 0.0, 0.5), (1.0, 12.0, 1.125)),
                                     (nn.WeightScaling(1.0, 2.0, 1.0, 1.0, 0.0, 0.0), (4.0, 1.0, 0.0))):
        net = theory.serial(nn.Dense(), nn.LayerNorm(affine=True, scaling=scaling), nn.Dense())
        k = theory.kernels(net, V)
        if scaling is not None:  # jitted, with the scaling's numbers as traced leaves
            np.testing.assert_allclose(jax.jit(lambda n: theory.kernels(n, V))(net).ntk, k.ntk, rtol=1e-12)
        np.testing.assert_allclose(k.nngp, v_g * qh, rtol=1e-9)
        np.testing.assert_allclose(k.ntk, 2 * v_g * qh + c_g * qh + c_b, rtol=1e-9)
    plain = theory.kernels(theory.serial(nn.Dense(), nn.LayerNorm(), nn.Dense()), V)
    np.testing.assert_allclose(plain.ntk, 2 * qh, rtol=1e-9)  # default off: neural-tangents' LayerNorm


@pytest.mark.slow
def test_empirical_ntk_equals_autodiff():
    """The layer-wise empirical NTK (affine LayerNorms in and out of residual blocks, learning-rate factors 1)
    against ``J J^T`` of the full Jacobian in all parameters."""
    net = theory.serial(nn.Dense(), nn.Residual(nn.LayerNorm(affine=True), nn.Dense(1.3), nn.Elementwise("tanh"),
                                                nn.Dense(), scale=0.7), nn.LayerNorm(affine=True), nn.Dense())
    params = networks.init(net, 8, jax.random.key(0), features=4)
    # move the gain and bias away from their init, so that both enter the Jacobian non-trivially
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape, a.dtype), params)
    flat, unravel = jax.flatten_util.ravel_pytree(params.segments)

    def f(v):
        return networks.apply(net, networks.NetworkParams(unravel(v), params.counts, params.index), V)[:, 0]

    jac = jax.jit(jax.jacrev(f))(flat)
    np.testing.assert_allclose(networks.empirical_ntk(net, params, V)[0], jac @ jac.T, rtol=1e-10, atol=1e-12)


def test_parameterize_and_depth_rules():
    """Gain and bias take the biases' exponents (vector-like, TP V Table 3): SGD muP ``m = n^{1/2}``, ``g_0 =
    n^{-1/2}`` (so ``m g_0 = 1``), learning rate 1; Adam all 1. Inside the blocks a depth rule multiplies their
    learning rate like the weights' (CompleteP's reference code: LayerNorm parameters ``lr * L^(alpha - 1)``);
    the final LayerNorm, outside the blocks, gets none."""
    block = nn.Residual(nn.LayerNorm(affine=True), nn.Dense(), nn.Elementwise("relu"), nn.Dense())
    net = theory.serial(nn.Dense(), block, block, block, block, nn.LayerNorm(affine=True), nn.GlobalAvgPool(),
                        nn.Dense())
    p = theory.parameterize(net, "mup", 64, optimizer="sgd")
    ln = p.layers[1].branch[0].weight_scaling
    assert (ln.w_multiplier, ln.w_init, ln.w_lr, ln.b_lr) == pytest.approx((8.0, 1 / 8, 1.0, 1.0))
    for rule, optimizer, lr in ((pz.complete_p(), "adam", 1.0), (pz.depth_mup(), "adam", 0.5),
                                (pz.complete_p(), "sgd", 4.0)):
        p = theory.parameterize(net, "mup", 64, optimizer=optimizer, depth_rule=rule)
        inner, final = p.layers[1].branch[0].weight_scaling, p.layers[5].weight_scaling
        base = 64.0 if optimizer == "sgd" else 1.0  # m^2 lr: the vector-like parameters' effective rate
        assert inner.w_lr * inner.w_multiplier**2 == pytest.approx(lr * base)
        assert final.w_lr * final.w_multiplier**2 == pytest.approx(base)
        scales = pz.depth_scales(net, rule, optimizer)
        layers = nn.weight_layers(net.layers)
        for layer, sc in zip(layers, scales, strict=True):
            if layer is net.layers[5]:
                assert sc == pz.DepthScales()
        ln_scales = [sc for layer, sc in zip(layers, scales, strict=True)
                     if isinstance(layer, nn.LayerNorm) and layer is not net.layers[5]]
        assert len(ln_scales) == 4 and all(sc.eps == pytest.approx(4.0**-rule.alpha) for sc in ln_scales)


def test_bad_input():
    with pytest.raises(ValueError, match="affine must be True or False"):
        nn.LayerNorm(affine=1)
    with pytest.raises(ValueError, match="pass affine=True"):
        nn.LayerNorm(scaling=nn.WeightScaling(1, 1, 1, 1, 0, 1))
    with pytest.raises(ValueError, match="not independent of the skip path"):
        theory.kernels(theory.serial(nn.Dense(), nn.Residual(nn.LayerNorm(affine=True), nn.Elementwise("relu")),
                                     nn.Dense()), V)


# -- Monte Carlo ---------------------------------------------------------------------------------------------------
def _transformer(affine=True):
    s = 1 / np.sqrt(2)
    return theory.serial(
        nn.Dense(), nn.Residual(nn.LayerNorm(affine=affine), nn.SelfAttention(2, 1.5, b_std=0.1), scale=s),
        nn.Residual(nn.LayerNorm(affine=affine), nn.Dense(1.4, 0.1), nn.Elementwise("relu"), nn.Dense(1.4, 0.1),
                    scale=s),
        nn.LayerNorm(affine=affine), nn.GlobalAvgPool(), nn.Dense())


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", [None, ("mup", "adam"), ("mup", "sgd")])
def test_finite_networks_agree_with_the_kernel(parameterization):
    """Width-256 pre-LN transformers with affine LayerNorms, 32 networks: NNGP and NTK within 4 SE plus
    ``2 n_recorded |k|max / width`` (tests/test_attention.py's allowance). Without the gain's and bias' terms the
    kernel is off by tens of SE (measured 38 SE for the NT-parameterized case)."""
    width = 256
    net, plain = _transformer(), _transformer(False)
    if parameterization is not None:
        name, optimizer = parameterization
        net = theory.parameterize(net, name, width, optimizer=optimizer)
        plain = theory.parameterize(plain, name, width, optimizer=optimizer)
    est = monte_carlo.estimate_kernels(net, X, width=width, n_samples=32, key=jax.random.key(1),
                                       nngp_from="readout_kernel")
    limit = theory.kernels(net, X)
    c = 2 * net.n_recorded
    for kernel in ("nngp", "ntk"):
        e, k = getattr(est, kernel), np.asarray(getattr(limit, kernel))
        assert np.all(np.abs(e.mean - k) <= 4 * e.stderr + c * np.abs(k).max() / width), (kernel, e.mean, k)
    if parameterization != ("mup", "adam"):
        # muP with Adam: the readout's v = 1/n scales every lower tangent (LayerNorm's included) by 1/n against
        # the readout's own O(1) term, so the gain and bias move the NTK by ~1% at width 256 (1.5 SE): no contrast
        wrong = np.asarray(theory.kernels(plain, X).ntk)
        assert np.max(np.abs(est.ntk.mean - wrong) / est.ntk.stderr) > 8
