"""Power-law fits: exactness, calibrated standard errors, bootstrap intervals, bad input."""

import math

import numpy as np
import pytest

from experiments.scaling import PowerLawFit, fit_power_law

WIDTHS = 2.0 ** np.arange(4, 12)  # 16 ... 2048


@pytest.mark.parametrize("p", [-1.0, -0.5, 0.37, 2.0])
def test_exact_power_law_is_recovered(p):
    y = 3.7 * WIDTHS**p
    fit = fit_power_law(WIDTHS, y)
    assert abs(fit.exponent - p) < 1e-12
    assert abs(fit.prefactor / 3.7 - 1) < 1e-12
    assert fit.exponent_stderr < 1e-12
    assert fit.n_points == 8 and fit.dof == 6 and fit.method == "analytic"
    np.testing.assert_allclose(fit.predict(WIDTHS), y, rtol=1e-12)
    weighted = fit_power_law(WIDTHS, y, 0.1 * y)
    assert abs(weighted.exponent - p) < 1e-12
    assert weighted.chi2_reduced < 1e-20


def _noisy(rng, p, sigma, n=WIDTHS):
    """y = C n^p exp(sigma eps): log-normal noise of known log-space standard deviation sigma."""
    y = 2.0 * n**p * np.exp(sigma * rng.standard_normal(n.shape))
    return y, sigma * y


@pytest.mark.parametrize("seed", range(5))
def test_noisy_fit_within_four_stated_standard_errors(seed):
    rng = np.random.default_rng(seed)
    y, y_err = _noisy(rng, -0.5, 0.05)
    for fit in (fit_power_law(WIDTHS, y, y_err), fit_power_law(WIDTHS, y)):
        assert fit.exponent_stderr > 0
        assert abs(fit.exponent + 0.5) < 4 * fit.exponent_stderr
        assert fit.ci_low < fit.exponent < fit.ci_high


def test_weighted_standard_error_is_calibrated():
    """Known errors: |p_hat - p| < 2 SE should hold with probability 0.954 (0.9-0.99 over 200 datasets)."""
    rng = np.random.default_rng(1234)
    sigmas = np.linspace(0.02, 0.2, WIDTHS.size)  # heteroscedastic: the weights matter
    inside, chi2 = [], []
    for _ in range(200):
        y = 2.0 * WIDTHS**-1.0 * np.exp(sigmas * rng.standard_normal(WIDTHS.size))
        fit = fit_power_law(WIDTHS, y, sigmas * y)
        inside.append(abs(fit.exponent + 1.0) < 2 * fit.exponent_stderr)
        chi2.append(fit.chi2_reduced)
    assert 0.9 <= np.mean(inside) <= 0.99
    assert 0.85 < np.mean(chi2) < 1.15  # the stated errors describe the scatter


def test_unweighted_standard_error_is_calibrated():
    """Scale from residuals: with 20 points P(|t_18| < 2) = 0.94."""
    rng = np.random.default_rng(99)
    n = np.geomspace(10, 1e4, 20)
    inside, covered = [], []
    for _ in range(200):
        y, _ = _noisy(rng, 0.5, 0.1, n)
        fit = fit_power_law(n, y)
        inside.append(abs(fit.exponent - 0.5) < 2 * fit.exponent_stderr)
        covered.append(fit.ci_low < 0.5 < fit.ci_high)
    assert 0.9 <= np.mean(inside) <= 0.99
    assert 0.9 <= np.mean(covered) <= 0.99  # the 95% Student-t interval


def test_weighting_uses_log_space_errors():
    """A wild point with a huge error bar barely moves the weighted fit."""
    y = 5.0 * WIDTHS**-0.5
    y_bad = y.copy()
    y_bad[3] *= 3.0
    err = 1e-3 * y_bad
    err[3] = 1e3 * y_bad[3]
    assert abs(fit_power_law(WIDTHS, y_bad, err).exponent + 0.5) < 1e-6
    assert abs(fit_power_law(WIDTHS, y_bad).exponent + 0.5) > 1e-3


def test_bootstrap_interval():
    rng = np.random.default_rng(7)
    n = np.geomspace(16, 4096, 16)
    y, _ = _noisy(rng, -1.0, 0.1, n)
    boot = fit_power_law(n, y, bootstrap=2000, seed=3)
    analytic = fit_power_law(n, y)
    assert boot.method == "bootstrap" and boot.n_bootstrap == 2000
    assert boot.ci_low < -1.0 < boot.ci_high
    assert boot.exponent == analytic.exponent
    width_ratio = (boot.ci_high - boot.ci_low) / (analytic.ci_high - analytic.ci_low)
    assert 0.5 < width_ratio < 2.0
    again = fit_power_law(n, y, bootstrap=2000, seed=3)
    assert again == boot  # reproducible for a fixed seed
    exact = fit_power_law(n, 2 * n**-1.0, bootstrap=100)
    assert abs(exact.ci_low + 1) < 1e-12 and abs(exact.ci_high + 1) < 1e-12


def test_label():
    fit = PowerLawFit(exponent=-0.5012, exponent_stderr=0.0312, prefactor=1.0, prefactor_stderr=0.0,
                      log_prefactor=0.0, log_prefactor_stderr=0.0, covariance=((0.0, 0.0), (0.0, 0.0)),
                      ci_low=-0.56, ci_high=-0.44, confidence=0.95, method="analytic", n_points=8, dof=6,
                      residual_rms=0.0, chi2_reduced=math.nan)
    assert fit.label() == "slope = -0.50 ± 0.03"
    assert fit.label("p", digits=3) == "p = -0.501 ± 0.031"
    assert fit.label(ci=True) == "slope = -0.50, 95% CI [-0.56, -0.44]"
    small = fit_power_law(WIDTHS, 3 * WIDTHS**-1.0)
    assert small.label() == "slope = -1.00 ± 0.00"
    one = PowerLawFit(**{**fit.__dict__, "exponent_stderr": 0.012})
    assert one.label() == "slope = -0.501 ± 0.012"


@pytest.mark.parametrize(
    ("n", "y", "y_err", "match"),
    [
        ([1, 2, 3], [1, 2], None, "same length"),
        ([1, 2], [1, 2], None, "at least 3 points"),
        ([1, 2, 3], [1.0, -2.0, 3.0], None, r"y\[1\] = -2"),
        ([0, 2, 3], [1, 2, 3], None, r"n\[0\] = 0"),
        ([1, 2, 3], [1.0, float("nan"), 3.0], None, r"finite; y\[1\] = nan"),
        ([1, 2, float("inf")], [1, 2, 3], None, "finite"),
        ([4, 4, 4], [1, 2, 3], None, "2 distinct"),
        ([1, 2, 3], [1, 2, 3], [0.1, 0.0, 0.1], r"y_err\[1\] = 0"),
        ([1, 2, 3], [1, 2, 3], [0.1, 0.1], "y_err must have the same length"),
        ([[1, 2, 3]], [[1, 2, 3]], None, "1-d"),
        (["a", "b", "c"], [1, 2, 3], None, "real numbers"),
    ],
)
def test_bad_input(n, y, y_err, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(n, y, y_err)


def test_bad_options():
    with pytest.raises(ValueError, match="confidence"):
        fit_power_law([1, 2, 3], [1, 2, 3], confidence=1.5)
    with pytest.raises(ValueError, match="bootstrap"):
        fit_power_law([1, 2, 3], [1, 2, 3], bootstrap=3)
    with pytest.raises(ValueError, match="bootstrap resamples"):
        fit_power_law([1, 1, 1, 1, 1, 1, 1, 2], np.arange(1.0, 9), bootstrap=10, seed=0)
