r"""Finite mean-field (muP) networks of richness ``gamma`` trained by full-batch gradient descent; the grokking task.

The network of a layer program ``arch`` in neural-tangents' NTK parameterization (``experiments.networks``: output
``F(theta, x) = w_std / sqrt(n) w . phi(h)``), read out in the mean-field / muP parameterization with richness
``gamma`` (Bordelon & Pehlevan 2022, Eq. 2; the paper's output scale is ``alpha = 1 / gamma``):

    f(x) = (F(theta, x) - F(theta_0, x)) / (gamma sqrt(n))            (centred, the default; ``center=False`` drops F_0)
    theta <- theta - eta gamma^2 n * lr_p * dL/dtheta,    L = 1/P sum_mu 1/2 (f(x_mu) - y_mu)^2,

``lr_p`` the learning-rate factor of each parameter's ``WeightScaling`` (1 in the NTK parameterization; 0 for a
frozen readout). Function space moves as ``df/dt = -eta Theta (f - y) / P`` with ``Theta`` the NTK of ``arch`` (per
unit ``eta``), independent of ``gamma``; hidden features move by ``O(gamma)``. ``gamma -> 0`` at fixed width is the
lazy (kernel) limit, ``n -> inf`` at fixed ``gamma`` the DMFT limit. Centring (Chizat et al. 2019; Kumar et al. 2023)
removes the ``O(1 / (gamma sqrt n))`` initial output, which the infinite-width network does not have.

:func:`polynomial_task` is Kumar, Bordelon, Gershman & Pehlevan (2023)'s polynomial regression: ``beta ~ N(0, I_D)``,
``x ~ N(0, I_D)`` (the paper's inputs times ``sqrt(D)``, so features have unit variance as in the rest of deeplimits),
``y = (beta . x)^2 / (2 D)`` (the paper's ``(beta . x_paper)^2 / 2``).

Derivations: docs/figures/grokking.md.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import networks, training
from experiments.networks import check_positive_int
from theory import grokking
from theory.layers import Program

Array = jax.Array
READOUTS = ("trained", "frozen", "ones")


class Task(NamedTuple):
    """Train and test inputs ``(P, D)``, ``(M, D)``, targets ``(P,)``, ``(M,)`` and the teacher direction ``beta``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    beta: np.ndarray


def polynomial_task(dimension: int, n_train: int, n_test: int, seed: int = 0) -> Task:
    """Kumar et al. (2023), Sec. 5: ``y = (beta . x)^2 / (2 D)``, ``beta ~ N(0, I_D)``, ``x ~ N(0, I_D)``
    (module docstring). Deterministic in ``seed`` (NumPy's PCG64: ``beta``, then the training and test inputs)."""
    dimension = check_positive_int("dimension", dimension)
    n_train = check_positive_int("n_train", n_train)
    n_test = check_positive_int("n_test", n_test)
    rng = np.random.default_rng(seed)
    beta = rng.standard_normal(dimension)
    x_train = rng.standard_normal((n_train, dimension))
    x_test = rng.standard_normal((n_test, dimension))

    def target(x: np.ndarray) -> np.ndarray:
        return (x @ beta) ** 2 / (2 * dimension)

    return Task(x_train, target(x_train), x_test, target(x_test), beta)


@dataclass(frozen=True)
class Trajectory:
    """What :func:`train` recorded at ``steps`` ``(R,)`` (``time = eta * steps``): the losses ``train_loss``,
    ``test_loss`` ``(R,)``; with ``kernels=True`` the tangent kernel ``ntk`` ``(R, P, P)`` on the training inputs (per
    unit ``eta``: the kernel of ``df/dt = -eta Theta (f - y) / P``) and the last hidden layer's feature kernel
    ``features`` ``(R, P, P)`` (``w_std^2 / n phi(h) . phi(h')``), else ``None``. ``diverged``: a loss became
    non-finite (the records after it are NaN). ``dtype``: the float type the network was trained in."""

    steps: np.ndarray
    time: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    ntk: np.ndarray | None
    features: np.ndarray | None
    diverged: bool
    dtype: str


def _check_steps(record_steps: Any) -> np.ndarray:
    steps = np.asarray(record_steps)
    if (steps.ndim != 1 or steps.size < 1 or not np.issubdtype(steps.dtype, np.integer) or steps[0] != 0
            or np.any(np.diff(steps) <= 0)):
        raise ValueError(f"record_steps must be strictly increasing integers starting at 0, got {record_steps!r}")
    return steps.astype(np.int64)


def log_steps(steps: int, records: int) -> np.ndarray:
    """About ``records`` step counts from 0 to ``steps``, spaced evenly in ``log(1 + step)`` (distinct integers)."""
    steps, records = check_positive_int("steps", steps), check_positive_int("records", records)
    grid = np.unique(np.round(np.expm1(np.linspace(0.0, math.log1p(steps), records))).astype(np.int64))
    return grid


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def train(arch: Program, task: Task, *, width: int, gamma: float, learning_rate: float, record_steps: Any,
          seed: int = 0, readout: str = "trained", center: bool = True, kernels: bool = False,
          dtype: Any = None) -> Trajectory:
    """Train the width-``width`` mean-field network of ``arch`` with richness ``gamma`` on ``task`` (module
    docstring); record the losses (and kernels) at ``record_steps`` (increasing, from 0).

    ``readout``: "trained" (Gaussian, trained), "frozen" (Gaussian, not trained) or "ones" (all ones, not trained:
    Kumar et al.'s network ``f = alpha / n sum_i phi(w_i . x)``). Init from ``fold_in(fold_in(key(seed), 0), width)``
    (``experiments.training``'s convention). The lazy limit's tangent kernel is ``theory.kernels(arch)`` (trained
    readout) or ``theory.kernels(theory.grokking.freeze_readout(arch))``.
    """
    if not isinstance(arch, Program):
        raise ValueError(f"arch must be a layer program (theory.MLP(...), theory.serial(...)), got {arch!r}")
    if not isinstance(task, Task):
        raise ValueError(f"task must be a feature_learning.Task (e.g. polynomial_task(...)), got {type(task).__name__}")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    width = check_positive_int("width", width)
    gamma, eta = _check_real("gamma", gamma), _check_real("learning_rate", learning_rate)
    steps = _check_steps(record_steps)
    dtype = dtype or jnp.result_type(float)
    x, xt = jnp.asarray(task.x_train, dtype), jnp.asarray(task.x_test, dtype)
    y, yt = jnp.asarray(task.y_train, dtype).reshape(x.shape[0]), jnp.asarray(task.y_test, dtype).reshape(xt.shape[0])
    trained = arch if readout == "trained" else grokking.freeze_readout(arch)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), width)
    params = networks.init(trained, width, key, features=x.shape[1], dtype=dtype)
    if readout == "ones":
        readout_mask = networks.weight_tree(trained, params, lambda layer, group: (float(group == "output"), 0.0))
        params = jax.tree.map(lambda p, m: jnp.where(m > 0, jnp.ones_like(p), p), params, readout_mask)
    factors = training.learning_rates(trained, params)
    lengths = jnp.asarray(np.diff(steps), jnp.int32)
    out = _run(trained, bool(center), bool(kernels), params, factors, x, y, xt, yt,
               jnp.asarray(1.0 / (gamma * math.sqrt(width)), dtype), jnp.asarray(eta * gamma**2 * width, dtype),
               lengths)
    train_loss, test_loss = np.asarray(out[0]), np.asarray(out[1])
    ntk = np.asarray(out[2]) if kernels else None
    features = np.asarray(out[3]) if kernels else None
    diverged = not (np.all(np.isfinite(train_loss)) and np.all(np.isfinite(test_loss)))
    return Trajectory(steps, eta * steps.astype(float), train_loss, test_loss, ntk, features, diverged,
                      str(np.dtype(dtype)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(net: Program, center: bool, kernels: bool, params: Any, factors: Any, x: Array, y: Array, xt: Array,
         yt: Array, scale: Array, lr: Array, lengths: Array) -> tuple:
    def outputs(p: Any, inputs: Array) -> Array:
        return networks.forward(net, p, inputs)[0][:, 0]

    f0, f0t = (outputs(params, x), outputs(params, xt)) if center else (jnp.zeros_like(y), jnp.zeros_like(yt))

    def loss(p: Any) -> Array:
        return 0.5 * jnp.mean((scale * (outputs(p, x) - f0) - y) ** 2)

    def record(p: Any) -> tuple:
        train_loss = 0.5 * jnp.mean((scale * (outputs(p, x) - f0) - y) ** 2)
        test_loss = 0.5 * jnp.mean((scale * (outputs(p, xt) - f0t) - yt) ** 2)
        if not kernels:
            return train_loss, test_loss, jnp.zeros(()), jnp.zeros(())
        ntk = networks.empirical_ntk(net, p, x)[0]
        features = networks.readout_kernel(net, p, x)
        return train_loss, test_loss, ntk, features

    grad = jax.grad(loss)

    def step(_: Any, p: Any) -> Any:
        g = grad(p)
        return jax.tree.map(lambda w, gw, c: w - lr * c * gw, p, g, factors)

    def segment(p: Any, n: Array) -> tuple:
        p = jax.lax.fori_loop(0, n, step, p)
        return p, record(p)

    _, recs = jax.lax.scan(segment, params, lengths)
    first = record(params)
    return tuple(jnp.concatenate([a[None], b]) for a, b in zip(first, recs, strict=True))


__all__ = ["READOUTS", "Task", "Trajectory", "log_steps", "polynomial_task", "train"]
