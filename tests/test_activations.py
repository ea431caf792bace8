"""Closed-form duals against Monte Carlo and against high-degree quadrature.

Monte Carlo is the independent source: 2**21 Gaussian pairs per case, and the tolerance is
6 standard errors of the sample mean (fixed seed), so a wrong formula is caught while the check
cannot flake.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import activations

CLOSED = ["relu", "abs", "erf", "identity", "sign", "gelu", "sin", "cos"]
COVARIANCES = [(1.0, 0.3, 1.0), (0.5, -0.4, 2.0), (2.0, 1.99, 2.0), (0.3, 0.0, 1.7), (1.5, -1.5, 1.5)]


def _samples(q11, q12, q22, n=2**21, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((2, n))
    u = np.sqrt(q11) * z[0]
    rho = q12 / np.sqrt(q11 * q22)
    v = np.sqrt(q22) * (rho * z[0] + np.sqrt(max(1 - rho**2, 0)) * z[1])
    return jnp.asarray(u), jnp.asarray(v)


def _monte_carlo(act, q11, q12, q22):
    u, v = _samples(q11, q12, q22)
    fu, du = jax.jvp(act.fn, (u,), (jnp.ones_like(u),))
    fv, dv = jax.jvp(act.fn, (v,), (jnp.ones_like(v),))
    out = []
    for prod in (np.asarray(fu * fv), np.asarray(du * dv)):
        out.append((prod.mean(), prod.std() / np.sqrt(prod.size)))
    return out


@pytest.mark.parametrize("name", [*CLOSED, "leaky_relu"])
@pytest.mark.parametrize("cov", COVARIANCES)
def test_closed_form_matches_monte_carlo(name, cov):
    act = activations.leaky_relu(0.2) if name == "leaky_relu" else activations.get(name)
    nngp, ntk = act.expectations(*(jnp.asarray(c) for c in cov))
    (m, se), (dm, dse) = _monte_carlo(act, *cov)
    assert abs(float(nngp) - m) <= 6 * se + 1e-12, (name, cov, float(nngp), m, se)
    assert abs(float(ntk) - dm) <= 6 * dse + 1e-12, (name, cov, float(ntk), dm, dse)


def test_leaky_relu_family_contains_identity_and_abs():
    q = tuple(jnp.asarray(c) for c in (1.3, 0.4, 0.8))
    for slope, other in ((1.0, "identity"), (-1.0, "abs")):
        a, b = activations.leaky_relu(slope).expectations(*q), activations.get(other).expectations(*q)
        np.testing.assert_allclose(a, b, rtol=1e-14)


@pytest.mark.parametrize("name", ["erf", "gelu", "sin", "cos"])
def test_smooth_closed_forms_match_high_degree_quadrature(name):
    closed = activations.get(name)
    quad = closed.with_quadrature(120)
    for q11, q12, q22 in COVARIANCES:
        args = tuple(jnp.asarray(c) for c in (q11, q12, q22))
        np.testing.assert_allclose(quad.expectations(*args), closed.expectations(*args), rtol=1e-9, atol=1e-14)


def test_relu_special_values():
    relu = activations.relu()
    q = jnp.asarray(1.7)
    # rho = 1: E[relu(u)^2] = q/2, E[1{u>0}] = 1/2; rho = 0: (E relu(u))^2 = q/(2 pi); rho = -1: 0.
    np.testing.assert_allclose(relu.expectations(q, q, q), (0.85, 0.5), rtol=1e-15)
    np.testing.assert_allclose(relu.expectations(q, 0 * q, q), (1.7 / (2 * np.pi), 0.25), rtol=1e-15)
    np.testing.assert_allclose(relu.expectations(q, -q, q), (0.0, 0.0), atol=1e-15)


def test_zero_variance_is_not_nan():
    zero, one = jnp.asarray(0.0), jnp.asarray(1.0)
    for name in [*CLOSED, "tanh", "softplus"]:
        values = activations.get(name).expectations(zero, zero, one)
        assert np.all(np.isfinite(values)), name


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match=r"registered: .*relu.*tanh"):
        activations.get("relu6")


def test_user_function_and_factories_are_cached():
    assert activations.leaky_relu(0.1) is activations.leaky_relu(0.1)
    assert activations.get("leaky_relu", slope=0.1) == activations.leaky_relu(0.1)
    act = activations.Activation(jnp.tanh)
    assert not act.has_closed_form and act.name == "tanh"


def test_float32_arccos_and_arcsin_are_accurate_to_float32_resolution():
    x = np.linspace(-1, 1, 200_001).astype(np.float32)
    exact = x.astype(np.float64)
    np.testing.assert_allclose(activations.arccos(jnp.asarray(x)), np.arccos(exact), atol=5e-7, rtol=0)
    np.testing.assert_allclose(activations.arcsin(jnp.asarray(x)), np.arcsin(exact), atol=5e-7, rtol=0)
    assert float(activations.arccos(jnp.asarray(np.float32(1.0)))) == 0.0


def test_float32_arcsin_keeps_relative_accuracy_for_small_arguments():
    x = np.geomspace(1e-30, 0.5, 2001).astype(np.float32)
    got = np.asarray(activations.arcsin(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(got, np.arcsin(x.astype(np.float64)), rtol=3e-7)
    np.testing.assert_array_equal(np.asarray(activations.arcsin(jnp.asarray(-x))), -got.astype(np.float32))
