"""theory.hermite: Hermite-series duals against closed forms and a high-degree 2-D rule, the tail bound, refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import activations, hermite
from theory.gaussian import gauss_hermite_expectations

RHOS = np.array([-1.0, -1 + 1e-9, -0.7, 0.0, 0.3, 0.9, 1 - 1e-6, 1 - 1e-12, 1.0])


def _pairs(q1, q2):
    q11 = jnp.full((1, 1), q1, jnp.float64)
    q22 = jnp.full((1, 1), q2, jnp.float64)
    return q11, jnp.asarray(RHOS[None, :] * np.sqrt(q1 * q2)), q22


@pytest.mark.parametrize("name", ["erf", "gelu", "sin", "cos"])
@pytest.mark.parametrize("q", [0.05, 1.0, 10.0, pytest.param(100.0, marks=pytest.mark.slow)])
def test_series_equals_closed_forms(name, q):
    with jax.enable_x64(True):
        act = activations.get(name)
        q11, q12, q22 = _pairs(q, 0.6 * q)
        rule = hermite.choose_rule(act.fn, q, tol=1e-7)
        e, d = hermite.series_expectations(act.fn, q11, q12, q22, rule)
        e_ref, d_ref = act.expectations(q11, q12, q22)
        # The tail bound: tol times the scale sqrt(E1 E2) of each kernel (its diagonal).
        e_scale = np.sqrt(act.expectations(q11, q11, q11)[0] * act.expectations(q22, q22, q22)[0])
        d_scale = np.sqrt(act.expectations(q11, q11, q11)[1] * act.expectations(q22, q22, q22)[1])
        assert np.all(np.abs(e - e_ref) <= 1e-7 * e_scale + 1e-15), (rule, np.abs(e - e_ref).max() / e_scale.max())
        assert np.all(np.abs(d - d_ref) <= 1e-7 * d_scale + 1e-15), (rule, np.abs(d - d_ref).max() / d_scale.max())


@pytest.mark.parametrize("q", [0.5, 3.0])
def test_tanh_against_a_high_degree_rule(q):
    with jax.enable_x64(True):
        q11, q12, q22 = _pairs(q, 1.3 * q)
        rule = hermite.choose_rule(jnp.tanh, 1.3 * q)
        e, d = hermite.series_expectations(jnp.tanh, q11, q12, q22, rule)
        e_ref, d_ref = gauss_hermite_expectations(jnp.tanh, q11, q12, q22, degree=600)
        assert np.abs(e - e_ref).max() < 1e-7 * np.abs(e_ref).max()
        assert np.abs(d - d_ref).max() < 1e-7 * np.abs(d_ref).max()


def test_rule_grows_with_the_variance_and_is_jittable():
    small, large = hermite.choose_rule(jnp.tanh, 1.0), hermite.choose_rule(jnp.tanh, 6.0)
    assert small.terms < large.terms <= 512, (small, large)  # lengths on a ladder of powers of 2
    with jax.enable_x64(True):
        q11, q12, q22 = _pairs(1.0, 0.8)
        eager = hermite.series_expectations(jnp.tanh, q11, q12, q22, small)
        jitted = jax.jit(hermite.series_expectations, static_argnums=(0, 4))(jnp.tanh, q11, q12, q22, small)
        np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(jitted[1], eager[1], rtol=1e-12, atol=1e-15)


def test_rough_activation_is_refused():
    with pytest.raises(ValueError, match="too rough"):
        hermite.choose_rule(jax.nn.relu, 1.0, max_terms=256, name="relu")
    with pytest.raises(ValueError, match="finite variance"):
        hermite.choose_rule(jnp.tanh, float("nan"))
