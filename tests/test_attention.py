"""theory.layers.SelfAttention and theory.Transformer against neural-tangents, autodiff and finite networks.

Kernels: neural-tangents 0.6.5's ``stax.GlobalSelfAttention`` through the fixtures of
tests/reference/make_nt_attention_fixtures.py (CI regenerates them live), entrywise to 1e-6; the finite layer:
NT's outputs and empirical NTK on NT's own parameters, and the empirical NTK against full autodiff Jacobians;
jit, tiles, per-layer kernels and cross kernels of a transformer; bad input. Slow (``-m slow``): Monte-Carlo means
of width-256 transformers against the infinite-width kernels within their standard errors plus the finite-width
bias.
"""

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import monte_carlo, networks
from theory import layers as nn

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(f for f in DATA.glob("attn_nt_*.npz") if f.stem != "attn_nt_empirical")
RTOL = 1e-6
SEQUENCES = np.random.default_rng(3).normal(size=(5, 6, 3))


def _decay(spec):
    """The fixture's positional covariance as a function of the distance (NumPy; NT's is the same in jnp)."""
    if spec is None:
        return None
    length = spec["length"]
    return {"exp": lambda d: np.exp(-d / length), "power": lambda d: 1.0 / (1.0 + d / length)}[spec["kind"]]


def _attention(spec):
    return nn.SelfAttention(
        spec["n_heads"], qk_std=spec["W_key_std"] * spec["W_query_std"], ov_std=spec["W_value_std"] * spec["W_out_std"],
        b_std=spec["b_std"], linear_scaling=spec["linear_scaling"], attention=spec["attention"].lower(),
        positional=None if spec["positional"] == "NONE" else spec["positional"].lower(), pos_std=spec["pos_std"],
        pos_decay=_decay(spec["pos_decay"]), pos_p_norm=spec["pos_p_norm"], pos_channels=spec["pos_channels"],
        pos_values=spec["pos_values"])


def _layers(specs):
    out = []
    for spec in specs:
        kind = spec["layer"]
        if kind == "Dense":
            out.append(nn.Dense(spec["w_std"], spec["b_std"]))
        elif kind == "SelfAttention":
            out.append(_attention(spec))
        elif kind == "Elementwise":
            out.append(nn.Elementwise(spec["activation"]["name"]))
        elif kind == "LayerNorm":
            out.append(nn.LayerNorm(spec["eps"]))
        elif kind == "GlobalAvgPool":
            out.append(nn.GlobalAvgPool())
        elif kind == "Flatten":
            out.append(nn.Flatten())
        elif kind == "Residual":
            out.append(nn.Residual(*_layers(spec["branch"]), scale=spec["scale"]))
        else:
            raise AssertionError(f"unknown layer {kind!r} in a fixture")
    return out


def _walk(specs):
    for spec in specs:
        yield spec
        if spec["layer"] == "Residual":
            yield from _walk(spec["branch"])


def _close(ours, ref, key):
    """The project's fixture tolerance: |ours - NT| <= RTOL (|NT| + 1e-3 max |NT|), entrywise."""
    ours = np.asarray(ours)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=RTOL * 1e-3 * np.abs(ref).max(), err_msg=key)


# -- neural-tangents' kernels ------------------------------------------------------------------------------------
def test_fixtures_cover_the_options():
    configs = [json.loads(str(np.load(f)["config"])) for f in FIXTURES]
    attns = [s for c in configs for s in _walk(c["layers"]) if s["layer"] == "SelfAttention"]
    assert len(configs) >= 20
    assert {a["n_heads"] for a in attns} >= {1, 2, 4, 8}
    assert {a["attention"] for a in attns} == {"SOFTMAX", "IDENTITY", "ABS", "RELU"}
    assert {(a["linear_scaling"], a["attention"]) for a in attns} >= {(True, "SOFTMAX"), (False, "IDENTITY")}
    assert {a["positional"] for a in attns} == {"NONE", "SUM", "CONCAT"}
    assert {a["pos_decay"]["kind"] for a in attns if a["pos_decay"]} == {"exp", "power"}
    assert any(a["pos_values"] for a in attns) and any(a["pos_channels"] for a in attns)
    assert len({a["W_key_std"] * a["W_query_std"] for a in attns}) >= 5 and any(a["b_std"] > 0 for a in attns)
    assert {c["input_shape"][0] for c in configs if len(c["input_shape"]) == 2} >= {3, 7, 12}
    assert any(len(c["input_shape"]) == 3 for c in configs)  # images
    depths = [sum(s["layer"] == "Residual" for s in c["layers"]) // 2 for c in configs]
    assert len(TRANSFORMERS) == 4
    assert set(depths) >= {1, 2, 3, 4}  # pre-LN transformers


# The default suite checks a few representative cases (each compiles its own program: ~3 s on the shared
# machine); the slow stage checks every fixture.
DEFAULT_CASES = ("softmax_h4_L7_qk2_ov1.5_b0.3", "pos_concat_power_p1_values_L7", "identity_sqrt_L7")


def _fixture_params():
    for f in FIXTURES:
        name = f.stem[len("attn_nt_"):]
        marks = () if name in DEFAULT_CASES else (pytest.mark.slow,)
        yield pytest.param(f, id=name, marks=marks)


@pytest.mark.parametrize("path", list(_fixture_params()))
def test_kernels_equal_neural_tangents(path):
    """NNGP and NTK of x1 against x2 and of x1 with itself, from one call on both sets (x2[1] = x1[2]: an identical
    pair across the sets, which the recursion pins to its own kernel)."""
    data = np.load(path)
    config = json.loads(str(data["config"]))
    net = theory.serial(*_layers(config["layers"]))
    x1, x2 = data["x1"], data["x2"]
    k = theory.kernels(net, np.concatenate([x1, x2]))
    assert k.dtype == np.float64
    n = len(x1)
    for name in ("nngp", "ntk"):
        _close(np.asarray(getattr(k, name))[:n, n:], data[f"{name}_12"], f"{name}_12")
        _close(np.asarray(getattr(k, name))[:n, :n], data[f"{name}_11"], f"{name}_11")


def _as_transformer(config):
    """theory.Transformer with the fixture's layers."""
    layers = config["layers"]
    blocks = [s for s in layers if s["layer"] == "Residual"]
    attn, dense = blocks[0]["branch"][1], blocks[1]["branch"][1]
    depth = len(blocks) // 2
    exponent = 0.0 if blocks[0]["scale"] == 1 or depth == 1 else -np.log(blocks[0]["scale"]) / np.log(depth)
    return theory.Transformer(
        depth, n_heads=attn["n_heads"], activation=blocks[1]["branch"][2]["activation"]["name"], w_std=dense["w_std"],
        b_std=dense["b_std"], qk_std=attn["W_key_std"] * attn["W_query_std"], depth_exponent=round(exponent, 12),
        embed_w_std=layers[0]["w_std"], readout_w_std=layers[-1]["w_std"],
        positional=None if attn["positional"] == "NONE" else attn["positional"].lower(), pos_std=attn["pos_std"])


TRANSFORMERS = [f for f in FIXTURES if f.stem.startswith("attn_nt_transformer_")]


@pytest.mark.parametrize("path", [pytest.param(f, id=f.stem[len("attn_nt_"):], marks=() if "_d2_" in f.stem else
                                               (pytest.mark.slow,)) for f in TRANSFORMERS])
def test_transformer_constructor_equals_neural_tangents(path):
    """theory.Transformer(depth, ...) builds the fixtures' stax transformers (pre-LN blocks, final LayerNorm, mean
    over positions, readout): the same kernels as NT."""
    data = np.load(path)
    net = _as_transformer(json.loads(str(data["config"])))
    x1, x2 = data["x1"], data["x2"]
    k = theory.kernels(net, np.concatenate([x1, x2]))
    n = len(x1)
    for name in ("nngp", "ntk"):
        _close(np.asarray(getattr(k, name))[:n, n:], data[f"{name}_12"], f"{name}_12")
        _close(np.asarray(getattr(k, name))[:n, :n], data[f"{name}_11"], f"{name}_11")


# -- the finite layer ----------------------------------------------------------------------------------------------
def _init(net, width, key, features, n_out):
    return jax.jit(lambda key: networks.init(net, width, key, features=features, n_out=n_out))(key)


_apply = jax.jit(networks.apply, static_argnums=0)
_empirical_ntk = jax.jit(networks.empirical_ntk, static_argnums=0)


@pytest.mark.slow
def test_finite_attention_equals_neural_tangents():
    """NT's finite network (Dense, SelfAttention with two heads, tied query and key weights, summed positional
    embeddings correlated by exp(-d / 2), bias; relu, mean over positions, Dense with two outputs) on NT's own
    parameters: the same outputs, and our per-output empirical NTK equals the diagonal of NT's."""
    data = np.load(DATA / "attn_nt_empirical.npz")
    config = json.loads(str(data["config"]))
    net = theory.serial(*_layers(config["layers"]))
    x1, x2 = data["x1"], data["x2"]
    params = _init(net, config["width"], jax.random.key(0), x1.shape[1:], config["n_out"])
    fixture = []  # our leaves: Dense W, b; attention key, value, out, b, pos; readout W, b
    for i, spec in enumerate(config["layers"]):
        names = {"Dense": "Wb", "SelfAttention": "KVObE"}.get(spec["layer"], "")
        fixture += [data[f"{n}_{i}"] for n in names if f"{n}_{i}" in data]
    leaves, treedef = jax.tree.flatten(params)
    assert [leaf.shape for leaf in leaves] == [a.shape for a in fixture]
    params = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in fixture])
    np.testing.assert_allclose(_apply(net, params, x1), data["outputs_1"], rtol=1e-10)
    ours = _empirical_ntk(net, params, x1, x2)
    want = np.einsum("ijkk->kij", data["ntk_12"])
    np.testing.assert_allclose(ours, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


@partial(jax.jit, static_argnums=0)
def _jacobian_ntk(net, params, x1, x2):
    def jac(x):
        return jax.tree.leaves(jax.jacobian(lambda p: networks.apply(net, p, x))(params))

    return sum(jnp.einsum("ika,jka->kij", a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1))
               for a, b in zip(jac(x1), jac(x2), strict=True))


@pytest.mark.slow
def test_empirical_ntk_equals_autodiff():
    """The layer-wise empirical NTK (per-example VJPs for attention) equals the contraction of full Jacobians for a
    transformer of two layers (a run of identical blocks: stacked parameters) with attention at 1/sqrt(d_k) and
    independent query weights, concatenated embeddings also on the values."""
    attn = nn.SelfAttention(2, qk_std=1.3, ov_std=0.9, b_std=0.1, linear_scaling=False, positional="concat",
                            pos_values=True)
    block = (nn.Residual(nn.LayerNorm(), attn, scale=0.7),
             nn.Residual(nn.LayerNorm(), nn.Dense(1.2, 0.1), nn.Elementwise("erf"), nn.Dense(), scale=0.7))
    net = theory.serial(nn.Dense(), *block, *block, nn.GlobalAvgPool(), nn.Dense(b_std=0.2))
    x = SEQUENCES
    params = _init(net, 4, jax.random.key(1), x.shape[1:], 2)
    ours, ref = _empirical_ntk(net, params, x[:3], x[3:]), _jacobian_ntk(net, params, x[:3], x[3:])
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    assert len(networks.apply(net, params, x, per_layer=True)[1]) == net.n_recorded == 6


# -- the kernel program: jit, tiles, per-layer, cross kernels ----------------------------------------------------------
@pytest.mark.slow
def test_transformer_kernels_under_jit_tiles_and_per_layer():
    net = theory.Transformer(2, n_heads=2, qk_std=1.5, b_std=0.1, positional="sum", pos_std=0.8)
    x = SEQUENCES
    k = theory.kernels(net, x)
    assert k.dtype == np.float64 and k.nngp.shape == (5, 5)
    np.testing.assert_allclose(k.nngp, k.nngp.T, rtol=0, atol=0)
    jitted = jax.jit(lambda x, qk: theory.kernels(theory.Transformer(2, n_heads=2, qk_std=qk, b_std=0.1,
                                                                     positional="sum", pos_std=0.8), x))(x, 1.5)
    tiled = theory.kernels(net, x, memory_budget=1)  # one pair per tile
    cross = theory.kernels(net, x[:2], x[2:])
    layers = theory.kernels(net, x, per_layer=True)
    assert layers.nngp.shape == (net.n_recorded, 5, 5) == (6, 5, 5)
    for name in ("nngp", "ntk"):
        want = np.asarray(getattr(k, name))
        np.testing.assert_allclose(getattr(jitted, name), want, rtol=1e-12)
        np.testing.assert_allclose(getattr(tiled, name), want, rtol=1e-12)
        np.testing.assert_allclose(getattr(cross, name), want[:2, 2:], rtol=1e-12)
        np.testing.assert_allclose(getattr(layers, name)[-1], want, rtol=1e-12)
    # the NTK of a transformer exceeds its NNGP (every layer's parameters add a positive term)
    assert np.all(np.diag(k.ntk) > np.diag(k.nngp))
    single = theory.kernels(net, x.astype(np.float32))  # float32: within 1e-5 of float64 (measured 2e-7)
    assert single.dtype == np.float32
    for name in ("nngp", "ntk"):
        want = np.asarray(getattr(k, name))
        np.testing.assert_allclose(getattr(single, name), want, rtol=0, atol=1e-5 * np.abs(want).max())


# -- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="attention must be one of"):
        nn.SelfAttention(attention="tanh")
    with pytest.raises(ValueError, match="n_heads must be a positive integer"):
        nn.SelfAttention(0)
    with pytest.raises(ValueError, match="positional must be"):
        nn.SelfAttention(positional="rope")
    with pytest.raises(ValueError, match="needs positional='concat'"):
        nn.SelfAttention(positional="sum", pos_channels=3)
    with pytest.raises(ValueError, match="qk_std must be finite"):
        nn.SelfAttention(qk_std=float("nan"))
    vectors = theory.serial(nn.Dense(), nn.SelfAttention(), nn.Dense())
    with pytest.raises(ValueError, match="attends over positions"):
        theory.kernels(vectors, np.ones((2, 3)))
    standard = theory.serial(nn.Dense(), nn.SelfAttention(linear_scaling=False), nn.GlobalAvgPool(), nn.Dense())
    with pytest.raises(ValueError, match="no known closed-form kernel"):
        theory.kernels(standard, SEQUENCES)
    hidden = theory.serial(nn.Dense(), nn.SelfAttention(positional="concat", pos_channels=2), nn.GlobalAvgPool(),
                           nn.Dense())
    with pytest.raises(ValueError, match="pos_channels=2 is a fixed number"):
        theory.kernels(hidden, SEQUENCES)
    net = theory.Transformer(1, n_heads=3)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        networks.init(net, 8, jax.random.key(0), features=3)
    with pytest.raises(ValueError, match="positional embeddings"):
        networks.init(theory.Transformer(1, positional="sum"), 8, jax.random.key(0), features=3)
    with pytest.raises(ValueError, match="no abc-parameterization rule"):
        theory.parameterize(theory.Transformer(1, positional="sum"), "mup", width=8)


# -- Monte Carlo ---------------------------------------------------------------------------------------------------
MONTE_CARLO = {  # name: (program, inputs, networks)
    "transformer-softmax": (theory.Transformer(2, n_heads=2, qk_std=1.5, w_std=1.4, b_std=0.1), SEQUENCES[:4], 128),
    "attention-pos-concat": (theory.serial(nn.Dense(1.2), nn.SelfAttention(2, qk_std=2.0, b_std=0.2,
                                                                           positional="concat"),
                                           nn.Elementwise("relu"), nn.Dense(), nn.GlobalAvgPool(), nn.Dense()),
                             SEQUENCES[:4], 128),
    # identity attention at 1/sqrt(d_k): random logits, so each network's kernel fluctuates by O(n_heads^-1/2)
    "identity-sqrt": (theory.serial(nn.Dense(), nn.SelfAttention(16, qk_std=0.8, linear_scaling=False,
                                                                 attention="identity"),
                                    nn.GlobalAvgPool(), nn.Dense()), SEQUENCES[:4], 128),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MONTE_CARLO))
def test_finite_networks_agree_with_the_infinite_width_kernels(name):
    """Mean NNGP (from the readout kernel) and NTK of width-256 networks against theory.kernels.

    Tolerance: 4 standard errors of the mean plus the finite-width bias ``c |k|max / width``, ``c = 2`` per recorded
    layer as tests/test_cnn_finite.py. Attention adds an O(1 / d_k) bias (its logits fluctuate by O(d_k^-1/2)
    around their limit); measured with 256-512 networks at widths 32-128 (heads of 16-64 channels) the largest bias
    is ~2.6 |k|max / width (docs/attention.md), within ``c`` for these programs of 4 and 6 recorded layers, while
    a wrong map (a missing value/output term of the NTK, a wrong softmax argument) is off by tens of percent.
    """
    net, x, n_samples = MONTE_CARLO[name]
    width = 256
    est = monte_carlo.estimate_kernels(net, x, width=width, n_samples=n_samples, key=jax.random.key(11), n_out=2,
                                       nngp_from="readout_kernel", memory_budget=1)
    limit = theory.kernels(net, x)
    c = 2 * net.n_recorded
    for kernel in ("nngp", "ntk"):
        e, k = getattr(est, kernel), np.asarray(getattr(limit, kernel))
        allowance = c * np.abs(k).max() / width
        assert np.all(np.abs(e.mean - k) <= 4 * e.stderr + allowance), (kernel, e.mean, k, e.stderr, allowance)
        assert np.all(e.stderr <= 0.05 * np.abs(k).max()), (kernel, e.stderr)
