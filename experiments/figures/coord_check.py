r"""``coord-check-width`` and ``coord-check-depth``: muP's coordinate check (TP V, Sec. 7) across width, and its
Depth-muP analogue (TP VI) across depth.

* ``coord-check-width``: a ReLU MLP (``w_std = sqrt 2``) trained by full-batch SGD with one width-independent learning
  rate on the teacher task, under SP and muP, widths ``2^6 .. 2^12``; per layer and step the RMS of the
  pre-activations and of their change since init against width. Predicted
  (``AbcParameterization.first_step_exponents``): SP ``n^-1/2, n^+1/2, n^+1`` (first, hidden, output; unstable), muP
  ``n^0``.
* ``coord-check-depth``: a ReLU ResNet with muP in width and ``L = 2^2 .. 2^8`` blocks
  ``h_l = h_{l-1} + L^-alpha W_l relu(h_{l-1})``, SGD with a depth-independent learning rate, only the blocks trained.
  Arms "sp" (``alpha = 0``), "1/L" (``alpha = 1``: the change falls like ``L^-1``), "depth-mup" (``alpha = gamma =
  1/2``: flat in ``L``); linear arms against ``theory.linear_resnet_training``'s exact infinite-width trajectory.

Runs that diverge keep their measurements up to the divergence, which the figures mark.

Derivation and notes: docs/figures/coord_check.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import theory
from experiments import training
from experiments.figures import style
from experiments.registry import Experiment, grid
from theory import linear_resnet_training
from theory import parameterizations as pz

LABELS = {"standard": "SP", "mup": r"$\mu$P", "sp": "SP (no branch scaling)", "1/L": "$1/L$ branches",
          "depth-mup": r"Depth-$\mu$P ($1/\sqrt{L}$)"}
DEPTH_ARMS = {"sp": 0.0, "1/L": 1.0, "depth-mup": 0.5}  # alpha of each arm
LINEAR = "linear "  # prefix of the linear-network arms, which have an exact infinite-width theory


# -- width --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WidthConfig:
    """``widths`` of an MLP with ``depth`` hidden layers, trained ``steps`` SGD steps at ``learning_rate`` on the
    teacher task (``n_samples`` examples, ``features`` inputs, targets of size ``target_scale``; full batch, which is
    also the probe batch), for every parameterization in ``parameterizations`` and ``seeds`` initialisations. Targets
    ten times the O(1) output of SP at init make the first error signal nearly the same for every seed: the SP
    first-step change is proportional to it, and with O(1) targets its seed-to-seed spread swamps the slopes."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
    parameterizations: tuple[str, ...] = ("standard", "mup")
    depth: int = 3
    steps: int = 4
    seeds: int = 8
    learning_rate: float = 0.002
    n_samples: int = 64
    features: int = 16
    target_scale: float = 10.0


def width_points(c: WidthConfig) -> list[dict]:
    return grid(parameterization=c.parameterizations, width=c.widths, seed=range(c.seeds), depth=c.depth,
                steps=c.steps, learning_rate=c.learning_rate, n_samples=c.n_samples, features=c.features,
                target_scale=c.target_scale)


def _values(result: training.TrainResult, keep: list[int] | None = None) -> dict:
    keep = list(range(len(result.layer_names))) if keep is None else keep
    return {"layer_names": [result.layer_names[i] for i in keep],
            "rms": result.rms[:, keep].tolist(), "delta_rms": result.delta_rms[:, keep].tolist(),
            "loss": result.loss.tolist(),
            "diverged_step": -1 if result.diverged_step is None else result.diverged_step,
            "diverged_layer": result.diverged_layer or ""}


def width_compute(point: dict) -> dict:
    arch = theory.MLP(point["depth"], "relu", w_std=math.sqrt(2))
    # One task for all points; the seed varies the init.
    data = training.teacher(point["n_samples"], point["features"], seed=0, scale=point["target_scale"])
    config = training.TrainConfig(learning_rate=point["learning_rate"], steps=point["steps"])
    result = training.train(arch, point["parameterization"], data, point["width"], config=config, seed=point["seed"])
    return _values(result)


def long_frame(df: pd.DataFrame, axis: str, arm: str) -> pd.DataFrame:
    """One row per (grid point, step, layer) from the list-valued columns the compute functions return.

    ``exploded`` marks the step at which a run diverged and the later ones (NaN: training stopped); the steps
    before it are ordinary measurements."""
    rows = []
    n_steps = max(len(r) for r in df.rms)
    for rec in df.itertuples(index=False):
        rms, delta = (np.full((n_steps, len(rec.layer_names)), np.nan) for _ in range(2))
        rms[: len(rec.rms)], delta[: len(rec.rms)] = rec.rms, rec.delta_rms
        for step in range(n_steps):
            for j, name in enumerate(rec.layer_names):
                rows.append({arm: getattr(rec, arm), axis: getattr(rec, axis), "seed": rec.seed, "step": step,
                             "layer_name": name, "rms": rms[step, j], "delta_rms": delta[step, j],
                             "diverged_step": rec.diverged_step,
                             "exploded": 0 <= rec.diverged_step <= step})
    return pd.DataFrame(rows)


def _panel(ax, data: pd.DataFrame, axis: str, value: str, slopes: pd.DataFrame | None, title: str) -> None:
    for i, (name, part) in enumerate(data.groupby("layer_name", sort=False)):
        stats = part[~part.exploded].groupby(axis)[value].agg(["mean", "std", "count"]).dropna()
        stats = stats[stats["mean"] > 0]
        if stats.empty:
            continue
        label = name
        if slopes is not None:
            row = slopes[slopes.layer_name == name]
            if len(row):
                label += f": slope {row.slope.iloc[0]:+.2f} ± {row.slope_se.iloc[0]:.2f}"
        err = (stats["std"] / np.sqrt(stats["count"])).fillna(0).to_numpy()
        style.errorbar_loglog(ax, stats.index, stats["mean"], err if np.any(err > 0) else None, label=label,
                              index=i, linestyle="-")
    gone = data[data.exploded].groupby(axis).seed.nunique()
    if len(gone):
        where = ", ".join(f"{k} ({v} of {data.seed.nunique()} seeds)" for k, v in gone.items())
        ax.plot([], [], " ", label=f"diverged by this step at {axis} {where}")
    ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6.5)
    _at_least_decades(ax)


def _at_least_decades(ax, decades: float = 2.0) -> None:
    """Widen a log y-axis to span ``decades``: a flat curve must look flat, not fill the panel with noise."""
    low, high = ax.get_ylim()
    span = math.log10(high / low)
    if span < decades:
        pad = 10 ** ((decades - span) / 2)
        ax.set_ylim(low / pad, high * pad)


def width_plot(df: pd.DataFrame, config: WidthConfig, outdir: Path) -> list[Path]:
    data = long_frame(df, "width", "parameterization")
    last = int(data.step.max())
    slopes = training.fit_slopes(data[~data.exploded], "width", "delta_rms")
    _print_slopes("coord-check-width", slopes, "width")
    params = list(dict.fromkeys(data.parameterization))
    fig, axes = style.subplots(len(params), 3, panel_size=(4.2, 3.3))
    axes = np.atleast_2d(axes)
    for r, name in enumerate(params):
        part = data[data.parameterization == name]
        p = pz.get(name)
        pred = p.first_step_exponents(config.depth)
        pred_text = ", ".join(f"{k} {v:+g}" for k, v in pred.items())
        sl = slopes[slopes.parameterization == name]
        _panel(axes[r, 0], part[part.step == last], "width", "rms", None,
               f"{LABELS.get(name, name)}: activations after step {last}")
        _panel(axes[r, 1], part[part.step == 1], "width", "delta_rms", sl[sl.step == 1],
               f"{LABELS.get(name, name)}: change after step 1\n(predicted slopes: {pred_text})")
        _panel(axes[r, 2], part[part.step == last], "width", "delta_rms", sl[sl.step == last],
               f"{LABELS.get(name, name)}: change after step {last}")
        axes[r, 0].set_ylabel("RMS of activations")
        axes[r, 1].set_ylabel("RMS of change since init")
    for ax in axes[-1]:
        ax.set_xlabel("width $n$")
    return style.save(fig, outdir, "coord_check_width")


def _print_slopes(name: str, slopes: pd.DataFrame, axis: str) -> None:
    print(f"{name}: fitted slopes of the RMS change against {axis} (mean over seeds, ± SE)")
    for rec in slopes.itertuples(index=False):
        print(f"  {rec[0]:>10}  {rec.layer_name:>12}  step {rec.step}:  {rec.slope:+.3f} ± {rec.slope_se:.3f}")


# -- depth --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthConfig:
    """ResNets of ``width`` with ``depths`` blocks, one per arm in ``arms`` ("sp", "1/L", "depth-mup"), trained
    ``steps`` SGD steps at ``learning_rate`` (muP in width, blocks only) on the teacher task, ``seeds`` inits.
    ``explode_at``: the RMS above which a run counts as diverged (float64 carries SP's exponential growth far).
    ``linear_arms`` (any of "1/L", "depth-mup") are linear ResNets of ``linear_width`` on ``linear_samples`` inputs,
    ``linear_seeds`` inits each, compared with the infinite-width recursion (whose size grows like the square of
    depth x steps x inputs, hence few inputs)."""

    depths: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    arms: tuple[str, ...] = ("sp", "1/L", "depth-mup")
    width: int = 128
    steps: int = 4
    seeds: int = 3
    learning_rate: float = 0.5
    n_samples: int = 64
    features: int = 16
    explode_at: float = 1e30
    linear_arms: tuple[str, ...] = ("depth-mup", "1/L")
    linear_width: int = 512
    linear_samples: int = 4
    linear_seeds: int = 12


def depth_points(c: DepthConfig) -> list[dict]:
    bad = [a for a in c.arms if a not in DEPTH_ARMS] + [a for a in c.linear_arms if a not in ("1/L", "depth-mup")]
    if bad:
        raise ValueError(f"unknown arms {bad}; choose arms from {sorted(DEPTH_ARMS)} and linear_arms from "
                         f"['1/L', 'depth-mup']")
    common = {"steps": c.steps, "learning_rate": c.learning_rate, "features": c.features, "explode_at": c.explode_at}
    return (grid(arm=c.arms, depth=c.depths, seed=range(c.seeds), width=c.width, n_samples=c.n_samples, **common)
            + grid(arm=tuple(LINEAR + a for a in c.linear_arms), depth=c.depths, seed=range(c.linear_seeds),
                   width=c.linear_width, n_samples=c.linear_samples, **common))


KEEP = ["stem", "middle block", "last block", "output"]


def depth_compute(point: dict) -> dict:
    arm = point["arm"]
    linear = arm.startswith(LINEAR)
    alpha = DEPTH_ARMS[arm.removeprefix(LINEAR)]
    depth = point["depth"]
    if linear:
        arch = theory.ResNet(depth, "identity", w_std=1.0, depth_exponent=alpha, readout="linear")
    else:
        arch = theory.ResNet(depth, "relu", w_std=1.0, depth_exponent=alpha, readout="activation")
    rule = pz.depth_mup() if arm.endswith("depth-mup") else None
    data = training.teacher(point["n_samples"], point["features"], seed=0)
    config = training.TrainConfig(learning_rate=point["learning_rate"], steps=point["steps"],
                                  frozen=("input", "output"), explode_at=point["explode_at"])
    result = training.train(arch, "mup", data, point["width"], config=config, seed=point["seed"],
                            depth_parameterization=rule)
    keep = [0, depth // 2, depth, depth + 1]
    values = _values(result, keep)
    values["layer_names"] = KEEP
    values["profile"] = result.delta_rms[-1, 1:depth + 1].tolist()  # change along the stream, last recorded step
    values["theory_delta_rms"] = []
    if linear and point["seed"] == 0:  # the same for every seed: computed once per depth
        limit = linear_resnet_training.trajectory(arch, data.x, data.y, learning_rate=point["learning_rate"],
                                                  steps=point["steps"], depth_parameterization=rule)
        values["theory_delta_rms"] = limit.delta_rms[:, keep].tolist()
    return values


def linear_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Finite-width linear arms against the infinite-width recursion: per (arm, depth, step, layer) the mean over
    seeds of the RMS change, its SE, the theory and ``z = (mean - theory) / SE``."""
    lin = df[df.arm.str.startswith(LINEAR)]
    if lin.empty:
        return pd.DataFrame(columns=["arm", "depth", "step", "layer_name", "mean", "se", "seeds", "theory", "z"])
    data = long_frame(lin.drop(columns=["theory_delta_rms"]), "depth", "arm")
    stats = (data[(data.step >= 1) & ~data.exploded].groupby(["arm", "depth", "step", "layer_name"], sort=False)
             .delta_rms.agg(["mean", "std", "count"]).reset_index())
    stats["se"] = stats["std"] / np.sqrt(stats["count"])
    theory_rows = []
    for rec in lin[lin.theory_delta_rms.map(len) > 0].itertuples(index=False):
        for step, row in enumerate(rec.theory_delta_rms):
            for name, value in zip(rec.layer_names, row, strict=True):
                theory_rows.append({"arm": rec.arm, "depth": rec.depth, "step": step, "layer_name": name,
                                    "theory": value})
    out = stats.merge(pd.DataFrame(theory_rows), on=["arm", "depth", "step", "layer_name"])
    gap = out["mean"] - out["theory"]
    # A frozen layer (the stem) does not move in either: no spread, no gap, z = 0.
    out["z"] = np.where(out["se"] > 0, gap / out["se"].where(out["se"] > 0, 1.0), np.where(gap == 0, 0.0, np.inf))
    return out.rename(columns={"count": "seeds"}).drop(columns=["std"])


def depth_plot(df: pd.DataFrame, config: DepthConfig, outdir: Path) -> list[Path]:
    data = long_frame(df, "depth", "arm")
    last = int(data.step.max())
    top = data[data.layer_name == "last block"]
    # No branch scaling grows exponentially in L (TP VI: unstable at init): no power law to fit.
    slopes = training.fit_slopes(top[~top.exploded & (top.arm != "sp")], "depth", "delta_rms",
                                 by=("arm", "layer_name", "step"))
    _print_slopes("coord-check-depth", slopes, "depth")
    linear = linear_comparison(df)
    fig, axes = style.subplots(1, 4 if len(linear) else 3, panel_size=(4.3, 3.5))
    for i, arm in enumerate(a for a in DEPTH_ARMS if a in set(data.arm)):
        part = top[top.arm == arm]
        init = part[part.step == 0].groupby("depth").rms.mean()
        style.errorbar_loglog(axes[0], init.index, init.to_numpy(), label=LABELS[arm], index=i, linestyle="-")
        for ax_i, step in ((1, 1), (1, last)):
            ok = part[(part.step == step) & ~part.exploded]
            stats = ok.groupby("depth").delta_rms.agg(["mean", "std", "count"])
            if stats.empty:
                continue
            row = slopes[(slopes.arm == arm) & (slopes.step == step)]
            slope = f": slope {row.slope.iloc[0]:+.2f} ± {row.slope_se.iloc[0]:.2f}" if len(row) else ""
            err = (stats["std"] / np.sqrt(stats["count"])).fillna(0).to_numpy()
            style.errorbar_loglog(axes[ax_i], stats.index, stats["mean"], err if np.any(err > 0) else None,
                                  label=f"{LABELS[arm]}, step {step}{slope}", index=i,
                                  linestyle="-" if step == last else ":")
        gone = sorted(set(part[part.exploded].depth))
        if gone:
            axes[1].plot([], [], " ", label=f"{LABELS[arm]}: diverged at L = {', '.join(map(str, gone))}")
        alive = df[(df.arm == arm) & (df.diverged_step < 0)]
        if len(alive):
            deepest = alive[alive.depth == alive.depth.max()]
            profile = np.mean(np.stack([np.asarray(p, float) for p in deepest.profile]), axis=0)
            t = np.arange(1, profile.size + 1) / profile.size
            axes[2].plot(t, profile, color=style.COLORS[i], label=f"{LABELS[arm]}, L = {deepest.depth.iloc[0]}")
    axes[0].set(xlabel="depth $L$", ylabel="RMS of the last block's stream at init",
                title="activations at init")
    axes[1].set(xlabel="depth $L$", ylabel="RMS of change since init", title="last block: change after training")
    axes[2].set(xlabel="$l / L$", ylabel=f"RMS of change after step {last}", yscale="log",
                title="change along the stream (deepest stable $L$)")
    if len(linear):
        _linear_panel(axes[3], linear, last, config.linear_width)
    for ax in (*axes[:2], *axes[3:]):
        ax.set_xscale("log", base=2)
        _at_least_decades(ax)
    for ax in axes:
        ax.legend(fontsize=6.5)
    return style.save(fig, outdir, "coord_check_depth")


def _linear_panel(ax, linear: pd.DataFrame, last: int, width: int) -> None:
    """Finite-width linear ResNets (points, SE over seeds) and the infinite-width recursion (dashed)."""
    top = linear[linear.layer_name == "last block"]
    print("coord-check-depth, linear ResNets: last block's RMS change, finite width (mean ± SE) vs infinite width")
    for rec in top.itertuples(index=False):
        print(f"  {rec.arm:>16}  L = {rec.depth:>4}  step {rec.step}:  {rec.mean:.4g} ± {rec.se:.2g}  "
              f"theory {rec.theory:.4g}  (z = {rec.z:+.1f})")
    arms = list(DEPTH_ARMS)
    for arm in dict.fromkeys(top.arm):
        i = arms.index(arm.removeprefix(LINEAR))  # the same colour as the arm's ReLU version
        for step in sorted({1, last}):
            part = top[(top.arm == arm) & (top.step == step)].sort_values("depth")
            name = f"{LABELS[arm.removeprefix(LINEAR)]}, step {step}"
            style.errorbar_loglog(ax, part.depth, part["mean"], part["se"].to_numpy(), label=name, index=i,
                                  fillstyle="full" if step == last else "none")
            ax.plot(part.depth, part.theory, color=style.color(i), linestyle="--", linewidth=1)
    ax.plot([], [], "k--", linewidth=1, label="infinite width (exact recursion)")
    ax.set(xlabel="depth $L$", ylabel="RMS of change since init",
           title=f"linear ResNets: width {width} vs $n = \\infty$")


EXPERIMENTS = (
    Experiment(
        name="coord-check-width",
        paper="Yang & Hu 2021 (TP IV); Yang et al. 2022 (TP V), Sec. 7 coordinate check",
        summary="MLP under SP vs muP, SGD: per-layer activation and update size against width, fitted slopes",
        config=WidthConfig(),
        quick_config=WidthConfig(widths=(64, 256, 1024), depth=2, steps=2, seeds=2),
        points=width_points, compute=width_compute, plot=width_plot,
    ),
    Experiment(
        name="coord-check-depth",
        paper="Yang, Yu, Zhu & Hayou 2023 (TP VI); Bordelon et al. 2023",
        summary="ResNet, SGD: block updates against depth for no branch scaling, 1/L and Depth-muP (1/sqrt(L))",
        config=DepthConfig(),
        quick_config=DepthConfig(depths=(4, 16, 64), width=64, steps=2, seeds=1, linear_width=256, linear_seeds=12),
        points=depth_points, compute=depth_compute, plot=depth_plot,
    ),
)
