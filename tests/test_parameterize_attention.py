"""``theory.parameterize`` on programs with ``SelfAttention`` (muP for attention, TP V) and untied queries.

Independent sources: neural-tangents' parameterization as the special case (exact equality of the kernels); the
closed form of untied attention at ``1/d_head`` (uniform attention, derived in docs/attention.md) written out in
NumPy here; Monte Carlo of the empirical NTK of finite parameterized networks (gradient descent with each
parameter's learning-rate factor) within standard errors plus the O(1/width) bias.
"""

import dataclasses

import jax
import numpy as np
import pytest

import theory
from experiments import monte_carlo, networks
from theory import layers as nn

X = np.random.default_rng(5).normal(size=(3, 5, 4))


def _with_nt_embedding(net):
    """``net`` with its first layer (the embedding) back in neural-tangents' parameterization: TP IV's input
    layer puts ``1/sqrt(d)`` in the init, so its tangent carries an extra factor ``d`` (a convention, not a
    width effect); with it restored, the NTK parameterization must equal neural-tangents' kernels exactly."""
    layers = list(net.layers)
    layers[0] = dataclasses.replace(layers[0], scaling=None)
    return theory.Serial(tuple(layers), names=net.recorded_names())


@pytest.mark.parametrize("jit", [False, True])
def test_ntk_parameterization_is_neural_tangents(jit):
    # unit stds: abc puts sigma in the init, NT in the multiplier
    net = theory.serial(nn.Dense(), nn.Residual(nn.LayerNorm(), nn.SelfAttention(2, 1.5, b_std=0.0)),
                        nn.GlobalAvgPool(), nn.Dense())
    p = _with_nt_embedding(theory.parameterize(net, "ntk", 64))
    fn = jax.jit(lambda x: theory.kernels(p, x)) if jit else (lambda x: theory.kernels(p, x))
    a, b = theory.kernels(net, X), fn(X)
    np.testing.assert_allclose(b.nngp, a.nngp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.ntk, a.ntk, rtol=1e-12, atol=1e-12)


def test_mup_scalings_of_attention():
    """Query, key, value and output weights are hidden weights; TP V's muP (SGD form of TP IV): init std
    ``sigma / sqrt(fan_in)``, learning rate ``eta`` for hidden weights; Adam: ``eta / n``."""
    net = theory.Transformer(1, n_heads=2, ov_std=1.3, b_std=0.2)
    for optimizer, lr in (("sgd", 1.0), ("adam", 1 / 128)):
        attn = theory.parameterize(net, "mup", 128, optimizer=optimizer).layers[1]
        s = attn.branch[1].weight_scalings
        for ws, sigma in ((s.query, 1.0), (s.key, 1.0), (s.value, 1.0), (s.out, 1.3)):
            m, std, _, _ = ws.multipliers(128)
            assert ws.group == "hidden" and ws.width == 128
            assert m == pytest.approx(1.0) and std == pytest.approx(sigma / np.sqrt(128))
            assert ws.w_lr == pytest.approx(lr)
        assert attn.branch[1].weight_scaling is s.out


def test_untied_attention_is_uniform_in_the_limit():
    """Untied query at ``1/d``: logits ``O(d^-1/2) -> 0``, so softmax attends uniformly and the NNGP of the layer
    is ``v_V v_O mean_{u,v} K_v(u, v)`` at every pair of positions (identity attention: 0); its NTK is
    ``v_V v_O mean Theta_v + (c_V v_O + v_V c_O) mean K_v``. Here after ``Dense(1.2)`` on the raw input
    (``K_v = Theta_v = 1.44 x.x' / C``), a mean over positions and a unit readout."""
    k_in = 1.44 * np.einsum("isc,jtc->ijst", X, X) / X.shape[-1]
    m = k_in.mean(axis=(-2, -1))
    ov2 = 1.69
    for query in ("gaussian", "zero"):
        net = theory.serial(nn.Dense(1.2), nn.SelfAttention(2, qk_std=2.0, ov_std=1.3, query=query),
                            nn.GlobalAvgPool(), nn.Dense())
        k = theory.kernels(net, X)
        np.testing.assert_allclose(k.nngp, ov2 * m, rtol=1e-12)
        np.testing.assert_allclose(k.ntk, ov2 * m + ov2 * (m + 2 * m), rtol=1e-12)
    tied = theory.kernels(theory.serial(nn.Dense(1.2), nn.SelfAttention(2, qk_std=2.0, ov_std=1.3),
                                        nn.GlobalAvgPool(), nn.Dense()), X)
    assert np.abs(tied.nngp - ov2 * m).max() > 0.05 * np.abs(m).max()  # the tied limit is another kernel
    ident = theory.serial(nn.Dense(), nn.SelfAttention(attention="identity", query="zero", b_std=0.3),
                          nn.GlobalAvgPool(), nn.Dense())
    assert np.allclose(theory.kernels(ident, X).nngp, 0.09)  # A = 0: only the bias is left


def test_finite_layer_query_options():
    """Untied queries have their own weights (zeros for "zero"); a zero query gives zero logits, so softmax
    attention outputs the same vector at every position."""
    for query in ("gaussian", "zero"):
        net = theory.serial(nn.Dense(), nn.SelfAttention(2, query=query), nn.GlobalAvgPool(), nn.Dense())
        params = networks.init(net, 8, jax.random.key(0), features=4)
        attn = networks.blocks(net, params, X)[1]
        assert attn.params.query.shape == attn.params.key.shape
        assert np.any(np.asarray(attn.params.query)) == (query == "gaussian")
        out = np.asarray(networks.apply_block(attn.layer, attn.params, attn.inputs))
        same = np.allclose(out, out.mean(axis=1, keepdims=True), atol=1e-12)
        assert same == (query == "zero")


def test_bad_input():
    with pytest.raises(ValueError, match="query must be one of"):
        nn.SelfAttention(query="shared")
    with pytest.raises(ValueError, match="needs linear_scaling=True"):
        nn.SelfAttention(query="tied", linear_scaling=False)
    sqrt = theory.serial(nn.Dense(), nn.SelfAttention(attention="identity", linear_scaling=False),
                         nn.GlobalAvgPool(), nn.Dense())
    with pytest.raises(ValueError, match="1/d_head"):
        theory.parameterize(sqrt, "mup", 64)
    theory.parameterize(sqrt, "ntk", 64)  # a kernel-regime parameterization is fine with 1/sqrt(d)
    fixed = theory.serial(nn.Dense(), nn.SelfAttention(head_channels=4), nn.GlobalAvgPool(), nn.Dense())
    with pytest.raises(ValueError, match="head_channels"):
        theory.parameterize(fixed, "mup", 64)
    raw = theory.serial(nn.SelfAttention(), nn.GlobalAvgPool(), nn.Dense())
    with pytest.raises(ValueError, match="different learning rates"):
        _ = theory.parameterize(raw, "mup", 64, optimizer="adam").layers[0].weight_scaling


# -- Monte Carlo of finite parameterized networks ------------------------------------------------------------------
def _untied_transformer(query):
    s = 1 / np.sqrt(2)
    return theory.serial(
        nn.Dense(), nn.Residual(nn.LayerNorm(), nn.SelfAttention(2, 1.5, b_std=0.1, query=query), scale=s),
        nn.Residual(nn.LayerNorm(), nn.Dense(1.4, 0.1), nn.Elementwise("relu"), nn.Dense(1.4, 0.1), scale=s),
        nn.LayerNorm(), nn.GlobalAvgPool(), nn.Dense())


def _mc(net, width, n_samples, seed=1):
    return monte_carlo.estimate_kernels(net, X, width=width, n_samples=n_samples, key=jax.random.key(seed),
                                        nngp_from="readout_kernel")


def _check(est, limit, width, c):
    """Within 4 SE plus the finite-width bias ``c |k|max / width`` (as tests/test_attention.py's Monte Carlo)."""
    for kernel in ("nngp", "ntk"):
        e, k = getattr(est, kernel), np.asarray(getattr(limit, kernel))
        allowance = c * np.abs(k).max() / width
        assert np.all(np.abs(e.mean - k) <= 4 * e.stderr + allowance), (kernel, e.mean, k, e.stderr, allowance)


@pytest.mark.slow
def test_mup_transformer_ntk_against_finite_networks_quick():
    """One cheap case: muP (Adam) with muP's zero-initialised query, width 64."""
    net = theory.parameterize(_untied_transformer("zero"), "mup", 64, optimizer="adam")
    _check(_mc(net, 64, 12), theory.kernels(net, X), 64, 2 * net.n_recorded)


@pytest.mark.slow
@pytest.mark.parametrize("name,optimizer", [("mup", "sgd"), ("mup", "adam"), ("standard", "sgd")])
@pytest.mark.parametrize("query", ["tied", "gaussian", "zero"])
def test_parameterized_transformer_ntk_against_finite_networks(name, optimizer, query):
    """Width-128 transformers under muP / SP, 48 networks each: NNGP and the NTK of gradient descent with the
    parameterization's per-parameter learning rates. The wrong attention limit (tied logits for an untied network,
    or the reverse) is many SE away: checked for the untied cases."""
    base = theory.Transformer(1, n_heads=2, qk_std=1.5, w_std=1.4, b_std=0.1) if query == "tied" else \
        _untied_transformer(query)
    width = 128
    net = theory.parameterize(base, name, width, optimizer=optimizer)
    est = _mc(net, width, 48)
    limit = theory.kernels(net, X)
    _check(est, limit, width, 2 * net.n_recorded)
    if query != "tied":
        wrong = theory.kernels(theory.parameterize(theory.Transformer(1, n_heads=2, qk_std=1.5, w_std=1.4, b_std=0.1),
                                                   name, width, optimizer=optimizer), X)
        z = np.abs(est.ntk.mean - np.asarray(wrong.ntk)) / est.ntk.stderr
        assert z.max() > 8, z.max()


# -- theory.Transformer's query and layernorm_affine options --------------------------------------------------------
def _explicit_transformer(query, affine):
    """What ``theory.Transformer(1, 2, "relu", 1.4, 0.1, qk_std=1.5, query=query, layernorm_affine=affine)`` must be,
    written out layer by layer (one layer: branch multiplier 1)."""
    ln = nn.LayerNorm(affine=affine)
    return theory.serial(
        nn.Dense(b_std=0.0),
        nn.Residual(ln, nn.SelfAttention(2, 1.5, b_std=0.1, query=query)),
        nn.Residual(ln, nn.Dense(1.4, 0.1), nn.Elementwise("relu"), nn.Dense(1.4, 0.1)),
        ln, nn.GlobalAvgPool(), nn.Dense(b_std=0.0))


@pytest.mark.parametrize("query,affine", [("zero", True), ("tied", True), ("gaussian", False)])
def test_transformer_query_and_affine_layernorm_options(query, affine):
    tf = theory.Transformer(1, n_heads=2, w_std=1.4, b_std=0.1, qk_std=1.5, query=query, layernorm_affine=affine)
    assert tf.query == query and tf.layernorm_affine is affine
    norms = [layer for layer in tf.layers if isinstance(layer, nn.LayerNorm)]
    assert len(norms) == 1 and norms[0].affine is affine  # the final LayerNorm (the blocks' are inside Residuals)
    for name in ("standard", "mup"):
        ours = theory.kernels(theory.parameterize(tf, name, 64, optimizer="adam"), X)
        ref = theory.kernels(theory.parameterize(_explicit_transformer(query, affine), name, 64, optimizer="adam"), X)
        np.testing.assert_allclose(ours.nngp, ref.nngp, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours.ntk, ref.ntk, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="layernorm_affine must be True or False"):
        theory.Transformer(1, layernorm_affine="yes")


@pytest.mark.slow
def test_affine_transformer_ntk_against_finite_networks():
    """theory.Transformer with muP's zero query and learned LayerNorm gains/biases (SP, SGD, width 128, where the
    gain/bias terms are a visible part of the NTK): within SE of 48 finite networks."""
    net = theory.parameterize(theory.Transformer(1, n_heads=2, w_std=1.4, b_std=0.1, qk_std=1.5, query="zero",
                                                 layernorm_affine=True), "standard", 128)
    _check(_mc(net, 128, 48), theory.kernels(net, X), 128, 2 * net.n_recorded)
