r"""The correlation gap ``g = sqrt(q11 q22) - q12 = sqrt(q11 q22) (1 - rho)`` and its exact update rules.

At depth, correlations approach 1 (a ReLU MLP at criticality has ``1 - rho ~ 1e-7`` after 10,000 layers), far
below float32's resolution of ``rho`` (6e-8); the kinked duals need the angle
``theta = arccos(rho) = 2 arcsin(sqrt(g / (2 sqrt(q11 q22))))`` to relative accuracy. Every rule here is a sum of
non-negative terms, so ``g`` keeps its relative accuracy however small it is (derivation: docs/float32_depth.md).

    affine:  q' = v q + b        g' = v g + v b (sqrt(q11) - sqrt(q22))^2 / (sqrt(q11' q22') + v sqrt(q11 q22) + b)
    sum:     q = A + B           g  = gA + gB + (sqrt(A11 B22) - sqrt(B11 A22))^2
                                                / (sqrt(q11 q22) + sqrt(A11 A22) + sqrt(B11 B22))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from theory.gaussian import correlation

Array = jax.Array


def initial(q11: Array, q12: Array, q22: Array) -> Array:
    """``sqrt(q11 q22) - q12`` of pairs whose kernel was just formed (absolute error ~eps sqrt(q11 q22))."""
    _, norm = correlation(q11, q12, q22)
    return jnp.maximum(norm - q12, 0)


def pair(q11: Array, q22: Array, g: Array) -> Array:
    """``q12 = sqrt(q11) sqrt(q22) - g``: the pair kernel recomputed from the diagonals (``(B, 1)`` and ``(1, N)``:
    the square roots are taken per input, not per pair) and the gap."""
    return jnp.sqrt(q11) * jnp.sqrt(q22) - g


def _safe_ratio(num: Array, den: Array) -> Array:
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


def affine(q11: Array, q22: Array, g: Array, v: Any, b: Any) -> Array:
    """The gap after ``q -> v q + b`` of every kernel (a Dense layer); ``q11``, ``q22`` broadcast against ``g``."""
    r1, r2 = jnp.sqrt(q11), jnp.sqrt(q22)
    new = jnp.sqrt(v * q11 + b) * jnp.sqrt(v * q22 + b)  # per input, then one product per pair
    # (r1 - r2)^2 as (q11 - q22)^2 / (r1 + r2)^2: the difference of nearby floats is exact (Sterbenz), that of
    # their rounded square roots is not.
    spread = _safe_ratio(q11 - q22, r1 + r2) ** 2  # the ratio first: no overflow near float32's max
    return v * g + _safe_ratio(v * b * spread, new + v * r1 * r2 + b)


def total(a11: Array, a22: Array, ga: Array, b11: Array, b22: Array, gb: Array) -> Array:
    """The gap of the sum of two independent kernels ``A + B`` (a residual connection)."""
    ra1, ra2, rb1, rb2 = jnp.sqrt(a11), jnp.sqrt(a22), jnp.sqrt(b11), jnp.sqrt(b22)
    diff = ra1 * rb2 - rb1 * ra2
    den = jnp.sqrt(a11 + b11) * jnp.sqrt(a22 + b22) + ra1 * ra2 + rb1 * rb2
    return ga + gb + diff * _safe_ratio(diff, den)  # |diff| <= den: no overflow


def half_angle_sine(norm: Array, g: Array) -> Array:
    """``sin(theta / 2) = sqrt((1 - rho) / 2)`` from the gap (``pi / 2`` for a zero-variance pair)."""
    return jnp.where(norm > 0, jnp.sqrt(jnp.clip(_safe_ratio(g, 2 * norm), 0, 1)), jnp.sqrt(0.5).astype(g.dtype))


# sin t - t cos t = sum_k (-1)^(k+1) 2k t^(2k+1) / (2k+1)!: relative truncation error < 1e-9 for t <= 1/2.
_SIN_MINUS_COEFFS = (1 / 3, -1 / 30, 1 / 840, -1 / 45360, 1 / 3991680)


def _sin_minus_series(t: Array) -> Array:
    small = jnp.minimum(t, 0.5)
    square = small * small
    series = jnp.zeros_like(t)
    for c in reversed(_SIN_MINUS_COEFFS):
        series = series * square + c
    return series * square * small


def sin_minus_t_cos(t: Array) -> Array:
    """``sin t - t cos t`` to relative accuracy for small ``t`` (where the two terms cancel to ``t^3 / 3``)."""
    return jnp.where(t <= 0.5, _sin_minus_series(t), jnp.sin(t) - t * jnp.cos(t))


def sin_minus_half_angle(t: Array, h: Array) -> Array:
    """``sin t - t cos t`` given ``h = sin(t / 2)`` too: ``sin t = 2 h sqrt(1 - h^2)``, ``cos t = 1 - 2 h^2`` beyond
    the series' range (no trigonometric calls per pair)."""
    direct = 2 * h * jnp.sqrt(jnp.maximum(1 - h * h, 0)) - t * (1 - 2 * h * h)
    return jnp.where(t <= 0.5, _sin_minus_series(t), direct)


__all__ = ["affine", "half_angle_sine", "initial", "pair", "sin_minus_half_angle", "sin_minus_t_cos", "total"]
