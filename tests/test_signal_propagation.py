"""Signal propagation against closed forms and finite networks."""

import jax
import numpy as np
import pytest

import theory
from experiments import monte_carlo
from theory.signal_propagation import correlation_map, critical_line, signal_propagation, variance_map


def test_relu_fixed_point_and_susceptibilities_are_closed_form():
    """relu: V(q) = C_W q / 2 + C_b, so q* = C_b / (1 - C_W / 2) and chi_1 = chi_q = C_W / 2 for C_W < 2."""
    w = np.array([0.5, 1.0, 1.5, 1.9])
    b = np.array([0.1, 0.3, 0.05, 0.2])
    sp = signal_propagation("relu", w, b, iterations=4000)
    assert sp.converged.all()
    np.testing.assert_allclose(sp.q_star, b / (1 - w / 2), rtol=1e-6)
    np.testing.assert_allclose(sp.chi_1, w / 2, rtol=1e-10)
    np.testing.assert_allclose(sp.chi_q, w / 2, rtol=1e-8)
    np.testing.assert_allclose(sp.xi_q, -1 / np.log(w / 2), rtol=1e-8)


def test_relu_above_two_has_no_fixed_point():
    sp = signal_propagation("relu", 2.5, 0.1)
    assert not sp.converged and np.isnan(sp.q_star)


@pytest.mark.parametrize(("activation", "critical_w"), [("tanh", 1.0), ("erf", np.pi / 4)])
def test_odd_activations_are_critical_at_phi_prime_zero(activation, critical_w):
    """With C_b = 0, q* = 0 in the ordered phase, where chi_1 = C_W phi'(0)^2: tanh'(0) = 1, erf'(0)^2 = 4/pi."""
    line = critical_line(activation, [0.0], iterations=4000)
    assert abs(line[0] - critical_w) < 0.02 * critical_w, line
    ordered = signal_propagation(activation, 0.9 * critical_w, 0.0)
    chaotic = signal_propagation(activation, 1.5 * critical_w, 0.0)
    assert ordered.chi_1 < 1 < chaotic.chi_1
    assert abs(ordered.c_star - 1) < 1e-6 or ordered.q_star < 1e-3
    assert chaotic.c_star < 0.5  # an odd activation without bias decorrelates in the chaotic phase


def test_chi_1_is_one_on_the_critical_line():
    b = np.array([0.01, 0.05, 0.1])
    line = critical_line("tanh", b)
    assert np.all(line > 1.0) and np.all(np.diff(line) > 0)  # bias pushes the line to larger C_W
    sp = signal_propagation("tanh", line, b)
    np.testing.assert_allclose(sp.chi_1, 1.0, atol=1e-6)


def test_maps_are_consistent_at_the_fixed_points():
    sp = signal_propagation("tanh", 2.0, 0.1)
    np.testing.assert_allclose(variance_map("tanh", 2.0, 0.1, sp.q_star), sp.q_star, rtol=1e-8)
    np.testing.assert_allclose(correlation_map("tanh", 2.0, 0.1, sp.q_star, sp.c_star), sp.c_star, atol=1e-8)
    assert 0 < sp.c_star < 1 and sp.chi_c < 1  # c* is stable


def test_phase_diagram_is_one_vectorised_call():
    w, b = np.meshgrid(np.linspace(0.5, 3, 40), np.linspace(0, 0.5, 30))
    sp = signal_propagation("tanh", w, b)
    assert sp.q_star.shape == (30, 40) and sp.converged.all()
    assert np.all((sp.c_star >= -1) & (sp.c_star <= 1))


def test_fixed_point_is_reached_by_finite_networks():
    """A width-512 tanh MLP (C_W = 1.5, C_b = 0.1), 20 layers: the pre-activation variance of the last hidden
    layer matches q* within 4 SE plus an O(depth / width) allowance."""
    arch = theory.MLP(20, "tanh", 1.5**0.5, 0.1**0.5)
    x = np.random.default_rng(0).normal(size=(1, 8))
    mom = monte_carlo.preactivation_moments(arch, x, width=512, n_samples=32, key=jax.random.key(0))
    q_star = signal_propagation("tanh", 1.5, 0.1).q_star
    got, se = mom.variance.mean[-2, 0], mom.variance.stderr[-2, 0]
    assert abs(got - q_star) <= 4 * se + 20 / 512 * q_star, (got, q_star, se)


def test_bad_input():
    with pytest.raises(ValueError, match=r"w_var must be finite and >= 0.*got -1\.0"):
        signal_propagation("tanh", [-1.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="c0 must be a correlation"):
        signal_propagation("tanh", 1.0, 0.0, c0=2.0)
