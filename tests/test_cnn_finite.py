"""Finite layer programs (experiments.networks): CNNs against neural-tangents and against theory.kernels.

Fast: one finite CNN's outputs and empirical NTK equal neural-tangents' on the same parameters
(tests/data/nt_empirical_cnn.npz); the layer-wise empirical NTK equals the contraction of autodiff Jacobians for
programs with every kind of layer; monte_carlo.estimate_kernels runs on layer programs. Slow (``-m slow``):
Monte-Carlo means over width-256 CNNs and LayerNorm networks agree with the infinite-width kernels within their
standard errors plus the O(1/width) bias.
"""

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_reference_fixtures import program_layers  # tests/ is on sys.path (pytest's rootdir-relative imports)

import theory
from experiments import monte_carlo, networks
from theory import layers as nn

DATA = Path(__file__).parent / "data"
RNG = np.random.default_rng(7)
IMAGES = RNG.normal(size=(4, 5, 4, 2))  # (N, H, W, C)
SEQUENCES = RNG.normal(size=(4, 7, 2))  # (N, length, C)
VECTORS = RNG.normal(size=(4, 6))


def relu():
    return nn.Elementwise("relu")


def erf():
    return nn.Elementwise("erf")


# Finite networks under jit: one compilation instead of hundreds of eagerly dispatched (and compiled) primitives.
def _init(net, width, key, features, n_out):
    return jax.jit(lambda key: networks.init(net, width, key, features=features, n_out=n_out))(key)


_apply = jax.jit(networks.apply, static_argnums=0)
_empirical_ntk = jax.jit(networks.empirical_ntk, static_argnums=0)


# -- neural-tangents' empirical NTK ------------------------------------------------------------------------------
def test_empirical_ntk_equals_neural_tangents():
    """The fixture's CNN (Conv, relu, strided VALID Conv, Residual(relu, Conv), relu, GlobalAvgPool, Dense with 2
    outputs; width 6) with neural-tangents' own parameters: same outputs, and our per-output NTK equals the
    diagonal (k = k') of NT's full (N1, N2, n_out, n_out) empirical NTK."""
    data = np.load(DATA / "nt_empirical_cnn.npz")
    config = json.loads(str(data["config"]))
    net = theory.serial(*program_layers(config["layers"], config))
    x1, x2 = data["x1"], data["x2"]
    params = _init(net, config["width"], jax.random.key(0), x1.shape[1:], config["n_out"])
    n_layers = int(data["n_weight_layers"])
    assert len(params) == n_layers == len(nn.weight_layers(net.layers))
    # Leaves of NetworkParams: weight layers in program order (residual branches where they sit), W then b.
    fixture = []
    for i in range(n_layers):
        fixture.append(data[f"W_{i}"])
        if f"b_{i}" in data:
            fixture.append(data[f"b_{i}"])
    leaves, treedef = jax.tree.flatten(params)
    assert [leaf.shape for leaf in leaves] == [a.shape for a in fixture]
    params = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in fixture])
    for i in range(n_layers):  # and indexing params[i] finds weight layer i
        np.testing.assert_array_equal(params[i].W, data[f"W_{i}"])
        assert (params[i].b is None) == (f"b_{i}" not in data)

    np.testing.assert_allclose(_apply(net, params, x1), data["outputs_1"], rtol=1e-10)
    for ours, key in ((_empirical_ntk(net, params, x1, x2), "ntk_12"), (_empirical_ntk(net, params, x1), "ntk_11")):
        want = np.einsum("ijkk->kij", data[key])  # (N1, N2, n_out, n_out) -> (n_out, N1, N2)
        assert ours.shape == want.shape
        np.testing.assert_allclose(ours, want, rtol=1e-9, atol=1e-12 * np.abs(want).max(), err_msg=key)


# -- the layer-wise empirical NTK against autodiff -----------------------------------------------------------------
@partial(jax.jit, static_argnums=0)
def _jacobian_ntk(net, params, x1, x2):
    """sum over every parameter of <dF_k(x1)/dp, dF_k(x2)/dp>, from full autodiff Jacobians: (n_out, N1, N2)."""
    def jac(x):
        return jax.tree.leaves(jax.jacobian(lambda p: networks.apply(net, p, x))(params))

    return sum(jnp.einsum("ika,jka->kij", a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1))
               for a, b in zip(jac(x1), jac(x2), strict=True))


WIDTH = 5
JACOBIAN_PROGRAMS = {
    # circular strided conv, SAME average pooling, VALID conv, LayerNorm, Flatten readout with a bias
    "cnn2d": (theory.serial(nn.Conv((3, 2), strides=(2, 1), padding="CIRCULAR", w_std=1.4, b_std=0.1),
                            nn.AvgPool((2, 2), padding="SAME"), relu(), nn.Conv((2, 2), padding="VALID", w_std=1.3),
                            nn.LayerNorm(), erf(), nn.Flatten(), nn.Dense(w_std=1.1, b_std=0.2)), IMAGES),
    # a run of three identical units (one lax.scan of stacked parameters), a pre-LN residual block, a Conv in
    # the standard parameterization (its 1/sqrt(fan_in) in the initialisation), GlobalAvgPool
    "cnn1d": (theory.serial(nn.Conv((3,), w_std=1.2),
                            *[layer for _ in range(3) for layer in (relu(), nn.Conv((3,), w_std=1.4, b_std=0.1))],
                            nn.Residual(nn.LayerNorm(), relu(), nn.Conv((3,), w_std=1.4, b_std=0.1,
                                                                       scaling=nn.WeightScaling.standard(1.4, 0.1,
                                                                                                         WIDTH)),
                                        scale=0.6),
                            relu(), nn.GlobalAvgPool(), nn.Dense(b_std=0.1)), SEQUENCES),
}


@pytest.mark.parametrize("name", list(JACOBIAN_PROGRAMS))
def test_empirical_ntk_equals_the_jacobian_contraction(name):
    """networks.empirical_ntk uses the layer-wise identity (patch Gram matrices times output-gradient Gram
    matrices); it must equal the brute-force sum over parameters of products of Jacobians."""
    net, x = JACOBIAN_PROGRAMS[name]
    x1, x2 = x[:3], x[3:]
    params = _init(net, WIDTH, jax.random.key(3), x.shape[1:], 2)
    if name == "cnn1d":
        assert params.counts[1] == 3  # the run is stacked
    want = np.asarray(_jacobian_ntk(net, params, x, x))  # (2, 4, 4)
    atol = 1e-12 * np.abs(want).max()
    cross = _empirical_ntk(net, params, x1, x2)
    assert cross.shape == (2, 3, 1)
    np.testing.assert_allclose(cross, want[:, :3, 3:], rtol=1e-10, atol=atol)
    same = _empirical_ntk(net, params, x)  # x2 = None: the kernel of one set
    np.testing.assert_allclose(same, want, rtol=1e-10, atol=atol)


# -- init: features -------------------------------------------------------------------------------------------------
def test_features_as_channels_or_as_the_input_shape_give_the_same_network():
    """Without a Flatten, spatial sizes do not enter the parameters: features=C and features=(H, W, C) sample the
    same network from the same key."""
    net = theory.serial(nn.Conv((3, 3), w_std=1.4, b_std=0.1), relu(), nn.AvgPool((2, 2)), nn.Conv((3, 3)), relu(),
                        nn.GlobalAvgPool(), nn.Dense())
    by_channels = networks.init(net, 4, jax.random.key(1), features=2)
    by_shape = networks.init(net, 4, jax.random.key(1), features=(5, 4, 2))
    for a, b in zip(jax.tree.leaves(by_channels), jax.tree.leaves(by_shape), strict=True):
        np.testing.assert_array_equal(a, b)
    flat = theory.serial(nn.Conv((3, 3)), relu(), nn.Flatten(), nn.Dense())
    with pytest.raises(ValueError, match=r"pass features=\(height, width, channels\)"):
        networks.init(flat, 4, jax.random.key(1), features=2)


def test_features_as_channels_for_a_program_without_windows():
    net = theory.serial(nn.Dense(w_std=1.4, b_std=0.1), relu(), nn.GlobalAvgPool(), nn.Dense())
    by_shape = networks.init(net, 4, jax.random.key(1), features=(5, 4, 2))
    by_channels = networks.init(net, 4, jax.random.key(1), features=2)
    np.testing.assert_array_equal(networks.apply(net, by_channels, IMAGES), networks.apply(net, by_shape, IMAGES))


def test_finite_network_with_a_run_of_parameter_free_layers():
    twice = theory.serial(nn.Conv((3, 3), w_std=1.4), nn.Identity(), nn.Identity(), relu(), nn.GlobalAvgPool(),
                          nn.Dense())
    once = theory.serial(nn.Conv((3, 3), w_std=1.4), nn.Identity(), relu(), nn.GlobalAvgPool(), nn.Dense())
    params = networks.init(twice, 4, jax.random.key(2), features=2)
    reference = networks.init(once, 4, jax.random.key(2), features=2)
    np.testing.assert_allclose(networks.apply(twice, params, IMAGES), networks.apply(once, reference, IMAGES))


# -- Monte Carlo ------------------------------------------------------------------------------------------------------
# memory_budget=1 evaluates one network per compiled call: on CPU, convolutions vmapped over networks (the default
# chunks) are ~20x slower (16.6 s against 0.9 s for 32 width-256 CNNs on 2 cores, after compilation). The results do
# not depend on the chunking (network i is drawn from jax.random.split(key, n_samples)[i]; checked below).
def _check_estimate(est, n_samples, width, shape):
    assert est.width == width and est.n_samples == n_samples and est.dtype == np.float64
    for e in (est.nngp, est.ntk):
        assert e.mean.shape == e.stderr.shape == shape
        assert e.mean.dtype == e.stderr.dtype == np.float64
        assert np.all(np.isfinite(e.mean)) and np.all(np.isfinite(e.stderr)) and np.all(e.stderr > 0)


@pytest.mark.parametrize("inputs", [pytest.param("images", marks=pytest.mark.slow), "vectors"])
def test_estimate_kernels_of_layer_programs(inputs):
    """Width 64, a few networks, on a CNN with LayerNorm and pooling (images; also a cross kernel) and a LayerNorm
    MLP (vectors): shapes, dtypes, finite values; the same numbers whatever the chunking."""
    if inputs == "images":
        net = theory.serial(nn.Conv((3, 3), w_std=1.4, b_std=0.1), nn.LayerNorm(), relu(), nn.Conv((3, 3), w_std=1.4),
                            nn.AvgPool((2, 2)), relu(), nn.GlobalAvgPool(), nn.Dense(b_std=0.1))
        x = IMAGES
    else:
        net, x = theory.serial(nn.Dense(w_std=1.3), nn.LayerNorm(), relu(), nn.Dense()), VECTORS
    args = {"width": 64, "n_samples": 4, "key": jax.random.key(0), "n_out": 2, "nngp_from": "readout_kernel"}
    est = monte_carlo.estimate_kernels(net, x, memory_budget=1, **args)
    _check_estimate(est, 4, 64, (4, 4))
    assert np.all(np.diag(est.nngp.mean) > 0) and np.all(np.diag(est.ntk.mean) > 0)
    vmapped = monte_carlo.estimate_kernels(net, x, **args)  # all 4 networks in one vmapped chunk
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(vmapped, name).mean, getattr(est, name).mean, rtol=1e-12)
        np.testing.assert_allclose(getattr(vmapped, name).stderr, getattr(est, name).stderr, rtol=1e-9)
    if inputs == "images":
        cross = monte_carlo.estimate_kernels(net, x[:3], x[3:], memory_budget=1, **args)
        _check_estimate(cross, 4, 64, (3, 1))
        np.testing.assert_allclose(cross.ntk.mean, est.ntk.mean[:3, 3:], rtol=1e-12)
        np.testing.assert_allclose(cross.nngp.mean, est.nngp.mean[:3, 3:], rtol=1e-12)


MONTE_CARLO = {
    "cnn2d-same-relu-gap": (theory.serial(nn.Conv((3, 3), w_std=1.4, b_std=0.1), relu(), nn.Conv((3, 3), w_std=1.4),
                                          relu(), nn.GlobalAvgPool(), nn.Dense(b_std=0.1)), IMAGES),
    "cnn1d-strided-avgpool-flatten": (theory.serial(nn.Conv((3,), w_std=1.4, b_std=0.1), relu(),
                                                    nn.Conv((3,), strides=(2,), w_std=1.4), nn.AvgPool((2,)), erf(),
                                                    nn.Flatten(), nn.Dense(b_std=0.1)), SEQUENCES),
    "mlp-layernorm": (theory.serial(nn.Dense(w_std=1.3), nn.LayerNorm(), relu(), nn.Dense(w_std=1.4, b_std=0.2),
                                    nn.LayerNorm(), erf(), nn.Dense(b_std=0.1)), VECTORS),
    "cnn-layernorm": (theory.serial(nn.Conv((3, 3), w_std=1.3, b_std=0.1), nn.LayerNorm(), relu(),
                                    nn.Conv((3, 3), w_std=1.4), nn.LayerNorm(), relu(), nn.GlobalAvgPool(),
                                    nn.Dense()), IMAGES),
    "rescnn-preln": (theory.serial(nn.Conv((3, 3), w_std=1.3),
                                   *[nn.Residual(nn.LayerNorm(), relu(), nn.Conv((3, 3), w_std=1.4, b_std=0.1),
                                                 scale=0.7) for _ in range(2)],
                                   nn.LayerNorm(), relu(), nn.GlobalAvgPool(), nn.Dense()), IMAGES),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MONTE_CARLO))
def test_finite_networks_agree_with_the_infinite_width_kernels(name):
    """Mean NNGP (from the readout kernel) and NTK of 128 networks of width 256 against theory.kernels.

    Tolerance: 4 standard errors of the mean plus the finite-width bias. The mean kernel of width-n networks is
    the limit plus O(1/n) (Yaida 2020; Hanin & Nica 2020; for LayerNorm the channel mean and variance it divides
    by are themselves estimated from n channels, again an O(1/n) effect), one such correction per recorded layer
    (Dense, Conv, Residual): allowance c |k|max / n with c = 2 per recorded layer, as tests/test_monte_carlo.py.
    Measured with 2000 networks at width 256 the largest bias among these programs is ~1.8 |k|max / n (the NTK
    diagonal of the LayerNorm MLP), so c = 2 x (3 to 4 layers) leaves room, while a wrong kernel map (a missing
    factor, a wrong variance in an activation or LayerNorm) shows up as a relative error of order 1, far outside.
    """
    net, x = MONTE_CARLO[name]
    width, n_samples = 256, 128
    est = monte_carlo.estimate_kernels(net, x, width=width, n_samples=n_samples, key=jax.random.key(11), n_out=2,
                                       nngp_from="readout_kernel", memory_budget=1)
    limit = theory.kernels(net, x)
    c = 2 * net.n_recorded
    for kernel in ("nngp", "ntk"):
        e, k = getattr(est, kernel), np.asarray(getattr(limit, kernel))
        allowance = c * np.abs(k).max() / width
        assert np.all(np.abs(e.mean - k) <= 4 * e.stderr + allowance), (kernel, e.mean, k, e.stderr, allowance)
        # the test has power: the standard errors are small against the kernel
        assert np.all(e.stderr <= 0.02 * np.abs(k).max()), (kernel, e.stderr)
