r"""Grokking as the lazy-to-rich transition (Kumar, Bordelon, Gershman & Pehlevan 2023, arXiv 2310.06110).

Pure functions on arrays that the ``grokking`` and ``dmft-feature-learning`` experiments share:

* :func:`quadratic_activation`: the paper's ``phi(z) = z + epsilon z^2 / 2``; ``epsilon`` sets how well the initial
  tangent kernel is aligned with a quadratic target (``E[phi'(u) phi'(v)] = 1 + epsilon^2 E[uv]``);
* :func:`freeze_readout`: the program whose readout is not trained (the paper trains the first layer only), so that
  ``theory.kernels`` gives the tangent kernel of the network as trained;
* :func:`lazy_losses`: the train and test loss of the *lazy* (kernel-regime) network, the linear model of the
  infinite-width NTK started from ``f_0 = 0`` (a centred network, ``f - f_0``), under full-batch gradient descent
  on ``L = 1/P sum_mu 1/2 (f_mu - y_mu)^2`` at learning rate ``eta`` (``theory.training_dynamics.linear_outputs``):
  the plateau a network with a small richness sits on before it groks;
* :func:`crossing_time` / :func:`grokking_time`: the first time after which a loss curve stays below a level,
  interpolated between recorded times; the grokking time is that of the test loss against ``factor`` times the
  lazy test loss at the same time (default 1/2: the network has left the kernel plateau);
* :func:`kernel_alignment`: the centred kernel-target alignment ``<H K H, H y y^T H> / (|H K H|_F |H y|^2)``
  (Cortes, Mohri & Rostamizadeh 2012), ``H = I - 1 1^T / P``.

``lazy_losses`` computes in the kernels' dtype (float64 with ``jax_enable_x64``); the curve functions are host-side
NumPy float64 functions of recorded arrays (not traceable under ``jax.jit``).

Derivations and the experiment's setting: docs/figures/grokking.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from theory import training_dynamics
from theory.activations import Activation
from theory.layers import Dense, Program, WeightScaling, serial

Array = np.ndarray


@functools.cache
def _quadratic(epsilon: float) -> Activation:
    def quadratic(z):
        return z + 0.5 * epsilon * z * z

    return Activation(quadratic, name="quadratic", params=(epsilon,))


def quadratic_activation(epsilon: float) -> Activation:
    """``phi(z) = z + epsilon z^2 / 2`` (Kumar et al. 2023, Sec. 5), one cached object per ``epsilon`` (so jitted
    recursions compile once). Its Gaussian duals: ``E[phi(u) phi(v)] = q12 + epsilon^2 (q11 q22 + 2 q12^2) / 4``,
    ``E[phi'(u) phi'(v)] = 1 + epsilon^2 q12`` (``theory.kernels`` computes them by its automatic Hermite series)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be a finite real number, got {epsilon!r}")
    return _quadratic(float(epsilon))


def freeze_readout(net: Program) -> Program:
    """``net`` with its readout (the last Dense) not trained: learning-rate factors 0 on its weights and bias, so
    ``theory.kernels(freeze_readout(net), x).ntk`` drops the readout's term ``E[phi phi]`` from the NTK. The forward
    map, the initialisation and the NNGP are unchanged."""
    if not isinstance(net, Program) or not net.layers or not isinstance(net.layers[-1], Dense):
        raise ValueError(f"freeze_readout needs a layer program ending in a Dense readout, got {net!r}")
    last = net.layers[-1]
    s = last.weight_scaling
    frozen = WeightScaling(s.w_multiplier, s.w_init, 0.0, s.b_multiplier, s.b_init, 0.0, s.fan_in, s.width, s.group)
    return serial(*net.layers[:-1], dataclasses.replace(last, scaling=frozen))


def _curve(name: str, values: object) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1 or a.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    return a


def crossing_time(t: Sequence[float] | np.ndarray, curve: Sequence[float] | np.ndarray,
                  level: float | Sequence[float] | np.ndarray) -> float:
    r"""The first time after which ``curve`` stays strictly below ``level``: ``inf`` if its last value is not.

    ``t`` are the recorded times (increasing, ``>= 0``), ``curve`` the values there (positive: losses), ``level`` a
    positive number or one per time (a reference curve). Between the last record at or above the level and the next
    one, the crossing is interpolated linearly in ``(log t, log curve - log level)`` (linearly in ``t`` when the
    interval starts at ``t = 0``); a curve below the level from the first record on gives ``t[0]``. A curve that dips
    below and comes back counts from its last crossing. Returns a float (``inf``: never crossed for good).
    """
    t, curve = _curve("t", t), _curve("curve", curve)
    if t.shape != curve.shape:
        raise ValueError(f"t {t.shape} and curve {curve.shape} must have one value per recorded time")
    level = np.broadcast_to(np.asarray(level, dtype=float), t.shape) if np.ndim(level) == 0 else _curve("level", level)
    if level.shape != t.shape:
        raise ValueError(f"level must be a number or one value per recorded time {t.shape}, got {level.shape}")
    if not (np.all(np.isfinite(t)) and t[0] >= 0 and np.all(np.diff(t) > 0)):
        raise ValueError("t must be finite, >= 0 and strictly increasing")
    if not (np.all(level > 0) and np.all(np.isfinite(level))):
        raise ValueError("level must be finite and > 0 (a loss level)")
    if np.any(np.isnan(curve)) or np.any(curve < 0):
        raise ValueError("curve must be >= 0 without NaN (a loss curve); a diverged run has no crossing time")
    below = curve < level
    if not below[-1]:
        return math.inf
    above = np.flatnonzero(~below)
    if above.size == 0:
        return float(t[0])
    i = int(above[-1])  # last record at or above the level; i + 1 is below, and so is everything after
    d0 = math.log(curve[i] / level[i])  # >= 0: curve[i] >= level[i] > 0
    d1 = math.log(curve[i + 1] / level[i + 1]) if curve[i + 1] > 0 else -math.inf  # < 0
    frac = d0 / (d0 - d1) if math.isfinite(d1) else 0.0  # in [0, 1)
    if t[i] == 0 or frac == 0:
        return float(t[i] + frac * (t[i + 1] - t[i]))
    return float(math.exp(math.log(t[i]) + frac * (math.log(t[i + 1]) - math.log(t[i]))))


def grokking_time(t: Sequence[float] | np.ndarray, test_loss: Sequence[float] | np.ndarray,
                  lazy_test_loss: Sequence[float] | np.ndarray, factor: float = 0.5) -> float:
    """The first time after which the test loss stays below ``factor`` times the lazy network's test loss at the same
    time (:func:`crossing_time` against ``factor * lazy_test_loss``; ``factor`` in (0, 1]). ``inf``: not within the
    recorded times (in the lazy limit, never)."""
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor <= 1:
        raise ValueError(f"factor must be a number in (0, 1], got {factor!r}")
    return crossing_time(t, test_loss, factor * _curve("lazy_test_loss", lazy_test_loss))


def kernel_alignment(k: Array, y: Array) -> float:
    r"""Centred kernel-target alignment ``<H K H, H Y Y^T H>_F / (|H K H|_F |H Y|_F^2)`` in [-1, 1] (Cortes et al.
    2012), ``H = I - 1 1^T / P``; ``k`` is ``(P, P)``, ``y`` is ``(P,)`` or ``(P, n_out)``. 1 means the kernel's
    centred part is ``c Y Y^T``."""
    k, y = np.asarray(k, dtype=float), np.asarray(y, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    if k.ndim != 2 or k.shape[0] != k.shape[1] or y.ndim != 2 or y.shape[0] != k.shape[0]:
        raise ValueError(f"k must be (P, P) and y (P,) or (P, n_out) with the same P, got {k.shape} and {y.shape}")
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(y))):
        raise ValueError("k and y must be finite")
    kc = k - k.mean(axis=0, keepdims=True)
    kc = kc - kc.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=0, keepdims=True)
    norm_k, norm_y = np.linalg.norm(kc), float(np.sum(yc**2))
    if norm_k == 0 or norm_y == 0:
        raise ValueError("the alignment is undefined for a constant kernel or constant targets (zero after centring)")
    return float(np.sum(yc * (kc @ yc)) / (norm_k * norm_y))


def lazy_losses(ntk_train: Array, ntk_test_train: Array, y_train: Array, y_test: Array, learning_rate: float,
                steps: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Train and test loss of the lazy network at each of ``steps``: ``(train (S,), test (S,))``.

    The linear model of the NTK ``Theta`` (``ntk_train`` ``(P, P)``, ``ntk_test_train`` ``(M, P)``) started from
    ``f_0 = 0`` (a centred network), trained by gradient descent on ``1/P sum 1/2 (f - y)^2`` at ``learning_rate``
    (``theory.training_dynamics.linear_outputs``: ``f_t(X) = Y - (I - eta Theta / P)^t Y``, and
    ``f_t(x) = Theta(x, X) Theta^-1 (I - (I - eta Theta / P)^t) Y``; Lee et al. 2019). Losses are
    ``1/P' sum 1/2 (f - y)^2`` on each set. Requires ``eta lambda_max / P < 2`` (else the linear model diverges).
    """
    ntk = jnp.asarray(ntk_train)
    y_train = np.asarray(y_train, dtype=float).reshape(ntk.shape[0], -1)
    y_test = np.asarray(y_test, dtype=float)
    y_test = y_test.reshape(y_test.shape[0], -1)
    steps = np.asarray(steps)
    if steps.ndim != 1 or steps.size < 1 or not np.issubdtype(steps.dtype, np.integer) or np.any(steps < 0):
        raise ValueError(f"steps must be a 1-D array of non-negative integers, got {steps!r}")
    top = float(jnp.linalg.eigvalsh((ntk + ntk.T) / 2)[-1]) * learning_rate / ntk.shape[0]
    if top >= 2:
        raise ValueError(f"learning_rate {learning_rate} gives eta lambda_max / P = {top:.3g} >= 2: gradient descent "
                         "on the linear model diverges; lower it")
    zeros, zeros_test = jnp.zeros_like(jnp.asarray(y_train)), jnp.zeros((y_test.shape[0], y_train.shape[1]))
    train, test = [], []
    for s in steps:
        f_train, f_test = training_dynamics.linear_outputs(ntk, zeros, y_train, learning_rate, int(s),
                                                           ntk_test_train=jnp.asarray(ntk_test_train),
                                                           f0_test=zeros_test)
        train.append(0.5 * float(jnp.mean(jnp.sum((f_train - y_train) ** 2, axis=1))))
        test.append(0.5 * float(jnp.mean(jnp.sum((f_test - y_test) ** 2, axis=1))))
    return np.array(train), np.array(test)


__all__ = ["crossing_time", "freeze_readout", "grokking_time", "kernel_alignment", "lazy_losses",
           "quadratic_activation"]
