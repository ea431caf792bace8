r"""Gaussian duals of smooth activations by Hermite series with per-input coefficients (Mehler's formula).

For ``(u, v) ~ N(0, [[q1, c], [c, q2]])`` write ``u = sqrt(q1) z1``, ``v = sqrt(q2) z2`` with standard normals of
correlation ``rho = c / sqrt(q1 q2)``. With the orthonormal Hermite polynomials ``h_k = He_k / sqrt(k!)`` (Mehler 1866;
O'Donnell, "Analysis of Boolean Functions", ch. 11),

    E[phi(u) phi(v)]   = sum_k rho^k a_k(q1) a_k(q2),     a_k(q) = E[phi(sqrt(q) z) h_k(z)],
    E[phi'(u) phi'(v)] = sum_k rho^k b_k(q1) b_k(q2),     b_k(q) = E[phi'(sqrt(q) z) h_k(z)].

The coefficients depend on one input's variance only: ``N`` inputs cost ``N x nodes x terms`` once per layer (a
1-D trapezoid rule in ``z``), and each pair a Horner sum of ``terms`` multiply-adds instead of a 2-D rule's
``degree^2`` activation calls. Truncation after ``K`` terms errs by at most ``sqrt(T(q1) T(q2))`` with the tails
``T(q) = E[phi(sqrt(q) z)^2] - sum_{k <= K} a_k(q)^2`` (Cauchy-Schwarz, any ``|rho| <= 1``), so
:func:`choose_rule` picks ``K`` from the variances actually met to a relative tolerance of the kernel's scale, and
the 1-D rule's size from its convergence. The length needed grows with the variance (tanh: ~8 terms at ``q = 0.1``,
~50 at ``q = 1``), so a rule carries shorter series for lower variances (each accurate to the same tolerance up to
its own variance) and every layer uses the shortest one that covers the variances it meets. Derivation and measured
accuracy: docs/hermite_duals.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["MAX_TERMS", "SPAN", "HermiteRule", "RoughActivationError", "choose_rule", "coefficients",
           "series_expectations", "series_parts"]

TERM_STEP = 8
"""Series lengths are multiples of this (few distinct compiled shapes)."""

MAX_LEVELS = 2
"""Most shorter series a rule carries, at variances ``q_max / 4`` and ``q_max / 16`` (each branch adds ~0.25 s of
compilation; the deep layers of a network sit at a fixed point well below the first layers' variances)."""

UNROLLED_TERMS = 16
"""Series up to this length are summed by straight-line code that XLA fuses into one loop (measured 1.7-2.5x
faster than a scan there); longer ones by a scan over the terms."""

MAX_TERMS = 8192
"""Longest series :func:`choose_rule` tries; an activation needing more at the variances met is refused."""

SPAN = 14.0
"""The coefficients' integrals run over ``|z| <= SPAN``: the integrand is bounded by ``|phi(sqrt(q) z)| exp(-z^2/4)``
(``|psi_k| <= 1``), below ``1e-21`` relative beyond for activations of at most polynomial growth."""


CONSTANT_BASIS = 2**21
"""Largest basis (nodes x terms) embedded in the compiled program as a constant; a longer one is computed in it
(recomputed inside every layer's loop body, but a constant of 150 MB at 8,192 terms would slow compilation)."""


class RoughActivationError(ValueError):
    """The activation is not smooth enough for a geometrically converging series (a kink or a jump)."""


@dataclass(frozen=True)
class HermiteRule:
    """A static rule: ``terms`` of the series (``k = 0 .. terms``), the trapezoid ``step`` in ``z``, and the largest
    pre-activation ``variance`` it was chosen for (accurate to its tolerance up to there).

    ``lower``: shorter series for smaller variances, ``(variance, terms, step, span)`` by increasing variance, each
    accurate up to its own variance; a layer whose inputs' variances are all within one of them uses it. ``span``:
    the nodes run over ``|z| <= span``.
    """

    terms: int
    step: float
    variance: float = field(default=float("inf"), compare=False)  # not part of the compiled program
    lower: tuple[tuple[float, int, float, float], ...] = ()
    span: float = SPAN

    def levels(self) -> tuple[tuple[float, int, float, float], ...]:
        """``(variance, terms, step, span)`` of every series by increasing variance; the last (this rule's own)
        covers every variance (beyond ``self.variance`` it is not accurate, which :func:`theory.kernels` checks)."""
        return (*self.lower, (float("inf"), self.terms, self.step, self.span))


@lru_cache(maxsize=32)
def _basis(terms: int, step: float, span: float = SPAN) -> tuple[np.ndarray, np.ndarray]:
    """``(z, W)``: trapezoid nodes on ``[-span, span]`` and ``W[m, k] = step h_k(z_m) N(z_m)`` (float64), built from
    the Hermite *functions* ``psi_k = h_k(z) exp(-z^2/4) / (2 pi)^(1/4)`` (bounded by 1, a stable recurrence where
    ``h_k`` overflows): ``h_k N = psi_k exp(-z^2/4) / (2 pi)^(1/4)``. The trapezoid rule converges geometrically for
    these analytic, rapidly decaying integrands."""
    half = int(np.ceil(span / step))
    z = step * np.arange(-half, half + 1)
    psi = np.empty((terms + 1, z.size))
    psi[0] = np.exp(-z * z / 4) / (2 * np.pi) ** 0.25
    if terms:
        psi[1] = z * psi[0]
    for k in range(1, terms):
        psi[k + 1] = (z * psi[k] - np.sqrt(k) * psi[k - 1]) / np.sqrt(k + 1)
    return z, (step * psi * psi[0][None, :]).T


def _traced_basis(terms: int, step: float, span: float, dtype: Any) -> tuple[Array, Array]:
    """:func:`_basis` computed inside the traced program: a ``(nodes, terms + 1)`` constant would be embedded in
    every compiled kernel (150 MB at 8,192 terms) and slow its compilation; the recurrence costs
    ``terms x nodes`` operations per call, negligible beside the pairs."""
    half = int(np.ceil(span / step))
    z = step * jnp.arange(-half, half + 1, dtype=dtype)
    psi0 = jnp.exp(-z * z / 4) / (2 * np.pi) ** 0.25
    rows = [psi0]
    if terms:
        def advance(carry: tuple[Array, Array], k: Array) -> tuple[tuple[Array, Array], Array]:
            before, current = carry
            after = (z * current - jnp.sqrt(k) * before) / jnp.sqrt(k + 1)
            return (current, after), after

        psi1 = z * psi0
        _, rest = jax.lax.scan(advance, (psi0, psi1), jnp.arange(1, terms, dtype=dtype))
        rows = [psi0[None], psi1[None], rest]
    psi = jnp.concatenate(rows) if terms else psi0[None]
    return z, (step * psi * psi0).T


def coefficients(fn: Callable[[Array], Array], q: Array, rule: HermiteRule,
                 derivative: bool = True) -> tuple[Array, Array | None]:
    """``a_k(q)`` (and ``b_k(q)`` for ``phi'``), ``k = 0 .. rule.terms``: arrays of shape ``q.shape + (terms + 1,)``."""
    return _coefficients(fn, q, rule.terms, rule.step, rule.span, derivative)


def _coefficients(fn: Callable[[Array], Array], q: Array, terms: int, step: float, span: float,
                  derivative: bool) -> tuple[Array, Array | None]:
    dtype = jnp.result_type(q)
    if (terms + 1) * (2 * int(np.ceil(span / step)) + 1) <= CONSTANT_BASIS:
        z, basis = (jnp.asarray(a, dtype) for a in _basis(terms, step, span))
    else:
        z, basis = _traced_basis(terms, step, span, dtype)
    points = jnp.sqrt(q)[..., None] * z
    if derivative:
        values, slopes = jax.jvp(fn, (points,), (jnp.ones_like(points),))
        both = jnp.stack([values, slopes]) @ basis  # one matmul for both
        return both[0], both[1]
    return fn(points) @ basis, None


def _select(fn: Callable[..., Any], rule: HermiteRule, variances: tuple[Array, ...], *operands: Any) -> Any:
    """``fn(terms, step, span, *operands)`` with the shortest series of ``rule`` that covers the largest of
    ``variances``: one branch per series (``lax.switch``); under ``vmap`` every branch runs and one is kept."""
    levels = rule.levels()
    if len(levels) == 1:
        return fn(*levels[0][1:], *operands)
    dtype = jnp.result_type(*variances)
    top = functools.reduce(jnp.maximum, [jnp.max(v, initial=0.0) for v in variances])  # inputs may be empty
    limits = jnp.asarray([level[0] for level in levels[:-1]], dtype)
    index = jnp.sum(limits < top)  # NaN selects the shortest; the overflow check names the layer
    branches = [functools.partial(fn, *level[1:]) for level in levels]
    return jax.lax.switch(index, branches, *operands)


def series_expectations(fn: Callable[[Array], Array], q11: Array, q12: Array, q22: Array, rule: HermiteRule,
                        derivative: bool = True) -> tuple[Array, Array | None]:
    """``(E[phi(u) phi(v)], E[phi'(u) phi'(v)])`` by the truncated series; shapes broadcast.

    The coefficients are computed on ``q11`` and ``q22`` as given (pass them in broadcast form, e.g. ``(B, 1)`` and
    ``(1, N)``, so that each input's are computed once).
    """
    from theory.gaussian import correlation  # the shared, clipped correlation

    def evaluate(terms: int, step: float, span: float, q11: Array, q12: Array,
                 q22: Array) -> tuple[Array, Array | None]:
        rho, _ = correlation(q11, q12, q22)
        a1, b1 = _coefficients(fn, q11, terms, step, span, derivative)
        a2, b2 = _coefficients(fn, q22, terms, step, span, derivative)
        rho = jnp.broadcast_to(rho, jnp.broadcast_shapes(q11.shape, q12.shape, q22.shape))
        return _horner(rho, a1, a2, b1, b2)

    return _select(evaluate, rule, (q11, q22), q11, q12, q22)


def series_parts(fn: Callable[[Array], Array], q11: Array, q12: Array, q22: Array, rule: HermiteRule,
                 derivative: bool = True) -> tuple[tuple[Array, Array | None], ...]:
    """``(E11, D11), (E12, D12), (E22, D22)`` of one layer from one set of coefficients per input: the
    variances ``E[phi(u)^2] = sum_k a_k(q)^2`` (the series at ``rho = 1``) and the pairs' Horner sums.

    Args: ``q11 (B, *S)``, ``q22 (N, *S)`` each input's variance (spatial diagonal), ``q12 (B, N, *S)``.
    """
    from theory.gaussian import correlation

    def own(c: Array | None) -> Array | None:
        return None if c is None else jnp.sum(c * c, axis=-1)

    def evaluate(terms: int, step: float, span: float, q11: Array, q12: Array,
                 q22: Array) -> tuple[tuple[Array, Array | None], ...]:
        a1, b1 = _coefficients(fn, q11, terms, step, span, derivative)
        a2, b2 = _coefficients(fn, q22, terms, step, span, derivative)
        rho, _ = correlation(q11[:, None], q12, q22[None])
        nngp, ntk = _horner(rho, a1[:, None], a2[None], None if b1 is None else b1[:, None],
                            None if b2 is None else b2[None])
        return (own(a1), own(b1)), (nngp, ntk), (own(a2), own(b2))

    return _select(evaluate, rule, (q11, q22), q11, q12, q22)


def _horner(rho: Array, a1: Array, a2: Array, b1: Array | None = None,
            b2: Array | None = None) -> tuple[Array, Array | None]:
    """``sum_k rho^k a1_k a2_k`` and (when given) ``sum_k rho^k b1_k b2_k`` (coefficients on the last axis,
    broadcast against ``rho``), highest term first, both in one loop over the terms."""
    pairs = [(a1, a2)] + ([] if b1 is None else [(b1, b2)])
    terms = a1.shape[-1]  # k = 0 .. terms - 1
    if terms <= UNROLLED_TERMS + 1:
        sums = []
        for c1, c2 in pairs:
            acc = c1[..., -1] * c2[..., -1] * jnp.ones_like(rho)
            for k in range(terms - 2, -1, -1):
                acc = acc * rho + c1[..., k] * c2[..., k]
            sums.append(acc)
    else:
        flipped = [tuple(jnp.moveaxis(c, -1, 0)[::-1] for c in pair) for pair in pairs]

        def step(accs: tuple[Array, ...], coefs: tuple[tuple[Array, Array], ...]) -> tuple[tuple[Array, ...], None]:
            return tuple(acc * rho + c1 * c2 for acc, (c1, c2) in zip(accs, coefs, strict=True)), None

        zero = jnp.zeros(rho.shape, rho.dtype)
        sums, _ = jax.lax.scan(step, tuple(zero for _ in pairs), tuple(flipped))
    return sums[0], (sums[1] if b1 is not None else None)


def _values(fn: Callable[[Array], Array], q: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``phi`` and ``phi'`` at ``sqrt(q) z`` (``(len(q), len(z))``, float64): one compiled program per function and
    power-of-2 length (choosing a rule evaluates dozens of grids; eager evaluation compiled each shape anew)."""
    points = (np.sqrt(q)[:, None] * z[None, :]).ravel()
    padded = np.zeros(1 << max(int(points.size - 1).bit_length(), 6))
    padded[:points.size] = points
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        values, slopes = _values_and_slopes(fn)(jnp.asarray(padded, jnp.float64))
        shape = (len(q), len(z))
        return (np.asarray(values)[:points.size].reshape(shape), np.asarray(slopes)[:points.size].reshape(shape))


@lru_cache(maxsize=64)
def _values_and_slopes(fn: Callable[[Array], Array]) -> Callable[[Array], tuple[Array, Array]]:
    return jax.jit(lambda points: jax.jvp(fn, (points,), (jnp.ones_like(points),)))


def _moments(fn: Callable[[Array], Array], q: np.ndarray, step: float) -> np.ndarray:
    """``(2, len(q))``: ``E[phi(sqrt(q) z)^2]`` and ``E[phi'(sqrt(q) z)^2]`` by the trapezoid rule of ``step``."""
    z, basis = _basis(0, step)
    values, slopes = _values(fn, q, z)
    return np.stack([(values**2) @ basis[:, 0], (slopes**2) @ basis[:, 0]])  # basis[:, 0] = step N(z)


def choose_rule(fn: Callable[[Array], Array], q_max: float, q_min: float = 0.0, tol: float = 1e-7,
                name: str = "the activation", max_terms: int = MAX_TERMS) -> HermiteRule:
    """The shortest series (a multiple of :data:`TERM_STEP` terms) whose truncation bound is below ``tol`` times
    the kernel's scale for variances in ``[q_min, q_max]`` (checked on a grid of them): every tail
    ``T(q) <= tol E[phi^2]``, so that ``sqrt(T(q1) T(q2)) <= tol sqrt(E1 E2)`` (NNGP), and likewise for ``phi'``
    (NTK). The trapezoid step is halved until the second moments agree to ``tol / 100`` and the coefficients to
    ``tol / 100`` of their scale. The rule carries the same choice for the variances ``q_max / 4`` and
    ``q_max / 16`` where it is at most half as long (``lower``).

    Raises:
      ValueError: when no series of up to ``max_terms`` terms reaches ``tol`` (a non-smooth activation, whose
        series converges algebraically, or a variance far beyond the activation's scale), naming both.
    """
    if not (np.isfinite(q_max) and q_max >= 0):
        raise ValueError(f"q_max must be a finite variance >= 0, got {q_max}")
    top = max(q_max, 1e-12)
    refusal = (f"no Hermite series of up to {max_terms} terms reaches {tol:g} for {name} at pre-activation "
               f"variance {q_max:.3g}: the function is too rough (kinks or jumps converge algebraically) or the "
               "variance too large; give it a closed-form dual, or rescale the network (smaller w_std / b_std)")
    terms, step, span = _shortest(fn, top, q_min, tol, max_terms, refusal)
    lower: list[tuple[float, int, float, float]] = []
    variance, longer = top, terms
    for _ in range(MAX_LEVELS):
        if longer <= TERM_STEP or variance / 4 <= q_min:
            break
        variance /= 4
        level = _shortest(fn, variance, q_min, tol, max_terms, refusal)
        if 2 * level[0] <= longer:  # a branch (compiled code) only for a series at most half as long
            lower.insert(0, (variance, *level))
            longer = level[0]
    return HermiteRule(terms=terms, step=step, variance=float(q_max), lower=tuple(lower), span=span)


def _shortest(fn: Callable[[Array], Array], top: float, q_min: float, tol: float, max_terms: int,
              refusal: str) -> tuple[int, float, float]:
    """``(terms, step, span)`` of the shortest series accurate to ``tol`` on a grid of variances up to ``top``."""
    grid = np.unique(np.append(np.geomspace(max(q_min, top * 1e-3), top, 8), top))
    step, moments = 0.5, _moments(fn, grid, 0.5)
    while True:  # resolve phi and phi' themselves; a kink or jump never converges geometrically
        finer = _moments(fn, grid, step / 2)
        if np.all(np.abs(finer - moments) <= 1e-2 * tol * np.maximum(np.abs(finer), 1e-300)):
            break
        if step < 2.0**-9:
            raise RoughActivationError(refusal)
        step, moments = step / 2, finer
    # Start near the expected length (smooth saturating activations need ~50 q terms) and double.
    terms = int(max(2 * TERM_STEP, 2 ** np.floor(np.log2(max(8 * top, 1.0)))))
    while terms <= max_terms:
        h = _node_step(step, terms)
        coarse = _coefficients_np(fn, grid, terms, h)
        tails = moments[:, :, None] - np.cumsum(coarse**2, axis=2)
        ok = np.all(tails <= tol * moments[:, :, None], axis=1)  # (2, terms + 1): NNGP and NTK
        if ok[0].any() and ok[1].any():
            needed = max(int(np.argmax(ok[0])), int(np.argmax(ok[1])), 1)
            shortest = min(terms, TERM_STEP * int(np.ceil(needed / TERM_STEP)))
            while True:  # the shortest series' own (coarser) trapezoid rule, refined until it is converged
                h = _node_step(step, shortest)
                coarse, fine = (_coefficients_np(fn, grid, shortest, g) for g in (h, h / 2))
                scale = 1e-2 * tol * np.sqrt(moments)[:, :, None]
                if np.all(np.abs(fine - coarse) <= scale):
                    # The narrowest span of nodes (whole units) that changes no coefficient beyond the same bound.
                    for span in np.arange(6.0, SPAN):
                        if np.all(np.abs(_coefficients_np(fn, grid, shortest, h, span) - coarse) <= scale):
                            return shortest, float(h), float(span)
                    return shortest, float(h), SPAN
                if step < 2.0**-9:
                    raise RoughActivationError(refusal)
                step = h / 2
        terms *= 2
    raise ValueError(refusal)


def _node_step(step: float, terms: int) -> float:
    """The trapezoid step: ``step`` (resolving ``phi``) and ~4 nodes per wavelength ``2 pi / sqrt(2 terms + 1)``
    of the highest Hermite function near ``z = 0``."""
    return min(step, 0.5 * np.pi / np.sqrt(2 * terms + 1))


def _coefficients_np(fn: Callable[[Array], Array], q: np.ndarray, terms: int, step: float,
                     span: float = SPAN) -> np.ndarray:
    """``(2, len(q), terms + 1)``: ``a_k`` and ``b_k`` in float64."""
    z, basis = _basis(terms, step, span)
    values, slopes = _values(fn, q, z)
    return np.stack([values @ basis, slopes @ basis])
