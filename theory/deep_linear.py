r"""Exact learning dynamics of deep linear networks (Saxe, McClelland & Ganguli 2014, arXiv:1312.6120).

A linear network ``f(x) = W_{L+1} ... W_1 x`` with ``L = depth`` hidden layers (``n = L + 1`` weight matrices; the
paper's ``N_l = L + 2`` layers) trained by gradient flow on ``1/(2P) sum_mu ||y_mu - f(x_mu)||^2`` with whitened
inputs (``1/P sum x x^T = I``) and ``tau dW_l/dt = -dLoss/dW_l``. Full-batch gradient descent with learning rate
``eta`` is this flow at ``t = steps`` with ``tau = 1/eta``. Write the input-output correlation
``Sigma^31 = 1/P sum y x^T = sum_alpha s_alpha u_alpha v_alpha^T``. From decoupled initial conditions (each mode
carried by its own hidden directions, see docs/deep_linear.md) every mode's strength ``u_alpha = u_alpha^T f v_alpha``
evolves on its own:

* balanced (every layer the same scalar strength ``a = u^(1/n)``):
  ``tau du/dt = n u^(2 - 2/n) (s - u)``; one hidden layer (``n = 2``): ``tau du/dt = 2 u (s - u)``,
  ``u(t) = s e^(2st/tau) / (e^(2st/tau) - 1 + s/u0)``; no hidden layer: ``u(t) = s + (u0 - s) e^(-t/tau)``;
* one hidden layer with weight vectors ``a``, ``b`` of the mode (``u = a.b``) of mean squared norm
  ``m = (|a|^2 + |b|^2)/2 >= |u|`` (``weight_norm``): ``tau du/dt = 2 (s - u) sqrt(u^2 + q^2)``,
  ``q^2 = m^2 - u^2`` conserved; ``q = 0`` is the balanced case, and ``q = sigma^2``, ``u0 = 0`` is the
  infinite-width limit of i.i.d. Gaussian weights of variance ``sigma^2 / fan_out`` (docs/deep_linear.md).

Learning times are closed forms (balanced depth ``n >= 3``: a sum over the ``n``-th roots of unity); mode strengths
at depth ``n >= 3`` invert them by bisection to full precision. Derivations: docs/deep_linear.md.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from theory.layers.base import is_concrete

Array = jax.Array

_PHI_MAX = 40.0  # logit beyond which u = s to float64 precision (1 - sigmoid(40) = 4e-18)
_BISECTIONS = 96  # bracket width <= ~800 in the logit: 2^-96 * 800 is far below float64 resolution


def _check_depth(depth: object) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer (the number of hidden layers; 1 = one hidden "
                         f"layer, as in theory.MLP), got {depth!r}")
    return int(depth)


def _as_array(name: str, value: object) -> Array:
    try:
        arr = jnp.asarray(value)
    except TypeError as err:
        raise ValueError(f"{name} must be a real number or array: {err}") from None
    if jnp.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def _concrete(*arrays: Array) -> bool:
    return all(is_concrete(a) for a in arrays)


def _check_values(name: str, arr: Array, *, positive: bool = False, nonnegative: bool = False, hint: str = ""
                  ) -> None:
    """Value checks on concrete arrays (under jit they are skipped and bad values give NaN)."""
    if not is_concrete(arr):
        return
    a = np.asarray(arr)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {_show(a[~np.isfinite(a)])}")
    if positive and not np.all(a > 0):
        raise ValueError(f"{name} must be > 0, got {_show(a[~(a > 0)])}{hint}")
    if nonnegative and not np.all(a >= 0):
        raise ValueError(f"{name} must be >= 0, got {_show(a[~(a >= 0)])}{hint}")


def _show(bad: np.ndarray) -> str:
    return f"{bad.reshape(-1)[0].item()!r}" + (f" (and {bad.size - 1} more)" if bad.size > 1 else "")


# -- one hidden layer (n = 2), balanced or not: u = (Z - q^2/Z)/2, Z = u + sqrt(u^2 + q^2) --------------------
def _one_hidden(s: Array, u0: Array, q2: Array) -> tuple[Array, Array, Array, Array]:
    """``R = sqrt(s^2 + q^2)``, ``Z0``, the fixed point ``Z* = s + R`` and ``s - R`` (cancellation-free)."""
    r = jnp.sqrt(s * s + q2)
    r0 = jnp.sqrt(u0 * u0 + q2)
    z0 = jnp.where(u0 >= 0, u0 + r0, q2 / jnp.where(r0 - u0 > 0, r0 - u0, 1.0))
    return r, z0, s + r, -q2 / (s + r)


def _u_from_z(z: Array, q2: Array) -> Array:
    return 0.5 * (z - q2 / z)


def _one_hidden_strength(t: Array, s: Array, u0: Array, q2: Array, tau: Array) -> Array:
    # tau dZ/dt = (Z+ - Z)(Z - Z-) / (Z+ - Z-) * 2R  =>  (Z - Z-)/(Z+ - Z) = K0 e^(2Rt/tau)
    r, z0, zp, zm = _one_hidden(s, u0, q2)
    k0 = (z0 - zm) / jnp.where(zp == z0, 1.0, zp - z0)
    decay = jnp.exp(-2.0 * r * t / tau)
    z = (zp * k0 + zm * decay) / (k0 + decay)
    z = jnp.where(zp == z0, z0, z)  # starts at the fixed point
    return _u_from_z(z, q2)


def _one_hidden_time(s: Array, u0: Array, uf: Array, q2: Array, tau: Array) -> Array:
    r, z0, zp, zm = _one_hidden(s, u0, q2)
    zf = uf + jnp.sqrt(uf * uf + q2)
    zf = jnp.where(uf >= 0, zf, q2 / jnp.where(zf > 0, jnp.sqrt(uf * uf + q2) - uf, 1.0))
    ratio = (zf - zm) * (zp - z0) / ((z0 - zm) * (zp - zf))
    return jnp.where(uf == u0, 0.0, tau / (2.0 * r) * jnp.log(ratio))


# -- balanced, n >= 3 weight matrices: t(phi) in closed form, phi = log v - log|1 - v|, v = u/s ------------------
def _log_v(phi: Array, above: Array) -> Array:
    """``log v`` from the logit-like coordinate: ``v = sigmoid(phi)`` below ``s``, ``1/(1 - e^-phi)`` above."""
    below = -jnp.logaddexp(0.0, -phi)
    return jnp.where(above, -jnp.log1p(-jnp.exp(-jnp.abs(phi))), below)


def _phi_of_v(v: Array, above: Array) -> Array:
    return jnp.where(above, jnp.log(v) - jnp.log(jnp.where(above, v - 1.0, 1.0)),
                     jnp.log(v) - jnp.log1p(-jnp.where(above, 0.0, v)))


def _antiderivative(phi: Array, above: Array, n: int) -> Array:
    """``F(w) = int dw / (w^(n-1) (1 - w^n))`` at ``w = v^(1/n)``: ``-w^(2-n)/(n-2) - 1/n sum_k omega_k^2
    log(omega_k - w)`` over the ``n``-th roots of unity, written with real logarithms and arctangents."""
    log_w = _log_v(phi, above) / n
    w = jnp.exp(log_w)
    g = -jnp.exp(-(n - 2) * log_w) / (n - 2)
    h = jnp.log(jnp.abs(jnp.expm1(log_w)))  # log|1 - w|, accurate as w -> 1
    if n % 2 == 0:
        h = h + jnp.log1p(w)
    for k in range(1, (n + 1) // 2):
        theta = 2.0 * math.pi * k / n
        c, s_ = math.cos(theta), math.sin(theta)
        h = h + math.cos(2 * theta) * jnp.log((w - c) ** 2 + s_**2) - 2.0 * math.sin(2 * theta) * jnp.arctan2(s_, c - w)
    return g - h / n


def _balanced_time_scale(s: Array, tau: Array, n: int) -> Array:
    return tau * s ** (2.0 / n - 2.0)


@functools.partial(jax.jit, static_argnums=4)
def _balanced_strength(t: Array, s: Array, u0: Array, tau: Array, n: int) -> Array:
    above = u0 > s
    v0 = u0 / s
    phi0 = _phi_of_v(jnp.where(v0 == 1.0, 0.5, v0), above)
    target = t / _balanced_time_scale(s, tau, n) + _antiderivative(phi0, above, n)
    hi0 = jnp.maximum(phi0, _PHI_MAX)

    def step(_, bracket):
        lo, hi = bracket
        mid = lo + 0.5 * (hi - lo)
        go_right = _antiderivative(mid, above, n) < target
        return jnp.where(go_right, mid, lo), jnp.where(go_right, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTIONS, step, (phi0, hi0))
    phi = lo + 0.5 * (hi - lo)
    log_v = _log_v(phi, above)
    return jnp.where(v0 == 1.0, s, s * jnp.exp(log_v))


@functools.partial(jax.jit, static_argnums=4)
def _balanced_time(s: Array, u0: Array, uf: Array, tau: Array, n: int) -> Array:
    above = u0 > s
    phi0 = _phi_of_v(jnp.where(u0 == s, 0.5, u0 / s), above)
    phif = _phi_of_v(jnp.where(u0 == s, 0.5, uf / s), above)
    dt = _balanced_time_scale(s, tau, n) * (_antiderivative(phif, above, n) - _antiderivative(phi0, above, n))
    return jnp.where(uf == u0, 0.0, dt)


# -- public ---------------------------------------------------------------------------------------------------
def _prepare(strength: object, initial: object, tau: object, depth: object, weight_norm: object | None
             ) -> tuple[int, Array, Array, Array, Array | None]:
    depth = _check_depth(depth)
    s = _as_array("strength", strength)
    u0 = _as_array("initial", initial)
    tau = _as_array("tau", tau)
    _check_values("strength", s, positive=True, hint=" (a singular value of the input-output correlation)")
    _check_values("tau", tau, positive=True, hint=" (tau = 1/learning rate)")
    _check_values("initial", u0)
    m = None
    if weight_norm is not None:
        if depth != 1:
            raise ValueError(f"weight_norm describes a mode of a one-hidden-layer network (depth=1) that is not "
                             f"balanced; at depth {depth} only balanced modes (weight_norm=None) are solved")
        m = _as_array("weight_norm", weight_norm)
        _check_values("weight_norm", m, nonnegative=True)
        if _concrete(m, u0):
            gap = np.asarray(m) - np.abs(np.asarray(u0))
            if np.any(gap < 0):
                raise ValueError("weight_norm = (|a|^2 + |b|^2)/2 must be >= |initial| = |a.b| (Cauchy-Schwarz), "
                                 f"got weight_norm {np.asarray(m)} and initial {np.asarray(u0)}")
            if np.any((gap == 0) & (np.asarray(u0) <= 0)):
                raise ValueError("a balanced mode (weight_norm == |initial|) with initial <= 0 never learns "
                                 "(a = -b or a = b = 0): give initial > 0 or weight_norm > |initial|")
    elif depth >= 1 and is_concrete(u0) and np.any(np.asarray(u0) <= 0):
        raise ValueError(f"a balanced mode needs initial > 0 (u = a^{depth + 1} with every layer's strength a > 0; "
                         f"u0 <= 0 never learns), got {_show(np.asarray(u0)[np.asarray(u0) <= 0])}; for an "
                         "unbalanced one-hidden-layer mode pass weight_norm")
    return depth, s, u0, tau, m


def mode_strength(t: object, strength: object, initial: object, tau: object = 1.0, depth: int = 1, *,
                  weight_norm: object | None = None) -> Array:
    """Strength ``u(t)`` of one input-output mode of a deep linear network under gradient flow (Saxe et al. 2014).

    Balanced (``weight_norm=None``): ``tau du/dt = n u^(2 - 2/n) (s - u)``, ``n = depth + 1`` weight matrices; for
    one hidden layer ``u(t) = s e^(2st/tau) / (e^(2st/tau) - 1 + s/u0)``. ``weight_norm = m`` (one hidden layer
    only): ``tau du/dt = 2 (s - u) sqrt(u^2 + m^2 - u0^2)``. See the module docstring for the convention.

    Args:
        t: times ``>= 0`` (gradient-descent steps when ``tau = 1/eta``).
        strength: the mode's singular value ``s > 0`` of the input-output correlation.
        initial: ``u0 = u(0)``; ``> 0`` for balanced modes at ``depth >= 1``.
        tau: time constant ``> 0``.
        depth: hidden layers ``L >= 0`` (``theory.MLP``'s convention; the paper's ``N_l = L + 2``). Static.
        weight_norm: ``(|a|^2 + |b|^2)/2 >= |u0|`` of the mode's two weight vectors at ``t = 0`` (``depth=1``).

    Returns:
        ``u(t)``, the broadcast shape of the arguments, float (float64 under ``jax_enable_x64``).
    """
    depth, s, u0, tau, m = _prepare(strength, initial, tau, depth, weight_norm)
    t = _as_array("t", t)
    _check_values("t", t, nonnegative=True)
    dtype = jnp.result_type(t, s, u0, tau, *(() if m is None else (m,)))
    t, s, u0, tau = (jnp.broadcast_arrays(*(x.astype(dtype) for x in (t, s, u0, tau))))
    if depth == 0:
        out = s + (u0 - s) * jnp.exp(-t / tau)
    elif depth == 1:
        q2 = jnp.zeros_like(u0) if m is None else jnp.maximum(m.astype(dtype) ** 2 - u0**2, 0.0)
        out = _one_hidden_strength(t, s, u0, q2, tau)
    else:
        out = _balanced_strength(t, s, u0, tau, depth + 1)
    bad = ~((t >= 0) & (s > 0) & (tau > 0) & (u0 > 0 if (depth >= 1 and m is None) else True))
    return jnp.where(bad, jnp.nan, out)


def learning_time(strength: object, initial: object, final: object, tau: object = 1.0, depth: int = 1, *,
                  weight_norm: object | None = None) -> Array:
    """Time for a mode to go from ``initial`` to ``final`` strength under gradient flow (Saxe et al. 2014).

    One hidden layer, balanced: ``t = tau/(2s) ln(uf (s - u0) / (u0 (s - uf)))``; deeper balanced modes:
    ``t = tau/n int du / (u^(2 - 2/n) (s - u))`` in closed form; arguments as in :func:`mode_strength`.

    Args:
        strength, initial, tau, depth, weight_norm: as in :func:`mode_strength`.
        final: ``uf`` between ``initial`` and ``strength`` (``initial <= uf < s`` when learning up,
            ``s < uf <= initial`` from above): ``s`` itself is reached only as ``t -> inf``.

    Returns:
        ``t``, the broadcast shape of the arguments.
    """
    depth, s, u0, tau, m = _prepare(strength, initial, tau, depth, weight_norm)
    uf = _as_array("final", final)
    _check_values("final", uf)
    if _concrete(s, u0, uf):
        s_, u0_, uf_ = np.broadcast_arrays(np.asarray(s), np.asarray(u0), np.asarray(uf))
        ok = np.where(u0_ < s_, (uf_ >= u0_) & (uf_ < s_), np.where(u0_ > s_, (uf_ <= u0_) & (uf_ > s_), uf_ == s_))
        if not np.all(ok):
            i = np.argwhere(~ok)[0]
            i = tuple(i) if i.size else ()
            raise ValueError(f"final must lie between initial and strength, on the way from u0 to s (s is reached "
                             f"only as t -> inf): got initial {u0_[i].item()!r}, final {uf_[i].item()!r}, "
                             f"strength {s_[i].item()!r}")
    dtype = jnp.result_type(s, u0, uf, tau, *(() if m is None else (m,)))
    s, u0, uf, tau = jnp.broadcast_arrays(*(x.astype(dtype) for x in (s, u0, uf, tau)))
    if depth == 0:
        out = tau * jnp.log((s - u0) / jnp.where(uf == s, 1.0, s - uf))
        out = jnp.where(uf == u0, 0.0, out)
    elif depth == 1:
        q2 = jnp.zeros_like(u0) if m is None else jnp.maximum(m.astype(dtype) ** 2 - u0**2, 0.0)
        out = _one_hidden_time(s, u0, uf, q2, tau)
    else:
        out = _balanced_time(s, u0, uf, tau, depth + 1)
    between = jnp.where(u0 < s, (uf >= u0) & (uf < s), jnp.where(u0 > s, (uf <= u0) & (uf > s), uf == s))
    bad = ~(between & (s > 0) & (tau > 0) & (u0 > 0 if (depth >= 1 and m is None) else True))
    return jnp.where(bad, jnp.nan, out)


def depth_limit_learning_time(strength: object, initial: object, final: object, tau: object = 1.0) -> Array:
    """``lim_{n -> inf} n t_n``: the balanced learning time times the number of weight matrices ``n = depth + 1``.

    ``tau [1/(s u0) - 1/(s uf) + ln(uf (s - u0) / (u0 (s - uf))) / s^2]`` (Saxe et al. 2014, Sec. 3): with the
    learning rate scaled as ``1/n`` (the stable rate shrinks like ``1/n``), a balanced mode whose end-to-end
    ``u0``, ``uf`` do not depend on depth learns in a finite number of steps as depth grows. ``n t_n`` approaches it
    like ``1/n``. Arguments as in :func:`learning_time` (balanced, ``initial > 0``).
    """
    _, s, u0, tau, _ = _prepare(strength, initial, tau, 1, None)
    uf = _as_array("final", final)
    _check_values("final", uf, positive=True)
    learning_time(s, u0, uf, tau, 1)  # validates the ordering of initial, final and strength
    dtype = jnp.result_type(s, u0, uf, tau)
    s, u0, uf, tau = jnp.broadcast_arrays(*(x.astype(dtype) for x in (s, u0, uf, tau)))
    log_ratio = jnp.log(uf / u0) + jnp.log(jnp.abs(s - u0) / jnp.where(uf == s, 1.0, jnp.abs(s - uf)))
    out = tau * ((1.0 / u0 - 1.0 / uf) / s + log_ratio / s**2)
    return jnp.where(uf == u0, 0.0, out)
