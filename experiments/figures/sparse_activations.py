r"""``sparse-activations``: sparsity-inducing activations are unstable on the edge of chaos; clipping cures it.

Price, Daultry Ball, Lam, Jones & Tanner 2024 ("Deep Neural Network Initialization with Sparsity Inducing
Activations"). The shifted relu ``max(0, x - tau)`` and the soft threshold ``sign(x) max(|x| - tau, 0)`` at the edge
of chaos with variance fixed point ``q*`` (``theory.signal_propagation.edge_of_chaos``: ``C_W = 1 / E[phi'(sqrt(q*)
z)^2]``, ``C_b = q* - C_W E[phi^2]``) have ``V'(q*) = 1`` and ``V''(q*) > 0`` (unstable above ``q*``); clipping at
``m`` (``theory.activations.clipped``) makes ``V'(q*) < 1``. One grid point per ``(activation, start, seed)``:
``networks`` MLPs started at variance ``start * q*``, the per-layer pre-activation variance (mean and SE over networks)
against the infinite-width trajectory ``q^{l+1} = V(q^l)`` (``theory.signal_propagation.variance_trajectory``).

Derivation and notes: docs/figures/sparse_activations.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

import theory
from experiments import monte_carlo
from experiments.figures import style
from experiments.registry import Experiment
from theory import activations
from theory import signal_propagation as sp

STEM = "sparse_activations"
KINDS = ("shifted_relu", "soft_threshold", "clipped_shifted_relu", "clipped_soft_threshold")
LABELS = {"shifted_relu": r"ReLU$_\tau$", "soft_threshold": r"ST$_\tau$",
          "clipped_shifted_relu": r"CReLU$_{\tau,m}$", "clipped_soft_threshold": r"CST$_{\tau,m}$"}


@dataclass(frozen=True)
class Config:
    """Attributes:
        kinds: activations among :data:`KINDS`.
        threshold: ``tau``; clip: ``m``; q_star: the edge-of-chaos variance fixed point.
        starts: first-layer variances, as multiples of ``q*``.
        width, depth, networks, seeds: the finite MLPs sampled per point.
    """

    kinds: tuple[str, ...] = KINDS
    threshold: float = 1.0
    clip: float = 1.0
    q_star: float = 1.0
    starts: tuple[float, ...] = (0.7, 1.0, 1.15)
    width: int = 512
    depth: int = 30
    networks: int = 64
    seeds: int = 1

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be among {KINDS}, got {self.kinds}")
        for name in ("threshold", "clip", "q_star"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.starts or any(s <= 0 for s in self.starts):
            raise ValueError(f"starts must be positive multiples of q*, got {self.starts}")
        for name in ("width", "depth", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.networks < 2:
            raise ValueError(f"networks must be >= 2, got {self.networks}")


def activation(kind: str, threshold: float, clip: float) -> theory.Activation:
    """The ``theory.activations`` object for a kind of :data:`KINDS`."""
    base = activations.shifted_relu(threshold) if kind.endswith("shifted_relu") else activations.soft_threshold(
        threshold)
    return activations.clipped(base, clip) if kind.startswith("clipped_") else base


def points(config: Config) -> list[dict]:
    return [{"kind": k, "start": s, "seed": seed, "threshold": config.threshold, "clip": config.clip,
             "q_star": config.q_star, "width": config.width, "depth": config.depth, "networks": config.networks}
            for k in config.kinds for s in config.starts for seed in range(config.seeds)]


def compute(point: dict) -> dict:
    act = activation(point["kind"], point["threshold"], point["clip"])
    eoc = sp.edge_of_chaos(act, point["q_star"])
    if not eoc.valid:
        raise ValueError(f"no edge-of-chaos initialisation with C_b >= 0 for {point}")
    w, b = float(eoc.w_var), float(eoc.b_var)
    q1 = point["start"] * point["q_star"]
    x = np.full((1, 4), math.sqrt((q1 - b) / w))  # q^1 = C_W |x|^2 / d + C_b
    if q1 <= b:
        raise ValueError(f"start {point['start']} puts q^1 below C_b = {b}")
    depth = point["depth"]
    arch = theory.MLP(depth, act, math.sqrt(w), math.sqrt(b))
    key = jax.random.fold_in(jax.random.key(point["seed"]), KINDS.index(point["kind"]) * 1000 + round(100 * q1))
    mom = monte_carlo.preactivation_moments(arch, x, width=point["width"], n_samples=point["networks"], key=key)
    mc, se = mom.variance.mean[:depth, 0], mom.variance.stderr[:depth, 0]
    limit = sp.variance_trajectory(act, w, b, q1, depth)
    z = (mc - limit) / np.where(se > 0, se, np.inf)
    return {"w_var": w, "b_var": b, "variance_slope": float(eoc.variance_slope),
            "variance_curvature": float(eoc.variance_curvature), "stable": bool(eoc.stable),
            "variance": mc.tolist(), "variance_se": se.tolist(), "theory": limit.tolist(),
            "last_over_q_star": float(mc[-1] / point["q_star"]),
            "last_theory_over_q_star": float(limit[-1] / point["q_star"]),
            "max_abs_z": float(np.max(np.abs(z)))}


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    with jax.enable_x64(True):  # the theory curves in float64 (plot runs outside the runner's x64 context)
        return _plot(df, config, outdir)


def _plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    fig, axes = style.subplots(1, 4, panel_size=(3.7, 3.4))
    ax_map, ax_raw, ax_clip, ax_slope = axes
    ratio = np.linspace(0.3, 2.0, 300)
    q_star = config.q_star
    starts = sorted(set(config.starts))
    for i, kind in enumerate(config.kinds):
        act = activation(kind, config.threshold, config.clip)
        eoc = sp.edge_of_chaos(act, q_star)
        gap = np.asarray(sp.variance_map(act, eoc.w_var, eoc.b_var, ratio * q_star)) - ratio * q_star
        dashed = "--" if kind.startswith("clipped_") else "-"
        ax_map.plot(ratio, gap / q_star, color=style.color(i), linestyle=dashed, label=LABELS[kind])
        grid_q = np.geomspace(0.1, 10, 80)
        slope = sp.edge_of_chaos(act, grid_q)
        ax_slope.plot(grid_q, np.where(slope.valid, slope.variance_slope, np.nan), color=style.color(i),
                      linestyle=dashed, label=LABELS[kind])
        ax = ax_clip if kind.startswith("clipped_") else ax_raw
        family = 1 if kind.endswith("soft_threshold") else 0
        sub = df[df["kind"] == kind]
        for _, row in sub.iterrows():
            j = starts.index(row["start"])
            layers = np.arange(1, len(row["theory"]) + 1)
            ax.plot(layers, np.asarray(row["theory"]) / q_star, color=style.color(j),
                    linestyle="-" if family == 0 else "--", linewidth=1.1)
            ax.errorbar(layers, np.asarray(row["variance"]) / q_star, yerr=np.asarray(row["variance_se"]) / q_star,
                        color=style.color(j), marker=style.marker(family), markersize=3, linestyle="none",
                        markerfacecolor="white" if family else None)
    ax_map.axhline(0, color="0.3", linewidth=0.8)
    ax_map.axvline(1, color="0.6", linewidth=0.8, linestyle=":")
    ax_map.set(xlabel=r"$q / q^*$", ylabel=r"$(V(q) - q) / q^*$",
               title=f"(a) variance map at the edge of chaos\n$\\tau = {config.threshold:g}$, $m = {config.clip:g}$, "
                     f"$q^* = {q_star:g}$")
    ax_map.legend(loc="upper center")
    # at the edge of chaos the soft threshold's map is the shifted relu's: twice the moments, half the C_W
    ax_map.text(0.03, 0.03, "ReLU$_\\tau$ and ST$_\\tau$ coincide here,\nas do CReLU and CST",
                transform=ax_map.transAxes, fontsize=7.5, color="0.35")
    handles = [Line2D([], [], color=style.color(j), label=f"$q^1 = {s:g}\\,q^*$") for j, s in enumerate(starts)]
    handles += [Line2D([], [], color="0.3", marker=style.marker(0), linestyle="-", label="shifted relu"),
                Line2D([], [], color="0.3", marker=style.marker(1), markerfacecolor="white", linestyle="--",
                       label="soft threshold")]
    for ax, title in ((ax_raw, "(b) unclipped: unstable"), (ax_clip, f"(c) clipped at $m = {config.clip:g}$: stable")):
        ax.axhline(1, color="0.6", linewidth=0.8, linestyle=":")
        ax.set(xlabel="layer $l$", ylabel=r"$q^l / q^*$",
               title=f"{title}\nwidth {config.width} (points), infinite width (lines)")
    ax_raw.set_yscale("log")
    ax_raw.legend(handles=handles, loc="upper left", fontsize=7.5)
    ax_slope.axhline(1, color="0.3", linewidth=0.8)
    ax_slope.set(xscale="log", xlabel=r"$q^*$", ylabel=r"$V'(q^*) = \chi_\parallel$",
                 title="(d) slope of the variance map\nat the edge of chaos (stable below 1)")
    ax_slope.legend(loc="lower left")
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="sparse-activations",
    paper="Price, Daultry Ball, Lam, Jones & Tanner 2024 (ICLR)",
    summary="shifted relu / soft threshold at the edge of chaos: V'(q*) = 1, V'' > 0, the variance explodes from "
            "above q*; magnitude clipping makes V'(q*) < 1 and the variance returns; theory and finite networks",
    config=Config(),
    quick_config=Config(kinds=("shifted_relu", "clipped_shifted_relu"), starts=(1.15,), width=128, depth=12,
                        networks=32),
    points=points,
    compute=compute,
    plot=plot,
)
