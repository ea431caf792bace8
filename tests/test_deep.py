"""Deep recursions stay finite and exact: ReLU at criticality and a depth-muP ResNet, depth 10^4."""

import math

import mpmath
import numpy as np

import theory

X = np.random.default_rng(3).normal(size=(4, 6))


def test_relu_at_criticality_depth_10000_matches_scalar_iteration():
    depth = 10_000
    k = theory.kernels(theory.MLP(depth, "relu", 2**0.5, 0.0), X)
    assert k.dtype == np.float64
    assert np.all(np.isfinite(k.nngp)) and np.all(np.isfinite(k.ntk))
    # C_W = 2 keeps the variance fixed and adds q to the NTK diagonal at each layer; in floating
    # point (2**0.5)**2 = 2 (1 + 2^-52), so the variance drifts by that factor per layer (2e-12 here).
    gain = (2**0.5) ** 2 / 2
    q = 2 * np.sum(X**2, 1) / X.shape[1]
    q_out = q * gain**depth
    ntk_out = sum(q * gain ** (depth - j) * gain**j for j in range(depth + 1))
    # 10^4 layers of one rounding each: allow 10^4 ulps.
    np.testing.assert_allclose(np.diag(k.nngp), q_out, rtol=2e-12)
    np.testing.assert_allclose(np.diag(k.ntk), ntk_out, rtol=1e-10)
    np.testing.assert_allclose(np.diag(k.ntk), (depth + 1) * q, rtol=1e-11)
    # Off the diagonal: the arc-cosine recursion for one pair at a time in 40-digit arithmetic.
    # The NTK's off-diagonal is ill-conditioned once correlations are within ~1e-8 of 1
    # (d arccos / d rho diverges there), so float64 can only match it to ~1e-7.
    mpmath.mp.dps = 40
    w2 = mpmath.mpf((2**0.5) ** 2)
    dot = [[mpmath.fsum(mpmath.mpf(a) * mpmath.mpf(b) for a, b in zip(u, v, strict=True)) / X.shape[1]
            for v in X] for u in X]
    for i, j in [(0, 1), (2, 3), (1, 3)]:
        qi, qj, qij = w2 * dot[i][i], w2 * dot[j][j], w2 * dot[i][j]
        tij = qij
        for _ in range(depth):
            norm = mpmath.sqrt(qi * qj)
            rho = qij / norm
            angle = mpmath.acos(rho)
            e = norm * (mpmath.sqrt(1 - rho**2) + (mpmath.pi - angle) * rho) / (2 * mpmath.pi)
            qij, tij = w2 * e, w2 * e + w2 * (mpmath.pi - angle) / (2 * mpmath.pi) * tij
            qi, qj = w2 * qi / 2, w2 * qj / 2
        np.testing.assert_allclose(k.nngp[i, j], float(qij), rtol=2e-12)
        np.testing.assert_allclose(k.ntk[i, j], float(tij), rtol=5e-7)
    assert 0.999 < k.nngp[0, 1] / math.sqrt(k.nngp[0, 0] * k.nngp[1, 1]) <= 1.0  # correlations approach 1 at depth


def test_depth_mup_resnet_depth_10000_stays_finite():
    depth = 10_000
    res = theory.ResNet(depth, "relu", 2**0.5, 0.0, 1.0, 0.5, "linear")
    k = theory.kernels(res, X)
    assert np.all(np.isfinite(k.nngp)) and np.all(np.isfinite(k.ntk))
    q0 = np.sum(X**2, 1) / X.shape[1]
    # Diagonal: q_L = q0 (1 + 1/L)^L, about e q0 -- bounded in depth, as the ODE limit says.
    np.testing.assert_allclose(np.diag(k.nngp), q0 * (1 + 1 / depth) ** depth, rtol=1e-10)
    tanh_res = theory.kernels(theory.ResNet(depth, "tanh", 1.0, 0.1), X)
    assert np.all(np.isfinite(tanh_res.nngp)) and np.all(np.isfinite(tanh_res.ntk))
