r"""``relu-kurtosis``: the output of a deep ReLU network is not Gaussian at finite width, and depth/width says how much.

A ReLU MLP at criticality (``theory.MLP(depth=L, "relu", w_std=sqrt(2), b_std=0)``, ``L`` hidden layers of
width ``n``) and one input. Its output ``f`` is Gaussian only in the limit ``n -> infinity`` at fixed
``L``; at finite width its excess kurtosis is exactly (``theory.finite_width``)

    kappa_4 = E[f^4] / E[f^2]^2 - 3 = 3 (1 + 5/n)^L - 3  =  15 L/n + O((L/n)^2)

(Hanin & Nica 2019; Roberts, Yaida & Hanin 2022, ch. 5): to leading order a function of ``L/n`` alone, so
the measured kurtoses of all widths collapse onto one curve when plotted against depth/width.

One grid point is ``(width, depth, seed)``: ``n_samples`` networks, the readout's excess kurtosis from
``experiments.monte_carlo.preactivation_moments``, next to the exact law and its leading order. Depths with
``L/n > max_depth_over_width`` (1/8) are skipped: the estimator averages ``G_L^2``, whose relative variance grows like
``e^(20 L/n)``, so beyond that a few thousand networks mostly miss its heavy tail; the theory curves go on to
``theory_max_depth_over_width``.

Derivation and notes: docs/figures/relu_kurtosis.md (the estimator's tail, measured miss rates, the panels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

import theory
from experiments import monte_carlo
from experiments.figures import style
from experiments.registry import Experiment, Point
from theory import finite_width

STEM = "relu_kurtosis"
W_STD = 2**0.5  # C_W = 2, C_b = 0: ReLU at criticality
# Chunks of up to 2 GiB of networks: 500 networks of width 128, depth 16 in one chunk (one compilation).
# Results do not depend on the chunking.
MEMORY_BUDGET = 2**31


@dataclass(frozen=True)
class Config:
    """The sweep: every ``(width, depth)`` with ``depth / width <= max_depth_over_width``, times ``seeds``.

    Attributes:
        widths: hidden widths ``n``.
        depths: numbers of hidden layers ``L`` (``theory.MLP(depth=L)``).
        max_depth_over_width: the largest ``L/n`` sampled (see the module docstring for why 1/8).
        seeds: number of seeds per ``(width, depth)``: seeds ``0 .. seeds-1``.
        n_samples: networks per grid point (per seed).
        n_out: readout units pooled per network (exchangeable; each has the same kurtosis).
        features: input dimension of the one input ``x = (1, ..., 1)`` (the kurtosis does not depend on it).
        theory_max_depth_over_width: how far in ``L/n`` panel (a) draws the theory curves.
    """

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    max_depth_over_width: float = 0.125
    seeds: int = 16
    n_samples: int = 500
    n_out: int = 64
    features: int = 4
    theory_max_depth_over_width: float = 0.5

    def __post_init__(self) -> None:
        for name in ("widths", "depths"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {values}")
        if not self.max_depth_over_width > 0:
            raise ValueError(f"max_depth_over_width must be > 0, got {self.max_depth_over_width}")
        if not self.theory_max_depth_over_width > 0:
            raise ValueError(f"theory_max_depth_over_width must be > 0, got {self.theory_max_depth_over_width}")
        for name in ("seeds", "n_out", "features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2 (a standard error needs two networks), got {self.n_samples}")
        if not points(self):
            raise ValueError(f"no (width, depth) has depth/width <= {self.max_depth_over_width}: "
                             f"widths {self.widths}, depths {self.depths}")


def points(config: Config) -> list[Point]:
    """``(width, depth, seed)`` for every width, depth with ``depth/width <= max_depth_over_width``, seed."""
    return [
        {"width": n, "depth": L, "seed": s, "n_samples": config.n_samples, "n_out": config.n_out,
         "features": config.features}
        for n in sorted(set(config.widths))
        for L in sorted(set(config.depths))
        if L <= config.max_depth_over_width * n
        for s in range(config.seeds)
    ]


def compute(point: Point) -> dict[str, float]:
    """Monte-Carlo excess kurtosis of the output (the readout, last row of the moments) and the theory."""
    width, depth = point["width"], point["depth"]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(point["seed"]), width), depth)
    arch = theory.MLP(depth, "relu", W_STD, 0.0)
    x = jnp.ones((1, point["features"]))
    mom = monte_carlo.preactivation_moments(arch, x, width=width, n_samples=point["n_samples"], key=key,
                                            n_out=point["n_out"], memory_budget=MEMORY_BUDGET)
    kurtosis, se = float(mom.excess_kurtosis.mean[-1, 0]), float(mom.excess_kurtosis.stderr[-1, 0])
    exact = float(finite_width.relu_output_excess_kurtosis(depth, width))
    return {
        "depth_over_width": depth / width,
        "kurtosis": kurtosis,
        "kurtosis_se": se,
        "exact": exact,
        "leading_order": float(finite_width.relu_output_excess_kurtosis_leading_order(depth, width)),
        "z": (kurtosis - exact) / se,
        "variance": float(mom.variance.mean[-1, 0]),
        "variance_se": float(mom.variance.stderr[-1, 0]),
    }


def combine_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ``(width, depth)``: the mean of the seeds' kurtoses, ``SE = sqrt(sum SE_s^2) / S``,
    and ``z = (mean - exact) / SE`` (unweighted: inverse-variance weights would favour the seeds that
    missed the heavy tail, whose estimate and SE are both low)."""
    grouped = df.groupby(["width", "depth"], sort=True)
    out = grouped.agg(depth_over_width=("depth_over_width", "first"), exact=("exact", "first"),
                      leading_order=("leading_order", "first"), kurtosis=("kurtosis", "mean"),
                      seeds=("seed", "nunique"), n_networks=("n_samples", "sum"))
    out["kurtosis_se"] = np.sqrt(grouped["kurtosis_se"].apply(lambda s: np.sum(np.square(s)))) / out["seeds"]
    out["z"] = (out["kurtosis"] - out["exact"]) / out["kurtosis_se"]
    return out.reset_index()


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """Three panels against ``L/n``: kappa_4 (log-log), kappa_4 / (15 L/n), Monte Carlo / exact."""
    data = combine_seeds(df)
    widths = sorted(data["width"].unique())
    r_lo = data["depth_over_width"].min() / 1.4
    r_mc = data["depth_over_width"].max() * 1.4
    r_hi = max(config.theory_max_depth_over_width, r_mc)
    fig, (ax_k, ax_lead, ax_ratio) = style.subplots(1, 3, panel_size=(4.0, 3.4))
    for i, n in enumerate(widths):
        sub = data[data["width"] == n].sort_values("depth")
        r = sub["depth_over_width"].to_numpy()
        col = style.color(i)
        # the exact law of this width, as a curve in (real) L >= 1, i.e. L/n >= 1/n
        curve_r = np.geomspace(max(r_lo, 1 / n), r_hi, 200)
        curve = finite_width.relu_output_excess_kurtosis(curve_r * n, n)
        ax_k.plot(curve_r, curve, color=col, linewidth=0.9, alpha=0.8, zorder=1)
        lead = sub["leading_order"].to_numpy()
        lead_curve = finite_width.relu_output_excess_kurtosis_leading_order(curve_r * n, n)
        keep = curve_r <= r_mc
        ax_lead.plot(curve_r[keep], (curve / lead_curve)[keep], color=col, linewidth=0.9, alpha=0.8, zorder=1)
        style.errorbar_loglog(ax_k, r, sub["kurtosis"], sub["kurtosis_se"], index=i, label=f"$n = {n}$",
                              zorder=3)
        ax_lead.errorbar(r, sub["kurtosis"] / lead, yerr=sub["kurtosis_se"] / lead, color=col,
                         marker=style.marker(i), linestyle="none", zorder=3)
        shift = 1.0 + 0.035 * (i - (len(widths) - 1) / 2)  # spread the widths apart on the log axis
        ax_ratio.errorbar(r * shift, sub["kurtosis"] / sub["exact"], yerr=sub["kurtosis_se"] / sub["exact"],
                          color=col, marker=style.marker(i), linestyle="none", label=f"$n = {n}$")

    grid_r = np.geomspace(r_lo, r_hi, 200)
    limit = finite_width.relu_output_excess_kurtosis_limit(grid_r)
    ax_k.plot(grid_r, 15 * grid_r, color="0.2", linestyle="--", linewidth=1.2, zorder=2)
    ax_k.plot(grid_r, limit, color="0.2", linestyle="-", linewidth=1.2, zorder=2)
    if r_hi > r_mc:  # beyond the Monte Carlo's reliable range (module docstring): theory only
        shade = (r_mc / 1.4 * 1.15, r_hi * 1.1)
        ax_k.axvspan(*shade, color="0.93", zorder=0, linewidth=0)
        ax_k.text(np.sqrt(shade[0] * shade[1]), 0.03, "exact law\nonly", transform=ax_k.get_xaxis_transform(),
                  ha="center", va="bottom", fontsize=8, color="0.35")
    ax_k.set(xlim=(r_lo, r_hi * 1.1), xlabel="depth / width  $L/n$",
             ylabel=r"excess kurtosis of the output  $\kappa_4$",
             title="(a) Monte Carlo vs. exact law")
    ax_k.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_k.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax_k.yaxis.set_minor_formatter(NullFormatter())
    ax_k.legend(loc="upper left", title="Monte Carlo", title_fontsize=9)

    lead_r = grid_r[grid_r <= r_mc]
    ax_lead.axhline(1.0, color="0.2", linestyle="--", linewidth=1.2, zorder=2)
    ax_lead.plot(lead_r, finite_width.relu_output_excess_kurtosis_limit(lead_r) / (15 * lead_r), color="0.2",
                 linestyle="-", linewidth=1.2, zorder=2)
    ax_lead.set_xscale("log")
    ax_lead.set(xlim=(r_lo, r_mc), xlabel="depth / width  $L/n$", ylabel=r"$\kappa_4 \,/\, (15 L/n)$",
                title="(b) relative to the leading order")
    handles = [
        Line2D([], [], color="0.45", linewidth=0.9, label=r"exact, each $n$: $3(1+5/n)^L - 3$"),
        Line2D([], [], color="0.2", linewidth=1.2, label=r"$n\to\infty$ at fixed $L/n$: $3(e^{5L/n} - 1)$"),
        Line2D([], [], color="0.2", linewidth=1.2, linestyle="--", label=r"leading order: $15 L/n$"),
    ]
    ax_lead.legend(handles=handles, loc="upper left")

    worst = np.max(np.abs(data["z"]))
    chi2 = float(np.sum(data["z"] ** 2))
    ax_ratio.axhline(1.0, color="0.2", linewidth=1.0, zorder=0)
    ratio_lo = np.min((data["kurtosis"] - data["kurtosis_se"]) / data["exact"])
    ratio_hi = np.max((data["kurtosis"] + data["kurtosis_se"]) / data["exact"])
    span = max(ratio_hi, 1.0) - min(ratio_lo, 1.0)
    ax_ratio.set_ylim(min(ratio_lo, 1.0) - 0.4 * span, max(ratio_hi, 1.0) + 0.08 * span)  # room for the text
    ax_ratio.set_xscale("log")
    ax_ratio.set(xlim=(r_lo, r_mc), xlabel="depth / width  $L/n$",
                 ylabel=r"$\kappa_4^{\mathrm{MC}} \,/\, \kappa_4^{\mathrm{exact}}$",
                 title="(c) Monte Carlo / exact law")
    n_networks = int(data["n_networks"].iloc[0])
    ax_ratio.text(0.03, 0.04, f"max |MC − exact| / SE = {worst:.1f}\n"
                  f"$\\chi^2$ = {chi2:.1f} for {len(data)} points\n"
                  f"{n_networks} networks per point, {config.n_out} readout units",
                  transform=ax_ratio.transAxes, fontsize=8, va="bottom", ha="left")
    for ax in (ax_k, ax_lead, ax_ratio):
        _fraction_ticks(ax)
    return style.save(fig, outdir, STEM)


def _fraction_ticks(ax: Axes) -> None:
    """Ticks of the log L/n axis at the powers of two in view, labelled 1/128, ..., 1/2, 1."""
    lo, hi = ax.get_xlim()
    ticks = [2.0**-k for k in range(0, 12) if lo <= 2.0**-k <= hi]
    ax.set_xticks(ticks, [("1" if t == 1 else f"1/{round(1 / t)}") for t in ticks])
    ax.set_xticks([], minor=True)


EXPERIMENT = Experiment(
    name="relu-kurtosis",
    paper="Hanin & Nica 2019; Roberts, Yaida & Hanin 2022, ch. 5",
    summary="excess kurtosis of a ReLU MLP's output vs. depth/width: Monte Carlo against the exact "
            "3(1+5/n)^L - 3 and its leading order 15 L/n; the widths collapse onto one curve in L/n",
    config=Config(),
    quick_config=Config(widths=(8, 16, 32), depths=(1, 2, 4), max_depth_over_width=0.125, seeds=2,
                        n_samples=1000, n_out=64, theory_max_depth_over_width=0.25),
    points=points,
    compute=compute,
    plot=plot,
)
