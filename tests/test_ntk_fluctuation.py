"""The NTK's fluctuation across networks (relu at criticality, one input) against Monte Carlo.

``theory.finite_width.relu_ntk_relative_variance`` (exact) and its leading order ``L (11 L + 7) / (3 n (L + 1))``
are our derivation; the independent check is the spread of ``Theta(x, x)`` over sampled finite networks
(``experiments.monte_carlo.network_kernels(get="ntk")``, each network's own kernel by
``experiments.networks.empirical_ntk``). The ratio ``s^2 / m^2`` has its SE from the delta method (its influence
function ``((t - m)^2 - s^2) / m^2 - 2 s^2 (t - m) / m^3``), z-scores are bounded by ``Z_MAX``, and each check also
shows that a coefficient 20% off would have been rejected.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import monte_carlo as mc
from theory.architectures import MLP
from theory.finite_width import relu_ntk_relative_variance, relu_ntk_relative_variance_leading_order

Z_MAX = 4.0
N_NETWORKS = 4000
X = jnp.asarray([[0.3, -1.2, 0.7, 2.0]], jnp.float64)
Q = 2 * float(jnp.sum(X**2)) / X.shape[1]  # first-layer variance C_W |x|^2 / d


def _ntk_samples(depth: int, width: int, seed: int) -> np.ndarray:
    arch = MLP(depth=depth, activation="relu", w_std=math.sqrt(2), b_std=0.0)
    theta = mc.network_kernels(arch, X, width=width, n_samples=N_NETWORKS, key=jax.random.PRNGKey(seed), get="ntk")
    return np.asarray(theta[:, 0, 0], np.float64)


def _relative_variance(theta: np.ndarray) -> tuple[float, float]:
    """``s^2 / m^2`` and its delta-method standard error."""
    m, s2 = theta.mean(), theta.var(ddof=1)
    d = theta - m
    influence = (d**2 - s2) / m**2 - 2 * s2 * d / m**3
    return float(s2 / m**2), float(influence.std(ddof=1) / math.sqrt(theta.size))


@pytest.mark.parametrize(("depth", "width", "seed"), [(1, 16, 1), (3, 32, 3)])
def test_exact_relative_variance_matches_monte_carlo(depth: int, width: int, seed: int) -> None:
    theta = _ntk_samples(depth, width, seed)
    # the mean is exactly (L + 1) q
    se_mean = theta.std(ddof=1) / math.sqrt(theta.size)
    assert abs(theta.mean() - (depth + 1) * Q) < Z_MAX * se_mean
    measured, se = _relative_variance(theta)
    predicted = relu_ntk_relative_variance(depth, width)
    assert abs(measured - predicted) < Z_MAX * se, (measured, predicted, se)
    for wrong in (0.8 * predicted, 1.2 * predicted):
        assert abs(measured - wrong) > Z_MAX * se, (measured, wrong, se)


def test_leading_order_matches_monte_carlo_at_small_depth_over_width() -> None:
    # L/n = 1/32; the O((L/n)^2) remainder is allowed explicitly: 4 (L/n)^2, its coefficient at L = 2 being
    # 113/36 = 3.14 at every width by the exact law (test_leading_order_is_the_first_term_of_the_exact_value)
    depth, width = 2, 64
    measured, se = _relative_variance(_ntk_samples(depth, width, 11))
    predicted = float(relu_ntk_relative_variance_leading_order(depth, width))
    allowance = 4 * (depth / width) ** 2
    assert 0 < relu_ntk_relative_variance(depth, width) - predicted < allowance
    assert abs(measured - predicted) < Z_MAX * se + allowance, (measured, predicted, se)
    for wrong in (0.8 * predicted, 1.2 * predicted):
        assert abs(measured - wrong) > Z_MAX * se + allowance, (measured, wrong, se)


def test_readout_only_network_has_a_deterministic_ntk() -> None:
    theta = _ntk_samples(0, 8, 0)[:50]
    np.testing.assert_allclose(theta, Q, rtol=1e-12)
    assert relu_ntk_relative_variance(0, 8) == 0.0
    assert relu_ntk_relative_variance_leading_order(0, 8) == 0.0


@pytest.mark.parametrize("width", [2, 7, 64, 1e5])
def test_one_hidden_layer_is_three_over_n_exactly(width: float) -> None:
    # Theta / q = X + Y + 2 Z^2 / n: variances 5/n, 5/n - 8/n^2, 8/n^2 and covariance 1/n, over (L + 1)^2 = 4
    assert relu_ntk_relative_variance(1, width) == pytest.approx(3 / width, rel=1e-12)
    assert relu_ntk_relative_variance_leading_order(1, width) == pytest.approx(3 / width, rel=1e-12)


@pytest.mark.parametrize("depth", [2, 3, 5, 10, 40])
def test_leading_order_is_the_first_term_of_the_exact_value(depth: int) -> None:
    # the remainder is O((L/n)^2): n^2 (exact - leading) / L^2 approaches a finite constant, below 9 for L/n -> 0
    remainders = []
    for width in (1e4, 1e5, 1e6):
        exact = relu_ntk_relative_variance(depth, width)
        leading = float(relu_ntk_relative_variance_leading_order(depth, width))
        remainders.append((exact - leading) * width**2 / depth**2)
    assert 0 < remainders[-1] < 9
    assert remainders[1] == pytest.approx(remainders[2], rel=1e-3)
    # large depth: each layer's term has 5 L / n, the sum (11/3) L / n
    assert float(relu_ntk_relative_variance_leading_order(10**6, 1.0)) / 10**6 == pytest.approx(11 / 3, rel=1e-5)


@pytest.mark.parametrize(("depth", "width"), [(-1, 8), (1.5, 8), (True, 8), (2, 0), (2, -3.0), (2, math.inf)])
def test_bad_arguments_are_rejected(depth: object, width: object) -> None:
    with pytest.raises(ValueError):
        relu_ntk_relative_variance(depth, width)
