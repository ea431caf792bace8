r"""Solves with a regularised kernel matrix ``(K + s I) X = B``: dense Cholesky, or preconditioned conjugate
gradients for kernels too large to factorise.

CG (Hestenes & Stiefel 1952) on all right-hand sides at once, preconditioned by a rank-``r`` pivoted Cholesky
factor ``L`` of ``K`` (Harbrecht, Peters & Schneider 2012; as in Gardner et al. 2018, GPyTorch):
``P = L L^T + s I``, applied through Woodbury, ``P^{-1} v = (v - L (s I + L^T L)^{-1} L^T v) / s``; ``K`` is read,
never copied or factorised (its only extra memory is ``L``, ``N x rank``). Converged means every
column's true residual ``||B - (K + s I) X|| <= tol ||B||``; otherwise a ``ValueError`` says what was reached. The
iteration runs to ``tol / 100`` in its recursive residual (which keeps falling below rounding), so the answer sits
at the working precision's floor, not just under ``tol``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import linalg as jsl

Array = jax.Array
SOLVERS = ("cholesky", "cg")


class CgInfo(NamedTuple):
    iterations: Array  # ()
    residual: Array  # (k,) relative residual of each column


def default_tol(dtype: Any) -> float:
    """Relative residual CG aims for: 1e-3 in float32 (its rounding floor is 3e-5 to 1.1e-4 for a ReLU NTK at
    N = 2,000 with diag_reg = 1e-3; see benchmarks/README.md for the posterior mean's error), 1e-8 in float64."""
    return 1e-3 if np.dtype(dtype) == np.float32 else 1e-8


def pivoted_cholesky(k: Array, rank: int) -> Array:
    """Rank-``rank`` pivoted (greedy) Cholesky factor ``L`` (``(N, rank)``) with ``K ~ L L^T``, exact on the
    chosen pivots; ``O(N rank^2)``."""
    n = k.shape[0]
    rank = min(rank, n)

    def step(carry, i):
        factor, residual_diag = carry
        pivot = jnp.argmax(residual_diag)
        column = k[:, pivot] - factor @ factor[pivot]
        scale = jnp.sqrt(jnp.maximum(residual_diag[pivot], 0.0))
        column = jnp.where(scale > 0, column / jnp.where(scale > 0, scale, 1.0), 0.0)
        factor = factor.at[:, i].set(column)
        return (factor, jnp.maximum(residual_diag - column**2, 0.0)), None

    init = (jnp.zeros((n, rank), k.dtype), jnp.diagonal(k))
    (factor, _), _ = jax.lax.scan(step, init, jnp.arange(rank))
    return factor


def _matvec(k: Array, v: Array, shift: Array) -> Array:
    """``(K + shift I) V``."""
    return k @ v + shift * v


def cg_solve(k: Array, b: Array, shift: Any, *, tol: float | None = None, max_iter: int | None = None,
             rank: int = 512) -> tuple[Array, CgInfo]:
    """``(K + shift I)^{-1} B`` by preconditioned CG; ``B`` is ``(N,)`` or ``(N, k)``. Raises ``ValueError`` if
    some column has not reached ``tol`` (default :func:`default_tol`) within ``max_iter`` (default ``N``)."""
    squeeze = b.ndim == 1
    b2 = b[:, None] if squeeze else b
    n = k.shape[0]
    tol = default_tol(k.dtype) if tol is None else tol
    max_iter = n if max_iter is None else max_iter
    shift = jnp.asarray(shift, k.dtype)
    if not float(shift) > 0:
        raise ValueError("conjugate gradients need diag_reg > 0 (a regularised, positive definite kernel)")
    x, info = _cg(k, b2, shift, jnp.asarray(tol / 100, k.dtype), max_iter, min(rank, n))
    worst = float(jnp.max(info.residual))
    if not worst <= tol:
        raise ValueError(f"conjugate gradients reached a relative residual of {worst:.2g} after "
                         f"{int(info.iterations)} iterations, not {tol:g} ({k.dtype}): raise diag_reg, use float64 "
                         "or solver='cholesky'")
    return (x[:, 0] if squeeze else x), info


@jax.jit(static_argnames=("max_iter", "rank"))
def _cg(k: Array, b: Array, shift: Array, tol: Array, max_iter: int, rank: int) -> tuple[Array, CgInfo]:
    factor = pivoted_cholesky(k, rank)
    inner = jsl.cho_factor(shift * jnp.eye(rank, dtype=k.dtype) + factor.T @ factor)

    def precondition(v):
        return (v - factor @ jsl.cho_solve(inner, factor.T @ v)) / shift

    b_norm = jnp.linalg.norm(b, axis=0)
    b_norm = jnp.where(b_norm > 0, b_norm, 1.0)
    x = jnp.zeros_like(b)
    r = b
    z = precondition(r)
    p = z
    rz = jnp.sum(r * z, axis=0)

    def cond(state):
        i, _, r, _, _, _ = state
        return (i < max_iter) & jnp.any(jnp.linalg.norm(r, axis=0) > tol * b_norm)

    def body(state):
        i, x, r, p, z, rz = state
        q = _matvec(k, p, shift)
        active = jnp.linalg.norm(r, axis=0) > tol * b_norm
        alpha = jnp.where(active, rz / jnp.where(active, jnp.sum(p * q, axis=0), 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * q
        z = precondition(r)
        rz_new = jnp.sum(r * z, axis=0)
        beta = jnp.where(active, rz_new / jnp.where(rz != 0, rz, 1.0), 0.0)
        p = z + beta * p
        return i + 1, x, r, p, z, rz_new

    i, x, r, *_ = jax.lax.while_loop(cond, body, (jnp.asarray(0), x, r, p, z, rz))
    # The recursive residual drifts from the true one in finite precision: report the true one.
    true_r = b - _matvec(k, x, shift)
    return x, CgInfo(i, jnp.linalg.norm(true_r, axis=0) / b_norm)
