r"""``infinite-depth-finite-width``: at fixed small width, a depth-scaled ResNet tends to a diffusion as depth grows.

Hayou 2022 (TMLR 2023, arXiv 2210.00688; equations, their provenance and conventions in
:mod:`theory.depth_diffusion`): ``theory.ResNet(depth=L, activation, w_std=1, b_std=0, branch_scale=1,
depth_exponent=0.5)`` of fixed width ``n`` tends to ``dX_t = n^{-1/2} ||phi(X_t)|| dB_t`` as ``L -> inf``. One input
(``h_0 ~ N(0, I_n)``), ``R_t = ln(||phi(h_t)|| / ||phi(h_0)||)``: for ``phi = abs`` against the closed form
``R_1 ~ N(1/2 - 1/n, 1/n)`` and the exact finite-``L`` moments (a, b); for ReLU against the SDE (d, e); ``E R_1``
against width with ``g(n) = ((n/2)/(1 - 2^{-n}) - 2)/(2n)``, negative up to ``n = 3``, positive from ``n = 4`` (c),
and ``E R_t`` along depth (f).

A grid point is one ``(kind, activation, width, steps)``: ``kind = "network"`` (``steps`` = depth ``L``,
``n_paths`` networks) or ``"sde"`` (``steps`` = Euler-Maruyama steps, ``sde_paths`` paths).

Derivation and notes: docs/figures/infinite_depth_finite_width.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

import theory
from experiments import depth_diffusion
from experiments.figures import style
from experiments.registry import Experiment, Point
from theory import depth_diffusion as closed_form

STEM = "infinite_depth_finite_width"
KINDS = ("network", "sde")
ACTIVATIONS = ("abs", "relu")
EDGES = np.linspace(-5.0, 4.0, 361)  # bins of R_1 = ln(||phi(h_1)|| / ||phi(h_0)||), width 0.025
REBIN = 4  # bins merged for the density panels (width 0.1)


@dataclass(frozen=True)
class Config:
    """The sweep.

    Attributes:
        widths: widths ``n`` of the networks (both activations) and of the SDE.
        depths: depths ``L`` of the networks.
        regime_widths: further widths of the ReLU SDE for the width-3-vs-4 panels.
        n_paths: networks per ``(activation, width, depth)``.
        sde_paths: SDE paths per ``(activation, width)``.
        sde_steps: Euler-Maruyama steps of the SDE on ``t in [0, 1]``.
        checkpoints: depth fractions ``t = k / checkpoints`` at which the norms are recorded (networks
            shallower than that record at every block).
        seed: the base seed (every point folds in its kind, activation, width and steps).
    """

    widths: tuple[int, ...] = (2, 3, 4, 8)
    depths: tuple[int, ...] = (1, 2, 4, 16, 64, 256, 1024)
    regime_widths: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
    n_paths: int = 8000
    sde_paths: int = 30000
    sde_steps: int = 2048
    checkpoints: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "regime_widths"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {values}")
        for name in ("n_paths", "sde_paths"):
            if getattr(self, name) < 4:
                raise ValueError(f"{name} must be >= 4 (a variance and its SE), got {getattr(self, name)}")
        for name in ("sde_steps", "checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sde_steps % self.checkpoints:
            raise ValueError(f"checkpoints={self.checkpoints} must divide sde_steps={self.sde_steps}")


def points(config: Config) -> list[Point]:
    """Networks: both activations x ``widths`` x ``depths``; SDE: abs x ``widths`` and ReLU x (``widths`` and
    ``regime_widths``)."""
    out = []
    for act in ACTIVATIONS:
        for n in sorted(set(config.widths)):
            for depth in sorted(set(config.depths)):
                out.append({"kind": "network", "activation": act, "width": n, "steps": depth,
                            "n_paths": config.n_paths, "checkpoints": math.gcd(depth, config.checkpoints),
                            "seed": config.seed})
        sde_widths = set(config.widths) | (set(config.regime_widths) if act == "relu" else set())
        for n in sorted(sde_widths):
            out.append({"kind": "sde", "activation": act, "width": n, "steps": config.sde_steps,
                        "n_paths": config.sde_paths, "checkpoints": config.checkpoints, "seed": config.seed})
    return out


def compute(point: Point) -> dict:
    """Simulate one point and summarise ``R_t``; add the closed forms that exist for it."""
    kind, act, n, steps = point["kind"], point["activation"], point["width"], point["steps"]
    key = jax.random.key(point["seed"])
    for part in (KINDS.index(kind), ACTIVATIONS.index(act), n, steps):
        key = jax.random.fold_in(key, part)
    res = theory.ResNet(depth=steps, activation=act)
    if kind == "network":
        samples = depth_diffusion.simulate_network(res, n, key, point["n_paths"], checkpoints=point["checkpoints"])
    else:
        samples = depth_diffusion.simulate_sde(res, n, key, point["n_paths"], steps,
                                               checkpoints=point["checkpoints"])
    summary = depth_diffusion.log_ratio_summary(samples)
    values = {key_: summary[key_] for key_ in ("mean", "mean_se", "variance", "variance_se", "mean_t", "mean_se_t",
                                               "active_t", "active_se_t", "dead_start_fraction",
                                               "dead_end_fraction", "n_used")}
    values["times"] = samples.times
    values["hist"] = depth_diffusion.histogram(summary["log_ratio"], EDGES)
    if act == "abs":
        law = closed_form.resnet_log_norm_law(res, n)
        values.update(law_mean=law.mean, law_variance=law.variance,
                      ks_law=depth_diffusion.ks_statistic(summary["log_ratio"], law.cdf),
                      ks_threshold=depth_diffusion.ks_threshold(summary["n_used"]))
        if kind == "network":
            values["exact_mean"], values["exact_variance"] = closed_form.finite_depth_log_norm_moments(res, n)
    else:
        values["initial_rate"] = closed_form.relu_initial_log_growth_rate(n)
        values["ito_drift"], values["ito_drift_se"] = depth_diffusion.ito_drift_estimate(samples)
    return values


# -- plotting -------------------------------------------------------------------------------------------------
def _rows(df: pd.DataFrame, kind: str, act: str) -> pd.DataFrame:
    return df[(df["kind"] == kind) & (df["activation"] == act)]


def _index(config: Config, width: int) -> int:
    """One colour and marker per width in every panel."""
    return sorted(set(config.widths) | set(config.regime_widths)).index(width)


def _density(hist: list | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(hist, float)[1:-1].reshape(-1, REBIN).sum(axis=1)
    edges = EDGES[::REBIN]
    return edges, counts / (np.sum(hist) * np.diff(edges))


def _density_panel(ax, df: pd.DataFrame, config: Config, act: str) -> None:
    net = _rows(df, "network", act)
    sde = _rows(df, "sde", act)
    deepest = net["steps"].max()
    ys = np.linspace(EDGES[0], EDGES[-1], 600)
    handles = []
    top = 0.0
    for n in sorted(config.widths):
        i = _index(config, n)
        row = net[(net["width"] == n) & (net["steps"] == deepest)].iloc[0]
        edges, dens = _density(row["hist"])
        ax.stairs(dens, edges, color=style.color(i), linewidth=1.3)
        top = max(top, float(dens.max()))
        if act == "abs":
            law = closed_form.log_norm_law(n, 1.0)
            ax.plot(ys, law.pdf(ys), color="0.15", linewidth=0.8, linestyle="--", zorder=3)
            label = f"$n = {n}$  (KS {row['ks_law']:.3f})"
        else:
            srow = sde[sde["width"] == n].iloc[0]
            s_edges, s_dens = _density(srow["hist"])
            centres = 0.5 * (s_edges[1:] + s_edges[:-1])
            ax.plot(centres, s_dens, color="0.15", linewidth=0.8, linestyle="--", zorder=3)
            label = f"$n = {n}$"
        handles.append(Line2D([], [], color=style.color(i), linewidth=1.3, label=label))
    ref = ("$L\\to\\infty$: $\\mathcal{N}(1/2 - 1/n,\\ 1/n)$" if act == "abs"
           else f"SDE (Euler–Maruyama,\n{config.sde_steps} steps)")
    handles.append(Line2D([], [], color="0.15", linewidth=0.8, linestyle="--", label=ref))
    ax.legend(handles=handles, loc="upper left", title=f"networks, $L = {deepest}$", title_fontsize=8, fontsize=8)
    ax.set(xlim=(-2.8, 2.4), ylim=(0, top * 1.45), ylabel="density",
           xlabel=r"$R_1 = \ln\left(\|\phi(h_L)\| / \|\phi(h_0)\|\right)$")


def _sde_tick(ax, depths: np.ndarray) -> float:
    """x position of the SDE column on a log depth axis, with its tick labelled."""
    x_sde = depths.max() * 8
    ticks = [d for d in depths if d in (1, 4, 16, 64, 256, 1024, 4096)] or list(depths)
    ax.set_xscale("log")
    ax.set_xticks([*ticks, x_sde])
    ax.set_xticklabels([str(int(t)) for t in ticks] + ["SDE"])
    ax.minorticks_off()
    ax.axvspan(depths.max() * 2.8, x_sde * 2.5, color="0.93", zorder=0, linewidth=0)
    ax.set_xlim(depths.min() / 1.6, x_sde * 1.8)
    return x_sde


def _variance_panel(ax, df: pd.DataFrame, config: Config, act: str) -> None:
    net = _rows(df, "network", act)
    sde = _rows(df, "sde", act)
    depths = np.array(sorted(net["steps"].unique()), float)
    x_sde = _sde_tick(ax, depths)
    for n in sorted(config.widths):
        i = _index(config, n)
        sub = net[net["width"] == n].sort_values("steps")
        srow = sde[sde["width"] == n].iloc[0]
        col = style.color(i)
        ax.errorbar(sub["steps"], sub["variance"], yerr=sub["variance_se"], color=col, marker=style.marker(i),
                    linestyle="none", label=f"$n = {n}$", zorder=3)
        ax.errorbar([x_sde], [srow["variance"]], yerr=[srow["variance_se"]], color=col, marker=style.marker(i),
                    markerfacecolor="white", linestyle="none", zorder=3)
        if act == "abs":
            grid = np.unique(np.geomspace(depths.min(), depths.max(), 60).round().astype(int))
            exact = [closed_form.finite_depth_log_norm_moments(theory.ResNet(int(d), "abs"), n)[1] for d in grid]
            ax.plot(grid, exact, color=col, linewidth=0.9, alpha=0.8, zorder=2)
            ax.plot([depths.min() / 1.6, x_sde * 1.8], [1.0 / n] * 2, color=col, linewidth=0.8, linestyle=":",
                    zorder=1)
        else:
            lo, hi = srow["variance"] - 2 * srow["variance_se"], srow["variance"] + 2 * srow["variance_se"]
            ax.axhspan(lo, hi, color=col, alpha=0.18, linewidth=0, zorder=1)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 1.7)
    ticks = [v for v in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5) if low <= v <= high * 1.7]
    ax.set_yticks(ticks, [f"{v:g}" for v in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="depth $L$", ylabel=r"$\mathrm{Var}\, R_1$")
    extra = ([Line2D([], [], color="0.4", linewidth=0.9, label="exact at depth $L$"),
              Line2D([], [], color="0.4", linewidth=0.8, linestyle=":", label=r"$L\to\infty$: $1/n$")]
             if act == "abs" else
             [Line2D([], [], color="0.4", linewidth=6, alpha=0.3, label=r"SDE $\pm$ 2 SE")])
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, loc="upper center", ncols=3, fontsize=8, columnspacing=1.0)


def _regime_width_panel(ax, df: pd.DataFrame, config: Config) -> None:
    sde = _rows(df, "sde", "relu").sort_values("width")
    net = _rows(df, "network", "relu")
    widths = sde["width"].to_numpy()
    grid = np.arange(1, widths.max() + 1)
    rate = np.array([closed_form.relu_initial_log_growth_rate(int(n)) for n in grid])
    bounds = np.array([closed_form.relu_log_growth_bounds(int(n), 1.0) for n in grid])
    ylim = (-0.25, 0.2)
    ax.fill_between(grid, bounds[:, 0], bounds[:, 1], color="0.9", linewidth=0, zorder=0,
                    label=r"bounds $-\frac{1}{2n} \leq \mathbb{E} R_1 \leq \frac{n-2}{2n}$")
    ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=1)
    ax.axvline(3.5, color="0.45", linewidth=0.8, linestyle=":", zorder=1)
    ax.plot(grid, rate, color="0.15", linestyle="--", linewidth=0.9, zorder=2,
            label=r"$g(n) = \frac{1}{2n}\left(\frac{n/2}{1 - 2^{-n}} - 2\right)$")
    ax.errorbar(widths, sde["mean"], yerr=sde["mean_se"], color=style.color(0), marker="o", linestyle="none",
                zorder=4, label=f"SDE, {config.sde_paths} paths")
    deepest = net[net["steps"] == net["steps"].max()].sort_values("width")
    ax.errorbar(deepest["width"] + 0.18, deepest["mean"], yerr=deepest["mean_se"], color=style.color(1),
                marker="s", linestyle="none", zorder=4,
                label=f"networks, $L = {int(net['steps'].max())}$, {config.n_paths} each")
    for _, row in sde[sde["mean"] < ylim[0]].iterrows():  # width 1 (GBM: exactly -1/2) sits below the frame
        ax.annotate(f"$n = {int(row['width'])}$: {row['mean']:.3f} ± {row['mean_se']:.3f}\n(closed form $-1/2$)",
                    (row["width"], ylim[0]), xytext=(0.62, ylim[0] + 0.055), fontsize=7.5, va="center",
                    arrowprops={"arrowstyle": "->", "color": style.color(0), "linewidth": 0.8})
    lines = [f"$n = {int(r['width'])}$: {r['mean']:+.4f} ± {r['mean_se']:.4f}  ({r['mean'] / r['mean_se']:+.1f} SE)"
             for _, r in sde[sde["width"].isin((3, 4))].iterrows()]
    ax.text(0.98, 0.03, "SDE:\n" + "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    ax.text(3.4, ylim[1] * 0.93, "shrinks", ha="right", va="top", fontsize=8, color="0.35")
    ax.text(3.6, ylim[1] * 0.93, "grows", ha="left", va="top", fontsize=8, color="0.35")
    ax.set(xlabel="width $n$", ylabel=r"$\mathbb{E}\, R_1$", ylim=ylim, xticks=grid, xlim=(0.5, grid.max() + 0.6))
    ax.legend(loc="upper left", fontsize=7.5, bbox_to_anchor=(0.0, 0.88))


def _regime_depth_panel(ax, df: pd.DataFrame, config: Config) -> None:
    sde = _rows(df, "sde", "relu").sort_values("width")
    for _, row in sde[sde["width"] > 1].iterrows():
        n = int(row["width"])
        i = _index(config, n)
        t = np.asarray(row["times"], float)
        mean, se = np.asarray(row["mean_t"], float), np.asarray(row["mean_se_t"], float)
        col = style.color(i)
        ax.plot(t, mean, color=col, marker=style.marker(i), markersize=3.5, linewidth=1.2, label=f"$n = {n}$")
        ax.fill_between(t, mean - 2 * se, mean + 2 * se, color=col, alpha=0.2, linewidth=0)
        ax.plot(t, row["initial_rate"] * t, color=col, linewidth=0.8, linestyle=":")
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    ax.set(xlabel="depth fraction $t = l / L$", ylabel=r"$\mathbb{E}\, R_t$", xlim=(0, 1))
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.4", linewidth=0.8, linestyle=":", label=r"$g(n)\, t$"))
    handles.append(Line2D([], [], color="0.4", linewidth=6, alpha=0.3, label=r"$\pm$ 2 SE"))
    ax.legend(handles=handles, loc="lower left", ncols=3, fontsize=8, columnspacing=1.0)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """Two rows (abs, ReLU) of: law of ``R_1`` at the largest depth; ``Var R_1`` against depth; then the
    width-3-vs-4 regime change: ``E R_1`` against width, and ``E R_t`` along depth."""
    fig, axes = style.subplots(2, 3, panel_size=(4.3, 3.5))
    _density_panel(axes[0, 0], df, config, "abs")
    axes[0, 0].set_title("(a) abs: law of the log post-activation norm")
    _variance_panel(axes[0, 1], df, config, "abs")
    axes[0, 1].set_title("(b) abs: variance against depth")
    _regime_width_panel(axes[0, 2], df, config)
    axes[0, 2].set_title("(c) ReLU: the regime changes at $n$ = 3 → 4")
    _density_panel(axes[1, 0], df, config, "relu")
    axes[1, 0].set_title("(d) ReLU: law of the log post-activation norm")
    _variance_panel(axes[1, 1], df, config, "relu")
    axes[1, 1].set_title("(e) ReLU: variance against depth")
    _regime_depth_panel(axes[1, 2], df, config)
    axes[1, 2].set_title("(f) ReLU: expected log-norm along depth (SDE)")
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="infinite-depth-finite-width",
    paper="Hayou 2022 (TMLR 2023), On the infinite-depth limit of finite-width neural networks",
    summary="at fixed width n, a 1/sqrt(L)-scaled ResNet's post-activation norm tends to a diffusion as L grows: "
            "networks (L = 1..1024) vs the SDE and its closed form (abs: log-normal), and the ReLU regime change "
            "between widths 3 and 4",
    config=Config(),
    quick_config=Config(widths=(2, 4), depths=(1, 16), regime_widths=(3, 4), n_paths=2000, sde_paths=6000,
                        sde_steps=32, checkpoints=8),
    points=points,
    compute=compute,
    plot=plot,
)
