r"""Finite-width corrections: the excess kurtosis of a deep ReLU network's output, exactly and to O(L/n).

Setting (conventions of ``theory.architectures``): ``theory.MLP(depth=L, activation="relu", w_std=sqrt(2), b_std=0)``
(``C_W = 2``, ``C_b = 0``), ``L`` hidden layers of width ``n``, a Dense readout ``f = h_{L+1}``, one non-zero input
``x`` with ``d`` features; ``h_1 = sqrt(2/d) W_1 x``, ``h_{l+1} = sqrt(2/n) W_{l+1} relu(h_l)``, ``W ~ N(0, 1)``
entrywise, ``G_0 = 2 ||x||^2 / d``, ``G_l = (2/n) ||relu(h_l)||^2``. Exact law: ``E[G_{l+1}^2 | G_l] = (1 + 5/n)
G_l^2`` and ``f | G_L ~ N(0, G_L)``, so for every ``n >= 1``, ``L >= 0`` and input the excess kurtosis is
``kappa_4(L, n) = 3 (1 + 5/n)^L - 3 = 15 L/n + O((L/n)^2)`` (Hanin & Nica 2019, Comm. Math. Phys. 376 (2020)); hidden
layer ``k`` (1-based) has ``3 (1 + 5/n)^(k-1) - 3``.

Any activation, leading order in ``1/n`` (Roberts, Yaida & Hanin 2022, "The Principles of Deep Learning Theory",
arXiv:2106.10165, ch. 4-5): ``C_W = w_std^2``, ``C_b = b_std^2``, ``z^(l)`` the pre-activation of Dense layer
``l = 1, ..., L + 1`` (the last is the readout); ``E[G^^(l)] = K^(l) + K1^(l) / n``, ``Cov(G^^(l)) = V^(l) / n``,
``f(K)_ab = C_b + C_W <phi_a phi_b>_K`` the NNGP layer map and ``J = df/dK``:

    K^(l+1)  = f(K^(l)),
    V^(l+1)  = C_W^2 Cov_K(phi_a phi_b, phi_c phi_d) + J V^(l) J^T,                       V^(1) = 0,
    K1^(l+1) = J K1^(l) + (1/2) sum_{p,r} (d^2 f / dK_p dK_r) V_pr^(l),                    K1^(1) = 0,
    kappa_4^(l) = 3 V^(l) / (n K^(l)2) + O(1/n^2).

Derivation and notes: docs/finite_width_corrections.md (the exact law, its double-scaling limit, the recursions and
the coefficients at criticality: ``15 (l-1)/n`` for relu, ``-> 2 l/n`` for the ``K* = 0`` class).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from theory.activations import Activation
from theory.architectures import MLP, as_mlp
from theory.gaussian import hermite_rule
from theory.inputs import validate_inputs

Array = jax.Array

ONE_INPUT_DEGREE = 200
"""Nodes of the one-dimensional Gauss-Hermite rule of :func:`one_input`. Exact for relu-type activations
(``phi^2`` and ``phi^4`` are homogeneous pieces of even polynomials and the rule's nodes are symmetric);
for smooth ones it converges exponentially."""
PAIR_DEGREE = 96
"""Nodes per dimension of the two-dimensional rule of :func:`pairs` (``PAIR_DEGREE**2`` per pair)."""
PAIR_BLOCK = 64
"""Pairs of inputs processed together by :func:`pairs` (memory ~ ``PAIR_BLOCK * 20 * PAIR_DEGREE**2`` floats)."""

__all__ = [
    "ONE_INPUT_DEGREE",
    "PAIR_DEGREE",
    "OneInput",
    "Pairs",
    "one_input",
    "pairs",
    "relu_ntk_relative_variance",
    "relu_ntk_relative_variance_leading_order",
    "relu_output_excess_kurtosis",
    "relu_output_excess_kurtosis_leading_order",
    "relu_output_excess_kurtosis_limit",
    "scale_invariant_excess_kurtosis",
]


def _nonnegative(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return arr


def _positive(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return arr


def relu_output_excess_kurtosis(depth: ArrayLike, width: ArrayLike) -> np.ndarray:
    r"""Exact excess kurtosis of the output of a ReLU MLP at criticality: ``3 (1 + 5/n)^L - 3``.

    ``depth`` is ``L``, the number of hidden layers (``theory.MLP(depth=L)``), ``width`` is ``n``; both
    broadcast (real values allowed, to draw the law as a curve). ReLU, ``C_W = 2``, ``C_b = 0``, one
    input; derivation in the module docstring: ``E[G_{l+1}^2] = (1 + 5/n) E[G_l^2]`` for
    ``G_l = (2/n) ||relu(h_l)||^2`` and ``E[f^4] / E[f^2]^2 = 3 E[G_L^2] / E[G_L]^2``. Computed as
    ``3 expm1(L log1p(5/n))``, accurate for small ``L/n``.

    Raises:
        ValueError: a negative or non-finite depth, or a non-positive or non-finite width.
    """
    depth_ = _nonnegative("depth", depth)
    n = _positive("width", width)
    return 3.0 * np.expm1(depth_ * np.log1p(5.0 / n))


def relu_output_excess_kurtosis_leading_order(depth: ArrayLike, width: ArrayLike) -> np.ndarray:
    r"""The leading order of :func:`relu_output_excess_kurtosis` in ``1/n``: ``15 L / n``.

    The first term of ``3 ((1 + 5/n)^L - 1) = 3 sum_k binom(L, k) (5/n)^k``; the kurtosis growth linear
    in depth/width of Hanin & Nica 2019 and Roberts, Yaida & Hanin 2022 (ch. 5). Relative error
    ``5 (L - 1) / (2 n) + O((L/n)^2)`` (it is exact at ``L = 1``).
    """
    depth_ = _nonnegative("depth", depth)
    n = _positive("width", width)
    return 15.0 * depth_ / n


def relu_output_excess_kurtosis_limit(depth_over_width: ArrayLike) -> np.ndarray:
    r"""The double-scaling limit ``L, n -> infinity`` at fixed ``r = L/n``: ``3 (e^(5 r) - 1)``.

    The curve onto which :func:`relu_output_excess_kurtosis` collapses when plotted against ``L/n``
    (from below: ``(1 + 5/n)^L < e^(5 L/n)``); its slope at ``r = 0`` is the leading-order ``15 r``.
    """
    r = _nonnegative("depth_over_width", depth_over_width)
    return 3.0 * np.expm1(5.0 * r)


def scale_invariant_excess_kurtosis(layer: ArrayLike, width: ArrayLike, slope: float = 0.0) -> np.ndarray:
    r"""Exact excess kurtosis of Dense layer ``l`` (1-based) of a critical MLP with ``phi = relu(x) - slope relu(-x)``.

    ``kappa_4^(l) = 3 (1 + c/n)^(l - 1) - 3`` with ``c = 3 A_4 / A_2^2 - 1``, ``A_2 = (1 + slope^2)/2``,
    ``A_4 = (1 + slope^4)/2`` (``<phi^2>_K = A_2 K``, ``<phi^4>_K = 3 A_4 K^2``), ``C_W = 1/A_2``, ``C_b = 0``:
    the module docstring's argument for relu (``slope = 0``, ``c = 5``) with ``E[G^_(l+1)^2 | G^_l] =
    (1 + c/n) G^_l^2``. ``slope = 1`` is the linear network (``c = 2``), ``slope = -1`` is abs (``c = 2`` too:
    ``|x|^2 = x^2``). Its leading order ``3 c (l - 1)/n`` is what :func:`one_input` gives at these activations.

    Raises:
        ValueError: a layer below 1, a non-positive width or a non-finite slope.
    """
    layer_ = _nonnegative("layer", layer)
    if np.any(layer_ < 1):
        raise ValueError(f"layer must be >= 1 (Dense layers are counted from 1), got {layer!r}")
    n = _positive("width", width)
    slope = float(slope)
    if not np.isfinite(slope):
        raise ValueError(f"slope must be finite, got {slope!r}")
    a2, a4 = (1 + slope**2) / 2, (1 + slope**4) / 2
    c = 3 * a4 / a2**2 - 1
    return 3.0 * np.expm1((layer_ - 1) * np.log1p(c / n))


# ---------------------------------------------------------------------------------------------------------
# The leading-1/n theory for any activation


@dataclass(frozen=True)
class OneInput:
    """Leading-1/n statistics of every Dense layer's pre-activation at single inputs, ``(layers, batch)``.

    Axis 0 runs over the ``depth + 1`` Dense layers (the last is the readout), as in
    ``theory.kernels(per_layer=True)``. With hidden width ``n``: ``E[z^2] = kernel + kernel_correction / n
    + O(1/n^2)`` and ``Var(G^) = vertex / n + O(1/n^2)`` (``G^`` the empirical variance feeding the layer,
    ``E[z^4]_connected = 3 vertex / n``); see the module docstring. ``kernel`` is the NNGP diagonal
    ``K^(l)``, ``kernel_correction`` PDLT's ``K1^(l)`` (their ``G^{1}``), ``vertex`` ``V^(l)``.
    """

    kernel: Array
    kernel_correction: Array
    vertex: Array

    def mean_kernel(self, width: ArrayLike) -> Array:
        """``E[z^2] = K + K1 / n`` to first order in ``1/n`` (``width`` = ``n``; broadcasts if scalar)."""
        return self.kernel + self.kernel_correction / _positive("width", width)

    def kurtosis_coefficient(self) -> Array:
        """``n kappa_4 = 3 V / K^2``: the width-free coefficient of the excess kurtosis at leading order."""
        return 3 * self.vertex / self.kernel**2

    def excess_kurtosis(self, width: ArrayLike) -> Array:
        """``kappa_4 = 3 V / (n K^2)``, the excess kurtosis of one pre-activation to leading order in ``1/n``."""
        return self.kurtosis_coefficient() / _positive("width", width)


@dataclass(frozen=True)
class Pairs:
    """Leading-1/n statistics of every pair of inputs, per Dense layer.

    ``kernel`` and ``kernel_correction`` are ``(layers, batch, batch)``: ``E[z_a z_b] = K_ab + K1_ab / n +
    O(1/n^2)``. ``vertex`` is ``(layers, batch, batch, 3, 3)``: for the pair ``(a, b)`` the covariance matrix
    times ``n`` of the three empirical-kernel entries ``(G^_aa, G^_ab, G^_bb)``, i.e. PDLT's
    ``V_(p)(r)`` for ``p, r`` in ``(aa, ab, bb)``: every component of the four-point vertex with at most
    two distinct inputs (``V_(aa)(bb) = vertex[..., a, b, 0, 2]``, ``V_(ab)(ab) = vertex[..., a, b, 1, 1]``).
    Components with three or four distinct inputs are not computed (they need four-variate Gaussian
    expectations); the ones here close under the recursion and fix ``K1`` for every pair. On the diagonal
    ``a = b`` every entry is the one-input ``V``.
    """

    kernel: Array
    kernel_correction: Array
    vertex: Array

    def mean_kernel(self, width: ArrayLike) -> Array:
        """``E[z_a z_b] = K + K1 / n`` to first order in ``1/n``."""
        return self.kernel + self.kernel_correction / _positive("width", width)

    def kernel_covariance(self, width: ArrayLike) -> Array:
        """``Cov(G^_p, G^_r) = V_pr / n``, ``(layers, batch, batch, 3, 3)``, the pair's covariance of
        ``(G^_aa, G^_ab, G^_bb)`` across networks, to leading order."""
        return self.vertex / _positive("width", width)


def _one_dim(act: Activation, q: Array, nodes: Array, weights: Array) -> tuple[Array, ...]:
    """``<phi^2>, <phi^4>, d<phi^2>/dq, d^2<phi^2>/dq^2`` at variance ``q`` (any shape), by the Hermite-weighted
    rule: derivatives of the Gaussian density in ``q``, so ``phi`` itself is never differentiated."""
    z = nodes
    s2 = act.fn(jnp.sqrt(q)[..., None] * z) ** 2
    m2 = s2 @ weights
    m4 = (s2**2) @ weights
    d1 = (s2 * (z**2 - 1)) @ weights / (2 * q)
    d2 = (s2 * (z**4 - 6 * z**2 + 3)) @ weights / (4 * q**2)
    return m2, m4, d1, d2


def _one_input_step(act: Activation, cw: float, cb: float, nodes: Array, weights: Array,
                    state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
    k, k1, v = state
    m2, m4, d1, d2 = _one_dim(act, k, nodes, weights)
    chi = cw * d1  # PDLT's parallel susceptibility
    return cb + cw * m2, chi * k1 + 0.5 * cw * d2 * v, cw**2 * (m4 - m2**2) + chi**2 * v


def _stack_layers(first: tuple[Array, ...], rest: tuple[Array, ...]) -> tuple[Array, ...]:
    return tuple(jnp.concatenate([a[None], b]) for a, b in zip(first, rest, strict=True))


@partial(jax.jit, static_argnames=("act", "depth", "degree"))
def _one_input_scan(q1: Array, cw: Array, cb: Array, *, act: Activation, depth: int, degree: int):
    nodes_np, weights_np = hermite_rule(degree)
    nodes, weights = jnp.asarray(nodes_np, q1.dtype), jnp.asarray(weights_np, q1.dtype)
    first = (q1, jnp.zeros_like(q1), jnp.zeros_like(q1))

    def step(state, _):
        new = _one_input_step(act, cw, cb, nodes, weights, state)
        return new, new

    _, rest = jax.lax.scan(step, first, None, length=depth)
    return _stack_layers(first, rest)


def _check_mlp(arch: object) -> MLP:
    try:
        return as_mlp(arch)  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(f"the 1/n theory is for a theory.MLP (Dense layers of one width n): {err}") from None


def _check_degree(name: str, degree: object) -> int:
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 4:
        raise ValueError(f"{name} must be an integer >= 4, got {degree!r}")
    return degree


def _input_kernel(arch: MLP, x: Array) -> Array:
    """The first layer's (deterministic) kernel ``C_b + C_W x_a.x_b / d``; every variance must be positive
    (a zero input without bias has a degenerate, exactly zero pre-activation)."""
    q = arch.b_std**2 + arch.w_std**2 * (x @ x.T) / x.shape[1]
    diag = np.asarray(jnp.diagonal(q))
    if np.any(diag <= 0):
        row = int(np.argmax(diag <= 0))
        raise ValueError(f"input {row} has zero first-layer variance ({arch!r} with x[{row}] = 0): its "
                         "pre-activations are identically 0 and have no kurtosis; give it a non-zero input or "
                         "b_std > 0")
    return q


def one_input(arch: MLP, x: ArrayLike, *, quadrature_degree: int = ONE_INPUT_DEGREE) -> OneInput:
    r"""The leading-1/n theory of every layer at each input separately: ``K^(l)``, ``K1^(l)``, ``V^(l)``.

    Recursions (module docstring; PDLT ch. 4-5), one input, ``g(K) = <phi(u)^2>``, ``u ~ N(0, K)``:

        K^(l+1) = C_b + C_W g(K),  K1^(l+1) = chi K1^(l) + (C_W/2) g''(K) V^(l),
        V^(l+1) = C_W^2 (<phi^4> - g^2) + chi^2 V^(l),   chi = C_W g'(K),   K1^(1) = V^(1) = 0,

    with ``K^(1) = C_b + C_W |x|^2 / d``, ``C_W = w_std^2``, ``C_b = b_std^2`` (conventions of
    ``theory.architectures``; the NNGP and these statistics are the same in both parameterizations).
    One jitted ``lax.scan`` over depth, vectorised over inputs; expectations by a ``quadrature_degree``-point
    Gauss-Hermite rule (exact for relu, leaky relu, abs and identity). Float64 if ``x`` is float64.

    Returns:
        :class:`OneInput` with ``(depth + 1, batch)`` arrays; ``excess_kurtosis(n)`` is ``3 V / (n K^2)``.

    Raises:
        ValueError: not an MLP, malformed ``x``, an input with zero first-layer variance, a bad degree.
    """
    arch = _check_mlp(arch)
    degree = _check_degree("quadrature_degree", quadrature_degree)
    x, _ = validate_inputs(x)
    q1 = jnp.diagonal(_input_kernel(arch, x))
    k, k1, v = _one_input_scan(q1, jnp.asarray(arch.w_std**2, x.dtype), jnp.asarray(arch.b_std**2, x.dtype),
                               act=arch.activation, depth=arch.depth, degree=degree)
    return OneInput(k, k1, v)


def _pair_expectations(act: Activation, theta: Array, nodes: Array, weights: Array) -> tuple[Array, ...]:
    """For ``(u, v) ~ N(0, [[t0, t1], [t1, t2]])``, ``theta = (t0, t1, t2)``: ``<phi_u phi_v>`` with its
    gradient and Hessian in ``theta``, and ``<phi_u^2 phi_v^2>, <phi_u^3 phi_v>, <phi_u phi_v^3>``.

    The nodes are fixed by the Cholesky factor of ``theta`` (held constant) and the Gaussian density ratio
    ``N(x; theta') / N(x; theta)`` carries the dependence on ``theta'``: its derivatives at ``theta' = theta``
    are the Hermite weights, so ``phi`` is only evaluated, never differentiated. An activation with a closed-form
    dual has ``<phi_u phi_v>`` and its derivatives from the dual instead (the fourth moments stay quadrature)."""
    t0, t1, t2 = theta[0], theta[1], theta[2]
    l11 = jnp.sqrt(t0)
    l21 = t1 / l11
    l22 = jnp.sqrt(jnp.maximum(t2 - l21**2, 0))
    u = jnp.broadcast_to(l11 * nodes[:, None], (nodes.size, nodes.size))
    v = l21 * nodes[:, None] + l22 * nodes[None, :]
    w = weights[:, None] * weights[None, :]
    su, sv = act.fn(u), act.fn(v)

    def log_density(t: Array) -> Array:
        det = t[0] * t[2] - t[1] ** 2
        return -0.5 * jnp.log(det) - 0.5 * (t[2] * u**2 - 2 * t[1] * u * v + t[0] * v**2) / det

    base = log_density(theta)
    if act.has_closed_form:
        # exact duals (relu, erf, gelu, ...) are smooth in theta for |rho| < 1: differentiate them directly,
        # which for kinked activations beats the algebraic convergence of the tensor rule by orders of magnitude
        def mean_product(t: Array) -> Array:
            return act.expectations(t[0], t[1], t[2], derivative=False)[0]
    else:
        def mean_product(t: Array) -> Array:
            return jnp.sum(w * jnp.exp(log_density(t) - base) * su * sv)

    grad = jax.jacfwd(mean_product)(theta)
    hess = jax.jacfwd(jax.jacfwd(mean_product))(theta)
    e11 = mean_product(theta)
    e22 = jnp.sum(w * su**2 * sv**2)
    e31 = jnp.sum(w * su**3 * sv)
    e13 = jnp.sum(w * su * sv**3)
    return e11, grad, hess, e22, e31, e13


def _pair_step(act: Activation, cw: Array, cb: Array, rules: tuple[Array, ...],
               state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
    """One layer for one pair: kernel ``k = (K_aa, K_ab, K_bb)``, its correction ``k1`` and the 3x3 vertex."""
    nodes1, weights1, nodes2, weights2 = rules
    k, k1, v = state
    m2a, m4a, d1a, d2a = _one_dim(act, k[0], nodes1, weights1)
    m2b, m4b, d1b, d2b = _one_dim(act, k[2], nodes1, weights1)
    e, grad, hess, e22, e31, e13 = _pair_expectations(act, k, nodes2, weights2)
    zero = jnp.zeros_like(e)
    jac = cw * jnp.stack([jnp.stack([d1a, zero, zero]), grad, jnp.stack([zero, zero, d1b])])
    cov = jnp.stack([
        jnp.stack([m4a - m2a**2, e31 - m2a * e, e22 - m2a * m2b]),
        jnp.stack([e31 - m2a * e, e22 - e**2, e13 - e * m2b]),
        jnp.stack([e22 - m2a * m2b, e13 - e * m2b, m4b - m2b**2]),
    ])
    curvature = jnp.stack([d2a * v[0, 0], jnp.sum(hess * v), d2b * v[2, 2]])
    k_next = cb + cw * jnp.stack([m2a, e, m2b])
    return k_next, jac @ k1 + 0.5 * cw * curvature, cw**2 * cov + jac @ v @ jac.T


@partial(jax.jit, static_argnames=("act", "depth", "degree1", "degree2"))
def _pair_scan(theta1: Array, cw: Array, cb: Array, *, act: Activation, depth: int, degree1: int, degree2: int):
    dtype = theta1.dtype
    rules = tuple(jnp.asarray(a, dtype) for d in (degree1, degree2) for a in hermite_rule(d))

    def one_pair(theta):
        first = (theta, jnp.zeros_like(theta), jnp.zeros((3, 3), dtype))

        def step(state, _):
            new = _pair_step(act, cw, cb, rules, state)
            return new, new

        _, rest = jax.lax.scan(step, first, None, length=depth)
        return _stack_layers(first, rest)

    # vmapped in blocks: one pair holds ~20 arrays of PAIR_DEGREE^2 nodes (Hessian tangents), so all pairs of a
    # large batch at once would not fit in memory
    return jax.lax.map(one_pair, theta1, batch_size=PAIR_BLOCK)


MAX_INPUT_CORRELATION = 1 - 1e-6
"""Pairs of inputs more correlated than this (at the first layer) are rejected by :func:`pairs`: the
bivariate density is nearly singular and its Hermite weights lose all accuracy."""


def pairs(arch: MLP, x: ArrayLike, *, quadrature_degree: int = PAIR_DEGREE,
          diagonal_degree: int = ONE_INPUT_DEGREE) -> Pairs:
    r"""The leading-1/n theory for every pair of inputs: ``K_ab``, ``K1_ab`` and the pair's 3x3 vertex.

    For each pair ``a != b`` the state ``(K_aa, K_ab, K_bb)``, ``K1`` and ``V_(p)(r)`` (``p, r`` in
    ``aa, ab, bb``) follows the module docstring's recursions, which close on these entries:

        V^(l+1) = C_W^2 Cov_K(phi_p, phi_r) + J V^(l) J^T,     K1^(l+1) = J K1^(l) + (1/2) sum H_p : V^(l),

    with ``phi_aa = phi(u)^2``, ``phi_ab = phi(u) phi(v)``, ``J`` the Jacobian of the NNGP layer map on
    ``(K_aa, K_ab, K_bb)`` (``dK_aa'/dK_aa = chi_par``, the off-diagonal row ``C_W d<phi_u phi_v>/dK``) and
    ``H_p`` its Hessians (PDLT ch. 4). Diagonal entries use the one-dimensional rule of :func:`one_input`
    (``diagonal_degree``); off-diagonal ``<phi_u phi_v>`` and its derivatives come from the activation's
    closed-form dual where it has one, otherwise (and for the fourth moments ``<phi_u^2 phi_v^2>``, ...) from a
    ``quadrature_degree``-squared tensor Gauss-Hermite rule, exponentially accurate for smooth activations
    but only algebraically for kinked ones (relu's fourth moments: ~1e-3 relative at the default degree).
    One jitted ``lax.scan`` over depth, vectorised over the ``batch (batch - 1) / 2`` pairs in blocks of
    :data:`PAIR_BLOCK`.

    Returns:
        :class:`Pairs` with ``(depth + 1, batch, batch)`` kernels and ``(depth + 1, batch, batch, 3, 3)``
        vertex; the diagonal ``a = a`` holds the one-input results.

    Raises:
        ValueError: not an MLP, malformed ``x``, zero first-layer variance, two inputs whose first-layer
            correlation exceeds :data:`MAX_INPUT_CORRELATION` (parallel inputs: use one of them), bad degrees.
    """
    arch = _check_mlp(arch)
    degree2 = _check_degree("quadrature_degree", quadrature_degree)
    degree1 = _check_degree("diagonal_degree", diagonal_degree)
    x, _ = validate_inputs(x)
    q = _input_kernel(arch, x)
    batch, dtype = x.shape[0], x.dtype
    cw, cb = jnp.asarray(arch.w_std**2, dtype), jnp.asarray(arch.b_std**2, dtype)
    rows, cols = np.triu_indices(batch, 1)
    diag = jnp.diagonal(q)
    rho = np.asarray(q[rows, cols] / jnp.sqrt(diag[rows] * diag[cols]))
    if rho.size and np.max(np.abs(rho)) > MAX_INPUT_CORRELATION:
        worst = int(np.argmax(np.abs(rho)))
        raise ValueError(f"inputs {rows[worst]} and {cols[worst]} have first-layer correlation {rho[worst]:.9g}, "
                         f"beyond +-{MAX_INPUT_CORRELATION}: a (nearly) parallel pair has a singular kernel; "
                         "drop one of them (its statistics are those of the other)")
    single = _one_input_scan(diag, cw, cb, act=arch.activation, depth=arch.depth, degree=degree1)
    layers = arch.depth + 1
    kernel = jnp.zeros((layers, batch, batch), dtype)
    correction = jnp.zeros((layers, batch, batch), dtype)
    vertex = jnp.zeros((layers, batch, batch, 3, 3), dtype)
    idx = jnp.arange(batch)
    kernel = kernel.at[:, idx, idx].set(single[0])
    correction = correction.at[:, idx, idx].set(single[1])
    vertex = vertex.at[:, idx, idx].set(single[2][..., None, None] * jnp.ones((3, 3), dtype))
    if rows.size:
        theta = jnp.stack([diag[rows], q[rows, cols], diag[cols]], axis=-1)
        k, k1, v = _pair_scan(theta, cw, cb, act=arch.activation, depth=arch.depth, degree1=degree1,
                              degree2=degree2)
        k, k1, v = (jnp.moveaxis(a, 0, 1) for a in (k, k1, v))  # (pairs, layers, ...) -> (layers, pairs, ...)
        swap = jnp.array([2, 1, 0])  # the pair (b, a) lists (K_bb, K_ab, K_aa)
        kernel = kernel.at[:, rows, cols].set(k[..., 1]).at[:, cols, rows].set(k[..., 1])
        correction = correction.at[:, rows, cols].set(k1[..., 1]).at[:, cols, rows].set(k1[..., 1])
        vertex = vertex.at[:, rows, cols].set(v).at[:, cols, rows].set(v[..., swap, :][..., :, swap])
    return Pairs(kernel, correction, vertex)


# ---------------------------------------------------------------------------------------------------------
# The NTK's fluctuation across networks: relu at criticality, one input

_NTK_TRANSITIONS = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=np.float64)
"""Allowed layer-to-layer moves between the factor types ``(X, Y, C, X')`` of one NTK path term (see
:func:`relu_ntk_relative_variance`): ``X -> X, Y, C``; ``Y -> Y, C``; ``C -> X'``; ``X' -> X'``."""


def _ntk_moments(n: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer ``E[F_s]`` and ``E[F_s F_t]`` of the factors ``X, Y, C = 2/n, X'`` at hidden width ``n``."""
    c = 2.0 / n
    xx, xy, yy = 1 + 5 / n, 1 - 1 / n, 1 + 1 / n - 4 / n**2
    ey = 1 - 2 / n
    first = np.array([1.0, ey, c, 1.0])
    second = np.array([[xx, xy, c, xx], [xy, yy, c * ey, xy], [c, c * ey, c * c, c], [xx, xy, c, xx]])
    return first, second


def relu_ntk_relative_variance(depth: int, width: float) -> float:
    r"""Exact ``Var(Theta) / E[Theta]^2`` of the NTK diagonal ``Theta(x, x)`` of a ReLU MLP at criticality.

    Setting of the module docstring (``theory.MLP(depth=L, activation="relu", w_std=sqrt(2), b_std=0)``,
    NTK parameterization, ``L`` hidden layers of width ``n``, readout of width 1, one non-zero input);
    ``Theta`` sums over every weight matrix, the first layer's and the readout's included. Our own
    derivation (validated by Monte Carlo in ``tests/test_ntk_fluctuation.py``):

    *Layer sum.* With ``a_l = relu(h_l)`` (``a_0 = x``), ``G_l = (2/fan_in) ||a_l||^2`` and ``delta_l = df/dh_l``
    (``delta_(L+1) = 1``), ``Theta = sum_(l=1)^(L+1) G_(l-1) D_l`` with ``D_l = ||delta_l||^2``, and
    ``E[Theta] = (L + 1) q`` exactly (``q = G_0``; ``E[D_l] = 1``, shown below).

    *Backward step.* Split ``W_(l+1) = W u u^T + W (1 - u u^T)`` with ``u = a_l / ||a_l||``. ``g = W u ~ N(0, 1_n)``
    fixes ``h_(l+1) = sqrt(G_l) g`` and everything after it; the other part is Gaussian and independent of
    all else. Positive homogeneity gives ``f = delta_(l+1) . h_(l+1)``, so the ``u``-component of
    ``W^T delta_(l+1)`` is ``f / (sqrt(2/n) ||a_l||)``; the mask of layer ``l`` keeps ``u`` and, on the
    ``k_l`` active units, leaves a fresh ``chi^2_(k_l - 1)`` from the orthogonal part:

        D_l = (2/n) f^2 / G_l + Y_l D_(l+1),      Y_l = (2/n) chi^2_(k_l - 1),      G_l = X_l G_(l-1),
        X_l = (2/n) chi^2_(k_l),      k_l ~ Binomial(n, 1/2),      f^2 = G_L Z^2,  Z ~ N(0, 1),

    with ``X_l`` and ``Y_l`` sharing ``k_l`` (otherwise independent chi-squares) and all layers and ``Z``
    independent. Hence ``E[X] = 1``, ``E[Y] = 1 - 2/n``, ``E[X^2] = 1 + 5/n``, ``E[XY] = 1 - 1/n``,
    ``E[Y^2] = 1 + 1/n - 4/n^2``.

    *Paths.* Unrolled, ``Theta / q`` is a sum of products over layers ``i = 1..L`` of one factor each:
    ``X`` before the layer ``l`` of the term, then ``Y``, then optionally one ``C = 2/n`` (the ``f^2`` term,
    which brings ``Z^2``) followed by ``X`` again. ``E[Theta^2]`` is a sum over pairs of such paths of
    ``prod_i E[F_i F'_i]`` times ``E[Z^4] = 3`` when both paths have taken a ``C``: a 16-state transfer
    matrix over depth, ``O(L)`` work. The result is exact up to the probability-``O(L 2^-n)`` event of a
    layer with no active unit (where ``chi^2_(-1)`` is meaningless; ``Theta = 0`` then).

    Small cases: ``L = 0`` gives ``0`` (``Theta = q``); ``L = 1`` gives exactly ``3/n``
    (``Theta / q = X + Y + 2 Z^2 / n``). Leading order: :func:`relu_ntk_relative_variance_leading_order`.

    Args:
        depth: ``L``, a non-negative integer.
        width: ``n`` > 0 (the hidden width; the input dimension does not enter).

    Raises:
        ValueError: a negative or non-integer depth, or a non-positive or non-finite width.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    n = float(_positive("width", width))
    if depth == 0:
        return 0.0
    first, second = _ntk_moments(n)
    start = np.array([1.0, 1.0, 1.0, 0.0])
    mean, pair = start * first, np.outer(start, start) * second
    for _ in range(depth - 1):
        mean = (mean @ _NTK_TRANSITIONS) * first
        pair = (_NTK_TRANSITIONS.T @ pair @ _NTK_TRANSITIONS) * second
    took_c = np.array([0.0, 0.0, 1.0, 1.0])
    z_moment = 1 + 2 * np.outer(took_c, took_c)  # E[Z^4] = 3 when both paths carry Z^2, else E[Z^2] = 1
    return float(np.sum(pair * z_moment) / np.sum(mean) ** 2 - 1)


def relu_ntk_relative_variance_leading_order(depth: ArrayLike, width: ArrayLike) -> np.ndarray:
    r"""Leading order in ``1/n`` of :func:`relu_ntk_relative_variance`: ``L (11 L + 7) / (3 n (L + 1))``.

    Linearising the path sum (``X_i = 1 + x_i``, ``Y_i = 1 + y_i``, ``Var x = Var y = 5/n``,
    ``Cov(x, y) = 1/n``; the ``f^2`` terms only enter at ``1/n^2``): layer ``l``'s term fluctuates by
    ``sum_(i<l) x_i + sum_(i>=l) y_i``, so ``Theta / q - (L + 1) = sum_i [(L + 1 - i) x_i + i y_i]`` and

        Var(Theta) / q^2 = (1/n) sum_(i=1)^L [5 (L + 1 - i)^2 + 5 i^2 + 2 i (L + 1 - i)]
                         = L (L + 1) (11 L + 7) / (3 n).

    Dividing by ``E[Theta]^2 = (L + 1)^2 q^2``. Equivalently, the terms of layers ``l`` and ``l'`` have covariance
    ``(5 L - 4 |l - l'|) / n`` (relative), and averaging over the ``(L + 1)^2`` pairs gives
    ``5 L - 4 L (L + 2) / (3 (L + 1))``, the same number. Each layer's term alone has relative variance ``5 L / n``,
    the rate of Hanin & Nica 2019 ("Finite Depth and Width Corrections to the Neural Tangent Kernel",
    arXiv:1909.05989: ``E[Theta^2] / E[Theta]^2 ~ exp(5 beta)``, ``beta = sum_j 1/n_j``, stated there up to
    bounded factors), but the ``L + 1`` terms share only part of their fluctuations: the sum grows as
    ``(11/3) L / n`` at large ``L``, ``3/n`` at ``L = 1`` (exact there), ``0`` at ``L = 0``. The constant
    ``11/3`` is our derivation; we did not find it stated in the paper. The remainder is
    ``c_2 (L / n)^2`` with ``c_2`` from ``0`` (``L = 1``) to about ``8.5`` (``L / n -> 0`` at large ``L``).
    """
    depth_ = _nonnegative("depth", depth)
    n = _positive("width", width)
    return depth_ * (11 * depth_ + 7) / (3 * n * (depth_ + 1))
