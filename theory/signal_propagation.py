"""Signal propagation in deep MLPs at infinite width: fixed points, susceptibilities, depth scales.

For an MLP with activation ``phi``, weight variance ``C_W = w_std^2`` and bias variance ``C_b = b_std^2``
(Poole et al. 2016, "Exponential expressivity in deep neural networks through transient chaos";
Schoenholz et al. 2017, "Deep Information Propagation"; Roberts, Yaida & Hanin 2022, ch. 5):

    variance map     V(q)    = C_W E[phi(sqrt(q) z)^2] + C_b,                         q* = V(q*)
    correlation map  C(c)    = (C_W E[phi(u) phi(v)] + C_b) / q*,  (u, v) ~ N(0, q* [[1, c], [c, 1]]),  c* = C(c*)
    chi_1            = C_W E[phi'(sqrt(q*) z)^2]       (the slope of C at c = 1: order < 1 < chaos)
    chi_c            = C_W E[phi'(u) phi'(v)] at c*    (the slope of C at c*)
    chi_q            = V'(q*)                          (PDLT's parallel susceptibility)
    xi_q = -1 / ln chi_q,   xi_c = -1 / ln chi_c       (depth scales: deviations decay like exp(-l / xi))

Everything broadcasts over arrays of ``(C_W, C_b)``, so a phase diagram is one call. Fixed points are
found by iterating the maps (they are the stable ones the network actually reaches from ``q0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from theory.activations import Activation, get
from theory.gaussian import _hermite_rule

Array = jax.Array


def _activation(activation: str | Activation) -> Activation:
    return activation if isinstance(activation, Activation) else get(activation)


def _variances(w_var: object, b_var: object) -> tuple[Array, Array]:
    w, b = np.asarray(w_var, dtype=float), np.asarray(b_var, dtype=float)
    for name, value in (("w_var", w), ("b_var", b)):
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            bad = value[~(np.isfinite(value) & (value >= 0))].ravel()[0]
            raise ValueError(f"{name} must be finite and >= 0 (a variance, C_W = w_std^2 / C_b = b_std^2); got {bad}")
    w, b = np.broadcast_arrays(w, b)
    dtype = jnp.result_type(float)
    return jnp.asarray(w, dtype), jnp.asarray(b, dtype)


def variance_map(activation: str | Activation, w_var: object, b_var: object, q: object) -> Array:
    """``V(q) = C_W E[phi(sqrt(q) z)^2] + C_b`` (broadcast over all arguments)."""
    act = _activation(activation)
    w, b = _variances(w_var, b_var)
    q = jnp.asarray(q, w.dtype)
    e, _ = act.expectations(q, q, q, derivative=False)
    return w * e + b


def correlation_map(activation: str | Activation, w_var: object, b_var: object, q: object, c: object) -> Array:
    """``C(c) = (C_W E[phi(u) phi(v)] + C_b) / V(q)`` with ``(u, v) ~ N(0, q [[1, c], [c, 1]])``: the
    correlation one layer later (at a fixed point ``q = q*``, ``V(q) = q``)."""
    act = _activation(activation)
    w, b = _variances(w_var, b_var)
    q, c = jnp.asarray(q, w.dtype), jnp.asarray(c, w.dtype)
    e12, _ = act.expectations(q, c * q, q, derivative=False)
    e11, _ = act.expectations(q, q, q, derivative=False)
    return (w * e12 + b) / (w * e11 + b)


@dataclass(frozen=True)
class SignalPropagation:
    """Arrays shaped like the broadcast ``(C_W, C_b)`` grid (see the module docstring). ``converged``
    is False where the variance iteration did not settle (it diverges: no finite fixed point)."""

    q_star: np.ndarray
    c_star: np.ndarray
    chi_1: np.ndarray
    chi_c: np.ndarray
    chi_q: np.ndarray
    xi_q: np.ndarray
    xi_c: np.ndarray
    converged: np.ndarray


def signal_propagation(
    activation: str | Activation,
    w_var: object,
    b_var: object,
    *,
    q0: float = 1.0,
    c0: float = 0.5,
    iterations: int = 2000,
) -> SignalPropagation:
    """Fixed points, susceptibilities and depth scales over a grid of ``(C_W, C_b)``.

    ``q*`` iterates ``V`` from ``q0`` and ``c*`` iterates ``C`` at ``q*`` from ``c0`` (``iterations``
    steps each; near criticality convergence is a power law, so points within ~1/iterations of the
    critical line carry that error). ``chi_1 = 1`` is the order-to-chaos boundary; see
    :func:`critical_line`. Points where ``q`` leaves every bound (e.g. relu with ``C_W > 2``) get
    ``converged = False`` and NaN elsewhere.
    """
    act = _activation(activation)
    w, b = _variances(w_var, b_var)
    if not (isinstance(iterations, int) and iterations >= 1):
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if not (np.isfinite(q0) and q0 > 0):
        raise ValueError(f"q0 must be a positive variance, got {q0!r}")
    if not (-1 <= c0 <= 1):
        raise ValueError(f"c0 must be a correlation in [-1, 1], got {c0!r}")
    out = _signal_propagation(act, w, b, jnp.asarray(q0, w.dtype), jnp.asarray(c0, w.dtype), iterations)
    return SignalPropagation(*(np.asarray(a) for a in out))


def _diagonal(act: Activation, q: Array) -> tuple[Array, Array]:
    """``(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2])``: the closed form where there is one, else a 1-D
    Gauss-Hermite rule of the activation's degree (deg nodes instead of the deg^2 of a pair)."""
    if act.dual is not None:
        return act.expectations(q, q, q, derivative=True)
    nodes, weights = (jnp.asarray(a, q.dtype) for a in _hermite_rule(act.quadrature_degree))
    u = jnp.sqrt(jnp.maximum(q, 0))[..., None] * nodes
    f, df = jax.jvp(act.fn, (u,), (jnp.ones_like(u),))
    return jnp.sum(weights * f**2, axis=-1), jnp.sum(weights * df**2, axis=-1)


@jax.jit(static_argnames=("act", "iterations"))
def _signal_propagation(act, w, b, q0, c0, iterations):
    def v(q):
        return w * _diagonal(act, q)[0] + b

    q = jax.lax.fori_loop(0, iterations, lambda _, q: v(q), jnp.broadcast_to(q0, w.shape))
    converged = jnp.isfinite(q) & (jnp.abs(v(q) - q) <= 1e-6 * jnp.maximum(q, 1e-300) + 1e-12)

    def cmap(c):
        e12, _ = act.expectations(q, c * q, q, derivative=False)
        return jnp.clip((w * e12 + b) / jnp.where(q > 0, q, 1.0), -1.0, 1.0)

    def moving(state):
        i, _, change = state
        return (i < iterations) & (change > 1e-12)

    def step(state):
        i, c, _ = state
        new = cmap(c)
        return i + 1, new, jnp.max(jnp.where(jnp.isfinite(new), jnp.abs(new - c), 0.0))

    # The pair expectation costs deg^2 per point: stop as soon as no correlation moves any more.
    _, c, _ = jax.lax.while_loop(moving, step, (0, jnp.broadcast_to(c0, w.shape), jnp.asarray(jnp.inf, w.dtype)))
    _, d11 = _diagonal(act, q)
    _, d12 = act.expectations(q, c * q, q, derivative=True)
    chi_1, chi_c = w * d11, w * d12
    chi_q = jax.vmap(jax.grad(lambda qq, ww, bb: ww * _diagonal(act, qq)[0] + bb))(
        q.ravel(), w.ravel(), b.ravel()).reshape(q.shape)
    nan = jnp.full_like(q, jnp.nan)

    def depth_scale(chi):
        return jnp.where((chi > 0) & (chi < 1), -1.0 / jnp.log(jnp.where(chi > 0, chi, 1.0)), jnp.inf)

    keep = lambda a: jnp.where(converged, a, nan)  # noqa: E731
    return (keep(q), keep(c), keep(chi_1), keep(chi_c), keep(chi_q), keep(depth_scale(chi_q)),
            keep(depth_scale(chi_c)), converged)


def critical_line(activation: str | Activation, b_var: object, *, w_var_max: float = 10.0,
                  iterations: int = 2000) -> np.ndarray:
    """``C_W`` on the order-to-chaos boundary ``chi_1(C_W, C_b) = 1`` for each ``C_b`` (bisection on
    ``[0, w_var_max]``; NaN where ``chi_1 - 1`` does not change sign there)."""
    b = np.atleast_1d(np.asarray(b_var, dtype=float))
    lo, hi = np.zeros_like(b), np.full_like(b, float(w_var_max))

    def excess(w):
        sp = signal_propagation(activation, w, b, iterations=iterations)
        return np.where(sp.converged, sp.chi_1 - 1.0, np.inf)

    f_lo, f_hi = excess(lo + 1e-9), excess(hi)
    valid = (f_lo < 0) & (f_hi > 0)
    for _ in range(50):
        mid = (lo + hi) / 2
        f = excess(mid)
        lo, hi = np.where(f < 0, mid, lo), np.where(f < 0, hi, mid)
    return np.where(valid, (lo + hi) / 2, np.nan)


__all__ = ["SignalPropagation", "correlation_map", "critical_line", "signal_propagation", "variance_map"]
