"""Activation registry: Gaussian expectations ``E[phi(u)phi(v)]`` and ``E[phi'(u)phi'(v)]``.

An :class:`Activation` carries the elementwise function ``phi`` (used by finite networks)
and a *dual* map ``(q11, q12, q22) -> (E[phi(u)phi(v)], E[phi'(u)phi'(v)])`` for
``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` (used by the infinite-width recursions).
Registered activations have closed-form duals; any other function falls back to
two-dimensional Gauss-Hermite quadrature (:func:`theory.gaussian.gauss_hermite_expectations`).

Closed forms: relu (Cho & Saul 2009), leaky_relu with slope ``a`` (``phi = relu(x) - a relu(-x)``; ``abs`` is
``a = -1``), erf (Williams 1997), identity, sign (``E' = 0``: its derivative vanishes almost everywhere, and finite
networks get no gradient through it either), gelu as the exact ``x Phi(x)`` (Tsuchida et al. 2021), sin and cos.
The other activations (registered names: tanh, softplus, sigmoid, silu/swish; factories :func:`shifted_relu`,
:func:`soft_threshold`, :func:`clipped`) and any user function wrapped in ``Activation(fn)`` are *automatic* by
default: ``theory.kernels`` gives each a Hermite series (:mod:`theory.hermite`) chosen from the variances the
network meets, accurate to 1e-7 of the kernel's scale; a function too rough for it (a kink) falls back to the
two-dimensional Gauss-Hermite rule, as does an explicit ``quadrature_degree`` (accuracy in
:data:`theory.gaussian.DEFAULT_QUADRATURE_DEGREE`) and every use outside ``theory.kernels``.

Derivation and notes: docs/activation_duals.md (the closed-form duals).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, wraps

import jax
import jax.numpy as jnp

from theory import gap
from theory.gaussian import (
    DEFAULT_QUADRATURE_DEGREE,
    correlation,
    gauss_hermite_expectations,
)
from theory.hermite import HermiteRule, series_expectations

Array = jax.Array
Dual = Callable[[Array, Array, Array], tuple[Array, Array]]
GapDual = Callable[[Array, Array, Array, Array], tuple[Array, Array]]

_PI = math.pi


@dataclass(frozen=True)
class Activation:
    """An elementwise activation ``phi`` with its Gaussian dual.

    ``Activation(fn)`` wraps any JAX-traceable elementwise function; its dual is computed by
    Gauss-Hermite quadrature of degree ``quadrature_degree``. ``dual`` (a closed form taking
    ``(q11, q12, q22)`` and returning ``(E[phi(u)phi(v)], E[phi'(u)phi'(v)])``) replaces the
    quadrature where given. Two activations are equal when they have the same name and
    parameters. Factories are cached, so ``leaky_relu(0.1)`` is one object and jitted
    recursions compile once per activation.
    """

    fn: Callable[[Array], Array]
    name: str | None = None
    dual: Dual | None = field(default=None, repr=False)
    quadrature_degree: int | None = None
    params: tuple = ()
    series: HermiteRule | None = None
    gap_dual: GapDual | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ValueError(f"Activation needs a callable elementwise function, got {self.fn!r}")
        degree = self.quadrature_degree
        if degree is not None and (isinstance(degree, bool) or not isinstance(degree, int) or degree < 1):
            raise ValueError(
                f"quadrature_degree must be a positive integer, got {degree!r}; "
                f"the default is {DEFAULT_QUADRATURE_DEGREE}"
            )
        if self.name is None:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", "custom"))
        if self.dual is None:
            _probe(self.fn, self.name)

    def __repr__(self) -> str:
        args = ", ".join(f"{v}" for v in self.params)
        if self.dual is not None:
            method = "closed form"
        elif self.series is not None:
            method = f"Hermite series, {self.series.terms} terms"
        elif self.quadrature_degree is not None:
            method = f"quadrature deg {self.quadrature_degree}"
        else:
            method = "automatic"
        return f"Activation({self.name}{'(' + args + ')' if args else ''}, {method})"

    def __call__(self, x: Array) -> Array:
        return self.fn(x)

    @property
    def has_closed_form(self) -> bool:
        return self.dual is not None

    @property
    def automatic(self) -> bool:
        """No closed form and no method chosen: ``theory.kernels`` picks a Hermite series for the variances met."""
        return self.dual is None and self.series is None and self.quadrature_degree is None

    @property
    def degree(self) -> int:
        """The Gauss-Hermite degree used where a 2-D rule is needed (the default where none was chosen)."""
        return self.quadrature_degree or DEFAULT_QUADRATURE_DEGREE

    def with_series(self, rule: HermiteRule) -> Activation:
        """The same function with its dual computed by the Hermite series ``rule`` (:mod:`theory.hermite`)."""
        return dataclasses.replace(self, series=rule, quadrature_degree=None)

    def expectations(
        self, q11: Array, q12: Array, q22: Array, derivative: bool = True
    ) -> tuple[Array, Array | None]:
        """``(E[phi(u)phi(v)], E[phi'(u)phi'(v)])`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])``.

        Shapes broadcast; the second entry is ``None`` when ``derivative`` is False.
        """
        if self.dual is not None:
            nngp, ntk = self.dual(q11, q12, q22)
            return nngp, (ntk if derivative else None)
        if self.series is not None:
            return series_expectations(self.fn, q11, q12, q22, self.series, derivative)
        return gauss_hermite_expectations(self.fn, q11, q12, q22, self.degree, derivative)

    def with_quadrature(self, degree: int = DEFAULT_QUADRATURE_DEGREE) -> Activation:
        """The same function with its dual computed by quadrature (for testing closed forms)."""
        return Activation(self.fn, f"{self.name}[quad]", None, degree, self.params)


def _probe(fn: Callable[[Array], Array], name: str) -> None:
    """Refuse, with the cause, a function that is not elementwise or is undefined on part of the real line
    (Gaussian pre-activations take every real value). Skipped where ``fn`` cannot run on concrete values."""
    z = jnp.concatenate([jnp.linspace(-20.0, 20.0, 41), jnp.array([-1e-3, 1e-3, 0.5, -0.5, 2.5, -2.5, 7.0])])
    try:
        with jax.ensure_compile_time_eval():
            out = jnp.asarray(fn(z))
            grid = jnp.asarray(fn(z.reshape(6, 8)))
            head = jnp.asarray(fn(z[:5]))
    except jax.errors.JAXTypeError:
        return
    except Exception as err:  # any failure here means fn is not a plain elementwise function
        raise ValueError(f"Activation({name}) fails on a 1-D array of pre-activations ({type(err).__name__}: "
                         f"{err}); it must be an elementwise JAX function such as jnp.tanh") from None
    if any(isinstance(a, jax.core.Tracer) for a in (out, grid, head)):
        return  # fn closes over traced values (built inside jax.jit): nothing concrete to check
    if out.shape != z.shape or grid.shape != (6, 8) or head.shape != (5,):
        raise ValueError(f"Activation({name}) is not elementwise: it maps shape {z.shape} to {out.shape} and "
                         f"(6, 8) to {grid.shape}; use a function applied to each entry, such as jnp.tanh")
    if not (jnp.allclose(grid, out.reshape(6, 8), rtol=1e-5, atol=1e-6, equal_nan=True)
            and jnp.allclose(head, out[:5], rtol=1e-5, atol=1e-6, equal_nan=True)):
        raise ValueError(f"Activation({name}) is not elementwise: its value at an entry depends on the other "
                         "entries (or on the array's shape)")
    bad = ~jnp.isfinite(out)
    if bool(jnp.any(bad)):
        x = float(z[jnp.argmax(bad)])
        raise ValueError(f"Activation({name}) returns {float(out[jnp.argmax(bad)])} at x = {x:g}: Gaussian "
                         "pre-activations take every real value, so the function must be finite on all of R")


# ---------------------------------------------------------------------------------------
# Closed-form duals


# Abramowitz & Stegun 4.4.46: arccos(x) = sqrt(1 - x) * P(x) on [0, 1], |error| <= 2e-8; the constant
# term (1.5707963050 there) is pi/2 here so that arcsin(0) = 0 exactly in float32 (+6e-8 elsewhere).
_ACOS_COEFFS = (_PI / 2, -0.2145988016, 0.0889789874, -0.0501743046,
                0.0308918810, -0.0170881256, 0.0066700901, -0.0012624911)


def arccos(x: Array) -> Array:
    """``arccos`` for duals: exact (``jnp.arccos``) in float64; in float32 a degree-7 minimax
    polynomial (error <= 2e-8, below float32's resolution) that is ~8x faster than XLA's arccos on
    CPU, where arccos dominates the cost of the relu-family recursions."""
    if x.dtype != jnp.float32:
        return jnp.arccos(x)
    a = jnp.abs(x)
    poly = jnp.zeros_like(a)
    for c in reversed(_ACOS_COEFFS):
        poly = poly * a + c
    half = jnp.sqrt(jnp.maximum(1 - a, 0)) * poly
    return jnp.where(x >= 0, half, jnp.float32(_PI) - half)


def _arcsin_series_coeffs(terms: int) -> tuple[float, ...]:
    # arcsin(x) = sum_n (2n)! / (4^n (n!)^2 (2n + 1)) x^(2n+1)
    return tuple(math.comb(2 * n, n) / 4**n / (2 * n + 1) for n in range(terms))


_ASIN_COEFFS = _arcsin_series_coeffs(11)  # relative truncation error < 1e-8 for |x| <= 1/2


def arcsin(x: Array) -> Array:
    """``arcsin`` for duals: exact in float64; in float32 its Taylor series (11 terms, relative error
    < 1e-8) for ``|x| <= 1/2`` and ``pi/2 - arccos(|x|)`` beyond, extended as an odd function, so
    small arguments keep their relative accuracy and ``arcsin(0) = 0``."""
    if x.dtype != jnp.float32:
        return jnp.arcsin(x)
    a = jnp.abs(x)
    small = jnp.minimum(a, 0.5)
    square = small * small
    series = jnp.zeros_like(a)
    for c in reversed(_ASIN_COEFFS):
        series = series * square + c
    series = series * small
    large = jnp.float32(_PI / 2) - arccos(a)
    return jnp.sign(x) * jnp.where(a <= 0.5, series, large)


def _leaky_relu_dual(slope: float) -> Dual:
    def dual(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
        rho, norm = correlation(q11, q12, q22)
        theta = arccos(rho)
        sine = jnp.sqrt(jnp.maximum(1 - rho**2, 0))
        slope_term = (1 + slope**2) * (_PI - theta) + 2 * slope * theta
        nngp = norm / (2 * _PI) * ((1 - slope) ** 2 * sine + slope_term * rho)
        return nngp, slope_term / (2 * _PI)

    return dual


def _leaky_relu_gap_dual(slope: float) -> GapDual:
    """The leaky-relu derivative kernel ``((1 + a^2)(pi - theta) + 2 a theta) / (2 pi)`` with the angle from the gap
    (:mod:`theory.gap`), and the output's gap
    ``sqrt(q11 q22) / (2 pi) [2 pi (1 + a^2) sin^2(theta / 2) - (1 - a)^2 (sin theta - theta cos theta)]``; the
    caller recomputes the NNGP from the gap."""
    def dual(q11: Array, q12: Array, q22: Array, g12: Array) -> tuple[Array, Array]:
        norm = jnp.sqrt(q11) * jnp.sqrt(q22)  # per input, then one product per pair
        half = gap.half_angle_sine(norm, g12)
        theta = 2 * arcsin(half)
        slope_term = (1 + slope**2) * (_PI - theta) + 2 * slope * theta
        out_gap = norm / (2 * _PI) * (2 * _PI * (1 + slope**2) * half**2
                                      - (1 - slope) ** 2 * gap.sin_minus_half_angle(theta, half))
        return slope_term / (2 * _PI), jnp.maximum(out_gap, 0)

    return dual


def _erf_dual(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    # Square roots per input (q11 (B, 1), q22 (1, N) broadcast), one product per pair. The argument is clipped to
    # its bound 2 sqrt(q11 q22) / sqrt(ab) < 1: a rounded q12 above sqrt(q11 q22) would grow in the chaotic phase.
    ra, rb = jnp.sqrt(1 + 2 * q11), jnp.sqrt(1 + 2 * q22)
    den = ra * rb
    bound = (jnp.sqrt(2 * q11) / ra) * (jnp.sqrt(2 * q22) / rb)
    arg = jnp.clip(2 * q12 / den, -bound, bound)
    nngp = 2 / _PI * arcsin(arg)
    ntk = 4 / _PI / (den * jnp.sqrt(1 - arg * arg))
    return nngp, ntk


def _identity_dual(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    return q12, jnp.ones_like(q12)


def _sign_dual(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    rho, _ = correlation(q11, q12, q22)
    return 2 / _PI * arcsin(rho), jnp.zeros_like(rho)


def _sign_gap_dual(q11: Array, q12: Array, q22: Array, g12: Array) -> tuple[Array, Array]:
    """The sign dual is ``1 - 2 theta / pi``: its derivative kernel is 0 and the output's gap ``2 theta / pi``, with
    the angle from the gap."""
    turn = 4 / _PI * arcsin(gap.half_angle_sine(jnp.sqrt(q11) * jnp.sqrt(q22), g12))
    return jnp.zeros_like(turn), turn


def _gelu_dual(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    # phi(x) = x Phi(x).  With a = 1 + q11, b = 1 + q22 and delta^2 = a b - q12^2:
    #   E[phi phi]   = q12/4 + [ (q12^2 + q11 q22 delta^2) / (a b delta) + q12 psi ] / (2 pi)
    #   E[phi' phi'] = 1/4 + psi/(2 pi) + q12 / (2 pi delta) (1/delta^2 + (1 - q11 q22)/(a b) + 1)
    # with psi = arctan2(q12, delta) (Tsuchida, Pearce, van der Heide, Roosta, Gallagher 2021).
    a, b = 1 + q11, 1 + q22
    ab = a * b
    delta2 = ab - q12**2
    delta = jnp.sqrt(delta2)
    psi = jnp.arctan2(q12, delta)
    nngp = q12 / 4 + ((q12**2 + q11 * q22 * delta2) / (ab * delta) + q12 * psi) / (2 * _PI)
    ntk = 0.25 + psi / (2 * _PI) + q12 / (2 * _PI * delta) * (1 / delta2 + (1 - q11 * q22) / ab + 1)
    return nngp, ntk


def _trig_products(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    # exp(-(q11+q22)/2) sinh(q12) and ... cosh(q12), without overflowing cosh for large q.
    mean = (q11 + q22) / 2
    up, down = jnp.exp(q12 - mean), jnp.exp(-q12 - mean)
    return (up - down) / 2, (up + down) / 2


def _sin_dual(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    sinh_part, cosh_part = _trig_products(q11, q12, q22)
    return sinh_part, cosh_part


def _cos_dual(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    sinh_part, cosh_part = _trig_products(q11, q12, q22)
    return cosh_part, sinh_part


# ---------------------------------------------------------------------------------------
# Elementwise functions


def _gelu_exact(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


def _softplus(x: Array) -> Array:
    return jax.nn.softplus(x)


def _sigmoid(x: Array) -> Array:
    return jax.nn.sigmoid(x)


def _silu(x: Array) -> Array:
    return jax.nn.silu(x)


# ---------------------------------------------------------------------------------------
# Factories (cached so that equal parameters give the same object, and jit caches hit)


def _factory(make: Callable[..., Activation]) -> Callable[..., Activation]:
    """Cache a factory on its fully bound arguments: ``f(0.1)`` and ``f(slope=0.1)`` are one object."""
    signature = inspect.signature(make)
    cached = cache(make)

    @wraps(make)
    def factory(*args: object, **kwargs: object) -> Activation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return cached(*bound.args)

    return factory


@_factory
def relu() -> Activation:
    """``max(x, 0)``; closed-form arc-cosine dual (Cho & Saul 2009)."""
    return Activation(jax.nn.relu, "relu", _leaky_relu_dual(0.0), gap_dual=_leaky_relu_gap_dual(0.0))


@_factory
def leaky_relu(slope: float = 0.01) -> Activation:
    """``max(x, 0) + slope * min(x, 0)``; closed-form dual from the arc-cosine kernel."""
    slope = float(slope)
    if not math.isfinite(slope):
        raise ValueError(f"leaky_relu slope must be finite, got {slope}")

    def fn(x: Array) -> Array:
        return jnp.where(x > 0, x, slope * x)

    return Activation(fn, "leaky_relu", _leaky_relu_dual(slope), params=(slope,),
                      gap_dual=_leaky_relu_gap_dual(slope))


@_factory
def abs() -> Activation:  # noqa: A001 - the activation's name
    """``|x|``; the leaky-relu dual at slope -1."""
    return Activation(jnp.abs, "abs", _leaky_relu_dual(-1.0), gap_dual=_leaky_relu_gap_dual(-1.0))


@_factory
def erf() -> Activation:
    """``erf(x)``; closed-form arcsin dual (Williams 1997)."""
    return Activation(jax.scipy.special.erf, "erf", _erf_dual)


@_factory
def identity() -> Activation:
    """``x``: the linear network."""
    return Activation(lambda x: x, "identity", _identity_dual)


@_factory
def sign() -> Activation:
    """``sign(x)``; dual ``2/pi arcsin(rho)``, derivative kernel 0."""
    return Activation(jnp.sign, "sign", _sign_dual, gap_dual=_sign_gap_dual)


@_factory
def gelu() -> Activation:
    """Exact GELU ``x Phi(x)``; closed-form dual (Tsuchida et al. 2021)."""
    return Activation(_gelu_exact, "gelu", _gelu_dual)


@_factory
def sin() -> Activation:
    """``sin(x)``; dual ``exp(-(q11+q22)/2) sinh(q12)``."""
    return Activation(jnp.sin, "sin", _sin_dual)


@_factory
def cos() -> Activation:
    """``cos(x)``; dual ``exp(-(q11+q22)/2) cosh(q12)``."""
    return Activation(jnp.cos, "cos", _cos_dual)


@_factory
def tanh(quadrature_degree: int | None = None) -> Activation:
    """``tanh(x)``; dual by Gauss-Hermite quadrature."""
    return Activation(jnp.tanh, "tanh", None, quadrature_degree)


@_factory
def softplus(quadrature_degree: int | None = None) -> Activation:
    """``log(1 + e^x)``; dual by quadrature."""
    return Activation(_softplus, "softplus", None, quadrature_degree)


@_factory
def sigmoid(quadrature_degree: int | None = None) -> Activation:
    """``1 / (1 + e^-x)``; dual by quadrature."""
    return Activation(_sigmoid, "sigmoid", None, quadrature_degree)


@_factory
def silu(quadrature_degree: int | None = None) -> Activation:
    """``x sigmoid(x)`` (swish); dual by quadrature."""
    return Activation(_silu, "silu", None, quadrature_degree)


@_factory
def shifted_relu(shift: float = 0.5, quadrature_degree: int | None = None) -> Activation:
    """``max(0, x - shift)`` (sparsity-inducing); dual by quadrature (kink: slower convergence)."""
    shift = float(shift)

    def fn(x: Array) -> Array:
        return jnp.maximum(x - shift, 0)

    return Activation(fn, "shifted_relu", None, quadrature_degree, (shift,))


@_factory
def soft_threshold(threshold: float = 0.5, quadrature_degree: int | None = None) -> Activation:
    """``sign(x) max(|x| - threshold, 0)`` (sparsity-inducing); dual by quadrature."""
    threshold = float(threshold)

    def fn(x: Array) -> Array:
        return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)

    return Activation(fn, "soft_threshold", None, quadrature_degree, (threshold,))


def clipped(activation: str | Activation, bound: float) -> Activation:
    """``clip(phi(x), -bound, bound)``: a magnitude-clipped activation; dual by quadrature."""
    base = get(activation)
    bound = float(bound)
    if not bound > 0:
        raise ValueError(f"clipped() needs a positive bound, got {bound}")
    return _clipped(base, bound)


@cache
def _clipped(base: Activation, bound: float) -> Activation:
    def fn(x: Array) -> Array:
        return jnp.clip(base.fn(x), -bound, bound)

    return Activation(fn, f"clipped_{base.name}", None, base.quadrature_degree, (base.params, bound))


_REGISTRY: dict[str, Callable[..., Activation]] = {
    "relu": relu,
    "leaky_relu": leaky_relu,
    "abs": abs,
    "erf": erf,
    "identity": identity,
    "linear": identity,
    "sign": sign,
    "gelu": gelu,
    "sin": sin,
    "cos": cos,
    "tanh": tanh,
    "softplus": softplus,
    "sigmoid": sigmoid,
    "silu": silu,
    "swish": silu,
    "shifted_relu": shifted_relu,
    "soft_threshold": soft_threshold,
}


def registered() -> tuple[str, ...]:
    """Names accepted by :func:`get` (and by ``MLP(activation=...)``)."""
    return tuple(sorted(_REGISTRY))


def get(activation: str | Activation | Callable, **params: float) -> Activation:
    """Resolve a registered name (with factory parameters), an :class:`Activation`, or a function."""
    if isinstance(activation, Activation):
        if params:
            raise ValueError(f"parameters {params} given for an Activation object {activation!r}")
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key not in _REGISTRY:
            raise ValueError(
                f"unknown activation {activation!r}; registered: {', '.join(registered())}; "
                "or pass theory.Activation(fn) for any elementwise JAX function"
            )
        try:
            return _REGISTRY[key](**params)
        except TypeError as err:
            raise ValueError(f"bad parameters {params} for activation {activation!r}: {err}") from None
    if callable(activation):
        return Activation(activation)
    raise ValueError(
        f"activation must be a name, an Activation or a function, got {activation!r}"
    )
