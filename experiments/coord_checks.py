r"""Coordinate checks of any layer program: width and depth checks and the laziness diagnostic, with fitted exponents.

For checking *your own* network before a big run (notebooks/04_check_your_parameterization.ipynb). A network is a
layer program (``theory.serial`` of Dense, LayerNorm, ``Residual`` blocks, ..., ``theory.ResNet``,
``theory.Transformer``); to vary its depth, pass a function ``build(depth) -> Program``.

* :func:`coord_check`: train the network a few steps (``experiments.training.train``) at every width (and depth) for
  several seeds and record, per recorded layer and step, the RMS of its activations and of their change since
  initialisation (muP's coordinate check, TP V Sec. 7; TP VI for depth). Layers are also labelled by their
  ``role`` ("first", "middle", "last hidden", "output": the recorded layers ``0``, ``n // 2``, ``n - 2``, ``n - 1``
  of ``n``), which lines them up across depths.
* :func:`laziness_check`: the mean over the residual blocks of the distance of each trained block from its
  linearisation in its own parameters (``experiments.laziness``; CompleteP's measure, Dey et al. 2025) at every
  depth.
* :func:`exponents`: the power law ``value ~ C axis^p`` fitted to the seeds' means (weighted by their standard
  errors, the error scale re-estimated from the residuals; ``experiments.scaling.fit_power_law``) with a
  Student-t confidence interval, per group.

What transfer looks like: under a parameterization that transfers along an axis, every layer's change (and the
activations) have exponent ``p ~ 0`` along it, the confidence interval containing 0 and narrow against the
alternatives (SP with SGD along width: ``+1`` at the output; unscaled residual branches along depth: ``+1/2`` or
more). The laziness exponent tells the depth rules apart: ``p ~ -1/2`` at ``alpha = 1/2`` (blocks of two or more
layers turn lazy with depth), ``p ~ 0`` at ``alpha = 1`` (CompleteP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from experiments import laziness as diagnostic
from experiments import training
from experiments.networks import check_positive_int
from experiments.scaling import PowerLawFit, fit_power_law
from theory import parameterizations as pz
from theory.layers import Program, Residual

Builder = Callable[[int], Program]
ROLES = ("first", "middle", "last hidden", "output")


def roles(n_recorded: int) -> dict[int, str]:
    """The recorded layers that :data:`ROLES` name, ``{index: role}``, for a program with ``n_recorded`` recorded
    layers (when two roles fall on one layer, the later role wins)."""
    n = check_positive_int("n_recorded", n_recorded)
    return {i: role for role, i in zip(ROLES, (0, n // 2, max(n - 2, 0), n - 1), strict=True)}


def _programs(build: Program | Builder, depths: tuple[int, ...] | None) -> list[tuple[int, Program]]:
    if isinstance(build, Program):
        if depths is not None:
            raise ValueError("depths needs a function build(depth) -> program, not a program; pass e.g. "
                             "build=lambda depth: theory.serial(...) built with `depth` blocks")
        return [(int(getattr(build, "depth", -1)), build)]
    if not callable(build):
        raise ValueError(f"build must be a layer program or a function depth -> program, got {build!r}")
    if depths is None:
        raise ValueError("build is a function of the depth: pass depths=(...) (e.g. (2, 4, 8, 16))")
    depths = tuple(check_positive_int("depth", d) for d in depths)
    out = []
    for d in depths:
        net = build(d)
        if not isinstance(net, Program):
            raise ValueError(f"build({d}) returned {net!r}, not a layer program")
        out.append((d, net))
    return out


def _rule_name(rule: pz.DepthParameterization | None) -> str:
    return "none" if rule is None else rule.name


def _parameterization_name(parameterization: str | pz.AbcParameterization | None) -> str:
    if parameterization is None or isinstance(parameterization, str):
        return str(parameterization)
    return parameterization.name


def coord_check(build: Program | Builder, parameterization: str | pz.AbcParameterization | None = "mup", *,
                widths: tuple[int, ...] = (128,), depths: tuple[int, ...] | None = None, steps: int = 2,
                seeds: int = 2, data: training.Dataset | None = None, config: training.TrainConfig | None = None,
                depth_rule: pz.DepthParameterization | None = None, dtype: Any = None) -> pd.DataFrame:
    """Train ``steps`` steps at every width (and depth) for ``seeds`` seeds; per recorded layer and step the RMS of
    the activations and of their change since init on the probe batch (``TrainResult.frame``).

    Args:
        build: the program (to vary only the width) or ``build(depth) -> program`` (with ``depths``).
        parameterization: the abc-parameterization in width ("standard", "ntk", "mup", ...; ``theory.parameterize``).
        widths, depths: the grid; ``depths`` only with a builder.
        steps, seeds: training steps per run, initialisations per grid point.
        data: a ``training.Dataset`` (default ``training.teacher(64, 16)``).
        config: a ``training.TrainConfig`` (its ``steps`` is replaced by ``steps``; default SGD at 0.1).
        depth_rule: a depth rule (``theory.parameterizations.depth_mup()``, ``complete_p()``, ``depth_family``).
        dtype: the training dtype (default JAX's float: float64 with x64 on).
    Returns:
        A long DataFrame: ``parameterization``, ``rule``, ``width``, ``depth`` (-1 for a program without one),
        ``seed``, ``layer``, ``layer_name``, ``role`` (:data:`ROLES` or ""), ``group``, ``step``, ``rms``,
        ``delta_rms``, ``loss``, ``diverged_step`` (-1: did not diverge).
    """
    data = training.teacher(64, 16) if data is None else data
    steps = check_positive_int("steps", steps)
    config = training.TrainConfig(steps=steps) if config is None else dataclasses.replace(config, steps=steps)
    seeds = check_positive_int("seeds", seeds)
    widths = tuple(check_positive_int("width", w) for w in widths)
    if not widths:
        raise ValueError("widths must name at least one width")
    frames = []
    for depth, net in _programs(build, depths):
        for width in widths:
            for seed in range(seeds):
                result = training.train(net, parameterization, data, width, config=config, seed=seed,
                                        depth_parameterization=depth_rule, dtype=dtype)
                frame = result.frame(parameterization=_parameterization_name(parameterization),
                                     rule=_rule_name(depth_rule), width=width, depth=depth, seed=seed)
                role = roles(len(result.layer_names))
                frame.insert(frame.columns.get_loc("layer_name") + 1, "role",
                             frame.layer.map(lambda i, role=role: role.get(i, "")))
                frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _residual_blocks(net: Program) -> list[int]:
    """Indices, among the top-level layers with parameters (``experiments.networks.blocks``), of the residual
    blocks."""
    with_params = [layer for layer in net.layers if isinstance(layer, Residual) or layer.weight_layer]
    return [i for i, layer in enumerate(with_params) if isinstance(layer, Residual)]


def laziness_check(build: Builder, parameterization: str | pz.AbcParameterization | None = "mup", *,
                   depths: tuple[int, ...], width: int = 128, steps: tuple[int, ...] = (4,), seeds: int = 2,
                   data: training.Dataset | None = None, config: training.TrainConfig | None = None,
                   depth_rule: pz.DepthParameterization | None = None, dtype: Any = None) -> pd.DataFrame:
    """The laziness diagnostic (``experiments.laziness.laziness``) at every depth, averaged over the residual blocks.

    Args as in :func:`coord_check` (``config`` default: Adam at 0.01, under which the depth rules' learning rates
    are CompleteP's); ``steps`` are the training step counts at which ``d`` is measured.
    Returns:
        One row per (depth, seed, step): ``parameterization``, ``rule``, ``width``, ``depth``, ``seed``, ``step``,
        ``distance`` (mean ``d_l`` over the residual blocks), ``blocks`` (how many), ``diverged``.
    Raises:
        ValueError: a program without residual blocks (``d = 0`` for layers linear in their parameters: nothing
        to measure), and the errors of ``laziness``.
    """
    data = training.teacher(64, 16) if data is None else data
    config = training.TrainConfig(optimizer="adam", learning_rate=0.01) if config is None else config
    seeds = check_positive_int("seeds", seeds)
    width = check_positive_int("width", width)
    rows = []
    for depth, net in _programs(build, tuple(depths)):
        inside = _residual_blocks(net)
        if not inside:
            raise ValueError(f"build({depth}) has no top-level Residual blocks: the laziness diagnostic measures "
                             "residual blocks (a Dense is its own linearisation)")
        for seed in range(seeds):
            df = diagnostic.laziness(net, parameterization, data, width, steps=tuple(steps), config=config,
                                     depth_parameterization=depth_rule, seed=seed, probe_size=len(data[0]),
                                     dtype=dtype)
            for step, part in df.groupby("step"):
                d = part.set_index("layer").distance.loc[inside]
                rows.append({"parameterization": _parameterization_name(parameterization),
                             "rule": _rule_name(depth_rule), "width": width, "depth": depth, "seed": seed,
                             "step": int(step), "distance": float(np.nanmean(d)), "blocks": len(inside),
                             "diverged": bool(part.diverged.any())})
    return pd.DataFrame(rows)


def fit_seed_means(part: pd.DataFrame, axis: str, value: str, confidence: float = 0.95) -> PowerLawFit | None:
    """``mean ~ C axis^p``: ``experiments.scaling.fit_power_law`` of the seed means of ``part[value]`` per value of
    ``part[axis]`` (positive means only), weighted by their standard errors with the scale re-estimated from the
    residuals (Student-t interval at ``confidence``); unweighted where a point has one seed or zero spread. None with
    fewer than 3 points."""
    stats = part.groupby(axis)[value].agg(["mean", "std", "count"])
    stats = stats[stats["mean"] > 0]
    if len(stats) < 3:
        return None
    err = (stats["std"] / np.sqrt(stats["count"])).to_numpy()
    use = bool(np.all(stats["count"] > 1) and np.all(err > 0))
    return fit_power_law(stats.index.to_numpy(float), stats["mean"].to_numpy(), err if use else None,
                         absolute_sigma=False, confidence=confidence)


def exponents(df: pd.DataFrame, axis: str, value: str = "delta_rms",
              by: tuple[str, ...] = ("parameterization", "rule", "role", "step"),
              confidence: float = 0.95) -> pd.DataFrame:
    """Fitted exponent ``p`` of ``value ~ C axis^p`` per group of ``by``, with its standard error and confidence
    interval.

    Per ``axis`` value, the mean over seeds and its standard error; ``experiments.scaling.fit_power_law`` weighted
    by them with the scale re-estimated from the residuals (``absolute_sigma=False``: curvature widens the
    interval; unweighted with one seed), Student-t interval at ``confidence``. Rows whose ``value`` is not finite
    and positive (step 0's zero change, diverged runs) and, when ``role`` is grouped on, layers without a role are
    left out; a group with fewer than 3 ``axis`` values is left out.

    Returns:
        One row per group: the ``by`` columns, ``slope``, ``slope_se``, ``ci_low``, ``ci_high``, ``n_points``.
    Raises:
        ValueError: a missing column, or no group with 3 ``axis`` values.
    """
    missing = [c for c in (axis, value, *by) if c not in df.columns]
    if missing:
        raise ValueError(f"exponents: the frame has no column(s) {missing}; it has {list(df.columns)}")
    ok = df[np.isfinite(df[value].astype(float)) & (df[value] > 0)]
    if "diverged_step" in ok.columns and "step" in ok.columns:
        ok = ok[(ok.diverged_step < 0) | (ok.step < ok.diverged_step)]
    if "role" in by:
        ok = ok[ok.role != ""]
    rows = []
    for key, part in ok.groupby(list(by), sort=False):
        fit = fit_seed_means(part, axis, value, confidence)
        if fit is None:
            continue
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                     "slope": fit.exponent, "slope_se": fit.exponent_stderr, "ci_low": fit.ci_low,
                     "ci_high": fit.ci_high, "n_points": fit.n_points})
    if not rows:
        raise ValueError(f"exponents: no group of {list(by)} has 3 values of {axis!r} with a finite, positive "
                         f"{value!r}; run at least 3 {axis}s")
    return pd.DataFrame(rows, columns=[*by, "slope", "slope_se", "ci_low", "ci_high", "n_points"])


__all__ = ["ROLES", "coord_check", "exponents", "laziness_check", "roles"]
