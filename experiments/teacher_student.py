r"""Teacher-student data for learning curves: inputs on products of spheres, Gaussian-random-field teachers.

Inputs (Cagnetta, Favero & Wyart 2023): ``x in R^d`` cut into ``d / s`` adjacent patches of ``s`` variables, each
patch uniform on the sphere of radius ``sqrt(s)`` (so every variable has unit mean square and the input kernel
``x.x' / d`` is the mean of the patch correlations). Teachers (Spigler, Geiger & Wyart 2020; Favero, Cagnetta &
Wyart 2021): Gaussian random fields with the Laplace covariance ``C(x, x') = exp(-|x_S - x'_S| / sqrt(|S|))`` of
the variables ``S`` they depend on: the first ``s`` (a *local* teacher, one patch) or all ``d`` (a *global* one).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TEACHERS", "gaussian_field", "laplace_kernel", "sphere_patches", "teacher_covariance"]

TEACHERS = ("local", "global")


def sphere_patches(n: int, dim: int, patch: int, seed: int) -> np.ndarray:
    """``(n, dim)`` float64 inputs: ``dim / patch`` adjacent patches, each uniform on a sphere of radius sqrt(patch)."""
    if n < 1 or patch < 2 or dim < patch or dim % patch:
        raise ValueError(f"need n >= 1, patch >= 2 and dim a multiple of patch, got n={n}, dim={dim}, patch={patch}")
    g = np.random.default_rng(seed).standard_normal((n, dim // patch, patch))
    g *= np.sqrt(patch) / np.linalg.norm(g, axis=-1, keepdims=True)
    return g.reshape(n, dim)


def laplace_kernel(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """``exp(-|x1_a - x2_b| / sqrt(features))`` for ``(n1, features)`` and ``(n2, features)`` inputs: ``(n1, n2)``."""
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    sq = np.sum(x1**2, 1)[:, None] + np.sum(x2**2, 1)[None, :] - 2 * x1 @ x2.T
    return np.exp(-np.sqrt(np.maximum(sq, 0.0) / x1.shape[1]))


def teacher_covariance(x: np.ndarray, teacher: str, patch: int) -> np.ndarray:
    """The covariance on ``x`` of the ``"local"`` (first ``patch`` variables) or ``"global"`` teacher."""
    if teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; choose among {TEACHERS}")
    sub = x[:, :patch] if teacher == "local" else x
    return laplace_kernel(sub, sub)


def gaussian_field(covariance: np.ndarray, seed: int, samples: int = 1) -> np.ndarray:
    """``(n, samples)`` independent samples of ``N(0, covariance)`` (a symmetric PSD ``(n, n)`` matrix).

    By Cholesky; a singular covariance (repeated inputs) falls back to the eigendecomposition, exact all the same.
    """
    c = np.asarray(covariance, np.float64)
    z = np.random.default_rng(seed).standard_normal((c.shape[0], samples))
    try:
        return np.linalg.cholesky(c) @ z
    except np.linalg.LinAlgError:
        pass
    lam, vecs = np.linalg.eigh(c)
    if lam[0] < -1e-8 * lam[-1]:
        raise ValueError(f"covariance is not PSD: smallest eigenvalue {lam[0]:.3g}")
    return vecs @ (np.sqrt(np.maximum(lam, 0.0))[:, None] * z)
