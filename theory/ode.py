"""An adaptive Runge-Kutta solver for autonomous ODEs on pytrees of arrays, in JAX.

Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae": the 5th-order solution is
propagated, the embedded 4th-order one estimates the local error. A step from ``y`` with size ``h``
is accepted when ``max_i |err_i| / (atol + rtol * max(|y_i|, |y_new_i|)) <= 1`` (the maximum over
every entry of every leaf, so the tolerance holds entrywise), and the next size is
``h * clip(0.9 * ratio^(-1/5), 0.2, 5)``. The whole integration is one ``lax.while_loop``, so its
cost depends on the smoothness of the solution and the tolerance, not on anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# Butcher tableau of DOPRI5 (the 7th stage is the FSAL evaluation at the new point).
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


class Solution(NamedTuple):
    """``y`` at the end time; ``reached`` is False when ``max_steps`` ran out (or the step size
    underflowed) first; ``steps`` counts accepted and rejected steps alike."""

    y: Any
    t: jax.Array
    steps: jax.Array
    reached: jax.Array


def _combine(y, h, ks, coeffs):
    def leaf(y_leaf, *k_leaves):
        acc = y_leaf
        for c, k in zip(coeffs, k_leaves, strict=False):
            if c != 0.0:
                acc = acc + (h * c) * k
        return acc

    return jax.tree.map(leaf, y, *ks)


def _error_ratio(y, y_new, err, rtol, atol):
    def leaf(a, b, e):
        scale = atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
        r = jnp.abs(e) / scale
        return jnp.max(jnp.where(jnp.isfinite(r), r, jnp.inf), initial=0.0)

    return jnp.max(jnp.stack(jax.tree.leaves(jax.tree.map(leaf, y, y_new, err))))


def dopri5(
    rhs: Callable[[Any], Any],
    y0: Any,
    t_end: float,
    *,
    rtol: float,
    atol: float,
    max_steps: int = 10_000,
    first_step: float = 0.05,
) -> Solution:
    """Integrate ``dy/dt = rhs(y)`` from ``t = 0`` to ``t_end`` (traceable: call it under ``jit``)."""
    dtype = jax.tree.leaves(y0)[0].dtype
    t_end = jnp.asarray(t_end, dtype)
    zero = jax.tree.map(jnp.zeros_like, y0)

    def step(carry):
        t, h, y, k1, steps, _ = carry
        h = jnp.minimum(h, t_end - t)
        ks = [k1]
        for row in _A[1:]:
            ks.append(rhs(_combine(y, h, ks, row)))
        y_new = _combine(y, h, ks, _B5[:6])
        ks.append(rhs(y_new))
        err = _combine(zero, h, ks, _E)
        ratio = _error_ratio(y, y_new, err, rtol, atol)
        accept = ratio <= 1.0
        factor = jnp.clip(0.9 * jnp.where(ratio > 0, ratio, 1e-10) ** -0.2, 0.2, 5.0)
        factor = jnp.where(jnp.isfinite(ratio), factor, 0.2)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)  # noqa: E731
        stuck = h <= 1e-14 * jnp.maximum(t_end, 1.0)
        return (jnp.where(accept, t + h, t), h * factor, pick(y_new, y), pick(ks[-1], k1), steps + 1, stuck)

    def running(carry):
        t, _, _, _, steps, stuck = carry
        return (t < t_end) & (steps < max_steps) & ~stuck

    init = (jnp.zeros((), dtype), jnp.asarray(first_step, dtype), y0, rhs(y0), jnp.zeros((), jnp.int32),
            jnp.zeros((), bool))
    t, _, y, _, steps, _ = jax.lax.while_loop(running, step, init)
    return Solution(y, t, steps, t >= t_end)


__all__ = ["Solution", "dopri5"]
