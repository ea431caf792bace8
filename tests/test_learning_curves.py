"""theory.learning_curves against Monte Carlo of kernel regression, closed forms, and its refusals."""

import numpy as np
import pytest

from experiments import teacher_student as ts
from theory import learning_curves as lc


@pytest.mark.parametrize("n_train", [40, pytest.param(160, marks=pytest.mark.slow)])
def test_eigenlearning_matches_monte_carlo_with_gaussian_features(n_train):
    # Features phi_i(x) = g_i ~ N(0, 1), kernel sum_i lambda_i g_i g'_i, target sum_i v_i g_i with v_i ~ N(0, p_i):
    # the ridgeless estimate's test MSE is exactly sum_i (w_hat_i - v_i)^2, averaged over draws.
    modes, trials = 1000, 200
    i = np.arange(1, modes + 1)
    lam, power = i**-2.0, i**-1.5
    rng = np.random.default_rng(n_train)
    errors = []
    for _ in range(trials):
        g = rng.standard_normal((n_train, modes))
        v = rng.standard_normal(modes) * np.sqrt(power)
        w_hat = lam * (g.T @ np.linalg.solve((g * lam) @ g.T, g @ v))
        errors.append(np.sum((w_hat - v) ** 2))
    mc, se = np.mean(errors), np.std(errors, ddof=1) / np.sqrt(trials)
    predicted = lc.eigenlearning(lam, power, n_train)
    # 3 standard errors plus the theory's own finite-P error (measured 1.2% at P = 40, 0.6% at P = 160).
    assert abs(predicted - mc) < 3 * se + 0.02 * mc, (predicted, mc, se)


def test_eigenlearning_limits_and_ridge():
    lam = 1.0 / np.arange(1, 201) ** 2
    power = lam.copy()
    curve = lc.eigenlearning(lam, power, np.array([1, 4, 16, 64]))
    assert np.all(np.diff(curve) < 0) and curve[0] < power.sum()
    # A huge ridge learns nothing: the error is the target's mean square.
    np.testing.assert_allclose(lc.eigenlearning(lam, power, 16, ridge=1e9), power.sum(), rtol=1e-6)
    # One mode, ridge r: kappa solves lambda / (lambda + kappa) + r / kappa = P in closed form.
    p, r = 3.0, 0.5
    kappa = np.roots([p, p - 1 - r, -r]).max()  # lambda = 1: 1 / (1 + k) + r / k = p
    learn = 1 / (1 + kappa)
    expected = p / (p - learn**2) * (1 - learn) ** 2
    np.testing.assert_allclose(lc.eigenlearning(np.ones(1), np.ones(1), p, ridge=r), expected, rtol=1e-9)


@pytest.mark.parametrize(("a", "b"), [(2.0, 3.0), (1.5, 2.5)])
def test_eigenlearning_decays_with_the_asymptotic_exponent(a, b):
    # Unsaturated (b - 1 < 2a): beta = b - 1. 4e6 modes make the truncated tail's power negligible at P <= 8000.
    i = np.arange(1, 4_000_001, dtype=float)
    lam, power = i**-a, i**-b
    sizes = np.array([2_000, 8_000])
    curve = lc.eigenlearning(lam, power, sizes)
    slope = -np.diff(np.log(curve))[0] / np.diff(np.log(sizes))[0]
    assert abs(slope - lc.asymptotic_exponent(a, b)) < 0.02, (slope, a, b)


def test_nystrom_spectrum_of_a_known_kernel():
    # On the circle, K = 1 + 2 sum_k lambda_k cos(k (t - t')) has eigenvalues 1 and lambda_k (twice each).
    m = 1024
    t = np.random.default_rng(0).uniform(0, 2 * np.pi, m)
    lam_k = np.array([0.5, 0.1, 0.02])
    diff = t[:, None] - t[None, :]
    k = 1 + 2 * sum(lk * np.cos((j + 1) * diff) for j, lk in enumerate(lam_k))
    lam, power = lc.nystrom_spectrum(k, target=np.cos(t))
    # The estimates fluctuate by ~ lambda sqrt(2 / M) (the eigenfunctions' empirical Gram matrix).
    np.testing.assert_allclose(lam[:7], [1, 0.5, 0.5, 0.1, 0.1, 0.02, 0.02], rtol=5 * np.sqrt(2 / m))
    assert lam[7] < 1e-10
    # cos t = phi / sqrt 2 for the unit eigenfunction phi = sqrt 2 cos t: power 1/2 in the lambda = 0.5 pair.
    np.testing.assert_allclose(power[1:3].sum(), 0.5, atol=5 / np.sqrt(m))
    lam2, power2 = lc.nystrom_spectrum(k, target_covariance=np.outer(np.cos(t), np.cos(t)))
    np.testing.assert_allclose(power2, power, atol=1e-10)
    np.testing.assert_allclose(lam2, lam)
    _, stacked = lc.nystrom_spectrum(k, target_covariance=np.stack([np.eye(m), np.outer(np.cos(t), np.cos(t))]))
    np.testing.assert_allclose(stacked[1], power, atol=1e-10)
    np.testing.assert_allclose(stacked[0], lam2 * 0 + 1 / m, atol=1e-12)  # white noise: equal power everywhere


def test_refusals():
    with pytest.raises(ValueError, match="number of positive eigenvalues"):
        lc.eigenlearning(np.ones(3), np.ones(3), 3)
    with pytest.raises(ValueError, match=">= 0"):
        lc.eigenlearning(np.array([1.0, -1.0]), np.ones(2), 1)
    with pytest.raises(ValueError, match="same shape"):
        lc.eigenlearning(np.ones(3), np.ones(2), 1)
    with pytest.raises(ValueError, match="n_train"):
        lc.eigenlearning(np.ones(3), np.ones(3), 0)
    with pytest.raises(ValueError, match="ridge"):
        lc.eigenlearning(np.ones(3), np.ones(3), 1, ridge=-1.0)
    with pytest.raises(ValueError, match="finite"):
        lc.eigenlearning(np.array([1.0, np.nan]), np.ones(2), 1)
    with pytest.raises(ValueError, match="exactly one"):
        lc.nystrom_spectrum(np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        lc.nystrom_spectrum(np.triu(np.ones((3, 3))), target=np.ones(3))
    with pytest.raises(ValueError, match="PSD"):
        lc.nystrom_spectrum(-np.eye(3), target=np.ones(3))
    with pytest.raises(ValueError, match="eigenvalue_decay > 1"):
        lc.asymptotic_exponent(0.5, 2.0)


def test_teacher_student_inputs_and_fields():
    x = ts.sphere_patches(500, 12, 3, seed=1)
    np.testing.assert_allclose(np.linalg.norm(x.reshape(500, 4, 3), axis=-1), np.sqrt(3))
    np.testing.assert_array_equal(x, ts.sphere_patches(500, 12, 3, seed=1))
    cov = ts.teacher_covariance(x[:6], "global", 3)
    d = np.linalg.norm(x[:6, None] - x[None, :6], axis=-1)
    np.testing.assert_allclose(cov, np.exp(-d / np.sqrt(12)), atol=1e-12)
    local = ts.teacher_covariance(x[:6], "local", 3)
    np.testing.assert_allclose(local, np.exp(-np.linalg.norm(x[:6, None, :3] - x[None, :6, :3], axis=-1) / np.sqrt(3)),
                               atol=1e-12)
    # Sample covariance of many fields against the covariance: entries within 5 standard errors.
    draws = 20_000
    y = ts.gaussian_field(cov, seed=0, samples=draws)
    emp = y @ y.T / draws
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / draws)
    assert np.all(np.abs(emp - cov) < 5 * se)
    # A singular covariance (a repeated input) is sampled exactly: the repeated values are equal.
    twice = ts.teacher_covariance(np.concatenate([x[:3], x[:1]]), "global", 3)
    y = ts.gaussian_field(twice, seed=0, samples=3)
    np.testing.assert_allclose(y[0], y[3], atol=1e-6)
    with pytest.raises(ValueError, match="multiple of patch"):
        ts.sphere_patches(5, 10, 3, seed=0)
    with pytest.raises(ValueError, match="unknown teacher"):
        ts.teacher_covariance(x, "middle", 3)
