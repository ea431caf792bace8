r"""Learning-rate sweeps and where their optimum lies: the machinery of the ``lr-transfer`` and ``ntk-regime`` checks.

* :func:`final_losses`: train one network (``experiments.training.train``) at every learning rate of a grid and
  return the training loss on the whole data set after the budget, ``inf`` for a run that diverged. The learning
  rate is a traced argument of the jitted training loop, so the grid costs one compilation per network shape.
* :func:`optimum`: the optimal learning rate of one loss curve, as the vertex of the parabola in
  ``(log2 eta, log loss)`` through the grid minimum and its two neighbours (Taylor: near a smooth minimum the curve
  is quadratic in ``log eta``); :func:`optimum_over_seeds` adds its standard error by a bootstrap over seeds
  (resample the seeds, average their curves, refit): the spread of the argmin that another draw of
  initialisations would give.

The tangent kernel of a trained network is ``theory.kernels(result.network, x).ntk`` (infinite width) and
``experiments.networks.empirical_ntk(result.network, result.params, x)`` (the finite network's, weighted by the
learning-rate factors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from experiments import training
from experiments.scaling import PowerLawFit, fit_power_law
from theory import parameterizations as pz
from theory.architectures import Architecture

Array = jax.Array


def final_losses(arch: Architecture, parameterization: str | pz.AbcParameterization | None,
                 data: training.Dataset, width: int, config: training.TrainConfig,
                 learning_rates: np.ndarray | tuple[float, ...], *, seed: int = 0,
                 depth_parameterization: pz.DepthParameterization | None = None) -> np.ndarray:
    """Training loss on all of ``data`` after ``config.steps`` steps, for each learning rate, ``(len(lrs),)``.

    The loss is ``config.loss`` evaluated on every example with the final parameters (not the probe batch's),
    so that minibatch noise in the measurement does not move the optimum. A run that diverged
    (``TrainResult.diverged_step``), or whose final loss is not finite, scores ``inf``. The same ``seed`` (same
    initialisation and minibatches) is used at every learning rate: the curve's noise is common to the grid.
    """
    lrs = np.asarray(learning_rates, dtype=float)
    if lrs.ndim != 1 or lrs.size < 1 or not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"learning_rates must be a non-empty 1-d array of positive numbers, got {learning_rates!r}")
    loss_of = _loss(config.loss)
    out = np.empty(lrs.size)
    for i, lr in enumerate(lrs):
        result = training.train(arch, parameterization, data, width, config=replace(config, learning_rate=float(lr)),
                                seed=seed, depth_parameterization=depth_parameterization)
        if result.diverged_step is not None:
            out[i] = np.inf
            continue
        params = jax.tree.map(jnp.asarray, result.params)
        x = jnp.asarray(data.x, params[0].W.dtype)
        value = float(loss_of(training.forward(result.scales, params, x)[0], jnp.asarray(data.y)))
        out[i] = value if math.isfinite(value) else np.inf
    return out


def _loss(kind: str):
    if kind == "mse":
        return lambda f, y: 0.5 * jnp.mean(jnp.sum((f - y.astype(f.dtype)) ** 2, axis=-1))
    return lambda f, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(f, y.astype(jnp.int32)))


@dataclass(frozen=True)
class Optimum:
    """The optimum of a loss curve: ``log2_lr`` (vertex of the fit, or the grid argmin), its bootstrap standard
    error ``log2_lr_se`` (NaN from one curve), the ``loss`` there, and ``on_edge`` (the grid argmin is the first or
    last finite point: the true optimum may lie outside the grid)."""

    log2_lr: float
    log2_lr_se: float
    loss: float
    on_edge: bool

    @property
    def learning_rate(self) -> float:
        return 2.0**self.log2_lr


def optimum(log2_lr: np.ndarray, loss: np.ndarray, *, half_window: int = 1) -> Optimum:
    r"""Optimal ``log2 eta`` of one loss curve: vertex of the least-squares parabola in ``(log2 eta, log loss)``.

    The fit uses the finite points among the grid argmin ``i*`` and its ``half_window`` neighbours on each side
    (at least 3 points; with the default 1, the classic three-point parabolic interpolation, exact for a curve
    that is quadratic near its minimum and local enough for a V-shaped one). The vertex ``-b / (2a)`` of
    ``log loss ~ a u^2 + b u + c`` (``u = log2 eta``) is kept if the parabola is convex (``a > 0``) and clipped
    to the window's range; otherwise (or with fewer than 3 points) the argmin itself is returned. Diverged points
    (``inf``) are never fitted, but they bound the window.
    """
    u, loss = np.asarray(log2_lr, float), np.asarray(loss, float)
    if u.ndim != 1 or u.shape != loss.shape or u.size < 1:
        raise ValueError(f"log2_lr and loss must be 1-d of one length, got {u.shape} and {loss.shape}")
    if np.any(np.diff(u) <= 0):
        raise ValueError("log2_lr must be strictly increasing")
    finite = np.isfinite(loss) & (loss > 0)
    if not finite.any():
        return Optimum(math.nan, math.nan, math.inf, True)
    idx = np.flatnonzero(finite)
    i = int(idx[np.argmin(loss[idx])])
    on_edge = i in (idx[0], idx[-1])
    window = [j for j in range(i - half_window, i + half_window + 1) if 0 <= j < u.size and finite[j]]
    best = Optimum(float(u[i]), math.nan, float(loss[i]), bool(on_edge))
    if len(window) < 3:
        return best
    a, b, c = np.polyfit(u[window], np.log(loss[window]), 2)
    if not a > 0:
        return best
    vertex = float(np.clip(-b / (2 * a), u[window].min(), u[window].max()))
    return Optimum(vertex, math.nan, float(np.exp(c - b * b / (4 * a))), bool(on_edge))


def optimum_over_seeds(log2_lr: np.ndarray, losses: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0,
                       half_window: int = 1) -> Optimum:
    r"""Optimum of the seed-averaged curve, with a bootstrap standard error over seeds.

    ``losses`` is ``(seeds, n_lr)``. The point estimate is :func:`optimum` of the mean curve (a learning rate at
    which any seed diverged has mean ``inf``: it is not safe). The standard error is the standard deviation of
    the optimum over ``n_bootstrap`` resamples of the seeds with replacement (Efron & Tibshirani 1993, ch. 6),
    each refitted the same way; it is NaN with one seed. Resamples whose curve is all ``inf`` are dropped.
    """
    losses = np.asarray(losses, float)
    if losses.ndim != 2 or losses.shape[1] != np.asarray(log2_lr).size:
        raise ValueError(f"losses must be (seeds, n_lr) with n_lr = {np.asarray(log2_lr).size}, got {losses.shape}")
    point = optimum(log2_lr, losses.mean(axis=0), half_window=half_window)
    n_seeds = losses.shape[0]
    if n_seeds < 2:
        return point
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_seeds, size=(n_bootstrap, n_seeds))
    boot = np.array([optimum(log2_lr, losses[d].mean(axis=0), half_window=half_window).log2_lr for d in draws])
    boot = boot[np.isfinite(boot)]
    se = float(np.std(boot, ddof=1)) if boot.size > 1 else math.nan
    return replace(point, log2_lr_se=se)


def drift_fits(opt: pd.DataFrame, grid_step: float) -> dict[tuple[str, str], PowerLawFit]:
    """Per ``(sweep, arm)`` of ``opt`` (columns ``sweep``, ``arm``, ``size``, ``log2_lr_opt``, ``log2_lr_se``), the
    power law ``eta* = C size^p`` fitted to the finite optima (``experiments.scaling.fit_power_law``, 95% interval):
    weighted by the bootstrap SEs floored at a tenth of the grid step (where all resamples agree), scale from the
    residuals; arms with fewer than three sizes are left out."""
    fits = {}
    for (sweep, arm), part in opt.groupby(["sweep", "arm"], sort=False):
        part = part[np.isfinite(part["log2_lr_opt"])]
        if part["size"].nunique() < 3:
            continue
        se = np.maximum(np.nan_to_num(part["log2_lr_se"].to_numpy(), nan=grid_step), 0.1 * grid_step)
        lr = 2.0 ** part["log2_lr_opt"].to_numpy()
        fits[(sweep, arm)] = fit_power_law(part["size"].to_numpy(float), lr, lr * math.log(2) * se,
                                           absolute_sigma=False)
    return fits
