"""Monte-Carlo estimators against theory, with tolerances from their standard errors (fixed seeds)."""

import jax
import numpy as np
import pytest

import theory
from experiments import monte_carlo as mc

X = np.random.default_rng(0).normal(size=(3, 4))


@pytest.mark.parametrize(
    "arch",
    [theory.MLP(2, "relu", 2**0.5, 0.0), theory.MLP(2, "erf", 1.5, 0.2), theory.ResNet(4, "tanh", 1.0, 0.1)],
    ids=["relu-mlp", "erf-mlp", "tanh-resnet"],
)
def test_kernel_estimates_agree_with_the_limit(arch):
    width = 512
    est = mc.estimate_kernels(arch, X, width=width, n_samples=48, key=jax.random.key(0), n_out=8)
    limit = theory.kernels(arch, X)
    for name in ("nngp", "ntk"):
        e, k = getattr(est, name), np.asarray(getattr(limit, name))
        # 4 standard errors plus the O(layers / width) bias of the finite-width mean kernel.
        allowance = 2 * arch.n_layers / width * np.abs(k).max()
        assert np.all(np.abs(e.mean - k) <= 4 * e.stderr + allowance), (name, e.mean, k, e.stderr)
    assert est.dtype == np.float64 and est.width == width and est.n_samples == 48


def test_relu_excess_kurtosis_follows_the_exact_finite_width_law():
    """ReLU, one input, C_W = 2, C_b = 0. With G_l = (2/n)||relu(h_l)||^2, h_{l+1} | G_l ~ N(0, G_l) and
    E[G_{l+1}^2] = (1 + 5/n) E[G_l^2], E[G_0^2] = q^2 (G_0 = q deterministic). So the pre-activation of
    Dense layer k (1-based; k = 1 reads x) has E[h^4] / E[h^2]^2 = 3 (1 + 5/n)^(k-1): excess kurtosis
    3 (1 + 5/n)^(k-1) - 3, and the readout (k = depth + 1) grows as (1 + 5/n)^depth."""
    width, depth = 16, 4
    mom = mc.preactivation_moments(theory.MLP(depth, "relu", 2**0.5, 0.0), X[:1], width=width,
                                   n_samples=3000, key=jax.random.key(1))
    exact = 3 * (1 + 5 / width) ** np.arange(depth + 1) - 3
    got, se = mom.excess_kurtosis.mean[:, 0], mom.excess_kurtosis.stderr[:, 0]
    hidden = slice(0, depth)  # the readout has a single neuron: too heavy-tailed for a delta-method SE
    assert np.all(np.abs(got[hidden] - exact[hidden]) <= 4 * se[hidden]), (got, exact, se)
    q = 2 * np.mean(X[0] ** 2)
    assert np.all(np.abs(mom.variance.mean[:, 0] - q) <= 4 * mom.variance.stderr[:, 0])


def test_results_do_not_depend_on_chunking():
    arch = theory.MLP(2, "tanh", 1.2, 0.1)
    a = mc.estimate_kernels(arch, X, width=32, n_samples=10, key=jax.random.key(2))
    b = mc.estimate_kernels(arch, X, width=32, n_samples=10, key=jax.random.key(2), memory_budget=1)
    np.testing.assert_allclose(a.ntk.mean, b.ntk.mean, rtol=1e-12)
    np.testing.assert_allclose(a.nngp.stderr, b.nngp.stderr, rtol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 1}, "n_samples must be an integer >= 2"),
        ({"width": 0}, "width must be a positive integer"),
        ({"key": 3}, "key must be a JAX PRNG key"),
        ({"get": "cov"}, "get must name kernels"),
        ({"weights": "lowrank"}, "unknown weights 'lowrank'"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"width": 8, "n_samples": 4, "key": jax.random.key(0)} | kwargs
    with pytest.raises(ValueError, match=match):
        mc.estimate_kernels(theory.MLP(1), X, **args)


def test_bad_inputs_and_architecture():
    with pytest.raises(ValueError, match="NaN or inf"):
        mc.estimate_kernels(theory.MLP(1), X * np.nan, width=4, n_samples=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected a theory\.MLP or theory\.ResNet"):
        mc.preactivation_moments("mlp", X, width=4, n_samples=2, key=jax.random.key(0))
