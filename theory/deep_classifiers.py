r"""Infinitely wide and deep NTK classifiers on the sphere (Radhakrishnan, Belkin & Uhler, "Wide and Deep Neural
Networks Achieve Optimality for Classification", arXiv 2204.14126).

The network is the *normalised* bias-free MLP of :func:`network`: inputs on the sphere of radius ``sqrt(d)`` (so the
first Dense gives correlation ``rho = cos(x, x')`` at unit variance), every later Dense with ``w_std = 1 /
sqrt(E[phi(z)^2])``. Every layer then has unit variance and its correlation map and slope are the activation's
normalised dual ``xi(rho) = E[phi(u) phi(v)] / E[phi^2]``, ``xi'(rho) = E[phi'(u) phi'(v)] / E[phi^2]``
(``xi(rho) = sum_i a_i^2 rho^i`` for the normalised Hermite coefficients ``a_i``). With ``rho_0 = rho``,
``rho_l = xi(rho_{l-1})`` the NTK of ``depth = L`` hidden layers is

    Theta_0 = rho,    Theta_l = rho_l + xi'(rho_{l-1}) Theta_{l-1},    Theta_L(1) = sum_{l<=L} xi'(1)^l.

As ``L -> inf`` the NTK predictor ``Theta(x, X) Theta(X, X)^-1 Y`` classifies (argmax) like one of (:func:`taxonomy`;
derivation in docs/deep_classifiers.md, where ``lambda = xi'(1)``):

* ``a_0 = a_1 = 0`` -- **nearest neighbour**: ``log Theta_L(rho) = k^L beta(rho) + O(L)`` (``k`` the first Hermite
  order present), doubly exponential separation: the training input of largest ``beta`` (:func:`log_similarity`,
  increasing in ``rho >= 0``) wins.
* ``a_0 = 0 < a_1^2 < 1`` -- **singular kernel**: ``Theta_L(rho) = a_1^{2L} [(L + 1) C(rho) + E(rho)] (1 +
  O(a_1^{2L}))`` for ``rho < 1`` (:func:`singular_kernel`: ``C`` the Koenigs function of ``xi`` at 0, ``C(rho) ~ (1 -
  rho)^{-alpha}`` as ``rho -> 1`` with ``alpha = log(1/a_1^2) / log(lambda)``), while ``Theta_L(1) ~ lambda^L``: the
  classifier ``argmax sum_i C(rho_i) y_i``, a kernel ``~ |x - x'|^{-2 alpha}`` (the Hilbert kernel, consistent,
  when ``2 alpha`` is the data's dimension: :func:`optimal_activation`).
* ``a_0 != 0``, ``lambda >= 1`` -- **majority vote**: the off-diagonal NTK becomes independent of ``rho`` relative to
  the diagonal (:func:`majority_vote_kernel`; ReLU: ``Theta_L(rho) / (L + 1) -> 1/4``).
* ``a_0 != 0``, ``lambda < 1`` ("ordered") and linear ``phi``: none of the three (see the docs).

Conventions: correlations ``rho`` in [-1, 1]; float64 recommended (``jax_enable_x64``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.polynomial.hermite_e as herme

from theory import layers as nn
from theory.activations import Activation, get
from theory.hermite import choose_rule
from theory.kernels import Kernels

Array = jax.Array

ZERO_TOL = 1e-10
"""Normalised Hermite weights ``a_0^2`` (``= xi(0)``) and ``a_1^2`` (``= xi'(0)``) below this count as zero."""

_SMALL = 1e-8  # |rho_n| below which the asymptotic (Koenigs / Boettcher) expansions are used
_MAX_STEPS = 100_000


# -- normalised dual ------------------------------------------------------------------------------------------
@functools.cache
def _second_moment(activation: Activation) -> float:
    with jax.ensure_compile_time_eval():
        return _second_moment_now(activation)


def _second_moment_now(activation: Activation) -> float:
    one = jnp.asarray(1.0, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    m = float(activation.expectations(one, one, one, derivative=False)[0])
    if not (math.isfinite(m) and m > 0):
        raise ValueError(f"E[phi(z)^2] of {activation!r} is {m}: the activation cannot be normalised")
    return m


@functools.cache
def _accurate(act: Activation) -> Activation:
    # An automatic activation gets a Hermite series accurate to 1e-12 of its scale at unit variance (the default
    # two-dimensional rule is ~1e-6 off for tanh there); one too rough for a series keeps the quadrature.
    if not act.automatic:
        return act
    try:
        return act.with_series(choose_rule(act.fn, 1.0, tol=1e-12, name=repr(act)))
    except ValueError:
        return act


def dual(activation: str | Activation | Callable, rho: Any) -> tuple[Array, Array]:
    """The normalised dual ``(xi(rho), xi'(rho))`` at unit variances: ``E[phi(u)phi(v)] / E[phi(z)^2]`` and
    ``E[phi'(u)phi'(v)] / E[phi(z)^2]`` for ``(u, v)`` standard Gaussians of correlation ``rho``.

    Args:
        activation: a registered name, an :class:`~theory.Activation` or a function.
        rho: correlations in [-1, 1], any shape.

    Returns:
        ``(xi, xi')``, each of ``rho``'s shape.
    """
    act = _accurate(get(activation))
    rho = jnp.asarray(rho)
    if not jnp.issubdtype(rho.dtype, jnp.floating):
        rho = rho.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    m = _second_moment(act)
    one = jnp.ones_like(rho)
    value, slope = act.expectations(one, rho, one)
    return value / m, slope / m


def _check_rho(rho: Any) -> Array:
    rho = jnp.asarray(rho)
    if not jnp.issubdtype(rho.dtype, jnp.floating):
        rho = rho.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    if not isinstance(rho, jax.core.Tracer):
        r = np.asarray(rho)
        if not np.all(np.isfinite(r)) or np.any(np.abs(r) > 1):
            raise ValueError("rho must hold correlations in [-1, 1] (no NaN); clip cosine similarities that "
                             "rounding pushed past +-1")
    return rho


# -- the taxonomy ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Taxonomy:
    """Where an activation's infinitely deep NTK classifier falls (docs/deep_classifiers.md).

    Attributes:
        classifier: "nearest neighbour", "singular kernel", "majority vote", "ordered" (``a_0 != 0``,
            ``lambda < 1``: the kernel tends to a constant; not one of the paper's three) or "linear".
        a0_sq, a1_sq: normalised Hermite weights ``a_0^2 = xi(0)``, ``a_1^2 = xi'(0)``.
        slope: ``lambda = xi'(1)``, the growth per layer of the NTK's diagonal.
        exponent: singular kernel only: ``alpha`` with ``C(rho) ~ (1 - rho)^{-alpha}``, i.e. the kernel
            ``~ |x - x'|^{-2 alpha}`` on the unit sphere; ``nan`` otherwise.
        order: nearest neighbour only: ``k``, the lowest Hermite order present (``xi(rho) ~ a_k^2 rho^k``); 0
            otherwise.
        critical_power: majority vote with ``lambda = 1`` only: ``p`` in ``1 - xi'(rho) ~ c (1 - rho)^p`` (1/2 for
            relu-type kinks, 1 for smooth activations), giving ``Theta_L(rho) / (L + 1) -> p / (2p + 1)``; 0
            otherwise.
    """

    classifier: str
    a0_sq: float
    a1_sq: float
    slope: float
    exponent: float = math.nan
    order: int = 0
    critical_power: float = 0.0


@functools.cache
def _taxonomy(act: Activation) -> Taxonomy:
    with jax.ensure_compile_time_eval():
        return _taxonomy_now(act)


def _taxonomy_now(act: Activation) -> Taxonomy:
    f64 = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    pts = jnp.asarray([0.0, 1.0], f64)
    (x0, _), (s0, s1) = dual(act, pts)[0], dual(act, pts)[1]
    a0, a1, lam = float(x0), float(s0), float(s1)
    if not all(math.isfinite(v) for v in (a0, a1, lam)):
        raise ValueError(f"the normalised dual of {act!r} is not finite at rho = 0 or 1 (xi'(1) = {lam}); "
                         "its NTK has no depth limit (a step function's derivative is a delta)")
    if a1 >= 1 - ZERO_TOL:
        return Taxonomy("linear", a0, a1, lam)
    if a0 > ZERO_TOL:
        if lam < 1 - 1e-8:
            return Taxonomy("ordered", a0, a1, lam)
        if lam <= 1 + 1e-8:
            return Taxonomy("majority vote", a0, a1, lam, critical_power=_critical_power(act))
        return Taxonomy("majority vote", a0, a1, lam)
    if a1 > ZERO_TOL:
        return Taxonomy("singular kernel", a0, a1, lam, exponent=math.log(1 / a1) / math.log(lam))
    r = jnp.asarray(1e-3, f64)
    xi, dxi = dual(act, r)
    order = round(float(r * dxi / xi))
    return Taxonomy("nearest neighbour", a0, a1, lam, order=order)


def _critical_power(act: Activation) -> float:
    h = jnp.asarray([1e-4, 1e-6], jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    gap = 1 - dual(act, 1 - h)[1]
    p = float(jnp.log(gap[0] / gap[1]) / jnp.log(h[0] / h[1]))
    for candidate in (0.5, 1.0):
        if abs(p - candidate) < 0.05:
            return candidate
    raise ValueError(f"{act!r} is critical (xi'(1) = 1) but 1 - xi'(rho) ~ (1 - rho)^{p:.3f}: only p = 1/2 (kinks) "
                     "and p = 1 (smooth) are supported")


def taxonomy(activation: str | Activation | Callable) -> Taxonomy:
    """Classify the infinitely deep NTK classifier of ``activation`` (Radhakrishnan, Belkin & Uhler).

    Args:
        activation: a registered name, an :class:`~theory.Activation` or a function.

    Returns:
        a :class:`Taxonomy`.
    """
    return _taxonomy(get(activation))


# -- networks and inputs --------------------------------------------------------------------------------------
def network(activation: str | Activation | Callable, depth: int) -> nn.Serial:
    """The normalised bias-free MLP the theory describes: ``Dense(1), (phi, Dense(1 / sqrt(E[phi^2]))) x depth``.

    Its NTK on inputs from :func:`sphere` equals :func:`ntk` of their correlations (``theory.kernels`` of it).
    """
    act = get(activation)
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    w = 1 / math.sqrt(_second_moment(act))
    return nn.serial(nn.Dense(w_std=1.0), *((nn.Elementwise(act), nn.Dense(w_std=w)) * int(depth)))


def sphere(x: Any) -> np.ndarray:
    """Project the rows of ``x`` ``(N, d)`` onto the sphere of radius ``sqrt(d)`` (unit variance per feature, so the
    first Dense of :func:`network` sees correlation ``cos(x, x')`` at variance 1)."""
    x = np.asarray(x, float)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"x must be (N, d), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norm == 0):
        raise ValueError("every input must be finite and non-zero to have a direction on the sphere")
    return x / norm * math.sqrt(x.shape[1])


def correlations(x1: Any, x2: Any | None = None) -> np.ndarray:
    """Cosine similarities ``(N1, N2)`` of the rows, clipped to [-1, 1]; identical rows get exactly 1."""
    a = sphere(x1) / math.sqrt(np.shape(x1)[1])
    b = a if x2 is None else sphere(x2) / math.sqrt(np.shape(x2)[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x1 and x2 have {a.shape[1]} and {b.shape[1]} features")
    rho = np.clip(a @ b.T, -1.0, 1.0)
    same = np.all(a[:, None, :] == b[None, :, :], axis=-1) if a.size * b.shape[0] <= 5e7 else None
    if same is not None:
        rho[same] = 1.0
    elif x2 is None:
        np.fill_diagonal(rho, 1.0)
    return rho


# -- finite depth -----------------------------------------------------------------------------------------------
def _depths(depths: Any) -> tuple[int, ...]:
    d = tuple(int(v) for v in np.atleast_1d(depths))
    if not d or any(v < 0 for v in d) or list(d) != sorted(set(d)):
        raise ValueError(f"depths must be non-negative integers in increasing order, got {depths!r}")
    return d


def ntk(activation: str | Activation | Callable, rho: Any, depths: int | Sequence[int]) -> Kernels:
    """NNGP ``rho_L`` and NTK ``Theta_L`` of the normalised network (:func:`network`) at every depth in ``depths``.

    ``Theta_0 = rho``, ``Theta_l = xi(rho_{l-1}) + xi'(rho_{l-1}) Theta_{l-1}``, one pass (``lax.scan``) to the
    deepest.

    Args:
        activation: a registered name, an :class:`~theory.Activation` or a function.
        rho: input correlations in [-1, 1], any shape.
        depths: an int, or increasing non-negative ints.

    Returns:
        :class:`~theory.Kernels` with ``nngp``, ``ntk`` of shape ``(len(depths), *rho.shape)`` (no leading axis for
        an int).
    """
    act = get(activation)
    rho = _check_rho(rho)
    single = np.ndim(depths) == 0
    ds = _depths(depths)
    marks = np.zeros(ds[-1] + 1, bool)
    marks[list(ds)] = True
    nngp, theta = _scan(act, rho, marks[1:])  # the marked depths >= 1, in order
    if ds[0] == 0:
        nngp, theta = jnp.concatenate([rho[None], nngp]), jnp.concatenate([rho[None], theta])
    if single:
        nngp, theta = nngp[0], theta[0]
    return Kernels(nngp=nngp, ntk=theta)


def _scan(act: Activation, rho: Array, marks: np.ndarray) -> tuple[Array, Array]:
    # Records only the marked layers (a host-side boolean per layer 1..L): carry (rho_l, Theta_l, index, records).
    n_out = int(marks.sum())
    if n_out == 0:
        return rho[None][:0], rho[None][:0]
    out = jnp.zeros((n_out, *rho.shape), rho.dtype)

    def step(carry, mark):
        r, t, i, o1, o2 = carry
        xi, dxi = dual(act, r)
        t = xi + dxi * t
        o1 = jnp.where(mark, o1.at[i].set(xi), o1)
        o2 = jnp.where(mark, o2.at[i].set(t), o2)
        return (xi, t, i + mark.astype(jnp.int32), o1, o2), None

    (_, _, _, o1, o2), _ = jax.lax.scan(step, (rho, rho, jnp.int32(0), out, out), jnp.asarray(marks))
    return o1, o2


# -- the limits -----------------------------------------------------------------------------------------------
class SingularKernel(NamedTuple):
    """The singular kernel's depth limit at correlations ``rho`` (shapes of ``rho``).

    ``kernel`` is ``C(rho) = lim rho_n / a_1^{2n}`` (the Koenigs function of ``xi`` at 0: ``C(xi(r)) = a_1^2 C(r)``,
    ``C(r) = r + O(r^2)``), ``+inf`` at ``rho = 1``; ``log_abs`` and ``sign`` hold it without overflow;
    ``correction`` is ``E(rho) = lim_n (Theta_n - (n + 1) rho_n) / a_1^{2n}``, so that
    ``Theta_L(rho) = a_1^{2L} [(L + 1) C(rho) + E(rho)] (1 + O(a_1^{2L}))``.
    """

    kernel: Array
    log_abs: Array
    sign: Array
    correction: Array


def _require(tax: Taxonomy, kind: str, act: Activation) -> None:
    if tax.classifier != kind:
        raise ValueError(f"{act!r} gives a {tax.classifier!r} classifier, not {kind!r} "
                         f"(a0^2 = {tax.a0_sq:.3g}, a1^2 = {tax.a1_sq:.3g}, xi'(1) = {tax.slope:.4g})")


def singular_kernel(activation: str | Activation | Callable, rho: Any) -> SingularKernel:
    """Koenigs function ``C(rho)`` and its ``1/L`` correction: the NTK's depth limit for ``a_0 = 0 < a_1^2 < 1``.

    Iterates ``rho_n = xi(rho_{n-1})`` with the scaled NTK ``Theta_n / a_1^{2n}`` until ``|rho_n| < 1e-8``, then
    adds the ``O(rho_n)`` term of ``C(r) = r + c_2 r^2 + ...`` (``c_2 = b_2 / (a_1^2 (1 - a_1^2))``, ``b_2 =
    xi''(0) / 2``): relative error ~1e-15 away from ``rho = 1``; within ``delta`` of 1 the input's rounding gives
    ~``eps / delta``. docs/deep_classifiers.md.

    Args:
        activation: an activation whose :func:`taxonomy` is "singular kernel".
        rho: correlations in [-1, 1], any shape.

    Returns:
        :class:`SingularKernel`.
    """
    act = get(activation)
    tax = taxonomy(act)
    _require(tax, "singular kernel", act)
    rho = _check_rho(rho)
    b1 = tax.a1_sq
    with jax.ensure_compile_time_eval():
        b2 = float(jax.grad(lambda r: dual(act, r)[1])(jnp.asarray(0.0, rho.dtype))) / 2
    c2 = b2 / (b1 * (1 - b1))
    log_b1 = math.log(b1)

    def active(r):
        return (jnp.abs(r) >= _SMALL) & (jnp.abs(r) < 1)

    def cond(state):
        return jnp.any(active(state[0])) & (state[-1] < _MAX_STEPS)

    def body(state):
        # rho_n, and the scaled rho_n / a_1^{2n} and Theta_n / a_1^{2n} (by ratios: no a_1^{2n} is formed)
        r, rs, ts, steps, n = state
        xi, dxi = dual(act, r)
        on = active(r)
        ratio = jnp.where(r == 0, 1.0, xi / (b1 * jnp.where(r == 0, 1.0, r)))
        rs_new = rs * ratio
        ts_new = rs_new + dxi / b1 * ts
        return (jnp.where(on, xi, r), jnp.where(on, rs_new, rs), jnp.where(on, ts_new, ts),
                jnp.where(on, steps + 1, steps), n + 1)

    zero = jnp.zeros_like(rho)
    r, rs, ts, steps, n = jax.lax.while_loop(cond, body, (rho, rho, rho, zero, jnp.int32(0)))
    if not isinstance(n, jax.core.Tracer) and int(n) >= _MAX_STEPS:
        raise ValueError("the Koenigs iteration did not reach |rho_n| < 1e-8 in 100,000 steps")
    one = jnp.abs(r) >= 1
    head = 1 + c2 * r  # C(rho) = C(rho_n) / a_1^{2n}, C(r) = r (1 + c_2 r + O(r^2))
    sign = jnp.where(one, jnp.sign(r), jnp.sign(r * head))
    log_abs = jnp.where(one, jnp.inf, jnp.log(jnp.abs(r * head)) - steps * log_b1)
    kernel = jnp.where(one, sign * jnp.inf, rs * head)
    # E = C D, D = sum_l (g(rho_l) - 1), g(r) = r C'(r) / C(r) = 1 + c_2 r + ...: sum_{l<=n} g_l = g_n Theta_n / rho_n,
    # and the tail sum_{l>n} c_2 rho_l = c_2 rho_n a_1^2 / (1 - a_1^2).
    correction = head**2 * ts - (steps + 1) * kernel + kernel * c2 * r * b1 / (1 - b1)
    correction = jnp.where(one, jnp.nan, correction)
    return SingularKernel(kernel, log_abs, sign, correction)


def log_similarity(activation: str | Activation | Callable, rho: Any) -> Array:
    """Nearest-neighbour case (``a_0 = a_1 = 0``): ``beta(rho) = lim_n k^{-n} log(b_k^{1/(k-1)} |rho_n|) <= 0``.

    ``b_k`` is the first non-zero Taylor coefficient of ``xi`` at 0 (order ``k >= 2``), ``beta(1) = 0`` and ``log
    Theta_L(rho) = k^L beta(rho) + O(L)``: the training input of largest ``beta`` (the nearest, among inputs of
    positive correlation) decides. Returns ``rho``'s shape (``-inf`` where ``rho_n`` reaches exactly 0).
    """
    act = get(activation)
    tax = taxonomy(act)
    _require(tax, "nearest neighbour", act)
    rho = _check_rho(rho)
    k = tax.order
    with jax.ensure_compile_time_eval():
        small = jnp.asarray(1e-3, rho.dtype)
        bk = float(dual(act, small)[0] / small**k)
    shift = math.log(bk) / (k - 1)

    def active(r):
        return (jnp.abs(r) >= _SMALL) & (jnp.abs(r) < 1)

    def cond(state):
        r, _, n = state
        return jnp.any(active(r)) & (n < _MAX_STEPS)

    def body(state):
        r, steps, n = state
        on = active(r)
        return jnp.where(on, dual(act, r)[0], r), jnp.where(on, steps + 1, steps), n + 1

    r, steps, _ = jax.lax.while_loop(cond, body, (rho, jnp.zeros_like(rho), jnp.int32(0)))
    one = jnp.abs(r) >= 1
    beta = (shift + jnp.log(jnp.abs(r))) / jnp.asarray(float(k), rho.dtype) ** steps
    return jnp.where(one, 0.0, beta)


def majority_vote_kernel(activation: str | Activation | Callable, rho: Any) -> Array:
    """Majority-vote case (``a_0 != 0``, ``xi'(1) >= 1``): the off-diagonal depth limit of the NTK.

    ``xi'(1) = 1``: ``lim Theta_L(rho) / (L + 1) = p / (2p + 1)`` for ``rho < 1`` (1 at ``rho = 1``; ReLU ``p = 1/2``:
    1/4), approached as ``O(log L / L)``. ``xi'(1) > 1``: ``lim Theta_L(rho) = rho* / (1 - xi'(rho*))`` with ``rho*``
    the fixed point ``rho_n`` reaches (geometric rate ``xi'(rho*)^L``; ``+inf`` at ``rho = 1``, where
    ``Theta_L ~ xi'(1)^L``). Either way the same value for every ``rho < 1`` reached by one fixed point: the
    predictor counts labels.
    """
    act = get(activation)
    tax = taxonomy(act)
    _require(tax, "majority vote", act)
    rho = _check_rho(rho)
    if tax.critical_power:
        p = tax.critical_power
        return jnp.where(rho >= 1, 1.0, p / (2 * p + 1)).astype(rho.dtype)

    def cond(state):
        r, prev, n = state
        return jnp.any((jnp.abs(r - prev) > 1e-15) & (r < 1)) & (n < _MAX_STEPS)

    def body(state):
        r, _, n = state
        return jnp.where(r < 1, dual(act, r)[0], r), r, n + 1

    r, _, _ = jax.lax.while_loop(cond, body, (rho, rho + 1, jnp.int32(0)))
    value = r / (1 - dual(act, jnp.where(r < 1, r, 0.0))[1])
    return jnp.where(r >= 1, jnp.inf, value)


# -- the limit classifier -------------------------------------------------------------------------------------
def limit_classifier(activation: str | Activation | Callable, x_train: Any, y_train: Any, x_test: Any) -> np.ndarray:
    """Scores of the infinitely deep NTK classifier (their argmax is its prediction).

    * nearest neighbour: ``y`` of the training input of largest :func:`log_similarity` with the test input;
    * singular kernel: ``sum_i C(rho_i) y_i`` (:func:`singular_kernel`; a test input equal to training inputs gets
      their labels);
    * majority vote: ``sum_i y_i`` for every test input.

    Args:
        activation: an activation of one of the three classes (:func:`taxonomy`).
        x_train: ``(N, d)`` inputs (any radius: only directions matter).
        y_train: ``(N,)`` or ``(N, K)`` targets (one-hot, centred or not).
        x_test: ``(M, d)``.

    Returns:
        ``(M, K)`` scores (``(M,)`` for 1-D ``y_train``), float64 numpy.
    """
    act = get(activation)
    tax = taxonomy(act)
    y = np.asarray(y_train, float)
    flat = y.ndim == 1
    y = y[:, None] if flat else y
    if y.ndim != 2 or y.shape[0] != np.shape(x_train)[0]:
        raise ValueError(f"y_train must be (N,) or (N, K) with N = {np.shape(x_train)[0]} rows, got {y.shape}")
    rho = correlations(x_test, x_train)
    if tax.classifier == "majority vote":
        scores = np.broadcast_to(y.sum(axis=0), (rho.shape[0], y.shape[1])).copy()
    elif tax.classifier == "nearest neighbour":
        beta = np.asarray(log_similarity(act, rho))
        scores = y[np.argmax(beta, axis=1)]
    elif tax.classifier == "singular kernel":
        sk = singular_kernel(act, rho)
        log_abs, sign = np.asarray(sk.log_abs), np.asarray(sk.sign)
        top = np.max(log_abs, axis=1, keepdims=True)
        exact = np.isinf(top)
        w = np.where(exact, np.isinf(log_abs).astype(float), sign * np.exp(log_abs - np.where(exact, 0.0, top)))
        scores = w @ y
    else:
        raise ValueError(f"{act!r} gives the {tax.classifier!r} case, which is not one of the three limit "
                         "classifiers; use finite depths (theory.kernels of network(activation, depth))")
    return scores[:, 0] if flat else scores


# -- activations ----------------------------------------------------------------------------------------------
def _hermite_monomials(coefficients: tuple[float, ...]) -> np.ndarray:
    # phi = sum_i c_i He_i / sqrt(i!) as monomial coefficients (ascending powers).
    scaled = [c / math.sqrt(math.factorial(i)) for i, c in enumerate(coefficients)]
    return np.asarray(herme.herme2poly(scaled), float)


def _gamma_matrix(n: int) -> np.ndarray:
    # P[j, m]: coefficient of He_j in x^m.
    p = np.zeros((n, n))
    for m in range(n):
        e = np.zeros(m + 1)
        e[m] = 1.0
        col = herme.poly2herme(e)
        p[: len(col), m] = col
    return p


def _polynomial_dual(coefficients: tuple[float, ...]) -> Callable:
    mono = _hermite_monomials(coefficients)
    deriv = np.polynomial.polynomial.polyder(mono) if len(mono) > 1 else np.zeros(1)
    n = len(mono)
    p = _gamma_matrix(n)
    fact = np.asarray([math.factorial(j) for j in range(n)], float)

    def moments(m: np.ndarray, q11, q12, q22):
        # E[f(u) f(v)] = sum_j j! g_j(q11) g_j(q22) q12^j, g_j(q) = sum_m P[j, m] m_m q^((m - j) / 2).
        size = len(m)
        out = 0.0
        for j in range(size):
            terms = [(p[j, mm] * m[mm], (mm - j) // 2) for mm in range(j, size, 2) if p[j, mm] * m[mm] != 0]
            if not terms:
                continue
            g1 = sum(c * q11**e for c, e in terms)
            g2 = sum(c * q22**e for c, e in terms)
            out = out + fact[j] * g1 * g2 * q12**j
        return out + 0 * q12

    def dual_fn(q11, q12, q22):
        return moments(mono, q11, q12, q22), moments(deriv, q11, q12, q22)

    return dual_fn


@functools.cache
def _hermite_activation(coefficients: tuple[float, ...], name: str) -> Activation:
    mono = jnp.asarray(_hermite_monomials(coefficients)[::-1].copy())

    def fn(x):
        return jnp.polyval(mono.astype(jnp.result_type(x, float)), x)

    return Activation(fn, name, dual=_polynomial_dual(coefficients), params=coefficients)


def hermite_activation(coefficients: Sequence[float], name: str | None = None) -> Activation:
    """``phi = sum_i c_i h_i`` in the normalised (probabilists') Hermite basis ``h_i = He_i / sqrt(i!)``
    (``E[h_i(u) h_j(v)] = delta_ij rho^i``), with an exact closed-form dual at any variances.

    Args:
        coefficients: ``c_0, c_1, ...`` (finite; not all zero).
        name: the activation's name (default ``hermite(c_0, ..., c_n)``).

    Returns:
        an :class:`~theory.Activation` (cached: the same coefficients give the same object).
    """
    c = tuple(float(v) for v in coefficients)
    if not c or not all(math.isfinite(v) for v in c) or not any(c):
        raise ValueError(f"coefficients must be finite and not all zero, got {coefficients!r}")
    while len(c) > 1 and c[-1] == 0:
        c = c[:-1]
    return _hermite_activation(c, name or "hermite(" + ", ".join(f"{v:.6g}" for v in c) + ")")


def _exponent(a1_sq: float, order: int) -> float:
    return math.log(1 / a1_sq) / math.log(a1_sq + order * (1 - a1_sq))


def optimal_activation(dimension: float, order: int | None = None) -> Activation:
    """``phi = a_1 h_1 + sqrt(1 - a_1^2) h_k``, with ``a_1`` chosen so that the limit classifier's kernel is the
    Hilbert kernel ``|x - x'|^{-dimension}`` (``2 alpha = dimension``, ``alpha = log(1/a_1^2) / log(a_1^2 + k (1 -
    a_1^2))``): Bayes-consistent for data with a density on a ``dimension``-dimensional domain (``d - 1`` for a density
    on the sphere ``S^{d-1}``; Devroye, Gyorfi & Krzyzak 1998). The paper's construction uses ``h_1``, ``h_2``; the
    family covers ``2 alpha > 2 / (k - 1)`` only, so ``order`` defaults to the smallest ``k >= 2`` that reaches
    ``dimension``.

    Args:
        dimension: the exponent ``2 alpha > 0``.
        order: ``k >= 2`` (default: the smallest that reaches ``dimension``).

    Returns:
        a :func:`hermite_activation`.
    """
    if isinstance(dimension, bool) or not (isinstance(dimension, int | float) and math.isfinite(dimension)
                                           and dimension > 0):
        raise ValueError(f"dimension must be a positive number, got {dimension!r}")
    alpha = dimension / 2
    if order is None:
        order = 2
        while 1 / (order - 1) >= alpha:
            order += 1
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise ValueError(f"order must be an integer >= 2, got {order!r}")
    if 1 / (order - 1) >= alpha:
        raise ValueError(f"h_1 + h_{order} reaches exponents 2 alpha > {2 / (order - 1):.4g} only; dimension "
                         f"{dimension} needs order > {1 + 2 / dimension:.4g}")
    lo, hi = 1e-300, 1.0 - 1e-15  # alpha decreases from +inf to 1 / (k - 1) as a_1^2 goes from 0 to 1
    for _ in range(200):
        mid = math.sqrt(lo * hi) if hi / lo > 4 else (lo + hi) / 2
        if _exponent(mid, order) > alpha:
            lo = mid
        else:
            hi = mid
    a1_sq = (lo + hi) / 2
    coefficients = [0.0] * (order + 1)
    coefficients[1], coefficients[order] = math.sqrt(a1_sq), math.sqrt(1 - a1_sq)
    return hermite_activation(coefficients, name=f"optimal(dimension={dimension:g}, order={order})")


def nearest_neighbour_activation() -> Activation:
    """``phi = (h_2 + h_3) / sqrt(2)``: ``a_0 = a_1 = 0`` (nearest neighbour), and ``xi(rho) = (rho^2 + rho^3) / 2
    >= 0`` so that negatively correlated inputs never look nearer than ``rho ~ 0.3``."""
    return hermite_activation([0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)], name="h2+h3")


__all__ = [
    "ZERO_TOL",
    "SingularKernel",
    "Taxonomy",
    "correlations",
    "dual",
    "hermite_activation",
    "limit_classifier",
    "log_similarity",
    "majority_vote_kernel",
    "nearest_neighbour_activation",
    "network",
    "ntk",
    "optimal_activation",
    "singular_kernel",
    "sphere",
    "taxonomy",
]
