"""Signal propagation in deep MLPs at infinite width: fixed points, susceptibilities, depth scales, criticality.

For an MLP with activation ``phi``, weight variance ``C_W = w_std^2`` and bias variance ``C_b = b_std^2``
(Poole et al. 2016, "Exponential expressivity in deep neural networks through transient chaos";
Schoenholz et al. 2017, "Deep Information Propagation"; Roberts, Yaida & Hanin 2022 (PDLT), ch. 5):

    variance map     V(q)    = C_W E[phi(sqrt(q) z)^2] + C_b,                         q* = V(q*)
    correlation map  C(c)    = (C_W E[phi(u) phi(v)] + C_b) / q*,  (u, v) ~ N(0, q* [[1, c], [c, 1]]),  c* = C(c*)
    chi_1            = C_W E[phi'(sqrt(q*) z)^2]       (the slope of C at c = 1: order < 1 < chaos)
    chi_c            = C_W E[phi'(u) phi'(v)] at c*    (the slope of C at c*)
    chi_q            = V'(q*)                          (PDLT's parallel susceptibility at K* = q*)
    xi_q = -1 / ln chi_q,   xi_c = -1 / ln chi_c       (depth scales: deviations decay like exp(-l / xi))

Everything broadcasts over arrays of ``(C_W, C_b)``, so a phase diagram is one call. ``q*`` is the stable fixed point
the plain iteration ``q <- V(q)`` reaches from ``q0`` (found by a bracketed Newton iteration); ``c* = 1`` where
``chi_1 <= 1`` (ordered), else the root of ``C(c) - c`` in ``[0, 1)`` (Newton from ``c = 0`` on the Mehler series).

Derivation and notes: docs/signal_propagation.md (PDLT's two susceptibilities, why the fixed-point solvers converge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from theory.activations import Activation, get
from theory.gaussian import hermite_rule

Array = jax.Array

_SERIES_TERMS = 64  # Hermite coefficients per grid point (tanh at q* = 4: a_64^2 ~ 1e-8; the tail is folded in)
# Nodes of the 1-D rule for the coefficients and the diagonal expectations. Measured for tanh against adaptive
# quadrature, relative errors of E[phi^2] / E[phi'^2]: 1e-14 at q = 1, 4e-13 / 6e-11 at q = 2.8, 6e-11 / 7e-9 at
# q = 4, 8e-8 / 9e-6 at q = 8 (tanh(sqrt(q) z) has poles at distance pi / (2 sqrt(q)) from the real axis).
_SERIES_NODES = 320
_NEWTON_STEPS = 100  # for c*: quadratic convergence, or halving the error per step at a double root (criticality)
_Q_FLOOR = 1e-12  # V'(q) is evaluated at max(q, floor): d sqrt(q) / dq is infinite at q = 0 while V' is not
_Q_DIVERGED = 1e30  # a variance iteration beyond this has no finite fixed point ahead of it


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


def _positive(name: str, value: object) -> Array:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))].ravel()[0]
        raise ValueError(f"{name} must be a finite positive variance, got {bad}")
    return jnp.asarray(arr, jnp.result_type(float))


def variance_map(activation: str | Activation, w_var: object, b_var: object, q: object) -> Array:
    """``V(q) = C_W E[phi(sqrt(q) z)^2] + C_b`` (broadcast over all arguments; Poole et al. 2016).

    The expectation is the one :func:`signal_propagation` uses: the closed form (duals; the clipped or plain
    shifted relu and soft threshold) or the ``_SERIES_NODES``-point 1-D Gauss-Hermite rule."""
    act = _activation(activation)
    w, b = _variances(w_var, b_var)
    q = jnp.asarray(q, w.dtype)
    return w * _second_moment(act, q) + b


def correlation_map(activation: str | Activation, w_var: object, b_var: object, q: object, c: object) -> Array:
    """``C(c) = (C_W E[phi(u) phi(v)] + C_b) / V(q)`` with ``(u, v) ~ N(0, q [[1, c], [c, 1]])``: the
    correlation one layer later (at a fixed point ``q = q*``, ``V(q) = q``; Poole et al. 2016). Uses
    the activation's own dual (closed form, or the 2-D Gauss-Hermite rule): an independent check of the
    series that :func:`signal_propagation` iterates."""
    act = _activation(activation)
    w, b = _variances(w_var, b_var)
    q, c = jnp.asarray(q, w.dtype), jnp.asarray(c, w.dtype)
    e12, _ = act.expectations(q, c * q, q, derivative=False)
    e11, _ = act.expectations(q, q, q, derivative=False)
    return (w * e12 + b) / (w * e11 + b)


@dataclass(frozen=True)
class SignalPropagation:
    """Arrays shaped like the broadcast ``(C_W, C_b)`` grid (see the module docstring). ``converged``
    is False where the variance iteration has no finite fixed point ahead of ``q0`` (it diverges, e.g.
    relu with ``C_W > 2``, or relu at ``C_W = 2`` with ``C_b > 0``); those points are NaN elsewhere."""

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
    iterations: int = 500,
    on_divergence: str = "nan",
) -> SignalPropagation:
    """Fixed points, susceptibilities and depth scales over a grid of ``(C_W, C_b)`` (Poole et al. 2016;
    Schoenholz et al. 2017; conventions and method in the module docstring).

    ``q*`` is the fixed point of ``V`` that the layer-to-layer iteration reaches from ``q0`` (at most
    ``iterations`` bracketed Newton steps); ``c*`` the stable fixed point of ``C`` in ``[0, 1]`` (the one
    reached from any ``c0`` in ``(0, 1]``). ``chi_1 = 1`` is the order-to-chaos boundary; see
    :func:`critical_line`. Quadrature activations carry the accuracy of a ``_SERIES_NODES``-point 1-D rule
    (tanh: ~1e-10 relative at ``q* <= 4``, see ``_SERIES_NODES``; kinks converge algebraically).

    Points without a finite fixed point ahead of ``q0`` get ``converged = False`` and NaN values
    (``on_divergence="nan"``), or raise a ValueError naming the first such ``(C_W, C_b)``
    (``on_divergence="raise"``).
    """
    act = _activation(activation)
    w, b = _variances(w_var, b_var)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if not (np.isfinite(q0) and q0 > 0):
        raise ValueError(f"q0 must be a positive variance, got {q0!r}")
    if on_divergence not in ("nan", "raise"):
        raise ValueError(f"on_divergence must be 'nan' or 'raise', got {on_divergence!r}")
    out = SignalPropagation(*(np.asarray(a) for a in _signal_propagation(act, w, b, jnp.asarray(q0, w.dtype),
                                                                          iterations)))
    if on_divergence == "raise" and not out.converged.all():
        i = np.unravel_index(np.argmin(out.converged), out.converged.shape)
        raise ValueError(f"the variance map of {act.name} has no finite fixed point reachable from q0 = {q0} at "
                         f"C_W = {float(np.asarray(w)[i])}, C_b = {float(np.asarray(b)[i])} (the variance grows "
                         "without bound); choose a smaller C_W")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Diagonal expectations E[phi^2], E[phi'^2]: closed forms (the duals, and the sparsity-inducing family), else 1-D rule


def _upper_tail(t: Array) -> Array:
    return 0.5 * jax.scipy.special.erfc(t / math.sqrt(2))


def _density(t: Array) -> Array:
    return jnp.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)


def _shifted_relu_moments(q: Array, shift: float, clip: float) -> tuple[Array, Array]:
    """``E[phi^2]``, ``E[phi'^2]`` for ``phi(x) = min(max(x - shift, 0), clip)`` and ``x ~ N(0, q)``.

    With ``a = shift / sqrt(q)``, ``b = (shift + clip) / sqrt(q)``, ``Q`` the normal upper tail and
    ``H(t) = (1 + a^2) Q(t) + (t - 2a) pdf(t)`` (``= int_t^inf (z - a)^2 pdf``):
    ``E[phi^2] = q (H(a) - H(b)) + clip^2 Q(b)`` and ``E[phi'^2] = Q(a) - Q(b)``; ``clip = inf`` is the shifted relu.
    """
    s = jnp.sqrt(jnp.maximum(q, 1e-300))
    a = shift / s

    def h(t: Array) -> Array:
        return (1 + a**2) * _upper_tail(t) + (t - 2 * a) * _density(t)

    if math.isinf(clip):
        return q * h(a), _upper_tail(a)
    bb = (shift + clip) / s
    return q * (h(a) - h(bb)) + clip**2 * _upper_tail(bb), _upper_tail(a) - _upper_tail(bb)


def _sparse_family(act: Activation) -> tuple[float, float, int] | None:
    """``(threshold, clip, sides)`` when ``act`` is a (clipped) shifted relu (``sides = 1``) or soft threshold
    (``sides = 2``, odd: twice the one-sided moments) built by ``theory.activations``, else None."""
    name, params = act.name, act.params
    if name == "shifted_relu":
        return float(params[0]), math.inf, 1
    if name == "soft_threshold":
        return float(params[0]), math.inf, 2
    if name and name.startswith("clipped_") and len(params) == 2:
        base, bound = params
        inner = name.removeprefix("clipped_")
        shift = float(base[0]) if base else 0.0
        if inner in ("shifted_relu", "relu"):
            return shift, float(bound), 1
        if inner == "soft_threshold":
            return shift, float(bound), 2
    return None


@lru_cache(maxsize=16)
def _projection(nodes: int, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes, weights and ``P[i, k] = w_i He_k(x_i) / sqrt(k!)`` of the ``nodes``-point probabilists'
    Gauss-Hermite rule, so that ``phi(sqrt(q) x) @ P`` are the normalised Hermite coefficients ``a_k``."""
    x, wts = hermite_rule(nodes)
    h = np.zeros((nodes, terms))
    h[:, 0] = 1.0
    if terms > 1:
        h[:, 1] = x
    for k in range(1, terms - 1):  # normalised recurrence: stable where He_k itself overflows
        h[:, k + 1] = (x * h[:, k] - math.sqrt(k) * h[:, k - 1]) / math.sqrt(k + 1)
    return x, wts, wts[:, None] * h


def _diagonal(act: Activation, q: Array) -> tuple[Array, Array]:
    """``(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2])``: a closed form where there is one, else the
    ``_SERIES_NODES``-point 1-D Gauss-Hermite rule (or the activation's own degree, if higher)."""
    sparse = _sparse_family(act)
    if sparse is not None:
        shift, clip, sides = sparse
        e, d = _shifted_relu_moments(q, shift, clip)
        return sides * e, sides * d
    if act.dual is not None:
        return act.expectations(q, q, q, derivative=True)
    nodes, weights = (jnp.asarray(a, q.dtype) for a in hermite_rule(max(act.degree, _SERIES_NODES)))
    u = jnp.sqrt(jnp.maximum(q, 0))[..., None] * nodes
    f, df = jax.jvp(act.fn, (u,), (jnp.ones_like(u),))
    return jnp.sum(weights * f**2, axis=-1), jnp.sum(weights * df**2, axis=-1)


def _second_moment(act: Activation, q: Array) -> Array:
    return _diagonal(act, q)[0]


def _second_moment_slope(act: Activation, q: Array) -> tuple[Array, Array]:
    """``E[phi^2]`` at ``q`` and its ``q``-derivative at ``max(q, _Q_FLOOR)``.

    Forward mode through the 1-D rule or the sparse-family closed form; a second-order difference (step
    ``1e-5 max(q, 1e-3)``: relative error ~1e-10) for dual closed forms, whose ``arccos(rho)`` has an
    infinite derivative at ``rho = 1`` that autodiff turns into NaN although ``rho`` stays 1. Through the
    1-D rule, kinks in ``phi`` (not at ``phi = 0``) and jumps in ``phi'`` converge only algebraically.
    """
    qq = jnp.maximum(q, _Q_FLOOR)
    if act.dual is not None and _sparse_family(act) is None:
        h = 1e-5 * jnp.maximum(qq, 1e-3)
        central = (_second_moment(act, qq + h) - _second_moment(act, jnp.maximum(qq - h, 0.0))) / (2 * h)
        # below q = h the second-order one-sided difference (the dual is not defined at q < 0)
        one_sided = (-3 * _second_moment(act, qq) + 4 * _second_moment(act, qq + h)
                     - _second_moment(act, qq + 2 * h)) / (2 * h)
        slope = jnp.where(qq > h, central, one_sided)
    else:
        _, slope = jax.jvp(lambda x: _second_moment(act, x), (qq,), (jnp.ones_like(qq),))
    return _second_moment(act, q), slope


# ---------------------------------------------------------------------------------------------------------------
# The fixed-point solvers


_TABLE_RANGE = (1e-10, 1e6)  # q range of the interpolation table of E[phi(sqrt(q) z)^2] (quadrature activations)
_TABLE_PER_DECADE = 40  # cubic Hermite in ln q with spacing 0.058: relative error ~1e-8, removed by the polish
_POLISH_STEPS = 3


def _moment_table(act: Activation, dtype) -> tuple[Array, float, float, Array, Array]:
    """``m(q) = E[phi(sqrt(q) z)^2]`` and ``dm / d ln q`` on a log-spaced grid of ``q``.

    The variance map of every grid point is ``C_W m(q) + C_b`` with the same ``m``, so the expensive
    activation evaluations are done once per table node instead of once per grid point and step."""
    lo, hi = (math.log(v) for v in _TABLE_RANGE)
    count = round((hi - lo) / math.log(10) * _TABLE_PER_DECADE) + 1
    logq = jnp.linspace(lo, hi, count, dtype=dtype)
    m, dm = _second_moment_slope(act, jnp.exp(logq))
    return logq, lo, (hi - lo) / (count - 1), m, dm * jnp.exp(logq)


def _interpolated_moment(table, q: Array) -> tuple[Array, Array]:
    """``(m(q), m'(q))`` from the table: cubic Hermite in ``t = ln q`` inside it; below it the tangent line
    in ``q`` (``m`` is smooth at ``q = 0``); above it a power law with the end slope in ``ln m / ln q``."""
    logq, lo, h, m, dm = table
    last = m.shape[0] - 1
    t = jnp.log(jnp.maximum(q, 1e-300))
    j = jnp.clip(jnp.floor((t - lo) / h).astype(jnp.int32), 0, last - 1)
    s = jnp.clip((t - logq[j]) / h, 0.0, 1.0)
    y0, y1, d0, d1 = m[j], m[j + 1], dm[j] * h, dm[j + 1] * h
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    value = h00 * y0 + h10 * d0 + h01 * y1 + h11 * d1
    dvalue = ((6 * s**2 - 6 * s) * y0 + (3 * s**2 - 4 * s + 1) * d0 + (-6 * s**2 + 6 * s) * y1
              + (3 * s**2 - 2 * s) * d1) / h  # d/dt
    slope = dvalue / jnp.exp(t)
    q_lo, q_hi = math.exp(lo), jnp.exp(logq[last])
    below_slope = dm[0] / q_lo
    below = m[0] + below_slope * (q - q_lo)
    power = dm[last] / jnp.where(m[last] > 0, m[last], 1.0)
    above = m[last] * (q / q_hi) ** power
    value = jnp.where(q < q_lo, below, jnp.where(q > q_hi, above, value))
    slope = jnp.where(q < q_lo, below_slope, jnp.where(q > q_hi, power * above / q, slope))
    return value, slope


def _solve_variance(act: Activation, w: Array, b: Array, q0: Array, iterations: int) -> tuple[Array, Array, Array]:
    """The fixed point of ``V`` the plain iteration reaches from ``q0``, by safeguarded Newton steps.

    ``V`` is increasing (``E[phi(sqrt(q) z)^2]`` grows with ``q`` for the activations in use), so the plain
    iterates move monotonically towards that fixed point from one side, ``s = sign(V(q0) - q0)``. Each step
    proposes Newton's point; it is kept only if it goes further than the plain step ``V(q)`` and still has
    ``sign(V - q) = s`` (has not jumped the fixed point); an overshoot becomes the far end of a bracket
    that later proposals bisect. Without a usable Newton step and no bracket the step is expanded
    geometrically, so divergent points (no fixed point ahead) reach ``_Q_DIVERGED`` in ~100 steps.
    Quadrature activations search on the interpolated ``m(q)`` (:func:`_moment_table`) and then take
    ``_POLISH_STEPS`` Newton steps on the exact rule; the convergence test is on the exact rule.
    """
    if act.dual is None and _sparse_family(act) is None:
        table = _moment_table(act, w.dtype)
        moment = lambda q: _interpolated_moment(table, q)  # noqa: E731
    else:
        moment = lambda q: _second_moment_slope(act, q)  # noqa: E731

    def gap(q: Array) -> Array:
        return w * moment(q)[0] + b - q

    g0 = gap(q0)
    side = jnp.sign(g0)
    far0 = jnp.where(side > 0, jnp.inf, 0.0)
    scale = jnp.maximum(q0, b)  # the natural size of q: a step below 1e-9 of it has arrived
    eps = float(jnp.finfo(w.dtype).eps)  # float32 (x64 off) cannot resolve the float64 tolerances
    settle_tol, converged_tol = max(1e-13, 64 * eps), max(1e-9, 4096 * eps)

    def arrived(q: Array, g: Array, slope: Array, rtol: float) -> Array:
        # |V - q| small relative to q AND the Newton distance to the fixed point small: the first alone would
        # accept the endless linear growth of relu at C_W = 2, C_b > 0 (V - q = C_b, tiny next to a huge q)
        distance = jnp.abs(g / (w * slope - 1))
        # (a fixed point at q = 0, e.g. tanh without bias in the ordered phase, is approached geometrically:
        # there |V - q| is compared with 1e-20 of the natural scale instead)
        size = jnp.maximum(jnp.abs(q), 1e-20 * scale)
        return (g == 0) | ((jnp.abs(g) <= rtol * size) & (distance <= 1e3 * rtol * jnp.maximum(q, scale)))

    def settled(q: Array, g: Array, slope: Array) -> Array:
        return arrived(q, g, slope, settle_tol) | ~jnp.isfinite(q) | (q > _Q_DIVERGED) | (side == 0)

    def step(state):
        i, q, far, expand, _ = state
        e, slope = moment(q)
        g = w * e + b - q
        plain = q + g
        newton = q - g / (w * slope - 1)
        beyond = lambda x: (x - plain) * side > 0  # noqa: E731 - strictly further than the plain step
        inside = lambda x: (far - x) * side > 0  # noqa: E731 - strictly before the far end of the bracket
        use_newton = jnp.isfinite(newton) & beyond(newton) & inside(newton)
        bisect = (plain + far) / 2
        expanded = q + expand * g
        candidate = jnp.where(use_newton, newton, jnp.where(jnp.isfinite(far), bisect, expanded))
        candidate = jnp.where(beyond(candidate) & inside(candidate), candidate, plain)
        g_candidate = gap(candidate)
        keep = (g_candidate * side > 0) | (g_candidate == 0)
        active = ~settled(q, g, slope)
        new_q = jnp.where(active, jnp.where(keep, candidate, plain), q)
        new_far = jnp.where(active & ~keep, candidate, far)
        new_expand = jnp.where(keep & ~use_newton, expand * 2, 2.0)
        return i + 1, new_q, new_far, new_expand, jnp.any(active)

    def running(state):
        i, *_, any_active = state
        return (i < iterations) & any_active

    init = (0, jnp.broadcast_to(q0, w.shape), jnp.broadcast_to(far0, w.shape), jnp.full(w.shape, 2.0, w.dtype),
            jnp.asarray(True))
    steps, q, *_ = jax.lax.while_loop(running, step, init)
    if act.dual is None and _sparse_family(act) is None:
        for _ in range(_POLISH_STEPS):  # the table's ~1e-8 error, removed on the exact rule
            e, slope = _second_moment_slope(act, q)
            g = w * e + b - q
            newton = q - g / (w * slope - 1)
            small = jnp.isfinite(newton) & (jnp.abs(newton - q) <= 1e-4 * jnp.maximum(q, scale))
            q = jnp.where(small & (q <= _Q_DIVERGED), jnp.maximum(newton, 0.0), q)
    e, slope = _second_moment_slope(act, q)
    converged = jnp.isfinite(q) & (q <= _Q_DIVERGED) & arrived(q, w * e + b - q, slope, converged_tol)
    return q, converged, steps


def _series(act: Activation, q: Array) -> tuple[Array, Array, Array]:
    """Hermite coefficients ``a_k^2`` of ``phi(sqrt(q) z)`` (last axis), and the folded tail ``(R, p)``."""
    x, _, proj = _projection(max(act.degree, _SERIES_NODES), _SERIES_TERMS)
    u = jnp.sqrt(jnp.maximum(q, 0))[..., None] * jnp.asarray(x, q.dtype)
    coeffs = act.fn(u) @ jnp.asarray(proj, q.dtype)
    squares = coeffs**2
    e11, d11 = _diagonal(act, q)
    k = jnp.arange(_SERIES_TERMS, dtype=q.dtype)
    rest = jnp.maximum(e11 - jnp.sum(squares, axis=-1), 0.0)
    rest_slope = q * d11 - jnp.sum(k * squares, axis=-1)
    power = jnp.where(rest > 0, jnp.maximum(rest_slope / jnp.where(rest > 0, rest, 1.0), _SERIES_TERMS),
                      float(_SERIES_TERMS))
    return squares, rest, power


def _pair_moments(act: Activation, q: Array, series, c: Array) -> tuple[Array, Array]:
    """``E[phi(u) phi(v)]`` and ``d/dc`` of it for correlation ``c`` in ``[0, 1]`` at variance ``q``."""
    if series is None:  # a closed-form dual: exact; d/dc E = q E[phi'(u) phi'(v)] (Price's theorem)
        e12, d12 = act.expectations(q, c * q, q, derivative=True)
        return e12, q * d12
    squares, rest, power = series
    value = jnp.zeros_like(c)
    slope = jnp.zeros_like(c)
    for k in range(_SERIES_TERMS - 1, -1, -1):  # Horner for the value and its derivative together
        slope = slope * c + value
        value = value * c + squares[..., k]
    tail = jnp.where(c > 0, jnp.power(jnp.where(c > 0, c, 1.0), power), 0.0)
    tail_slope = jnp.where(c > 0, power * jnp.power(jnp.where(c > 0, c, 1.0), power - 1), 0.0)
    return value + rest * tail, slope + rest * tail_slope


@jax.jit(static_argnames=("act", "iterations"))
def _signal_propagation(act, w, b, q0, iterations):
    q, converged, _ = _solve_variance(act, w, b, q0, iterations)
    q = jnp.where(converged, q, 1.0)  # keep the arithmetic finite; masked below
    e11, d11 = _diagonal(act, q)
    norm = w * e11 + b  # V(q*) = q* at the fixed point; dividing by it makes C(1) = 1 exactly
    chi_1 = w * d11
    series = None if act.dual is not None else _series(act, q)
    safe_norm = jnp.where(norm > 0, norm, 1.0)

    def newton(_, c):
        e12, de12 = _pair_moments(act, q, series, c)
        g = (w * e12 + b) / safe_norm - c
        dg = w * de12 / safe_norm - 1
        step = jnp.where(dg < 0, -g / jnp.where(dg < 0, dg, -1.0), 0.0)
        return jnp.clip(c + step, 0.0, 1.0)

    ordered = (chi_1 <= 1) | (norm <= 0)
    c = jax.lax.fori_loop(0, _NEWTON_STEPS, newton, jnp.zeros_like(q))
    c = jnp.where(ordered, 1.0, c)
    _, de12 = _pair_moments(act, q, series, c)
    chi_c = jnp.where(ordered, chi_1, w * de12 / jnp.where(q > 0, q, 1.0))
    _, slope = _second_moment_slope(act, q)
    chi_q = w * slope

    def depth_scale(chi):
        return jnp.where((chi > 0) & (chi < 1), -1.0 / jnp.log(jnp.where(chi > 0, chi, 1.0)), jnp.inf)

    nan = jnp.full_like(q, jnp.nan)
    keep = lambda a: jnp.where(converged, a, nan)  # noqa: E731
    return (keep(q), keep(c), keep(chi_1), keep(chi_c), keep(chi_q), keep(depth_scale(chi_q)),
            keep(depth_scale(chi_c)), converged)


def critical_line(activation: str | Activation, b_var: object, *, w_var_max: float = 10.0,
                  iterations: int = 500) -> np.ndarray:
    """``C_W`` on the order-to-chaos boundary ``chi_1(C_W, C_b) = 1`` for each ``C_b`` (Schoenholz et al.
    2017, Fig. 1; bisection on ``[0, w_var_max]``, 50 halvings; NaN where ``chi_1 - 1`` does not change
    sign there)."""
    b = np.atleast_1d(np.asarray(b_var, dtype=float))
    _variances(1.0, b)
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


# ---------------------------------------------------------------------------------------------------------------
# PDLT criticality


@dataclass(frozen=True)
class Susceptibilities:
    """PDLT's parallel and perpendicular susceptibilities (arrays, broadcast shape of the inputs)."""

    parallel: np.ndarray
    perpendicular: np.ndarray


def susceptibilities(activation: str | Activation, w_var: object, k: object) -> Susceptibilities:
    """``chi_parallel(K) = C_W d E[phi(sqrt(K) z)^2] / dK`` and ``chi_perp(K) = C_W E[phi'(sqrt(K) z)^2]``.

    Roberts, Yaida & Hanin 2022 (PDLT), ch. 5: ``chi_parallel = C_W / (2 K^2) <phi^2 (z^2 - K)>_K``
    is the slope of the variance map at ``K`` (deviations of the diagonal kernel grow by it per layer),
    ``chi_perp = C_W <phi' phi'>_K`` the growth of the perpendicular (decorrelating) perturbation; at a fixed
    point ``K = q*`` they are :class:`SignalPropagation`'s ``chi_q`` and ``chi_1``. Neither depends on ``C_b``.
    ``K = 0`` gives the limit ``K -> 0`` (evaluated at ``K = 1e-12``).
    """
    act = _activation(activation)
    w, _ = _variances(w_var, 0.0)
    k_arr = np.asarray(k, dtype=float)
    if not np.all(np.isfinite(k_arr)) or np.any(k_arr < 0):
        bad = k_arr[~(np.isfinite(k_arr) & (k_arr >= 0))].ravel()[0]
        raise ValueError(f"k must be a finite kernel value >= 0, got {bad}")
    kk = jnp.asarray(k_arr, w.dtype)
    _, slope = _second_moment_slope(act, kk)
    _, d11 = _diagonal(act, jnp.maximum(kk, _Q_FLOOR))
    return Susceptibilities(np.asarray(w * slope), np.asarray(w * d11))


UNIVERSALITY_CLASSES = ("scale-invariant", "K*=0", "none")


@dataclass(frozen=True)
class Criticality:
    """The critical initialisation of an activation and its universality class (PDLT ch. 5).

    Attributes:
        universality_class: ``"scale-invariant"`` (``phi(x) = a_+ x`` for ``x > 0``, ``a_- x`` for ``x < 0``:
            relu, leaky relu, linear, abs; critical for every ``K*``), ``"K*=0"`` (``phi(0) = 0``,
            ``phi'(0) != 0`` and ``a_1 < 0``: tanh, erf, sin; the kernel flows to ``K* = 0`` as a power law),
            or ``"none"`` (no critical point with both susceptibilities 1 that the kernel flows to).
        w_var, b_var: the critical ``(C_W, C_b)`` (NaN for ``"none"``).
        k_star: the critical fixed point (0 for ``"K*=0"``, NaN = any for ``"scale-invariant"``).
        chi_parallel, chi_perp: the susceptibilities there (at ``K = 1`` for scale-invariant, ``K -> 0`` for
            ``K*=0``): both 1 up to the quadrature's accuracy.
        a1: ``phi'''(0) / phi'(0) + 3/4 (phi''(0) / phi'(0))^2``, PDLT's coefficient of ``K^2`` in the
            critical variance map ``K -> K + a1 K^2`` near 0 (NaN when ``phi(0) != 0`` or ``phi'(0) = 0``).
        candidates: ``(K*, C_W, C_b)`` with ``K* > 0`` where both susceptibilities are 1 and ``C_b >= 0``
            found on ``K`` in ``[1e-3, 1e2]`` (class ``"none"`` only); such points are at best half-stable
            (PDLT ch. 5 treats swish/gelu-type activations apart from the two classes), so they are
            reported, not declared critical.
    """

    universality_class: str
    w_var: float
    b_var: float
    k_star: float
    chi_parallel: float
    chi_perp: float
    a1: float
    candidates: tuple[tuple[float, float, float], ...] = ()


def _taylor_at_zero(act: Activation) -> tuple[float, float, float, float]:
    d1 = jax.grad(act.fn)
    d2 = jax.grad(d1)
    d3 = jax.grad(d2)
    zero = jnp.asarray(0.0, jnp.result_type(float))
    return tuple(float(f(zero)) for f in (act.fn, d1, d2, d3))


def criticality(activation: str | Activation) -> Criticality:
    """The critical ``(C_W, C_b)`` and the universality class of ``activation``, found numerically.

    PDLT (Roberts, Yaida & Hanin 2022) ch. 5: criticality is a fixed point ``K*`` of the variance map with
    ``chi_parallel(K*) = chi_perp(K*) = 1``. The tests, in order:

    1. scale invariance, ``phi(x) = a_+ x`` (x > 0), ``a_- x`` (x < 0), checked on 161 points of [-8, 8]:
       ``C_b = 0``, ``C_W = 2 / (a_+^2 + a_-^2)`` (relu: 2), and every ``K`` is a fixed point;
    2. ``phi(0) = 0``, ``sigma_1 = phi'(0) != 0`` and ``a1 < 0`` (derivatives at 0 by autodiff):
       ``C_b = 0``, ``C_W = 1 / sigma_1^2`` (tanh: 1; erf: ``phi'(0) = 2 / sqrt(pi)``, so ``pi / 4``). Expanding
       ``phi = sigma_1 x + sigma_2 x^2 / 2 + sigma_3 x^3 / 6`` gives the critical map ``K -> K + a1 K^2 + ...``
       with ``a1 = sigma_3 / sigma_1 + 3/4 (sigma_2 / sigma_1)^2``, so for ``a1 < 0`` the kernel decays to
       ``K* = 0`` like ``1 / (-a1 l)`` (tanh, erf: ``a1 = -2``; sin: -1);
    3. otherwise ``"none"`` (sigmoid, softplus: ``phi(0) != 0``; swish, gelu: ``a1 > 0``), with any
       ``K* > 0`` where ``E[phi phi''] = 0`` (so ``chi_parallel = chi_perp``) and ``C_b >= 0`` as candidates.
    """
    act = _activation(activation)
    dtype = jnp.result_type(float)
    xs = jnp.linspace(-8.0, 8.0, 161, dtype=dtype)
    ys = np.asarray(act.fn(xs))
    xs_np = np.asarray(xs)
    a_plus = float(np.asarray(act.fn(jnp.asarray(1.0, dtype))))
    a_minus = -float(np.asarray(act.fn(jnp.asarray(-1.0, dtype))))
    linear = np.where(xs_np > 0, a_plus * xs_np, a_minus * xs_np)
    if not np.all(np.isfinite(ys)):
        raise ValueError(f"activation {act!r} is not finite on [-8, 8]")
    phi0, s1, s2, s3 = _taylor_at_zero(act)
    a1 = s3 / s1 + 0.75 * (s2 / s1) ** 2 if (phi0 == 0 and s1 != 0) else math.nan
    scale = max(np.max(np.abs(ys)), 1e-300)
    if np.max(np.abs(ys - linear)) <= 1e-12 * scale and a_plus**2 + a_minus**2 > 0:
        w = 2.0 / (a_plus**2 + a_minus**2)
        chi = susceptibilities(act, w, 1.0)
        return Criticality("scale-invariant", w, 0.0, math.nan, float(chi.parallel), float(chi.perpendicular), a1)
    if phi0 == 0 and s1 != 0 and a1 < 0:
        w = 1.0 / s1**2
        chi = susceptibilities(act, w, 0.0)
        return Criticality("K*=0", w, 0.0, 0.0, float(chi.parallel), float(chi.perpendicular), a1)
    return Criticality("none", math.nan, math.nan, math.nan, math.nan, math.nan, a1, _nontrivial_candidates(act))


def _nontrivial_candidates(act: Activation) -> tuple[tuple[float, float, float], ...]:
    """Roots ``K*`` of ``chi_parallel / chi_perp - 1`` on a log grid of ``[1e-3, 1e2]`` refined by bisection,
    with ``C_W = 1 / E[phi'^2]`` and ``C_b = K* - C_W E[phi^2] >= 0``."""
    dtype = jnp.result_type(float)

    def excess(k: np.ndarray) -> np.ndarray:
        chi = susceptibilities(act, 1.0, k)
        return chi.parallel / chi.perpendicular - 1

    grid = np.geomspace(1e-3, 1e2, 401)
    f = excess(grid)
    idx = np.nonzero(np.sign(f[:-1]) * np.sign(f[1:]) < 0)[0]
    if idx.size == 0:
        return ()
    lo, hi = grid[idx], grid[idx + 1]
    f_lo = f[idx]
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        f_mid = excess(mid)
        same = np.sign(f_mid) == np.sign(f_lo)
        lo, hi, f_lo = np.where(same, mid, lo), np.where(same, hi, mid), np.where(same, f_mid, f_lo)
    out = []
    for k in np.sqrt(lo * hi):
        e, d = (float(v) for v in _diagonal(act, jnp.asarray(k, dtype)))
        w = 1.0 / d
        b = k - w * e
        if b >= -1e-12 * k:
            out.append((float(k), w, max(b, 0.0)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# Sparsity-inducing activations (Price, Daultry Ball, Lam, Jones & Tanner 2024)


@dataclass(frozen=True)
class EdgeOfChaos:
    """The edge-of-chaos initialisation with a chosen variance fixed point ``q*`` (arrays shaped like ``q*``).

    Attributes:
        q_star: the chosen fixed point.
        w_var: ``C_W = 1 / E[phi'(sqrt(q*) z)^2]`` (so ``chi_1 = 1``).
        b_var: ``C_b = q* - C_W E[phi(sqrt(q*) z)^2]`` (so ``V(q*) = q*``); NaN where negative (``valid`` False).
        variance_slope: ``V'(q*)`` (= PDLT's ``chi_parallel``): the fixed point is stable iff it is < 1.
        variance_curvature: ``V''(q*)``; with ``variance_slope = 1`` its sign decides: > 0 means perturbations
            above ``q*`` grow (the instability), < 0 that those below do.
        valid: ``C_b >= 0`` (an initialisation exists).
        stable: ``valid`` and ``variance_slope < 1 - 1e-9``.
    """

    q_star: np.ndarray
    w_var: np.ndarray
    b_var: np.ndarray
    variance_slope: np.ndarray
    variance_curvature: np.ndarray
    valid: np.ndarray
    stable: np.ndarray


def edge_of_chaos(activation: str | Activation, q_star: object) -> EdgeOfChaos:
    """The edge-of-chaos ``(C_W, C_b)`` with variance fixed point ``q*``, and the stability of ``q*`` under ``V``.

    Price et al. 2024 ("Deep Neural Network Initialization with Sparsity Inducing Activations"): on the
    edge of chaos ``chi_1 = C_W E[phi'(sqrt(q*) z)^2] = 1`` and ``V(q*) = q*`` fix ``C_W = 1 / E[phi'^2]`` and
    ``C_b = q* - C_W E[phi^2]``. The instability they prove: for the shifted relu ``max(0, x - tau)`` and the
    soft threshold (``tau > 0``) this ``q*`` is not a stable fixed point of the variance map. Here is why, in
    PDLT's terms: ``V'(q) = C_W (E[phi'^2] + E[phi phi''])`` and ``phi phi'' = 0`` for these activations (their
    kinks sit where ``phi = 0``), so ``V'(q*) = chi_1 = 1`` on the edge of chaos, while
    ``V''(q*) = C_W pdf(tau / sqrt(q*)) tau / (2 q*^(3/2))`` (twice that for the soft threshold) ``> 0``:
    ``V(q) > q`` on both sides, the variance drifts up from any ``q >= q*`` and explodes (``V'(q) -> C_W / 2 > 1``,
    resp. ``C_W > 1``). Clipping the magnitude at ``m`` (``theory.activations.clipped``) puts a kink where
    ``phi = m != 0``: ``E[phi phi''] = -m pdf_x(tau + m) < 0``, so ``V'(q*) < 1`` and ``q*`` is stable.
    Closed forms for the (clipped) shifted relu / soft threshold; 1-D quadrature and autodiff for others.
    """
    act = _activation(activation)
    q = _positive("q_star", q_star)
    out = _edge_of_chaos(act, q)
    return EdgeOfChaos(*(np.asarray(a) for a in out))


@jax.jit(static_argnames=("act",))
def _edge_of_chaos(act, q):
    e, d = _diagonal(act, q)
    w = 1.0 / d
    b = q - w * e
    valid = jnp.isfinite(w) & (b >= -1e-12 * q)

    def slope(x):
        return _second_moment_slope(act, x)[1]

    s, curvature = jax.jvp(slope, (q,), (jnp.ones_like(q),))
    nan = jnp.full_like(q, jnp.nan)
    keep = lambda a: jnp.where(valid, a, nan)  # noqa: E731
    return (q, keep(w), keep(jnp.maximum(b, 0.0)), keep(w * s), keep(w * curvature), valid,
            valid & (w * s < 1 - 1e-9))


def variance_trajectory(activation: str | Activation, w_var: object, b_var: object, q1: object,
                        layers: int) -> np.ndarray:
    """``q^1, q^2 = V(q^1), ..., q^layers``: the pre-activation variance layer by layer at infinite width.

    Poole et al. 2016, iterated from ``q^1`` (for an input ``x`` of dimension ``d``, the first
    Dense layer gives ``q^1 = C_W |x|^2 / d + C_b``). Shape ``(layers, *broadcast(w_var, b_var, q1))``;
    ``inf`` once the variance overflows (an exploding map).
    """
    act = _activation(activation)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    w, b = _variances(w_var, b_var)
    q = _positive("q1", q1)
    w, b, q = jnp.broadcast_arrays(w, b, q)

    def body(x, _):
        nxt = jnp.where(x < _Q_DIVERGED, w * _second_moment(act, jnp.minimum(x, _Q_DIVERGED)) + b, jnp.inf)
        return nxt, x

    _, out = jax.lax.scan(body, q, None, length=layers)
    return np.asarray(out)


__all__ = [
    "UNIVERSALITY_CLASSES",
    "Criticality",
    "EdgeOfChaos",
    "SignalPropagation",
    "Susceptibilities",
    "correlation_map",
    "critical_line",
    "criticality",
    "edge_of_chaos",
    "signal_propagation",
    "susceptibilities",
    "variance_map",
    "variance_trajectory",
]
