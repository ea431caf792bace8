"""theory.hermite: Hermite-series duals against closed forms and a high-degree 2-D rule, the tail bound, refusals."""

import itertools

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
    assert small.terms < large.terms <= 512, (small, large)
    assert small.terms % hermite.TERM_STEP == 0 and large.terms % hermite.TERM_STEP == 0
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


@pytest.mark.parametrize("name", ["erf", "gelu"])
def test_every_level_is_accurate_up_to_its_variance(name):
    """Each shorter series a rule carries meets the tail bound at its own variance (just below the switch), and a
    layer whose variances fit a level uses it: the values differ from the longest series' by less than the bound."""
    act = activations.get(name)
    rule = hermite.choose_rule(act.fn, 6.0)
    assert len(rule.lower) >= 2, rule
    lengths = [level[1] for level in rule.levels()]
    assert all(2 * a <= b for a, b in itertools.pairwise(lengths)), rule  # each at most half the next
    longest = hermite.HermiteRule(rule.terms, rule.step, rule.variance, span=rule.span)
    with jax.enable_x64(True):
        for variance, terms, _step, _span in rule.lower:
            q = 0.999 * variance
            q11, q12, q22 = _pairs(q, 0.7 * q)
            e_ref, d_ref = act.expectations(q11, q12, q22)
            e_scale = np.sqrt(act.expectations(q11, q11, q11)[0] * act.expectations(q22, q22, q22)[0])
            d_scale = np.sqrt(act.expectations(q11, q11, q11)[1] * act.expectations(q22, q22, q22)[1])
            for fn in (hermite.series_expectations, jax.jit(hermite.series_expectations, static_argnums=(0, 4))):
                e, d = fn(act.fn, q11, q12, q22, rule)
                assert np.all(np.abs(e - e_ref) <= 1e-7 * e_scale + 1e-15), (variance, terms)
                assert np.all(np.abs(d - d_ref) <= 1e-7 * d_scale + 1e-15), (variance, terms)
            # series_parts (the recursion's path) agrees with the longest series to the two bounds
            parts = hermite.series_parts(act.fn, q11[0], q12, q22[0], rule)
            full = hermite.series_parts(act.fn, q11[0], q12, q22[0], longest)
            assert np.all(np.abs(parts[1][0] - full[1][0]) <= 2e-7 * e_scale), (variance, terms)
            assert np.all(np.abs(parts[1][1] - full[1][1]) <= 2e-7 * d_scale), (variance, terms)
            own = act.expectations(q11[0], q11[0], q11[0])
            np.testing.assert_allclose(parts[0][0], own[0], rtol=2e-7)
            np.testing.assert_allclose(parts[0][1], own[1], rtol=2e-7)


@pytest.mark.slow  # moved from the default suite for its time budget; CI's slow stage runs it
def test_vmapped_level_selection_matches_per_call():
    """Under vmap the switch runs every branch and keeps the selected one: same values as separate calls."""
    rule = hermite.choose_rule(jnp.tanh, 4.0)
    qs = jnp.asarray([0.05, 0.3, 1.5, 3.9], jnp.float32)

    def one(q):
        q11 = jnp.full((1,), q)
        return hermite.series_parts(jnp.tanh, q11, 0.5 * q11[:, None], q11, rule)[1][1]

    batched = jax.vmap(one)(qs)
    for i, q in enumerate(qs):
        np.testing.assert_allclose(batched[i], one(q), rtol=1e-6)


@pytest.mark.slow  # ~15 s: the degree-200 reference
def test_deep_tanh_network_through_the_levels_against_a_high_degree_rule():
    """A tanh MLP whose variances fall from ~1.5 to the fixed point ~0.08 over depth passes through every level of
    its rule: the kernels (float64) equal those of a degree-200 2-D Gauss-Hermite rule at every layer."""
    import theory
    from theory.kernels import with_series

    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(3).normal(size=(5, 4)))
        net = theory.MLP(depth=30, activation="tanh", w_std=1.0, b_std=0.1)
        rule = with_series(net, x).layers[1].activation.series
        assert len(rule.lower) >= 2, rule
        ours = theory.kernels(net, x, per_layer=True)
        ref = theory.kernels(theory.MLP(depth=30, activation=activations.tanh(quadrature_degree=200), w_std=1.0,
                                        b_std=0.1), x, per_layer=True)
        for a, b in ((ours.nngp, ref.nngp), (ours.ntk, ref.ntk)):
            scale = np.max(np.abs(np.asarray(b)), axis=(1, 2), keepdims=True)
            assert np.max(np.abs(np.asarray(a) - np.asarray(b)) / scale) < 1e-6
