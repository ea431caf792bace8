r"""Signature kernels (Salvi et al. 2021) and neural signature kernels (Muca Cirone, Lemercier & Salvi 2023).

Paths are arrays ``(N, T, d)``: ``N`` paths of ``T >= 2`` points in ``R^d``, time along axis 1, read as the
piecewise-linear interpolation of the points. Both kernels are invariant under reparametrisation, so sample times are
not needed, and two sets of paths may have different ``T`` (the same ``d``).

**Signature kernel.** ``k(x, y) = <S(x), S(y)> = sum_k <S^k(x), S^k(y)>`` (``S^0 = 1``, Hilbert-Schmidt products of
the levels) is ``K(1, 1)`` for the solution of the Goursat problem

    d^2 K / ds dt = K(s, t) <x'(s), y'(t)>,    K(0, t) = K(s, 0) = 1,

(Salvi, Cass, Foster, Lyons & Yang 2021). On one straight segment
``K = sum_k <dx, dy>^k / (k!)^2 = I_0(2 sqrt(<dx, dy>))``.

**Neural signature kernel.** The homogeneous controlled ResNet of width ``n`` (weights shared by all steps)

    Y_0 = sigma_0 z,   Y_{r+1} = Y_r + sum_k (sigma_A / sqrt(n) A_k phi(Y_r) + sigma_b b_k) (x^k_{r+1} - x^k_r),
    f(x) = <v, Y_last> / sqrt(n),     z, v, A_k, b_k with iid N(0, 1) entries,

has, as ``n -> inf`` and then its steps refine the path, the output covariance ``K(1, 1)`` of the PDE system

    d^2 K^{xy} / ds dt = (sigma_A^2 E[phi(U) phi(V)] + sigma_b^2) <x'(s), y'(t)>,
    K^{xy}(0, .) = K^{xy}(., 0) = sigma_0^2,
    (U, V) ~ N(0, [[K^{xx}(s, s), K^{xy}(s, t)], [K^{xy}(s, t), K^{yy}(t, t)]])

(Muca Cirone, Lemercier & Salvi 2023, ICML; the Gaussian expectation is the activation's dual,
:meth:`theory.activations.Activation.expectations`). Every pair needs the diagonals ``K^{xx}(s, s)`` of both paths, each
the solution of the same system for the path with itself. For ``phi = identity`` the system is linear and

    K_id(x, y) = (sigma_0^2 + sigma_b^2 / sigma_A^2) k(sigma_A x, sigma_A y) - sigma_b^2 / sigma_A^2      (sigma_A > 0),

so ``sigma_0 = sigma_A = 1, sigma_b = 0`` is the signature kernel itself (``sigma_A = 0``:
``sigma_0^2 + sigma_b^2 <x_1 - x_0, y_1 - y_0>``).

**Scheme and its error.** Each segment of each path is cut into ``m`` equal steps (the *refinement*), and on every
cell of the ``m (T_x - 1) x m (T_y - 1)`` grid the integral form of the PDE,
``K11 - K10 - K01 + K00 = c (F00 + F10 + F01 + F11) / 4`` with ``c`` the cell's ``<dx, dy>`` and
``F = sigma_A^2 E[phi phi] + sigma_b^2``, is solved exactly for the new corner (the tensor trapezoid rule, implicit:
each row of the grid by Newton's method, whose linearised system is bidiagonal). The scheme is symmetric, and on
the piecewise-linear paths' cells the solution is smooth, so its error is ``C_2 m^-2 + O(m^-4)`` (for the signature
kernel; relu-type duals, whose slope is infinite at correlation 1, can leave an ``m^-3`` term on a path's own
diagonal). The kernel is extrapolated from refinements ``m, 2m, 4m, ...`` (Richardson, ``E = (4 T_{2m} - T_m) / 3``)
until two successive extrapolations agree to ``rtol`` times the pair's scale ``sqrt(K(x, x) K(y, y))``; that
difference bounds the returned value's error (by a factor ``2^p - 1`` in the asymptotic regime, ``p`` the next
order). :func:`controlled_resnet_kernel` is the explicit (Euler) recursion instead: the exact infinite-width kernel of
the network with ``m`` steps per segment, first order in ``1/m``.

Derivation, scaling and measured accuracy: docs/signature_kernels.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory import activations, tiling
from theory.activations import Activation
from theory.kernels import check_quadrature, series_activation

Array = jax.Array

__all__ = ["DEFAULT_MAX_REFINEMENT", "DEFAULT_RTOL", "SignatureKernelSolution", "controlled_resnet_kernel",
           "neural_signature_kernel", "signature_kernel", "solve", "trapezoid_kernel"]

DEFAULT_RTOL = 1e-6
"""Default bound on the extrapolated kernel's error estimate, relative to each pair's scale ``sqrt(K(x,x) K(y,y))``
(float64). The estimate is the difference of the last two extrapolations, ~15x the actual error when the scheme is
in its asymptotic regime (measured: docs/signature_kernels.md)."""

DEFAULT_MAX_REFINEMENT = 256
"""Default finest refinement (steps per path segment) tried before the solver refuses."""

NEWTON_ITERATIONS = 40
"""Most Newton iterations per grid row; a row that has not converged marks the level as unusable (it is refined)."""

DEFAULT_MEMORY_BUDGET = 2**28
"""Bytes of temporaries per tile of pairs."""


@dataclass(frozen=True)
class SignatureKernelSolution:
    """The extrapolated kernel ``(N, M)``, its error estimate ``(N, M)`` (absolute: the difference of the last two
    extrapolations), the finest refinement used (steps per path segment) and the kernel at every refinement tried
    (``levels``: ``((m, kernel), ...)``, the trapezoid scheme without extrapolation)."""

    kernel: np.ndarray
    error: np.ndarray
    refinement: int
    levels: tuple[tuple[int, np.ndarray], ...]


@dataclass(frozen=True)
class _Params:
    activation: Activation
    sigma_0: Any  # floats, or traced scalars inside the compiled programs
    sigma_a: Any
    sigma_b: Any

    @property
    def linear(self) -> bool:
        return self.activation.name == "identity" and self.activation.dual is not None


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def _as_paths(name: str, x: object) -> np.ndarray | Array:
    if isinstance(x, jax.core.Tracer):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be an array of paths (N, T, d): {err}") from None
        if arr.dtype == object or np.iscomplexobj(arr):
            raise ValueError(f"{name} must be a real array of paths (N, T, d), got dtype {arr.dtype}")
    if arr.ndim != 3:
        hint = " (one path: x[None])" if arr.ndim == 2 else ""
        raise ValueError(f"{name} must have shape (N paths, T points, d dimensions), got shape {tuple(arr.shape)}"
                         f"{hint}")
    n, t, d = arr.shape
    if n < 1 or d < 1:
        raise ValueError(f"{name} must hold at least one path of at least one dimension, got shape {tuple(arr.shape)}")
    if t < 2:
        raise ValueError(f"{name} has {t} time point(s) per path; a path needs at least 2 (a start and an end) "
                         "along axis 1 of (N, T, d)")
    if not isinstance(arr, jax.core.Tracer):
        finite = np.isfinite(arr)
        if not finite.all():
            i, j, _ = np.argwhere(~finite)[0]
            raise ValueError(f"{name} contains NaN or inf (first in path {i}, time point {j}); clean or drop it")
    return arr


def _check_paths(x: object, y: object | None) -> tuple[Array, Array, bool]:
    xa = _as_paths("x", x)
    ya = xa if y is None else _as_paths("y", y)
    if xa.shape[2] != ya.shape[2]:
        raise ValueError(f"x and y must be paths in the same dimension, got d = {xa.shape[2]} and {ya.shape[2]} "
                         "(shapes (N, T, d))")
    dtype = jnp.result_type(float) if y is None else jnp.result_type(xa.dtype, ya.dtype, float)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return jnp.asarray(xa, dtype), jnp.asarray(ya, dtype), y is None


def _check_sigma(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite real >= 0, got {value!r}")
    return float(value)


def _params(activation: object, sigma_0: object, sigma_a: object, sigma_b: object) -> _Params:
    return _Params(activations.get(activation), _check_sigma("sigma_0", sigma_0), _check_sigma("sigma_a", sigma_a),
                   _check_sigma("sigma_b", sigma_b))


def _check_refinement(refinement: object) -> int:
    if isinstance(refinement, bool) or not isinstance(refinement, numbers.Integral) or refinement < 1:
        raise ValueError(f"refinement (steps per path segment) must be an integer >= 1, got {refinement!r}")
    return int(refinement)


# ----------------------------------------------------------------------------------------------------------------
# One row of the grid


def _drive(p: _Params, q11: Array, k: Array, q22: Array) -> tuple[Array, Array]:
    """``F = sigma_A^2 E[phi(U) phi(V)] + sigma_b^2`` and ``dF / dK = sigma_A^2 E[phi'(U) phi'(V)]`` (Price)."""
    if not p.linear:  # Cauchy-Schwarz: a rounded covariance beyond it has no Gaussian (relu's arccos would be NaN)
        bound = jnp.sqrt(jnp.maximum(q11 * q22, 0))
        k = jnp.clip(k, -bound, bound)
    e, de = p.activation.expectations(q11, k, q22)
    return p.sigma_a**2 * e + p.sigma_b**2, p.sigma_a**2 * de


def _cumsum(v: Array) -> Array:
    """Inclusive cumulative sum along the last axis by two small triangular products (blocks of 32, then the
    blocks' totals): XLA's CPU cumsum is a log-depth scan whose program grows with the length; this one does not."""
    length = v.shape[-1]
    size = min(length, 32)
    blocks = -(-length // size)
    w = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, blocks * size - length)]).reshape(*v.shape[:-1], blocks, size)
    inner = w @ jnp.triu(jnp.ones((size, size), v.dtype))
    offsets = inner[..., -1] @ jnp.triu(jnp.ones((blocks, blocks), v.dtype), 1)
    return (inner + offsets[..., None]).reshape(*v.shape[:-1], blocks * size)[..., :length]


def _affine_prefix(alpha: Array, beta: Array) -> Array:
    """``delta[j + 1] = alpha[j] delta[j] + beta[j]``, ``delta[0] = 0``, for ``alpha > 0``: returns ``delta[1:]``
    (last axis), as ``P[j] sum_{i <= j} beta[i] / P[i]`` with ``P[j] = prod_{i <= j} alpha[i]``."""
    prod = jnp.exp(_cumsum(jnp.log(alpha)))
    return prod * _cumsum(beta / prod)


def _newton_tol(k_prev: Array, s0: Array) -> Array:
    """Newton's stopping step: 64 ulps of the row's scale."""
    dtype = k_prev.dtype
    return 64 * jnp.finfo(dtype).eps * jnp.maximum(jnp.maximum(jnp.max(jnp.abs(k_prev)), s0), jnp.finfo(dtype).tiny)


def _newton_row(guess: Array, residual_fn: Any, a: Array, tol: Array) -> tuple[Array, Array]:
    """Solve a row ``G_j(K) = 0`` (``j = 0 .. C-1``, ``K[0]`` fixed) by Newton's method on its bidiagonal Jacobian.

    ``residual_fn(K) -> (G, F', extra)`` gives the residuals, the drive's slope at every node and, for a path with
    itself, the extra dependence of ``G_j`` on ``K[j]`` (the diagonal cell). The dependence of a path's own row on its
    new diagonal through the variance is left out (quasi-Newton; it is O(cell size)). Returns ``(K, ok)``.
    """
    def body(state):
        k, _, it = state
        g, slope, extra = residual_fn(k)
        lower = 1 + a * slope[..., :-1] + extra
        upper = 1 - a * slope[..., 1:]
        safe = jnp.abs(upper) >= 0.5
        delta = _affine_prefix(lower / jnp.where(safe, upper, 1.0), -g / jnp.where(safe, upper, 1.0))
        delta = jnp.where(jnp.all(safe), delta, jnp.nan)  # a cell too coarse for the scheme: refine (the caller)
        k = k.at[..., 1:].add(delta)
        change = jnp.max(jnp.abs(delta), initial=0.0)
        return k, change, it + 1

    def cond(state):
        _, change, it = state
        return (it < NEWTON_ITERATIONS) & (change > tol) & jnp.isfinite(change)

    k, change, _ = jax.lax.while_loop(cond, body, (guess, jnp.asarray(jnp.finfo(guess.dtype).max, guess.dtype), 0))
    return k, jnp.isfinite(change) & (change <= tol)


def _self_scan(dx: Array, p: _Params, m: int, scheme: str) -> tuple[Array, Array]:
    """Diagonals ``K^{xx}(s_r, s_r)``, ``r = 0 .. R`` (``R = m (T - 1)``), of each path with itself: ``(B, R + 1)``,
    and whether every row converged."""
    b, segments, _ = dx.shape
    rows = m * segments
    dtype = dx.dtype
    fine = jnp.repeat(dx / m, m, axis=1)  # (B, R, d): the refined path's increments
    s0 = jnp.asarray(p.sigma_0**2, dtype)
    cols = jnp.arange(rows + 1)

    def step(carry, xs):
        k_prev, f_prev, q, ok = carry  # (B, R + 1) each; q: diagonal so far (valid up to r)
        r, inc = xs
        c = jnp.einsum("bd,btd->bt", inc, fine)  # (B, R): <dx_r, dx_j> on the refined grid
        valid = cols[:-1] <= r  # cells of the new row at or left of the diagonal
        if scheme == "euler":
            d = k_prev[:, 1:] - k_prev[:, :-1] + c * f_prev[:, :-1]
            d = jnp.where(cols[:-1] < r, d, 0.0)
            k_new = jnp.concatenate([jnp.full((b, 1), s0, dtype), s0 + _cumsum(d)], axis=-1)
            diag = 2 * k_new[:, r] - k_prev[:, r] + c[:, r] * f_prev[:, r]  # K(r, r + 1) = K(r + 1, r)
            k_new = jnp.where(cols > r, diag[:, None], k_new)
            row_ok = ok
        else:
            a = jnp.where(valid, c / 4, 0.0)
            at_diag = cols[:-1] == r
            nodes = cols <= r + 1
            tol = _newton_tol(k_prev, s0)

            def residual_fn(k):
                qr = k[:, r + 1][:, None]
                f, slope = _drive(p, qr, k, jnp.where(cols <= r, q, qr))
                f, slope = jnp.where(nodes, f, 0.0), jnp.where(nodes, slope, 0.0)
                # Cell j: K[j+1] - K[j] - (P[j+1] - P[j]) - a_j (Fp[j] + Fp[j+1] + F[j] + F[j+1]) with P, Fp the
                # previous row; on the diagonal cell (j = r) its K(r, r + 1), F(r, r + 1) are this row's K(r + 1, r),
                # F(r + 1, r) (symmetry). Beyond the diagonal the row is continued flat.
                p_next = jnp.where(at_diag, k[:, :-1], k_prev[:, 1:])
                fp_next = jnp.where(at_diag, f[:, :-1], f_prev[:, 1:])
                g = (k[:, 1:] - k[:, :-1] - (p_next - k_prev[:, :-1])
                     - a * (f_prev[:, :-1] + fp_next + f[:, :-1] + f[:, 1:]))
                g = jnp.where(valid, g, k[:, 1:] - k[:, :-1])
                return g, slope, jnp.where(at_diag, 1 + a * slope[:, :-1], 0.0)

            d0 = jnp.where(valid & ~at_diag, k_prev[:, 1:] - k_prev[:, :-1] + 2 * a * (f_prev[:, :-1] + f_prev[:, 1:]),
                           0.0)
            guess = jnp.concatenate([jnp.full((b, 1), s0, dtype), s0 + _cumsum(d0)], axis=-1)
            guess = jnp.where(cols > r, (2 * guess[:, r] - k_prev[:, r] + 4 * a[:, r] * f_prev[:, r])[:, None], guess)
            k_new, row_ok = _newton_row(guess, residual_fn, a, tol)
            row_ok = ok & row_ok
        qr = k_new[:, r + 1]
        q = q.at[:, r + 1].set(qr)
        qq = jnp.where(cols <= r + 1, q, qr[:, None])
        f_new, _ = _drive(p, qr[:, None], k_new, qq)
        return (k_new, f_new, q, row_ok), None

    k0 = jnp.full((b, rows + 1), s0, dtype)
    q0 = jnp.full((b, rows + 1), s0, dtype)
    f0, _ = _drive(p, q0[:, :1], k0, q0)
    (_, _, q, ok), _ = jax.lax.scan(step, (k0, f0, q0, jnp.asarray(True)), (jnp.arange(rows), jnp.swapaxes(fine, 0, 1)))
    return q, ok


def _cross_scan(dx: Array, dy: Array, qx: Array, qy: Array, p: _Params, m: int, scheme: str) -> tuple[Array, Array]:
    """``K^{xy}`` at the end of both paths for every pair of a tile: ``(Bx, By)``, and whether every row converged.
    ``qx (Bx, R + 1)``, ``qy (By, C + 1)``: the paths' diagonals at the same refinement."""
    bx = dx.shape[0]
    by = dy.shape[0]
    ncols = m * dy.shape[1]
    dtype = dx.dtype
    s0 = jnp.asarray(p.sigma_0**2, dtype)
    qy_b = qy[None]  # (1, By, C + 1)
    fine_y = jnp.repeat(dy / m, m, axis=1)  # (By, C, d)

    def step(carry, xs):
        k_prev, f_prev, ok = carry  # (Bx, By, C + 1)
        inc, q_r = xs  # (Bx, d): the refined increment of row r; (Bx,): x's diagonal at row r + 1
        c = jnp.einsum("bd,ctd->bct", inc, fine_y)  # (Bx, By, C)
        q_r = q_r[:, None, None]
        first = jnp.full((bx, by, 1), s0, dtype)
        if scheme == "euler":
            d = k_prev[..., 1:] - k_prev[..., :-1] + c * f_prev[..., :-1]
            k_new = jnp.concatenate([first, s0 + _cumsum(d)], axis=-1)
            row_ok = ok
        else:
            a = c / 4
            base = k_prev[..., 1:] - k_prev[..., :-1] + a * (f_prev[..., :-1] + f_prev[..., 1:])
            guess = jnp.concatenate([first, s0 + _cumsum(base + a * (f_prev[..., :-1] + f_prev[..., 1:]))], axis=-1)
            tol = _newton_tol(k_prev, s0)

            def residual_fn(k):
                f, slope = _drive(p, q_r, k, qy_b)
                g = k[..., 1:] - k[..., :-1] - base - a * (f[..., :-1] + f[..., 1:])
                return g, slope, 0.0

            k_new, row_ok = _newton_row(guess, residual_fn, a, tol)
            row_ok = ok & row_ok
        f_new, _ = _drive(p, q_r, k_new, qy_b)
        return (k_new, f_new, row_ok), None

    k0 = jnp.full((bx, by, ncols + 1), s0, dtype)
    f0, _ = _drive(p, qx[:, :1, None], k0, qy_b)
    xs = (jnp.swapaxes(jnp.repeat(dx / m, m, axis=1), 0, 1), jnp.swapaxes(qx[:, 1:], 0, 1))
    (k, _, ok), _ = jax.lax.scan(step, (k0, f0, jnp.asarray(True)), xs)
    return k[..., -1], ok


def _traced(p: _Params, dtype: Any) -> tuple[Activation, Array]:
    """The compiled programs take the activation as static and the sigmas as an array (one program for all)."""
    return p.activation, jnp.asarray([p.sigma_0, p.sigma_a, p.sigma_b], dtype)


def _self_jit(dx: Array, *, p: _Params, m: int, scheme: str) -> tuple[Array, Array]:
    act, sig = _traced(p, dx.dtype)
    return _self_compiled(dx, sig, act=act, m=m, scheme=scheme)


def _cross_jit(dx: Array, dy: Array, qx: Array, qy: Array, *, p: _Params, m: int, scheme: str):
    act, sig = _traced(p, dx.dtype)
    return _cross_compiled(dx, dy, qx, qy, sig, act=act, m=m, scheme=scheme)


@functools.partial(jax.jit, static_argnames=("act", "m", "scheme"))
def _self_compiled(dx: Array, sig: Array, *, act: Activation, m: int, scheme: str) -> tuple[Array, Array]:
    return _self_scan(dx, _Params(act, *sig), m, scheme)


@functools.partial(jax.jit, static_argnames=("act", "m", "scheme"))
def _cross_compiled(dx: Array, dy: Array, qx: Array, qy: Array, sig: Array, *, act: Activation, m: int, scheme: str):
    return _cross_scan(dx, dy, qx, qy, _Params(act, *sig), m, scheme)


# ----------------------------------------------------------------------------------------------------------------
# One refinement level, tiled over pairs


_BYTES_PER_NODE = 8 * 24  # float64 temporaries per pair and grid column of a row (Newton, scan, duals)


def _windows(total: int, size: int) -> list[tuple[int, int, int]]:
    """``(nominal start, window start, nominal length)`` of equal windows of ``size`` over ``total`` rows."""
    plan = tiling.Tiling(total, 1, size, 1, False)
    return [plan.span(i, 0) for i in range(plan.grid[0])]


def _diagonals(dx: Array, p: _Params, m: int, scheme: str, budget: int) -> tuple[Array, Array]:
    """Every path's diagonal ``(B, m S + 1)`` with itself, in chunks of paths within ``budget``; and ``ok``."""
    n, segments, _ = dx.shape
    size = max(1, min(n, budget // (_BYTES_PER_NODE * (m * segments + 1))))
    parts, ok = [], jnp.asarray(True)
    for start, window, length in _windows(n, size):
        q, good = _self_jit(dx[window:window + size], p=p, m=m, scheme=scheme)
        parts.append(q[start - window:start - window + length])
        ok = ok & good
    return jnp.concatenate(parts), ok


def _segments_bucket(s: int) -> int:
    """Paths are padded (zero increments: the kernel is unchanged) to 1, 2, 3, 4, 6, 8, 12, ... segments, so that
    paths of nearby lengths share one compiled program."""
    b = 1
    while b < s:
        b = b + b // 2 if b >= 2 and (b & (b - 1)) == 0 else (b // 3) * 4 if b % 3 == 0 else 2 * b
    return b


def _increments(xa: Array, ya: Array) -> tuple[Array, Array]:
    """Both sets of paths' increments, padded with zero increments to one bucketed number of segments."""
    s = _segments_bucket(max(xa.shape[1], ya.shape[1]) - 1)
    dx, dy = jnp.diff(xa, axis=1), jnp.diff(ya, axis=1)
    return (jnp.pad(dx, ((0, 0), (0, s - dx.shape[1]), (0, 0))), jnp.pad(dy, ((0, 0), (0, s - dy.shape[1]), (0, 0))))


def _level(dx: Array, dy: Array, symmetric: bool, p: _Params, m: int, scheme: str, budget: int):
    """The kernel ``(N, M)`` of one scheme at refinement ``m``, both paths' diagonals, and whether Newton converged.
    ``dx``, ``dy``: increments with the same number of segments."""
    n, mm = dx.shape[0], dy.shape[0]
    both = dx if symmetric else jnp.concatenate([dx, dy])
    nodes = m * dx.shape[1] + 1
    plan = tiling.plan_tiles(n, mm, max(1, budget // (_BYTES_PER_NODE * nodes)), symmetric)
    if len(plan.tiles()) == 1 and both.shape[0] * nodes * _BYTES_PER_NODE <= budget:
        act, sig = _traced(p, dx.dtype)
        return _one_tile_jit(both, sig, n=n, act=act, m=m, scheme=scheme, symmetric=symmetric)  # one program
    q, ok = _diagonals(both, p, m, scheme, budget)
    qx, qy = (q, q) if symmetric else (q[:n], q[n:])
    out = jnp.zeros((n, mm), dx.dtype)
    for i, j in plan.tiles():
        (r0, wr, _), (c0, wc, _) = plan.span(i, 0), plan.span(j, 1)
        block, good = _cross_jit(dx[wr:wr + plan.size_r], dy[wc:wc + plan.size_c], qx[wr:wr + plan.size_r],
                                 qy[wc:wc + plan.size_c], p=p, m=m, scheme=scheme)
        (out,) = tiling.place((out,), (block,), jnp.array([wr, wc]), jnp.array([r0, c0]), mirror=symmetric)
        ok = ok & good
    return out, qx, qy, ok


@functools.partial(jax.jit, static_argnames=("n", "act", "m", "scheme", "symmetric"))
def _one_tile_jit(both: Array, sig: Array, *, n: int, act: Activation, m: int, scheme: str, symmetric: bool):
    p = _Params(act, *sig)
    q, ok = _self_scan(both, p, m, scheme)
    dx, qx = both[:n], q[:n]
    dy, qy = (dx, qx) if symmetric else (both[n:], q[n:])
    k, ok_k = _cross_scan(dx, dy, qx, qy, p, m, scheme)
    if symmetric:
        k = (k + k.T) / 2
    return k, qx, qy, ok & ok_k


# ----------------------------------------------------------------------------------------------------------------
# Activations without a closed form: a Hermite series for the variances met


def _with_dual(p: _Params, seen: float) -> _Params:
    """``p`` with an automatic activation given the Hermite series accurate at variances up to ``1.25 seen``."""
    if not p.activation.automatic:
        return p
    return dataclasses.replace(p, activation=series_activation(p.activation, max(1.25 * seen, 1.0)))


def _check_dual(p: _Params, seen: float) -> bool:
    """False when the chosen series does not cover the variances met (choose again); raises where a 2-D rule is
    inaccurate at them (:class:`theory.QuadratureAccuracyError`)."""
    act = p.activation
    if act.series is not None:
        return seen <= act.series.variance
    if act.dual is None:
        check_quadrature(act, seen)
    return True


def _concrete_params(p: _Params, dx: Array, dy: Array, symmetric: bool, m: int, budget: int) -> _Params:
    if not p.activation.automatic:
        return p
    probe = dataclasses.replace(p, activation=dataclasses.replace(p.activation, quadrature_degree=p.activation.degree))
    q, _ = _diagonals(dx if symmetric else jnp.concatenate([dx, dy]), probe, m, "trapezoid", budget)
    return _with_dual(p, float(jnp.max(q)))


def _is_traced(*arrays: Any) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


# ----------------------------------------------------------------------------------------------------------------
# Public functions


def _fixed_level(x: object, y: object | None, activation: object, sigma_0: object, sigma_a: object,
                 sigma_b: object, refinement: object, memory_budget: int, scheme: str) -> Array:
    xa, ya, symmetric = _check_paths(x, y)
    p = _params(activation, sigma_0, sigma_a, sigma_b)
    m = _check_refinement(refinement)
    dx, dy = _increments(xa, ya)
    if _is_traced(dx, dy):  # under jit: automatic activations use the 2-D rule, unchecked (as theory.kernels does)
        if p.activation.automatic:
            p = dataclasses.replace(p, activation=dataclasses.replace(p.activation,
                                                                      quadrature_degree=p.activation.degree))
        return _level(dx, dy, symmetric, p, m, scheme, memory_budget)[0]
    p = _concrete_params(p, dx, dy, symmetric, m, memory_budget)
    for _ in range(4):
        k, qx, qy, ok = _level(dx, dy, symmetric, p, m, scheme, memory_budget)
        seen = max(float(jnp.max(qx)), float(jnp.max(qy)))
        if _check_dual(p, seen):
            break
        p = dataclasses.replace(p, activation=series_activation(dataclasses.replace(p.activation, series=None),
                                                                 1.25 * seen))
    if not bool(ok):
        raise ValueError(f"the trapezoid scheme at refinement {m} has a cell too coarse for it (|<dx, dy>| sigma_a^2 "
                         "/ 4 near 1) or did not converge; use a larger refinement")
    return k


def trapezoid_kernel(x: object, y: object | None = None, activation: str | Activation = "identity", *,
                     sigma_0: float = 1.0, sigma_a: float = 1.0, sigma_b: float = 0.0, refinement: int = 1,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Array:
    """The (neural) signature kernel by the trapezoid scheme at one refinement, without extrapolation (module
    docstring; error ``C_2 / refinement^2 + ...``). For studying the scheme; :func:`neural_signature_kernel` is the
    accurate one. Jittable (then automatic activations use the 2-D Gauss-Hermite rule).

    Args:
      x: paths ``(N, T_x, d)``; y: paths ``(M, T_y, d)`` or ``None`` (``x`` with itself).
      activation, sigma_0, sigma_a, sigma_b: the controlled ResNet (module docstring).
      refinement: steps per path segment ``m``.

    Returns:
      ``(N, M)``.
    """
    return _fixed_level(x, y, activation, sigma_0, sigma_a, sigma_b, refinement, memory_budget, "trapezoid")


def controlled_resnet_kernel(x: object, y: object | None = None, activation: str | Activation = "identity", *,
                             sigma_0: float = 1.0, sigma_a: float = 1.0, sigma_b: float = 0.0, refinement: int = 1,
                             memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Array:
    """The infinite-width output kernel of the controlled ResNet with ``refinement`` Euler steps per path segment
    (depth ``refinement (T - 1)``; weights shared by all steps), exactly: the explicit recursion

        K(r+1, j+1) = K(r+1, j) + K(r, j+1) - K(r, j) + (sigma_A^2 E[phi(U) phi(V)] + sigma_b^2) <dx_r, dy_j>,

    ``K(0, .) = K(., 0) = sigma_0^2``, ``(U, V)`` Gaussian with the covariances ``K^{xx}(r, r), K(r, j), K^{yy}(j, j)``
    (Muca Cirone, Lemercier & Salvi 2023). It converges to :func:`neural_signature_kernel` as ``1 / refinement``.

    Args:
      x: paths ``(N, T_x, d)``; y: paths ``(M, T_y, d)`` or ``None`` (``x`` with itself).
      activation, sigma_0, sigma_a, sigma_b: the network (module docstring).
      refinement: Euler steps per path segment.

    Returns:
      ``(N, M)``: the covariance of the outputs ``f(x), f(y)``, ``E[<Y^x, Y^y>] / n`` as ``n -> inf``.
    """
    return _fixed_level(x, y, activation, sigma_0, sigma_a, sigma_b, refinement, memory_budget, "euler")


def _initial_refinement(dx: Array, dy: Array, sigma_a: float) -> int:
    """The smallest power of 2 with ``max |<dx, dy>| max(sigma_a^2, 1) / m^2 <= 1/2`` (Cauchy-Schwarz bound)."""
    bound = float(jnp.max(jnp.linalg.norm(dx, axis=-1))) * float(jnp.max(jnp.linalg.norm(dy, axis=-1)))
    need = math.sqrt(2 * bound * max(sigma_a**2, 1.0))
    return 1 if need <= 1 else 2 ** math.ceil(math.log2(need))


def solve(x: object, y: object | None = None, activation: str | Activation = "identity", *, sigma_0: float = 1.0,
          sigma_a: float = 1.0, sigma_b: float = 0.0, rtol: float | None = None,
          max_refinement: int = DEFAULT_MAX_REFINEMENT,
          memory_budget: int = DEFAULT_MEMORY_BUDGET) -> SignatureKernelSolution:
    """The neural signature kernel with its error estimate (module docstring: trapezoid scheme at refinements
    ``m, 2m, 4m, ...``, Richardson-extrapolated until two extrapolations agree to ``rtol`` of each pair's scale
    ``sqrt(K(x, x) K(y, y))``).

    Args:
      x: paths ``(N, T_x, d)``; y: paths ``(M, T_y, d)`` or ``None`` (``x`` with itself: exactly symmetric).
      activation: a registered name, an :class:`theory.Activation` or a function.
      sigma_0, sigma_a, sigma_b: the standard deviations of the initial state, the weights (times ``sqrt(n)``) and
        the biases of the controlled ResNet.
      rtol: the error bound; default :data:`DEFAULT_RTOL` (float64) or 1e-4 (float32).
      max_refinement: the finest refinement tried before refusing.
      memory_budget: bytes of temporaries per tile of pairs.

    Raises:
      ValueError: bad paths or parameters, a call under ``jax.jit`` (the refinement is chosen from values: use
        :func:`trapezoid_kernel`), or the tolerance not reached by ``max_refinement`` (the message names the
        error reached and what to change).
    """
    xa, ya, symmetric = _check_paths(x, y)
    p = _params(activation, sigma_0, sigma_a, sigma_b)
    if _is_traced(xa, ya):
        raise ValueError("neural_signature_kernel chooses its refinement from the values of the paths and cannot run "
                         "under jax.jit; call it outside, or jit trapezoid_kernel(..., refinement=m) at a fixed m")
    eps = float(jnp.finfo(xa.dtype).eps)
    if rtol is None:
        rtol = DEFAULT_RTOL if xa.dtype == jnp.float64 else 1e-4
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real) or not (1e3 * eps <= rtol < 1):
        raise ValueError(f"rtol must be a number in [{1e3 * eps:.1e}, 1) for {xa.dtype} paths, got {rtol!r}"
                         + ("; enable float64 (jax.config.update('jax_enable_x64', True)) for smaller ones"
                            if xa.dtype != jnp.float64 else ""))
    max_refinement = _check_refinement(max_refinement)
    dx, dy = _increments(xa, ya)
    m = _initial_refinement(dx, dy, p.sigma_a)
    p = _concrete_params(p, dx, dy, symmetric, m, memory_budget)
    levels: list[tuple[int, np.ndarray, np.ndarray]] = []
    best = None
    while m <= max_refinement:
        k, qx, qy, ok = _level(dx, dy, symmetric, p, m, "trapezoid", memory_budget)
        seen = max(float(jnp.max(qx)), float(jnp.max(qy)))
        if not _check_dual(p, seen):  # variances beyond the series' range: a longer series, from the start
            p = dataclasses.replace(p, activation=series_activation(dataclasses.replace(p.activation, series=None),
                                                                     1.25 * seen))
            levels = []
            continue
        if not bool(ok):  # Newton failed on cells too coarse for the scheme: refine, from the start
            levels, m = [], 2 * m
            continue
        scale = np.sqrt(np.outer(np.asarray(qx[:, -1]), np.asarray(qy[:, -1])))
        levels.append((m, np.asarray(k), scale))
        if len(levels) >= 3:
            (_, t0, _), (_, t1, _), (_, t2, _) = levels[-3:]
            e1, e2 = (4 * t1 - t0) / 3, (4 * t2 - t1) / 3
            err = np.abs(e2 - e1)
            bound = rtol * scale + np.finfo(scale.dtype).tiny
            worst = float(np.max(err / bound))
            best = (worst, m)
            if worst <= 1:
                return SignatureKernelSolution(e2, err, m, tuple((lv, t) for lv, t, _ in levels))
        m *= 2
    reached = "" if best is None else f" (error estimate {best[0] * rtol:.2g} of the kernel's scale at refinement " \
                                      f"{best[1]})"
    raise ValueError(f"the kernel did not reach rtol = {rtol:g} by refinement {max_refinement}{reached}; raise "
                     "max_refinement (cost grows as its square), loosen rtol, or rescale the paths (the kernel grows "
                     "like exp(length(x) length(y)) and so does the resolution it needs)")


def neural_signature_kernel(x: object, y: object | None = None, activation: str | Activation = "identity", *,
                            sigma_0: float = 1.0, sigma_a: float = 1.0, sigma_b: float = 0.0,
                            rtol: float | None = None, max_refinement: int = DEFAULT_MAX_REFINEMENT,
                            memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Array:
    """The neural signature kernel ``K^{xy}(1, 1)``: the infinite-width-then-depth output covariance of homogeneous
    controlled ResNets (module docstring; Muca Cirone, Lemercier & Salvi 2023), to ``rtol`` of each pair's scale.

    ``activation="identity"`` gives ``(sigma_0^2 + sigma_b^2 / sigma_a^2) signature_kernel(sigma_a x, sigma_a y) -
    sigma_b^2 / sigma_a^2``. Arguments and errors as :func:`solve`.

    Returns:
      ``(N, M)`` (float64 when enabled).
    """
    return jnp.asarray(solve(x, y, activation, sigma_0=sigma_0, sigma_a=sigma_a, sigma_b=sigma_b, rtol=rtol,
                             max_refinement=max_refinement, memory_budget=memory_budget).kernel)


def signature_kernel(x: object, y: object | None = None, *, rtol: float | None = None,
                     max_refinement: int = DEFAULT_MAX_REFINEMENT,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Array:
    """The signature kernel ``<S(x), S(y)> = sum_k <S^k(x), S^k(y)>`` of piecewise-linear paths (Salvi et al. 2021),
    by the Goursat PDE ``d^2 K / ds dt = K <dx_s, dy_t>``, ``K = 1`` on the axes (module docstring: scheme, error).

    Args:
      x: paths ``(N, T_x, d)`` (time along axis 1, ``T_x >= 2``); y: ``(M, T_y, d)`` or ``None`` (``x`` with itself).
      rtol: bound on the error relative to ``sqrt(k(x, x) k(y, y))``; default :data:`DEFAULT_RTOL` in float64.
      max_refinement, memory_budget: as :func:`solve`.

    Returns:
      ``(N, M)``.
    """
    return neural_signature_kernel(x, y, "identity", rtol=rtol, max_refinement=max_refinement,
                                   memory_budget=memory_budget)
