"""Bivariate Gaussian expectations: correlations and Gauss-Hermite quadrature.

Every kernel layer map needs expectations over a centred bivariate Gaussian pair
``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``.  This module holds the two pieces
shared by all activations: a robust correlation coefficient, and a tensor-product
Gauss-Hermite rule for activations without a closed form.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

Array = jax.Array

DEFAULT_QUADRATURE_DEGREE = 40
"""Nodes per dimension of the default Gauss-Hermite rule (``DEFAULT**2`` per pair).

Accuracy, measured in float64 against the closed forms of erf, gelu, sin and cos over
correlations in [-1, 1] (``tests/test_quadrature.py`` checks the first line):

=====================  ==================  ==================
variances q11, q22     E[phi(u)phi(v)]     E[phi'(u)phi'(v)]
=====================  ==================  ==================
in [1e-3, 1]           <= 1e-8 relative    <= 1e-6 relative
up to 2                <= 2e-5             <= 3e-4
up to 3                <= 3e-4             <= 1.5e-2
=====================  ==================  ==================

The error grows with the variance because ``phi(sqrt(q) z)`` sharpens in ``z``; raise the
degree (``tanh(quadrature_degree=...)``) for large pre-activation variances. Non-smooth
activations (kinks, jumps) converge only algebraically in the degree (relu: ~1e-2 at
degree 40); use a closed form for them where one exists.
"""


def accurate_variance(degree: int) -> float:
    """Largest pre-activation variance at which a ``degree``-point rule keeps the relative error of
    smooth saturating duals near 1e-4, taken as ``2 * degree / 40``.

    Measured on erf's derivative kernel, the hardest case: 2.4e-4 at variance 2 for degree 40,
    1e-4 at variance 3 for degree 64. The Gauss-Hermite nodes are spaced about ``3 / sqrt(degree)``
    near 0 while ``phi(sqrt(q) z)`` changes on the scale ``1 / sqrt(q)``, so the degree must grow in
    proportion to the variance. ``theory.kernels`` raises ``QuadratureAccuracyError`` (a ValueError) beyond it.
    """
    return 2.0 * degree / DEFAULT_QUADRATURE_DEGREE


def correlation(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    """Return ``(rho, sqrt(q11 q22))`` with ``rho = q12 / sqrt(q11 q22)`` in [-1, 1].

    Convention for a degenerate pair: if either variance is 0 (an all-zero input with
    ``b_std = 0``), the correlation is defined as 0, the limit of vanishing variance at
    zero correlation; no 0/0 is formed. ``sqrt(q11 * q22)`` is used where the product
    is representable, so that ``rho`` is exactly 1 on the diagonal, and
    ``sqrt(q11) * sqrt(q22)`` where the product would over- or underflow.
    """
    prod = q11 * q22
    representable = jnp.isfinite(prod) & (prod >= jnp.finfo(prod.dtype).tiny)
    norm = jnp.where(
        representable,
        jnp.sqrt(jnp.where(representable, prod, 1)),
        jnp.sqrt(q11) * jnp.sqrt(q22),
    )
    positive = norm > 0
    rho = jnp.where(positive, q12 / jnp.where(positive, norm, 1), 0)
    # A pair and its own diagonal are updated by differently vectorised code, so a correlation that
    # is 1 in exact arithmetic can come out a few ulps short; relu-type duals have infinite slope at
    # |rho| = 1 and would turn that into sqrt(ulp). Within 8 ulps of +-1 the correlation is +-1.
    snap = jnp.abs(rho) >= 1 - 8 * jnp.finfo(rho.dtype).eps
    return jnp.where(snap, jnp.sign(rho), rho), norm


@lru_cache(maxsize=64)
def hermite_rule(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``degree``-point Gauss-Hermite rule for ``E[f(z)]``, ``z ~ N(0, 1)``."""
    # Probabilists' Hermite rule, weights normalised to integrate against N(0, 1); scipy's
    # construction stays accurate at high degree, where numpy's overflows (degree > ~150).
    nodes, weights = scipy.special.roots_hermitenorm(degree)
    return nodes, weights / np.sqrt(2 * np.pi)


def gauss_hermite_expectations(
    fn: Callable[[Array], Array],
    q11: Array,
    q12: Array,
    q22: Array,
    degree: int = DEFAULT_QUADRATURE_DEGREE,
    derivative: bool = True,
) -> tuple[Array, Array | None]:
    """``E[fn(u) fn(v)]`` and ``E[fn'(u) fn'(v)]`` by two-dimensional Gauss-Hermite quadrature.

    Writes ``u = sqrt(q11) z1`` and ``v = sqrt(q22) (rho z1 + sqrt(1 - rho^2) z2)`` with
    independent standard normals ``z1, z2`` and integrates each with a ``degree``-point
    Gauss-Hermite rule (exact for polynomials of degree ``2 degree - 1`` in each). ``fn``
    must be elementwise and JAX-traceable; its derivative comes from one forward-mode
    pass (``jax.jvp``) that also yields the values, so ``fn`` is evaluated once per node.

    The ``u`` factor depends only on ``q11``, so with broadcast shapes ``q11: (B, 1)``,
    ``q22: (1, N)``, ``q12: (B, N)`` it is evaluated on ``B * degree`` points, and only the
    ``v`` factor on ``B * N * degree**2``.
    """
    nodes_np, weights_np = hermite_rule(int(degree))
    dtype = jnp.result_type(q12)
    nodes = jnp.asarray(nodes_np, dtype)
    weights = jnp.asarray(weights_np, dtype)

    def values_and_slopes(points: Array) -> tuple[Array, Array]:
        return jax.jvp(fn, (points,), (jnp.ones_like(points),))

    if q11 is q12 and q12 is q22:  # variances (u = v): the 2-D rule at rho = 1 is this 1-D rule, degree^2 -> degree
        u = jnp.sqrt(q11)[..., None] * nodes
        fu, dfu = values_and_slopes(u) if derivative else (fn(u), None)
        return fu**2 @ weights, (dfu**2 @ weights if derivative else None)
    rho, _ = correlation(q11, q12, q22)

    u = jnp.sqrt(q11)[..., None] * nodes
    s22 = jnp.sqrt(q22)[..., None, None]
    v = s22 * (
        rho[..., None, None] * nodes[:, None]
        + jnp.sqrt(jnp.maximum(1 - rho**2, 0))[..., None, None] * nodes[None, :]
    )
    if derivative:
        fu, dfu = values_and_slopes(u)
        fv, dfv = values_and_slopes(v)
    else:
        fu, fv = fn(u), fn(v)
    # Conditional expectation over z2 first, then over z1.
    nngp = jnp.sum(weights * fu * (fv @ weights), axis=-1)
    if not derivative:
        return nngp, None
    ntk = jnp.sum(weights * dfu * (dfv @ weights), axis=-1)
    return nngp, ntk
