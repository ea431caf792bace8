r"""Learning curves of kernel regression from the kernel's spectrum (eigenlearning).

For kernel ridge regression ``f = K(x, X) (K(X, X) + ridge I)^{-1} y`` on ``P`` i.i.d. samples, with the
kernel's eigenvalues ``lambda_i`` as an integral operator on the input distribution and the target's power
``v_i^2 = E <f*, phi_i>^2`` in its eigenfunctions, the expected test MSE is (Bordelon, Canatar & Pehlevan 2020;
Canatar, Bordelon & Pehlevan 2021; Simon et al. 2021, "eigenlearning")

    sum_i lambda_i / (lambda_i + kappa) + ridge / kappa = P                     (kappa > 0),
    L_i = lambda_i / (lambda_i + kappa),   E_0 = P / (P - sum_i L_i^2),
    E[test MSE] = E_0 sum_i (1 - L_i)^2 v_i^2.

Asymptotically, for ``lambda_i ~ i^-a`` and ``v_i^2 ~ i^-b`` with ``ridge = 0``, the error decays as
``P^-beta`` with ``beta = min(b - 1, 2 a)`` (Spigler, Geiger & Wyart 2020; Bordelon et al. 2020):
:func:`asymptotic_exponent`. Spectra of kernels without a closed form come from :func:`nystrom_spectrum` on
``M`` samples; its smallest eigenvalues are biased (the missing tail piles up there), so predictions need
``P << M`` (docs/figures/cnn_learning_curves.md measures how far: low by ~6% at ``P = M / 16``, ~12% at ``M / 8``).

Derivation and notes: docs/learning_curves.md.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

__all__ = ["asymptotic_exponent", "eigenlearning", "nystrom_spectrum"]


def _vector(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite numbers, got shape {arr.shape}")
    return arr


def eigenlearning(eigenvalues: np.ndarray, target_power: np.ndarray, n_train: np.ndarray | int,
                  ridge: float = 0.0) -> np.ndarray:
    """Expected test MSE of kernel ridge regression on ``n_train`` samples (the equations above).

    Args:
      eigenvalues: ``(modes,)`` the kernel's operator eigenvalues ``lambda_i >= 0``.
      target_power: ``(modes,)`` the target's power ``v_i^2 >= 0`` in the same eigenfunctions (its sum is the
        target's mean square).
      n_train: a number of training samples ``P`` or an array of them.
      ridge: ``>= 0``, added to the ``P x P`` kernel matrix (absolute, not relative to its diagonal).

    Returns:
      the expected test MSE, the shape of ``n_train``.

    Raises:
      ValueError: negative or non-finite spectra, shapes that differ, ``n_train < 1``, or ``ridge = 0`` with
        ``n_train`` at least the number of positive eigenvalues (the interpolating solution is then not unique).
    """
    lam, power = _vector("eigenvalues", eigenvalues), _vector("target_power", target_power)
    if lam.shape != power.shape:
        raise ValueError(f"eigenvalues {lam.shape} and target_power {power.shape} must have the same shape")
    if np.any(lam < 0) or np.any(power < 0):
        raise ValueError("eigenvalues and target_power must be >= 0 (clip round-off negatives of a PSD kernel)")
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    ns = np.asarray(n_train, dtype=np.float64)
    if np.any(ns < 1) or not np.all(np.isfinite(ns)):
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    rank = int(np.count_nonzero(lam > 0))
    if ridge == 0 and np.any(ns >= rank):
        raise ValueError(f"with ridge = 0, n_train must be below the number of positive eigenvalues ({rank}); "
                         f"got n_train up to {ns.max():g}: give more modes or a ridge > 0")
    out = np.empty(ns.shape)
    for idx, p in np.ndenumerate(ns):
        kappa = _effective_ridge(lam, p, ridge)
        learn = lam / (lam + kappa)
        e0 = p / (p - np.sum(learn**2))
        out[idx] = e0 * np.sum((1 - learn) ** 2 * power)
    return out


def _effective_ridge(lam: np.ndarray, p: float, ridge: float) -> float:
    """The root ``kappa`` of ``sum lambda / (lambda + kappa) + ridge / kappa = p`` (decreasing in ``kappa``)."""
    def excess(log_kappa: float) -> float:
        k = np.exp(log_kappa)
        return float(np.sum(lam / (lam + k)) + ridge / k - p)
    top = np.log(max(float(lam.max()), ridge, 1e-300)) + np.log(max(p, 1.0)) + 5
    bottom = np.log(max(float(lam[lam > 0].min()), 1e-300)) - 60
    if excess(bottom) < 0:  # only when ridge = 0 and p is within round-off of the rank
        raise ValueError(f"no effective ridge solves the equation for n_train = {p:g}: too few modes")
    return float(np.exp(brentq(excess, bottom, top, xtol=1e-12, rtol=1e-12)))


def nystrom_spectrum(kernel_matrix: np.ndarray, target_covariance: np.ndarray | None = None,
                     target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's operator eigenvalues and a target's power, estimated from ``M`` i.i.d. samples.

    ``lambda_i = eig_i(K) / M`` with unit eigenvectors ``u_i``; a Gaussian-process target with covariance
    ``C`` has expected power ``v_i^2 = u_i^T C u_i / M``, a given target ``y`` has ``v_i^2 = (u_i^T y)^2 / M``
    (summed over its columns). The sums over ``i`` are the sample means of ``K(x, x)``, ``C(x, x)``, ``y^2``.

    Args:
      kernel_matrix: ``(M, M)`` symmetric PSD kernel on the samples.
      target_covariance: ``(M, M)`` the target's covariance on the same samples, or ``(T, M, M)`` for ``T``
        targets at once (one eigendecomposition), or
      target: ``(M,)`` or ``(M, outputs)`` the target's values (exactly one of the two).

    Returns:
      ``(eigenvalues, target_power)``: eigenvalues ``(M,)`` descending; power ``(M,)``, or ``(T, M)`` for
      stacked covariances; round-off negatives set to 0.
    """
    k = np.asarray(kernel_matrix, dtype=np.float64)
    m = k.shape[0]
    if k.ndim != 2 or k.shape != (m, m) or not np.all(np.isfinite(k)):
        raise ValueError(f"kernel_matrix must be a square matrix of finite numbers, got shape {k.shape}")
    if not np.allclose(k, k.T, rtol=1e-10, atol=1e-12 * float(np.abs(k).max())):
        raise ValueError("kernel_matrix is not symmetric")
    if (target_covariance is None) == (target is None):
        raise ValueError("give exactly one of target_covariance and target")
    lam, vecs = np.linalg.eigh(k / m)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    if lam[-1] < -1e-8 * max(lam[0], 0.0):
        raise ValueError(f"kernel_matrix is not PSD: smallest eigenvalue {lam[-1] * m:.3g}")
    if target_covariance is not None:
        c = np.asarray(target_covariance, dtype=np.float64)
        if c.shape[-2:] != (m, m) or c.ndim not in (2, 3):
            raise ValueError(f"target_covariance must be {(m, m)} or (targets, {m}, {m}), got {c.shape}")
        power = np.stack([np.sum(vecs * (ci @ vecs), axis=0) / m for ci in c.reshape(-1, m, m)])
        power = power[0] if c.ndim == 2 else power
    else:
        y = np.asarray(target, dtype=np.float64).reshape(m, -1)
        power = np.sum((vecs.T @ y) ** 2, axis=1) / m
    return np.maximum(lam, 0.0), np.maximum(power, 0.0)


def asymptotic_exponent(eigenvalue_decay: float, power_decay: float) -> float:
    """``beta`` of ``E[test MSE] ~ P^-beta`` (ridgeless) for ``lambda_i ~ i^-a``, ``v_i^2 ~ i^-b``.

    ``beta = min(b - 1, 2 a)`` (Spigler, Geiger & Wyart 2020; Bordelon, Canatar & Pehlevan 2020). Needs
    ``a > 1`` (a trace-class kernel) and ``b > 1`` (a target of finite mean square).
    """
    a, b = float(eigenvalue_decay), float(power_decay)
    if not (a > 1 and b > 1):
        raise ValueError(f"need eigenvalue_decay > 1 and power_decay > 1, got {a}, {b}")
    return min(b - 1.0, 2.0 * a)
