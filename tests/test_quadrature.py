"""The documented accuracy of the default Gauss-Hermite degree (theory.gaussian)."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from theory import activations
from theory.gaussian import DEFAULT_QUADRATURE_DEGREE, correlation

VARIANCES = [1e-3, 0.05, 0.3, 1.0]
CORRELATIONS = [-1.0, -0.7, 0.0, 0.4, 0.9, 0.999, 1.0]


@pytest.mark.parametrize("name", ["erf", "gelu", "sin", "cos"])
def test_default_degree_relative_error_for_unit_variances(name):
    closed = activations.get(name)
    quad = closed.with_quadrature(DEFAULT_QUADRATURE_DEGREE)
    for q11, q22, rho in itertools.product(VARIANCES, VARIANCES, CORRELATIONS):
        args = tuple(jnp.asarray(v) for v in (q11, rho * np.sqrt(q11 * q22), q22))
        (e, d), (eq, dq) = closed.expectations(*args), quad.expectations(*args)
        # Relative to the natural scale sqrt(E11 E22) so that zero crossings don't divide by ~0.
        (e11, d11), (e22, d22) = (closed.expectations(*(jnp.asarray(q),) * 3) for q in (q11, q22))
        assert abs(eq - e) <= 1e-8 * np.sqrt(e11 * e22), (name, q11, q22, rho)
        assert abs(dq - d) <= 1e-6 * np.sqrt(d11 * d22), (name, q11, q22, rho)


def test_quadrature_is_exact_for_polynomials():
    cube = activations.Activation(lambda x: x**3, quadrature_degree=4)
    q11, q12, q22 = (jnp.asarray(v) for v in (1.3, 0.5, 0.7))
    e, d = cube.expectations(q11, q12, q22)
    # Isserlis: E[u^3 v^3] = 9 q11 q22 q12 + 6 q12^3; E[3u^2 3v^2] = 9 (q11 q22 + 2 q12^2).
    np.testing.assert_allclose(e, 9 * 1.3 * 0.7 * 0.5 + 6 * 0.5**3, rtol=1e-13)
    np.testing.assert_allclose(d, 9 * (1.3 * 0.7 + 2 * 0.5**2), rtol=1e-13)


def test_correlation_is_exactly_one_on_the_diagonal_and_clipped():
    q = jnp.asarray([1e-300, 1e-3, 0.7, 3.0, 1e200])
    rho, _ = correlation(q, q, q)
    assert np.all(np.asarray(rho) == 1.0)
    rho, _ = correlation(jnp.asarray(1.0), jnp.asarray(1.0 + 1e-12), jnp.asarray(1.0))
    assert float(rho) == 1.0
    rho, norm = correlation(jnp.asarray(0.0), jnp.asarray(0.0), jnp.asarray(2.0))
    assert float(rho) == 0.0 and float(norm) == 0.0


@pytest.mark.parametrize("degree", [20, 150])
def test_variances_use_the_one_dimensional_rule(degree):
    """With q11, q12, q22 the same array (a variance), the 2-D rule at rho = 1 is the 1-D rule of its degree."""
    from theory.gaussian import gauss_hermite_expectations

    q = jnp.asarray([0.01, 0.7, 3.0, 9.0])
    e, d = gauss_hermite_expectations(jnp.tanh, q, q, q, degree)
    e2, d2 = gauss_hermite_expectations(jnp.tanh, q, q + 0.0, q, degree)  # a copy: the 2-D rule
    np.testing.assert_allclose(e, e2, rtol=1e-5)
    np.testing.assert_allclose(d, d2, rtol=1e-5)
