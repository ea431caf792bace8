"""Finite networks: the layer-wise empirical NTK equals the full Jacobian contraction, weight
ensembles have the documented law, and bad input is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import networks

X1 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)))
X2 = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3)))
ARCHS = [
    theory.MLP(3, "tanh", 1.3, 0.2),
    theory.MLP(2, "relu", 1.3, 0.2, weight_scaling="standard", width=7),
    theory.MLP(0, "erf", 1.0, 0.5),
    theory.ResNet(4, "tanh", 1.2, 0.3, readout="linear"),
    theory.ResNet(3, "erf", 1.2, 0.3, weight_scaling="standard", width=7),
    theory.ResNet(2, "relu", 1.4, 0.0, branch_scale=0.0),
]


def _jacobian_ntk(arch, params, x1, x2):
    def outputs(p, x):
        return networks.apply(arch, p, x)

    j1 = jax.tree.leaves(jax.jacobian(outputs)(params, x1))
    j2 = jax.tree.leaves(jax.jacobian(outputs)(params, x2))
    return sum(
        jnp.einsum("ika,jka->kij", a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1))
        for a, b in zip(j1, j2, strict=True)
    )


@pytest.mark.parametrize("arch", [pytest.param(ARCHS[0], marks=pytest.mark.slow), *ARCHS[1:]],  # tanh: ~20 s
                         ids=lambda a: repr(a)[:40])
@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_layerwise_ntk_equals_jacobian_contraction(arch, weights):
    params = networks.init(arch, 7, jax.random.key(0), weights, features=3, n_out=2)
    ours = networks.empirical_ntk(arch, params, X1, X2)
    reference = _jacobian_ntk(arch, params, X1, X2)
    assert ours.shape == (2, 4, 2)
    np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12 * float(jnp.abs(reference).max()))
    same = networks.empirical_ntk(arch, params, X1)
    np.testing.assert_allclose(same, _jacobian_ntk(arch, params, X1, X1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS[:4], ids=lambda a: repr(a)[:40])
def test_per_layer_matches_theory_layout(arch):
    params = networks.init(arch, 7, jax.random.key(1), features=3)
    out, layers = networks.apply(arch, params, X1, per_layer=True)
    assert len(layers) == arch.n_layers == theory.kernels(arch, X1, per_layer=True).nngp.shape[0]
    np.testing.assert_array_equal(layers[-1], out)
    assert out.shape == (4, 1)


def test_same_key_same_network_and_different_keys_differ():
    arch = ARCHS[0]
    a = networks.init(arch, 16, jax.random.key(3), features=3)
    b = networks.init(arch, 16, jax.random.key(3), features=3)
    c = networks.init(arch, 16, jax.random.key(4), features=3)
    assert all(jnp.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    assert not jnp.array_equal(a[1].W, c[1].W)


@pytest.mark.parametrize("shape", [(64, 64), (64, 16), (16, 64)])
def test_orthogonal_weights_are_scaled_isometries(shape):
    w = networks.orthogonal_weights(jax.random.key(5), shape, jnp.float64)
    big, small = max(shape), min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, big * np.eye(small), atol=1e-10 * big)
    # entries have unit variance (as the Gaussian ensemble): exact for the squared Frobenius norm
    np.testing.assert_allclose(jnp.mean(w**2), small * big / (shape[0] * shape[1]), rtol=1e-12)


def test_orthogonal_weights_are_haar_distributed():
    # For Haar Q, the first entry of a column q_11 satisfies E[q_11^2] = 1/n and its sign is fair;
    # QR without the sign fix would make the diagonal of R positive and bias these.
    n, samples = 8, 4000
    keys = jax.random.split(jax.random.key(6), samples)
    w = jax.vmap(lambda k: networks.orthogonal_weights(k, (n, n), jnp.float64))(keys) / np.sqrt(n)
    first = np.asarray(w[:, 0, 0])
    assert abs(np.mean(first > 0) - 0.5) < 4 * 0.5 / np.sqrt(samples)
    second = first**2
    assert abs(second.mean() - 1 / n) < 4 * second.std() / np.sqrt(samples)


def test_standard_parameterization_puts_scales_in_the_weights():
    arch = theory.MLP(2, "relu", 2.0, 0.5, weight_scaling="standard", width=256)
    params = networks.init(arch, 256, jax.random.key(7), features=4)
    np.testing.assert_allclose(jnp.std(params[1].W), 2.0 / 16, rtol=0.02)
    np.testing.assert_allclose(jnp.std(params[1].b), 0.5, rtol=0.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width must be a positive integer, got 0"),
        ({"width": 2.5}, "width must be a positive integer, got 2.5"),
        ({"key": 0}, "key must be a JAX PRNG key"),
        ({"key": np.array([0, 1])}, "key must be a JAX PRNG key"),
        ({"weights": "sparse"}, "unknown weights 'sparse'"),
        ({"n_out": 0}, "n_out must be a positive integer"),
    ],
)
def test_bad_init_arguments(kwargs, match):
    args = {"width": 8, "key": jax.random.key(0), "weights": "gaussian", "n_out": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        networks.init(ARCHS[0], args["width"], args["key"], args["weights"], features=3, n_out=args["n_out"])


def test_standard_width_mismatch_is_refused():
    with pytest.raises(ValueError, match="width=7"):
        networks.init(ARCHS[1], 9, jax.random.key(0), features=3)
