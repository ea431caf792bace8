r"""Predictions from the kernels: gradient descent on MSE in the kernel regime, and GP inference.

neural-tangents' ``nt.predict`` conventions (0.6.5), with the same names and signatures. With ``N`` training
inputs, targets ``Y`` of shape ``(N, K)`` (or ``(N,)``), ``n = Y.size`` and ``tau = learning_rate * t``, gradient flow
on ``L = 1/(2n) ||f(X) - Y||^2`` moves the training outputs as ``df/dtau = -Theta (f - Y) / n``, so

    f_train(t) = Y + exp(-Theta tau / n) (f_0 - Y),
    f_test(t)  = f_test,0 - Theta_*X Theta^{-1} (I - exp(-Theta tau / n)) (f_0 - Y)

(Lee et al. 2019, arXiv 1902.06720, Eqs. 9-10); ``t = None`` is ``t = inf``. Kernels are ``(N, N)`` with one block
per output (``trace_axes=(-1,)``: the kernel of every output, outputs independent). ``diag_reg`` adds
``diag_reg * mean(diag K)`` to the diagonal (or ``diag_reg`` itself with ``diag_reg_absolute_scale=True``).
The ensemble of networks with ``f_0 ~ GP(0, K)`` has the mean and covariance of Lee et al. 2019, Eqs. 15-16; the
GP posterior is the usual ``K_*X K^{-1} Y``, ``K_** - K_*X K^{-1} K_X*``.

Kernels are checked before use: a ``ValueError`` names a non-finite, non-symmetric or indefinite kernel (with its
smallest eigenvalue and the ``diag_reg`` that would make it positive definite), never a silent NaN. Derivations and
the time conventions against ``theory.training_dynamics``: docs/predictions.md.
"""

from __future__ import annotations

import collections
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import linalg as jsl

from theory.kernels import kernels
from theory.layers import Program
from theory.layers.base import is_concrete
from theory.solvers import SOLVERS, cg_solve

Array = jax.Array
GETS = ("nngp", "ntk")


class Gaussian(NamedTuple):
    """A Gaussian's ``mean`` and ``covariance`` (``covariance`` over the inputs, shared by the outputs)."""

    mean: Array
    covariance: Array


# -- checks ----------------------------------------------------------------------------------------------------
def _concrete(*values: Any) -> bool:
    return all(is_concrete(v) for v in jax.tree.leaves(values))


def _cached(cache: dict, key: str, compute: Callable[[], Any], *inputs: Any) -> Any:
    """``compute()`` once per key while ``inputs`` are concrete (evaluated eagerly, also inside a jit trace, so
    no tracer is cached); recomputed each call when they are traced."""
    if not _concrete(*inputs):
        return compute()
    if key not in cache:
        with jax.ensure_compile_time_eval():
            cache[key] = compute()
    return cache[key]


def _float_array(value: Any, name: str) -> Array:
    a = jnp.asarray(value)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    if _concrete(a) and not np.all(np.isfinite(np.asarray(a))):
        raise ValueError(f"{name} has NaN or inf entries: pass finite values")
    return a


def _check_scalar(value: Any, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _check_trace_axes(trace_axes: Any) -> None:
    axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
    if axes != (-1,):
        raise ValueError(f"trace_axes={trace_axes!r} is not supported: deeplimits' kernels are (N, N), one block per "
                         "output, i.e. trace_axes=(-1,) (the default)")


def _targets(y_train: Any) -> Array:
    y = _float_array(y_train, "y_train")
    if y.ndim not in (1, 2):
        raise ValueError(f"y_train must be (N,) or (N, outputs), got shape {y.shape}")
    return y


def _square(k: Any, name: str, n: int | None) -> Array:
    k = _float_array(k, name)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) kernel, got shape {k.shape}")
    if n is not None and k.shape[0] != n:
        raise ValueError(f"{name} is {k.shape} but y_train has {n} rows: the kernel must be of the training inputs")
    if _concrete(k):  # checked on the host: under jit the checks would be traced
        host = np.asarray(k)
        scale, asym = float(np.max(np.abs(host))), float(np.max(np.abs(host - host.T)))
        if asym > math.sqrt(float(jnp.finfo(k.dtype).eps)) * max(scale, np.finfo(float).tiny):
            raise ValueError(f"{name} is not symmetric (max |K - K^T| = {asym:.3g}, max |K| = {scale:.3g}): "
                             "pass a kernel of the training inputs with themselves")
    return (k + k.T) / 2


def _cross(k: Any, name: str, n: int) -> Array:
    k = _float_array(k, name)
    if k.ndim != 2 or k.shape[1] != n:
        raise ValueError(f"{name} must be (N_test, N_train) with N_train = {n}, got shape {k.shape}")
    return k


def _shift(k: Array, diag_reg: float, absolute: bool) -> Array:
    """What ``diag_reg`` adds to the diagonal: ``diag_reg`` itself, or times the mean diagonal."""
    return diag_reg if absolute else diag_reg * jnp.trace(k) / k.shape[0]


def _regularized(k: Array, diag_reg: float, absolute: bool) -> Array:
    return k + _shift(k, diag_reg, absolute) * jnp.eye(k.shape[0], dtype=k.dtype)


def _indefinite(evals: Array, name: str, diag_reg: float, absolute: bool, k: Array) -> None:
    """Raise when ``evals`` (of the regularised kernel) are negative beyond rounding."""
    if not _concrete(evals):
        return
    lo, hi = float(evals[0]), float(evals[-1])
    tol = evals.shape[0] * float(jnp.finfo(evals.dtype).eps) * max(abs(hi), abs(lo))
    if lo < -tol:
        mean_diag = float(jnp.trace(k)) / k.shape[0]
        need = -lo + tol
        fix = need if absolute else need / mean_diag if mean_diag > 0 else float("inf")
        raise ValueError(f"{name} is not positive semi-definite: smallest eigenvalue {lo:.3g} (largest {hi:.3g}) "
                         f"with diag_reg={diag_reg}; diag_reg >= {diag_reg + fix:.3g}"
                         f"{' (absolute)' if absolute else ' (relative to the mean diagonal)'} would fix it")


class _Eigen(NamedTuple):
    evals: Array  # (N,), clipped at 0
    evecs: Array  # (N, N)


def _eigen(k: Array, name: str, diag_reg: float, absolute: bool) -> _Eigen:
    reg = _regularized(k, diag_reg, absolute)
    evals, evecs = jnp.linalg.eigh(reg)
    _indefinite(evals, name, diag_reg, absolute, k)
    return _Eigen(jnp.maximum(evals, 0.0), evecs)


def _check_solver(solver: str, diag_reg: float) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "cg" and not diag_reg > 0:
        raise ValueError("solver='cg' needs diag_reg > 0: conjugate gradients converge on a regularised kernel")
    return solver


def _solver(k: Array, name: str, diag_reg: float, absolute: bool, solver: str) -> Callable[[Array], Array]:
    """``b -> (K + reg I)^{-1} b`` for ``(N, k)`` right-hand sides."""
    if solver == "cg":
        shift = _shift(k, diag_reg, absolute)
        return lambda b: cg_solve(k, b, shift)[0]
    factor = _cholesky(k, name, diag_reg, absolute)
    return lambda b: jsl.cho_solve(factor, b)


def _cholesky(k: Array, name: str, diag_reg: float, absolute: bool) -> tuple[Array, bool]:
    reg = _regularized(k, diag_reg, absolute)
    factor = jsl.cho_factor(reg, lower=False)
    pivots = jnp.abs(jnp.diagonal(factor[0]))
    # A pivot at rounding level (an exactly singular kernel can factor into a finite, meaningless one) is singular
    # too: pivot^2 below n eps max(diag).
    floor = reg.shape[0] * jnp.finfo(reg.dtype).eps * jnp.max(jnp.abs(jnp.diagonal(reg)))
    if _concrete(factor[0]) and not (bool(jnp.all(jnp.isfinite(factor[0]))) and float(jnp.min(pivots)) ** 2 > floor):
        evals = jnp.linalg.eigvalsh(reg)
        _indefinite(evals, name, diag_reg, absolute, k)
        raise ValueError(f"{name} is singular to working precision (eigenvalues from {float(evals[0]):.3g} to "
                         f"{float(evals[-1]):.3g}, {reg.dtype}): the infinite-time / posterior solve needs "
                         "diag_reg > 0 (e.g. 1e-6), or use a finite time t")
    return factor


# -- functions of the kernel in its eigenbasis -----------------------------------------------------------------
def _decay(evals: Array, tau: Array, n: int) -> Array:
    """``exp(-lambda tau / n) - 1``, ``(T, N)``; ``tau = inf`` gives ``-1`` (``0`` where ``lambda = 0``)."""
    x = evals[None, :] * tau[:, None] / n
    return jnp.where(evals[None, :] > 0, jnp.expm1(-jnp.where(evals[None, :] > 0, x, 0.0)), 0.0)


def _decay_over_eval(evals: Array, tau: Array, n: int) -> Array:
    """``(exp(-lambda tau / n) - 1) / lambda``, ``(T, N)``, with its limit ``-tau / n`` at ``lambda = 0``
    (``0`` at ``tau = inf``)."""
    positive = jnp.broadcast_to(evals[None, :] > 0, (tau.shape[0], evals.shape[0]))
    safe = jnp.where(positive, evals[None, :], 1.0)
    # A zero mode of an exact kernel is also one of the cross kernel (same features): it contributes nothing at
    # t = inf, where -tau / n would multiply 0 by inf.
    return jnp.where(positive, _decay(evals, tau, n) / safe, jnp.where(jnp.isinf(tau), 0.0, -tau)[:, None] / n)


def _in_basis(e: _Eigen, diag: Array, v: Array) -> Array:
    """``V diag(d_t) V^T v`` for each time: ``(T, N, ...)``."""
    return jnp.einsum("ji,ti,ki,k...->tj...", e.evecs, diag, e.evecs, v)


def _times(t: Any, learning_rate: float) -> tuple[Array, tuple[int, ...]]:
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    if _concrete(t) and bool(np.any(np.isnan(np.asarray(t)) | (np.asarray(t) < 0))):
        raise ValueError(f"t must be >= 0 (training time in steps; None or inf for the end of training), got {t}")
    return (t * learning_rate).reshape(-1), t.shape


def _infinite(t: Any) -> bool:
    """``t = None`` or a (concrete, scalar) ``inf``: the end of training, solved directly."""
    return t is None or (_concrete(t) and np.ndim(t) == 0 and float(t) == float("inf"))


def _as_2d(y: Array) -> Array:
    return y[:, None] if y.ndim == 1 else y


def _like(out: Array, y: Array, t_shape: tuple[int, ...], rows: int) -> Array:
    return out.reshape((*t_shape, rows, *y.shape[1:]))


# -- gradient descent on MSE from given kernels -----------------------------------------------------------------
def gradient_descent_mse(k_train_train: Any, y_train: Any, learning_rate: float = 1.0, diag_reg: float = 0.0,
                         diag_reg_absolute_scale: bool = False, trace_axes: Any = (-1,), *,
                         solver: str = "cholesky") -> Callable:
    """Outputs of gradient flow on MSE with a fixed kernel (an NTK, or the NNGP for last-layer training).

    Args:
        k_train_train: ``(N, N)`` kernel of the training inputs.
        y_train: ``(N,)`` or ``(N, K)`` targets.
        learning_rate: step size; the time is ``learning_rate * t``.
        diag_reg: added to the kernel's diagonal, times its mean diagonal unless ``diag_reg_absolute_scale``.
        trace_axes: ``(-1,)`` only (one ``(N, N)`` block per output).
        solver: how ``t = None`` solves with the kernel: "cholesky" (dense), or "cg" (preconditioned conjugate
            gradients, ``theory.solvers``: for kernels too large to factorise; needs ``diag_reg > 0``).

    Returns:
        ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` giving ``fx_train_t``, or
        ``(fx_train_t, fx_test_t)`` when ``fx_test_0`` is given (``k_test_train`` ``(M, N)`` then needed); ``t``
        may be an array (its shape leads the outputs'); ``t=None`` is ``t = inf``, where the training outputs
        are ``y_train`` (as neural-tangents; pass ``k_test_train=k_train_train`` for regularised ones).
    """
    _check_trace_axes(trace_axes)
    learning_rate = _check_scalar(learning_rate, "learning_rate", positive=True)
    diag_reg = _check_scalar(diag_reg, "diag_reg", positive=False)
    solver = _check_solver(solver, diag_reg)
    y = _targets(y_train)
    k = _square(k_train_train, "k_train_train", y.shape[0])
    cache: dict[str, Any] = {}

    def eigen() -> _Eigen:
        return _cached(cache, "eigen", lambda: _eigen(k, "k_train_train", diag_reg, diag_reg_absolute_scale), k)

    def solve(b: Array) -> Array:
        return _cached(cache, "solve", lambda: _solver(k, "k_train_train", diag_reg, diag_reg_absolute_scale,
                                                       solver), k)(b)

    def predict_fn(t: Any = None, fx_train_0: Any = 0.0, fx_test_0: Any = None, k_test_train: Any = None) -> Any:
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError("fx_train_0 and fx_test_0 are both None: nothing to predict")
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("predictions on test inputs need k_test_train, the (N_test, N_train) kernel")
        f0 = None if fx_train_0 is None else jnp.broadcast_to(_float_array(fx_train_0, "fx_train_0"), y.shape)
        kt = None if fx_test_0 is None else _cross(k_test_train, "k_test_train", y.shape[0])
        ft0 = None
        if fx_test_0 is not None:
            ft0 = jnp.broadcast_to(_float_array(fx_test_0, "fx_test_0"), (kt.shape[0], *y.shape[1:]))
        if _infinite(t):
            train = None if f0 is None else y.astype(k.dtype)
            test = None
            if ft0 is not None:
                rhs = y if f0 is None else y - f0
                test = ft0 + (kt @ solve(_as_2d(rhs))).reshape(ft0.shape)
        else:
            tau, t_shape = _times(t, learning_rate)
            e, n = eigen(), y.size
            rhs = _as_2d(-y if f0 is None else f0 - y)
            train = test = None
            if f0 is not None:
                train = f0 + _like(_in_basis(e, _decay(e.evals, tau, n), rhs), y, t_shape, y.shape[0])
            if ft0 is not None:
                d = _in_basis(e, _decay_over_eval(e.evals, tau, n), rhs)
                test = ft0 + _like(jnp.einsum("mj,tj...->tm...", kt, d), y, t_shape, kt.shape[0])
        if f0 is not None and ft0 is not None:
            return train, test
        return train if ft0 is None else test

    return predict_fn


# -- GP inference -----------------------------------------------------------------------------------------------
def _kernel_part(k: Any, g: str, what: str) -> Any:
    if k is None or isinstance(k, (np.ndarray, jax.Array)):
        return k
    if hasattr(k, g):
        part = getattr(k, g)
        if part is None:
            raise ValueError(f"{what} has no {g!r} kernel: compute it (theory.kernels(..., get=('nngp', 'ntk')))")
        return part
    raise ValueError(f"{what} must be an array or have .nngp / .ntk (theory.Kernels), got {type(k).__name__}")


def _canonical_get(get: Any, allowed: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``(names, single)``: ``None`` is ``("nngp", "ntk")``; a string gives one unwrapped result."""
    if get is None:
        return ("nngp", "ntk"), False
    names = (get,) if isinstance(get, str) else tuple(get)
    bad = [g for g in names if g not in allowed]
    if not names or bad:
        raise ValueError(f"get must be one of {tuple(allowed)} or a tuple of them, got {get!r}")
    return names, isinstance(get, str)


def _pack(out: dict, names: tuple[str, ...], single: bool) -> Any:
    if single:
        return out[names[0]]
    return collections.namedtuple("Gaussians", names)(*(out[g] for g in names))


def gp_inference(k_train_train: Any, y_train: Any, diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                 trace_axes: Any = (-1,), *, solver: str = "cholesky") -> Callable:
    """GP posterior with the NNGP ("nngp"), of the infinite-time NTK ensemble ("ntk"), or with the NTK as a
    prior covariance ("ntkgp", He et al. 2020).

    Args:
        k_train_train: ``(N, N)`` array, or ``theory.Kernels`` with the kernels the calls need.
        y_train: ``(N,)`` or ``(N, K)`` targets.
        diag_reg, diag_reg_absolute_scale, trace_axes, solver: as :func:`gradient_descent_mse`.

    Returns:
        ``predict_fn(get=None, k_test_train=None, k_test_test=None)``: the posterior mean on the test inputs
        (``k_test_train`` ``(M, N)``; ``None`` gives the training inputs, ``y_train``), or a :class:`Gaussian`
        ``(mean, covariance)`` when ``k_test_test`` (``(M, M)``: the NNGP for "nngp" and "ntk", the NTK for
        "ntkgp") is given. ``get`` a string gives one result, ``None`` or a tuple a namedtuple of them.
    """
    _check_trace_axes(trace_axes)
    diag_reg = _check_scalar(diag_reg, "diag_reg", positive=False)
    solver = _check_solver(solver, diag_reg)
    y = _targets(y_train)
    cache: dict[str, Any] = {}

    def train(g: str) -> Array:
        return _cached(cache, g, lambda: _square(_kernel_part(k_train_train, g, "k_train_train"),
                                                 f"k_train_train ({g})", y.shape[0]), k_train_train)

    def solve(g: str, b: Array) -> Array:
        return _cached(cache, "solve" + g, lambda: _solver(train(g), f"k_train_train ({g})", diag_reg,
                                                           diag_reg_absolute_scale, solver), k_train_train)(b)

    def predict_fn(get: Any = None, k_test_train: Any = None, k_test_test: Any = None) -> Any:
        names, single = _canonical_get(get, ("nngp", "ntk", "ntkgp"))
        out = {}
        for g in names:
            kg = "ntk" if g == "ntkgp" else g
            k_dd = train(kg)
            k_td = None if k_test_train is None else _cross(_kernel_part(k_test_train, kg, "k_test_train"),
                                                           f"k_test_train ({kg})", y.shape[0])
            mean = y.astype(k_dd.dtype) if k_td is None else (k_td @ solve(kg, _as_2d(y))).reshape(
                (k_td.shape[0], *y.shape[1:]))
            if k_test_test is None:
                out[g] = mean
                continue
            if k_td is None:
                out[g] = Gaussian(mean, jnp.zeros_like(k_dd))
                continue
            prior = "ntk" if g == "ntkgp" else "nngp"
            k_tt = _kernel_part(k_test_test, prior, "k_test_test")
            k_tt = _float_array(k_tt, "k_test_test")
            if k_tt.shape != (k_td.shape[0],) * 2:
                raise ValueError(f"k_test_test must be ({k_td.shape[0]}, {k_td.shape[0]}), got {k_tt.shape}")
            if g in ("nngp", "ntkgp"):
                cov = k_tt - k_td @ solve(kg, k_td.T)
            else:
                k_nngp = train("nngp")
                kx_nngp = _cross(_kernel_part(k_test_train, "nngp", "k_test_train"), "k_test_train (nngp)",
                                 y.shape[0])
                a = solve("ntk", k_td.T)  # Theta^{-1} Theta_X*, (N, M)
                b = k_td @ solve("ntk", kx_nngp.T)  # Theta_*X Theta^{-1} K_X*, (M, M)
                cov = k_tt + a.T @ k_nngp @ a - b - b.T
            out[g] = Gaussian(mean, cov)
        return _pack(out, names, single)

    return predict_fn


# -- the ensemble of infinitely wide networks ------------------------------------------------------------------
def _kernel_function(kernel_fn: Any) -> Callable[[Array, Array | None, tuple[str, ...]], Any]:
    """A ``kernel_fn(x1, x2, get)`` from a layer program (``theory.kernels``) or a kernel function."""
    if isinstance(kernel_fn, Program):
        net = kernel_fn
        return lambda x1, x2, get, **kw: kernels(net, x1, x2, get=get, **kw)
    if callable(kernel_fn):
        return kernel_fn
    raise ValueError(f"expected a layer program (theory.MLP, theory.serial(...)) or a kernel function "
                     f"kernel_fn(x1, x2, get), got {kernel_fn!r}")


def gradient_descent_mse_ensemble(kernel_fn: Any, x_train: Any, y_train: Any, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                                  trace_axes: Any = (-1,), *, solver: str = "cholesky",
                                  **kernel_fn_train_train_kwargs: Any) -> Callable:
    """Mean and covariance of the outputs of infinitely many infinitely wide networks trained by gradient flow
    on MSE, over their random initialisations (Lee et al. 2019, Eqs. 15-16).

    Args:
        kernel_fn: a layer program (``theory.MLP``, ``theory.serial(...)``: its ``theory.kernels``), or a
            function ``kernel_fn(x1, x2, get, **kwargs)`` returning an object with ``.nngp`` / ``.ntk``.
        x_train: training inputs, ``(N, ...)``.
        y_train: ``(N,)`` or ``(N, K)`` targets.
        learning_rate, diag_reg, diag_reg_absolute_scale, trace_axes, solver: as :func:`gradient_descent_mse`
            (``solver`` for ``t = None``; finite times need the eigendecomposition).

    Returns:
        ``predict_fn(t=None, x_test=None, get=None, compute_cov=False)``: the mean (and, with ``compute_cov``, a
        :class:`Gaussian` with the covariance) of the outputs on ``x_test`` (``None``: the training inputs) at
        times ``t`` (``None`` = inf; an array leads the shapes). ``get`` "nngp" (training of the last layer
        only) or "ntk"; a string gives one result, ``None`` or a tuple a namedtuple.
    """
    _check_trace_axes(trace_axes)
    learning_rate = _check_scalar(learning_rate, "learning_rate", positive=True)
    diag_reg = _check_scalar(diag_reg, "diag_reg", positive=False)
    solver = _check_solver(solver, diag_reg)
    fn = _kernel_function(kernel_fn)
    y = _targets(y_train)
    x_train = jnp.asarray(x_train)
    if x_train.shape[0] != y.shape[0]:
        raise ValueError(f"x_train has {x_train.shape[0]} inputs but y_train {y.shape[0]} rows")
    train_kernels: dict[str, Array] = {}
    eigens: dict[str, _Eigen] = {}
    posteriors: dict[tuple[str, ...], Callable] = {}

    def k_dd(names: tuple[str, ...]) -> dict[str, Array]:
        """The training kernels ``names``; those not yet known come from one call (one recursion gives both)."""
        have = dict(train_kernels)
        missing = tuple(g for g in names if g not in have)
        if missing:
            def compute() -> dict[str, Array]:
                got = fn(x_train, None, missing, **kernel_fn_train_train_kwargs)
                return {g: _square(_kernel_part(got, g, "kernel_fn(x_train)"), f"the {g} of x_train", y.shape[0])
                        for g in missing}

            have.update(_cached({}, "", compute, x_train))
            if _concrete(x_train):
                train_kernels.update(have)
        return {g: have[g] for g in names}

    def eigen(g: str) -> _Eigen:
        return _cached(eigens, g, lambda: _eigen(k_dd((g,))[g], f"the {g} of x_train", diag_reg,
                                                 diag_reg_absolute_scale), x_train)

    def predict_fn(t: Any = None, x_test: Any = None, get: Any = None, compute_cov: bool = False,
                   **kernel_fn_test_test_kwargs: Any) -> Any:
        names, single = _canonical_get(get, GETS)
        needed = tuple(g for g in GETS if g in names or (g == "nngp" and compute_cov))
        k_td: dict[str, Array] = {}
        nngp_tt = None
        if x_test is not None:
            got = fn(x_test, x_train, needed, **kernel_fn_test_test_kwargs)
            k_td = {g: _cross(_kernel_part(got, g, "kernel_fn(x_test, x_train)"), f"the {g} of (x_test, x_train)",
                              y.shape[0]) for g in needed}
            if compute_cov:
                nngp_tt = _float_array(_kernel_part(fn(x_test, None, ("nngp",), **kernel_fn_test_test_kwargs),
                                                    "nngp", "kernel_fn(x_test)"), "the nngp of x_test")
        dd = k_dd(needed)
        if _infinite(t):
            if needed not in posteriors:
                posteriors[needed] = gp_inference(_Pair(dd.get("nngp"), dd.get("ntk")), y, diag_reg,
                                                  diag_reg_absolute_scale, solver=solver)
            gp = posteriors[needed]
            td = _Pair(k_td.get("nngp"), k_td.get("ntk")) if x_test is not None else None
            tt = (nngp_tt if x_test is not None else True) if compute_cov else None
            return gp(names[0] if single else names, td, tt)
        tau, t_shape = _times(t, learning_rate)
        n, y2 = y.size, _as_2d(y)
        rows = y.shape[0] if x_test is None else k_td[needed[0]].shape[0]
        out = {}
        for g in names:
            e = eigen(g)
            if x_test is None:
                mean = _in_basis(e, -_decay(e.evals, tau, n), y2)
            else:
                mean = jnp.einsum("mj,tj...->tm...", k_td[g], _in_basis(e, -_decay_over_eval(e.evals, tau, n), y2))
            mean = _like(mean, y, t_shape, rows)
            if not compute_cov:
                out[g] = mean
                continue
            k_nngp = dd["nngp"]
            if x_test is None:
                if g == "nngp":
                    cov = jnp.einsum("ji,ti,ki->tjk", e.evecs, e.evals * jnp.exp(-2 * e.evals * tau[:, None] / n),
                                     e.evecs)
                else:
                    decay = jnp.einsum("ji,ti,ki->tjk", e.evecs, jnp.exp(-e.evals * tau[:, None] / n), e.evecs)
                    cov = jnp.einsum("tmk,kl,tnl->tmn", decay, k_nngp, decay)
            else:
                if g == "nngp":
                    grown = -_decay_over_eval(e.evals, 2 * tau, n)
                    cov = nngp_tt[None] - jnp.einsum("mj,ji,ti,ki,lk->tml", k_td[g], e.evecs, grown, e.evecs,
                                                     k_td[g])
                else:
                    grown = -_decay_over_eval(e.evals, tau, n)
                    a = jnp.einsum("mi,ti,ki,lk->tml", e.evecs, grown, e.evecs, k_td["ntk"])  # (T, N, M)
                    b = jnp.einsum("mj,ji,ti,ki,lk->tml", k_td["ntk"], e.evecs, grown, e.evecs, k_td["nngp"])
                    cov = jnp.einsum("tji,jk,tkl->til", a, k_nngp, a) - b - jnp.swapaxes(b, 1, 2) + nngp_tt[None]
            out[g] = Gaussian(mean, cov.reshape(t_shape + cov.shape[1:]))
        return _pack(out, names, single)

    return predict_fn


class _Pair(NamedTuple):
    nngp: Array | None
    ntk: Array | None


# -- the largest stable learning rate ----------------------------------------------------------------------------
def max_learning_rate(ntk_train_train: Any, y_train_size: int | None = None, momentum: float = 0.0,
                      eps: float = 1e-12) -> float:
    """Largest learning rate of full-batch gradient descent (with ``momentum``) on ``1/(2n) ||f - y||^2`` that
    still converges: ``2 (1 + momentum) n / lambda_max(NTK)``, ``n = y_train_size`` (default: the kernel's rows).

    Args:
        ntk_train_train: ``(N, N)`` NTK of the training inputs.
        y_train_size: the number of training outputs ``N * K``.
        momentum: heavy-ball momentum in ``[0, 1)``.
        eps: added to ``lambda_max`` (a zero kernel gives a huge, finite rate).
    """
    k = _square(ntk_train_train, "ntk_train_train", None)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    n = k.shape[0] if y_train_size is None else y_train_size
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"y_train_size must be a positive integer, got {y_train_size!r}")
    lam = float(np.linalg.eigvalsh(np.asarray(k, np.float64))[-1])
    return 2 * (1 + momentum) * n / (lam + eps)


__all__ = ["Gaussian", "gp_inference", "gradient_descent_mse", "gradient_descent_mse_ensemble", "max_learning_rate"]
