r"""Finite deep linear networks trained by full-batch gradient descent (Saxe, McClelland & Ganguli 2014).

A network of ``depth`` hidden layers of ``width`` units is the list of matrices ``W_1 (width, d)``, ``W_l (width,
width)``, ``W_{depth+1} (d, width)`` (standard parameterization: the matrices are the trained parameters), with
``f(x) = W_{depth+1} ... W_1 x``. A :class:`LinearTask` has ``P = d`` whitened inputs (``1/P X^T X = I``) and targets
``y = Sigma^31 x`` with ``Sigma^31 = U diag(s) V^T``: the input-output correlation spectrum is ``s`` (padded with
zeros to ``d``). Gradient descent on ``1/(2P) sum_mu ||y_mu - f(x_mu)||^2`` at learning rate ``eta`` follows the
gradient flow of ``theory.deep_linear`` with ``tau = 1/eta`` up to ``O(eta)``. A mode strength is the projection
``u_alpha = U_alpha^T W_{depth+1} ... W_1 V_alpha`` of the end-to-end map on the task's singular vectors (its
singular value when the weights are decoupled).

Initialisations (:func:`init`): ``"decoupled"``: balanced and aligned, every task mode carried by its own random
orthonormal hidden directions with the same strength ``scale^(1/n)`` in each of the ``n = depth + 1`` layers (end to
end ``u0 = scale``; the other directions are zero); ``"gaussian"``: i.i.d. ``N(0, scale^2 / width)`` entries, so
each layer is an isometry on average (``E W^T W = scale^2 I`` for the input layer, ``E W W^T = scale^2 I`` for the
readout); ``"orthogonal"``: Haar (semi-)orthogonal layers times ``scale``, exact isometries.
Notes: docs/deep_linear.md.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments.networks import check_key, check_positive_int

Array = jax.Array
INITS = ("decoupled", "gaussian", "orthogonal")


@dataclass(frozen=True)
class LinearTask:
    """Inputs ``x`` ``(d, d)`` (rows whitened), targets ``y = x Sigma31^T`` ``(d, d)``, ``Sigma31 = U diag(s) V^T``
    with ``u`` ``(d, d)``, ``v`` ``(d, d)`` orthogonal and ``strengths`` ``(r,)`` the nonzero singular values."""

    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    strengths: np.ndarray

    @property
    def correlation(self) -> np.ndarray:
        r = len(self.strengths)
        return (self.u[:, :r] * self.strengths) @ self.v[:, :r].T


def _haar(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _semi_orthogonal(key: Array, rows: int, cols: int) -> Array:
    """Haar-distributed ``(rows, cols)`` matrix with orthonormal columns (rows >= cols) or rows (QR in NumPy,
    signs of diag(R) fixed, Mezzadri 2007; NumPy rather than a host callback, which would not see the caller's
    x64 mode)."""
    big, small = max(rows, cols), min(rows, cols)
    z = np.asarray(jax.random.normal(key, (big, small), jnp.result_type(float)))
    q, r = np.linalg.qr(z)
    q = q * np.sign(np.diag(r))
    return jnp.asarray(q if rows >= cols else q.T)


def task(strengths: tuple[float, ...] = (2.0, 1.0, 0.5), features: int = 8, *, seed: int = 0) -> LinearTask:
    """A whitened regression task with input-output correlation spectrum ``strengths`` in random bases
    (``features`` inputs and outputs, ``P = features`` examples; NumPy's PCG64 in ``seed``)."""
    features = check_positive_int("features", features)
    s = np.asarray(strengths, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise ValueError(f"strengths must be a non-empty sequence of finite numbers > 0, got {strengths!r}")
    if s.size > features:
        raise ValueError(f"{s.size} strengths need at least as many features, got features={features}")
    rng = np.random.default_rng(seed)
    u, v, q = _haar(rng, features), _haar(rng, features), _haar(rng, features)
    x = math.sqrt(features) * q  # 1/P x^T x = I
    corr = (u[:, :s.size] * s) @ v[:, :s.size].T
    return LinearTask(x=x, y=x @ corr.T, u=u, v=v, strengths=s)


def _check_task(t: object) -> LinearTask:
    if not isinstance(t, LinearTask):
        raise ValueError(f"expected an experiments.deep_linear.LinearTask (from task(...)), got {type(t).__name__}")
    return t


def init(kind: str, depth: int, width: int, data: LinearTask, key: Array, *, scale: float = 1.0) -> list[Array]:
    """The ``depth + 1`` weight matrices of a network on ``data`` (see the module docstring for ``kind``)."""
    if kind not in INITS:
        raise ValueError(f"unknown initialisation {kind!r}; choose one of {INITS}")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer (hidden layers), got {depth!r}")
    width = check_positive_int("width", width)
    key = check_key(key)
    data = _check_task(data)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    d, r = data.x.shape[1], len(data.strengths)
    dims = [d] + [width] * depth + [d]
    shapes = [(dims[i + 1], dims[i]) for i in range(depth + 1)]
    keys = jax.random.split(key, depth + 1)
    if kind == "gaussian":
        return [jax.random.normal(k, s) * (scale / math.sqrt(width)) for k, s in zip(keys, shapes, strict=True)]
    if kind == "orthogonal":
        return [scale * _semi_orthogonal(k, rows, cols) for k, (rows, cols) in zip(keys, shapes, strict=True)]
    if width < r and depth > 0:
        raise ValueError(f"decoupled initial conditions need width >= the task's {r} modes, got width {width}")
    a = scale ** (1.0 / (depth + 1))
    bases = [_semi_orthogonal(k, width, r) for k in keys[:depth]]  # each mode's hidden direction, per layer
    u_r, v_r = jnp.asarray(data.u[:, :r]), jnp.asarray(data.v[:, :r])
    ins = [v_r, *bases]  # the directions each layer reads from ...
    outs = [*bases, u_r]  # ... and writes to
    return [a * o @ i.T for o, i in zip(outs, ins, strict=True)]


def end_to_end(weights: list[Array]) -> Array:
    """``W_{depth+1} ... W_1``, ``(d, d)``."""
    return functools.reduce(lambda acc, w: w @ acc, weights[1:], weights[0])


def mode_strengths(weights: list[Array], data: LinearTask) -> Array:
    """``u_alpha = U_alpha^T W V_alpha`` for the task's modes, ``(r,)``."""
    r = len(data.strengths)
    w = end_to_end(weights)
    return jnp.einsum("ia,ij,ja->a", jnp.asarray(data.u[:, :r]), w, jnp.asarray(data.v[:, :r]))


def loss(weights: list[Array], x: Array, y: Array) -> Array:
    """``1/(2P) sum_mu ||y_mu - f(x_mu)||^2``."""
    return 0.5 * jnp.mean(jnp.sum((y - x @ end_to_end(weights).T) ** 2, axis=1))


@dataclass(frozen=True)
class Trajectory:
    """``steps`` ``(T,)`` (0, every, 2 every, ...), ``modes`` ``(T, r)`` mode strengths and ``loss`` ``(T,)`` after
    those steps; rows after training stopped are NaN. ``diverged``: the loss became non-finite or grew above 1e6
    times its start; ``reached``: the first recorded step at which every mode strength was at least ``stop_fraction``
    of its target (training stops there), or ``None``."""

    steps: np.ndarray
    modes: np.ndarray
    loss: np.ndarray
    diverged: bool
    reached: int | None = None


@functools.partial(jax.jit, static_argnames=("records", "every"))
def _run(weights: list[Array], x: Array, y: Array, u: Array, v: Array, lr: Array, stop: Array, records: int,
         every: int):
    grad = jax.grad(loss)
    start = loss(weights, x, y)

    def observe(ws):
        return jnp.einsum("ia,ij,ja->a", u, end_to_end(ws), v), loss(ws, x, y)

    def one(_, ws):
        return [w - lr * g for w, g in zip(ws, grad(ws, x, y), strict=True)]

    m0, l0 = observe(weights)
    modes = jnp.full((records + 1, *m0.shape), jnp.nan, m0.dtype).at[0].set(m0)
    losses = jnp.full((records + 1,), jnp.nan, l0.dtype).at[0].set(l0)

    def cond(state):
        i, _, modes, losses = state
        last = losses[i]
        return (i < records) & ~jnp.all(modes[i] >= stop) & jnp.isfinite(last) & (last <= 1e6 * start)

    def body(state):
        i, ws, modes, losses = state
        ws = jax.lax.fori_loop(0, every, one, ws)
        m, lo = observe(ws)
        return i + 1, ws, modes.at[i + 1].set(m), losses.at[i + 1].set(lo)

    last, _, modes, losses = jax.lax.while_loop(cond, body, (0, weights, modes, losses))
    return modes, losses, last


def train(weights: list[Array], data: LinearTask, *, learning_rate: float, steps: int, every: int = 1,
          stop_fraction: float | None = None) -> Trajectory:
    """Full-batch gradient descent for ``steps`` steps (a multiple of ``every``), recording every ``every``; with
    ``stop_fraction``, stops at the first record where every mode strength is at least that fraction of its
    target strength."""
    data = _check_task(data)
    lr = learning_rate
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {lr!r}")
    steps, every = check_positive_int("steps", steps), check_positive_int("every", every)
    if steps % every:
        raise ValueError(f"steps ({steps}) must be a multiple of every ({every})")
    frac = stop_fraction
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0 < frac < 1):
        raise ValueError(f"stop_fraction must be a number in (0, 1) or None, got {frac!r}")
    stop = np.full(len(data.strengths), np.inf) if frac is None else frac * data.strengths
    r = len(data.strengths)
    dtype = jnp.result_type(float)
    ws = [jnp.asarray(w, dtype) for w in weights]
    modes, losses, last = _run(ws, jnp.asarray(data.x, dtype), jnp.asarray(data.y, dtype),
                               jnp.asarray(data.u[:, :r], dtype), jnp.asarray(data.v[:, :r], dtype),
                               jnp.asarray(lr, dtype), jnp.asarray(stop, dtype), steps // every, every)
    losses, last = np.asarray(losses), int(last)
    diverged = not (np.isfinite(losses[last]) and losses[last] <= 1e6 * losses[0])
    reached = last * every if (not diverged and np.all(np.asarray(modes)[last] >= stop)) else None
    return Trajectory(steps=np.arange(steps // every + 1) * every, modes=np.asarray(modes), loss=losses,
                      diverged=diverged, reached=reached)
