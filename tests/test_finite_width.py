"""theory.finite_width against independent exact computations (the Monte-Carlo check of the same law is
tests/test_monte_carlo.py::test_relu_excess_kurtosis_follows_the_exact_finite_width_law)."""

from fractions import Fraction

import numpy as np
import pytest
from scipy import integrate, stats

from theory import finite_width as fw

GRID = [(L, n) for n in (1, 2, 3, 8, 16, 64, 128, 1000) for L in (0, 1, 2, 3, 7, 16, 64)]


def kurtosis_by_moment_iteration(depth: int, width: int) -> Fraction:
    """Iterate E[G_l] and E[G_l^2] in exact rational arithmetic, layer by layer, from the half-normal
    moments E[relu(z)^2] = q/2, E[relu(z)^4] = 3 q^2/2 (z ~ N(0, q)) and G_{l+1} = (2/n) sum_i relu(z_i)^2
    over n i.i.d. units given G_l; then E[f^4] / E[f^2]^2 = 3 E[G_L^2] / E[G_L]^2 for f | G_L ~ N(0, G_L)."""
    n = Fraction(width)
    m1, m2 = Fraction(7, 3), Fraction(49, 9)  # G_0 = q = 7/3, deterministic: any q, it cancels
    for _ in range(depth):
        relu2, relu4, relu2_sq = m1 / 2, 3 * m2 / 2, m2 / 4  # E[relu^2], E[relu^4], E[relu^2]^2 (given G)
        m1, m2 = (2 / n) * n * relu2, (2 / n) ** 2 * (n * relu4 + n * (n - 1) * relu2_sq)
    return 3 * m2 / m1**2 - 3


def kurtosis_by_chi_square(depth: int, width: int) -> float:
    """A second route: (n/2) G_{l+1} / G_l is chi-square with K ~ Binomial(n, 1/2) degrees of freedom (the
    active units), independent across layers, so E[G_L^2] / E[G_L]^2 = (E[K(K+2)] / E[K]^2)^L."""
    k = np.arange(width + 1)
    p = stats.binom.pmf(k, width, 0.5)
    ratio = np.sum(p * k * (k + 2)) / np.sum(p * k) ** 2
    return 3 * ratio**depth - 3


def test_half_normal_moments_used_by_the_derivation():
    for q in (0.3, 2.0):
        pdf = stats.norm(scale=np.sqrt(q)).pdf
        for power, expected in ((2, q / 2), (4, 3 * q**2 / 2)):
            got, _ = integrate.quad(lambda z, p=power, f=pdf: z**p * f(z), 0, np.inf, epsabs=1e-13, epsrel=1e-12)
            assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("depth", "width"), GRID)
def test_exact_law_matches_two_independent_moment_computations(depth, width):
    got = float(fw.relu_output_excess_kurtosis(depth, width))
    exact = float(kurtosis_by_moment_iteration(depth, width))
    assert got == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert got == pytest.approx(kurtosis_by_chi_square(depth, width), rel=1e-9, abs=1e-15)


def test_zero_depth_is_gaussian_and_one_layer_is_exactly_the_leading_order():
    widths = np.array([1, 4, 64, 4096])
    np.testing.assert_array_equal(fw.relu_output_excess_kurtosis(0, widths), 0.0)
    np.testing.assert_allclose(fw.relu_output_excess_kurtosis(1, widths),
                               fw.relu_output_excess_kurtosis_leading_order(1, widths), rtol=1e-14)


def test_leading_order_is_15_L_over_n_with_the_predicted_first_correction():
    """kappa_4 = 15 L/n (1 + 5 (L - 1) / (2n) + O((L/n)^2)): the ratio tends to 1 as L/n -> 0, and
    n (ratio - 1) tends to 5 (L - 1) / 2 at fixed L."""
    for depth in (2, 5, 20):
        widths = np.array([1e3, 1e4, 1e5, 1e6])
        exact = fw.relu_output_excess_kurtosis(depth, widths)
        lead = fw.relu_output_excess_kurtosis_leading_order(depth, widths)
        np.testing.assert_allclose(lead, 15 * depth / widths, rtol=1e-15)
        correction = widths * (exact / lead - 1)
        # next term 25 (L-1)(L-2) / (6 n^2) in the ratio
        assert np.all(np.abs(correction - 5 * (depth - 1) / 2) <= 5 * depth**2 / widths), correction
        assert np.all(np.diff(np.abs(exact / lead - 1)) < 0)  # the ratio approaches 1 monotonically
    # and at small L/n with L and n both large (the regime of the figure): within 3 L/n relatively
    r = np.array([1e-4, 1e-3, 1e-2])
    n = 1e4
    exact = fw.relu_output_excess_kurtosis(r * n, n)
    assert np.all(np.abs(exact / (15 * r) - 1) < 3 * r)


def test_double_scaling_limit_is_approached_from_below_at_rate_one_over_n():
    r = np.array([0.05, 0.25, 1.0])
    limit = fw.relu_output_excess_kurtosis_limit(r)
    np.testing.assert_allclose(limit, 3 * (np.exp(5 * r) - 1), rtol=1e-14)
    gaps = []
    for n in (100, 1000, 10000):
        exact = fw.relu_output_excess_kurtosis(r * n, n)
        assert np.all(exact < limit)
        gaps.append(limit - exact)
    # (1 + 5/n)^(r n) = e^(5 r) (1 - 25 r / (2 n) + ...): the gap shrinks ~10x per decade of n
    np.testing.assert_allclose(gaps[1] / gaps[2], 10, rtol=0.05)
    np.testing.assert_allclose(gaps[2], 3 * np.exp(5 * r) * 25 * r / (2 * 10000), rtol=0.05)


def test_broadcasting_and_real_depths():
    depths = np.linspace(0, 8, 5)[:, None]
    widths = np.array([8, 16, 32])[None, :]
    out = fw.relu_output_excess_kurtosis(depths, widths)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, 3 * (1 + 5 / widths) ** depths - 3, rtol=1e-13)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fw.relu_output_excess_kurtosis(-1, 8), "depth must be finite and >= 0"),
        (lambda: fw.relu_output_excess_kurtosis(2, 0), "width must be finite and > 0"),
        (lambda: fw.relu_output_excess_kurtosis(2, np.inf), "width must be finite and > 0"),
        (lambda: fw.relu_output_excess_kurtosis_leading_order(np.nan, 8), "depth must be finite"),
        (lambda: fw.relu_output_excess_kurtosis_limit(-0.1), "depth_over_width must be finite and >= 0"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
