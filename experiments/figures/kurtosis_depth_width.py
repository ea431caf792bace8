r"""``kurtosis-depth-width``: pre-activation fluctuations grow with depth/width, unless the weights are orthogonal.

An MLP at criticality (relu: ``C_W = 2``; tanh: ``C_W = 1``; ``C_b = 0``), ``L`` hidden layers of width ``n``, one
input ``x = (1, ..., 1)``, a readout of ``n`` units; the excess kurtosis ``kappa_4`` of one readout pre-activation,
Monte Carlo (``experiments.monte_carlo.preactivation_moments``) against the leading-``1/n`` theory
``kappa_4 = 3 V^(L+1) / (n K^(L+1)2)`` (Roberts, Yaida & Hanin 2022, ch. 4-5; ``theory.finite_width.one_input``):
``15 L / n`` for relu, ``-> 2 L / n`` for tanh. Gaussian weights against Haar-orthogonal ones (Day, Kahn, Roberts et
al. 2023, arXiv:2310.07765; Monte Carlo only). One grid point is ``(activation, weights, width, depth, seed)``; depths
with ``L/n`` above the activation's ``max_depth_over_width`` are skipped.

Derivation and notes: docs/figures/kurtosis_depth_width.md.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

import theory
from experiments import monte_carlo
from experiments.figures import style
from experiments.registry import Experiment, Point
from theory import finite_width

STEM = "kurtosis_depth_width"
CRITICAL_W_STD = {"relu": 2**0.5, "tanh": 1.0}  # C_W = 2 and 1, C_b = 0 (PDLT's criticality)
LEADING_SLOPE = {"relu": 15.0, "tanh": 2.0}  # kappa_4 ~ slope * L/n (tanh: asymptotically in L)
MEMORY_BUDGET = 2**30


@dataclass(frozen=True)
class Config:
    """The sweep: activations x weight ensembles x widths x depths (``L/n`` capped per activation) x seeds.

    Attributes:
        activations: among ``relu``, ``tanh`` (each at its critical ``C_W``, ``C_b = 0``).
        weights: weight ensembles of ``experiments.networks`` (``gaussian``, ``orthogonal``).
        widths, depths: hidden widths ``n`` and numbers of hidden layers ``L``.
        relu_max_depth_over_width, tanh_max_depth_over_width: the largest ``L/n`` sampled per activation.
        seeds: seeds per point (``0 .. seeds-1``); n_samples: networks per point and seed.
        features: input dimension of ``x = (1, ..., 1)``.
    """

    activations: tuple[str, ...] = ("relu", "tanh")
    weights: tuple[str, ...] = ("gaussian", "orthogonal")
    widths: tuple[int, ...] = (16, 32, 64, 128)
    depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    relu_max_depth_over_width: float = 0.125
    tanh_max_depth_over_width: float = 0.5
    seeds: int = 1
    n_samples: int = 2000
    features: int = 4

    def __post_init__(self) -> None:
        unknown = [a for a in self.activations if a not in CRITICAL_W_STD]
        if not self.activations or unknown:
            raise ValueError(f"activations must be among {tuple(CRITICAL_W_STD)}, got {self.activations}")
        bad = [w for w in self.weights if w not in ("gaussian", "orthogonal")]
        if not self.weights or bad:
            raise ValueError(f"weights must be among ('gaussian', 'orthogonal'), got {self.weights}")
        for name in ("widths", "depths"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {values}")
        for name in ("relu_max_depth_over_width", "tanh_max_depth_over_width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.seeds < 1 or self.features < 1:
            raise ValueError(f"seeds and features must be >= 1, got {self.seeds}, {self.features}")
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2 (a standard error needs two networks), got {self.n_samples}")
        if not points(self):
            raise ValueError(f"no (width, depth) within the depth/width caps: widths {self.widths}, "
                             f"depths {self.depths}")


def max_depth_over_width(config: Config, activation: str) -> float:
    return getattr(config, f"{activation}_max_depth_over_width")


def points(config: Config) -> list[Point]:
    """Every ``(activation, weights, width, depth, seed)`` with ``depth / width`` within the activation's cap."""
    return [
        {"activation": a, "weights": w, "width": n, "depth": L, "seed": s, "n_samples": config.n_samples,
         "features": config.features}
        for a in config.activations
        for w in config.weights
        for n in sorted(set(config.widths))
        for L in sorted(set(config.depths))
        if L <= max_depth_over_width(config, a) * n
        for s in range(config.seeds)
    ]


def compute(point: Point) -> dict[str, float]:
    """Monte-Carlo excess kurtosis of the readout pre-activation, the 1/n theory (Gaussian weights) and, for relu,
    the exact law."""
    act, weights, width, depth = point["activation"], point["weights"], point["width"], point["depth"]
    tag = zlib.crc32(f"{act}/{weights}/{width}/{depth}".encode())
    key = jax.random.fold_in(jax.random.key(point["seed"]), tag)
    arch = theory.MLP(depth, act, CRITICAL_W_STD[act], 0.0)
    x = jnp.ones((1, point["features"]))
    mom = monte_carlo.preactivation_moments(arch, x, width=width, n_samples=point["n_samples"], key=key,
                                            weights=weights, n_out=width, memory_budget=MEMORY_BUDGET)
    kurtosis, se = float(mom.excess_kurtosis.mean[-1, 0]), float(mom.excess_kurtosis.stderr[-1, 0])
    lead = float(finite_width.one_input(arch, x).excess_kurtosis(width)[-1, 0])
    exact = float(finite_width.relu_output_excess_kurtosis(depth, width)) if act == "relu" else float("nan")
    return {"depth_over_width": depth / width, "kurtosis": kurtosis, "kurtosis_se": se, "theory": lead,
            "exact": exact, "z_theory": (kurtosis - lead) / se}


def combine_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ``(activation, weights, width, depth)``: mean over seeds, ``SE = sqrt(sum SE_s^2) / S``."""
    keys = ["activation", "weights", "width", "depth"]
    grouped = df.groupby(keys, sort=True)
    out = grouped.agg(depth_over_width=("depth_over_width", "first"), theory=("theory", "first"),
                      exact=("exact", "first"), kurtosis=("kurtosis", "mean"), seeds=("seed", "nunique"),
                      n_networks=("n_samples", "sum"))
    out["kurtosis_se"] = np.sqrt(grouped["kurtosis_se"].apply(lambda s: np.sum(np.square(s)))) / out["seeds"]
    out["z_theory"] = (out["kurtosis"] - out["theory"]) / out["kurtosis_se"]
    return out.reset_index()


def _theory_curve(act: str, width: int, max_depth: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1/n theory at every depth 1..max_depth at once: layer l of a deep network is the readout of depth l-1."""
    arch = theory.MLP(max_depth, act, CRITICAL_W_STD[act], 0.0)
    kappa = np.asarray(finite_width.one_input(arch, jnp.ones((1, features))).excess_kurtosis(width)[1:, 0])
    return np.arange(1, max_depth + 1) / width, kappa


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """Rows: activations. (a) Gaussian weights, Monte Carlo vs the 1/n theory; (b) Gaussian vs orthogonal."""
    data = combine_seeds(df)
    acts = [a for a in config.activations if a in set(data["activation"])]
    fig, axes = style.subplots(len(acts), 2, panel_size=(4.6, 3.5))
    axes = np.asarray(axes).reshape(len(acts), 2)
    widths = sorted(data["width"].unique())
    for row, act in enumerate(acts):
        ax_g, ax_o = axes[row]
        sub = data[data["activation"] == act]
        cap = max_depth_over_width(config, act)
        for i, n in enumerate(widths):
            col = style.color(i)
            max_depth = max(1, int(cap * n))
            r, kappa = _theory_curve(act, n, max_depth, config.features)
            ax_g.plot(r, kappa, color=col, linewidth=1.0, zorder=1)
            if act == "relu":
                ax_g.plot(r, finite_width.relu_output_excess_kurtosis(r * n, n), color=col, linewidth=0.8,
                          linestyle=":", zorder=1)
            gauss = sub[(sub["width"] == n) & (sub["weights"] == "gaussian")].sort_values("depth")
            if len(gauss):
                ax_g.errorbar(gauss["depth_over_width"], gauss["kurtosis"], yerr=gauss["kurtosis_se"], color=col,
                              marker=style.marker(i), linestyle="none", label=f"$n = {n}$", zorder=3)
            for weights, face, alpha in (("gaussian", "none", 0.45), ("orthogonal", col, 1.0)):
                part = sub[(sub["width"] == n) & (sub["weights"] == weights)].sort_values("depth")
                if len(part):
                    ax_o.errorbar(part["depth_over_width"], part["kurtosis"], yerr=part["kurtosis_se"], color=col,
                                  marker=style.marker(i), markerfacecolor=face, linestyle="-", linewidth=0.7,
                                  alpha=alpha, zorder=3 if weights == "orthogonal" else 2)
        grid_r = np.linspace(0, cap * 1.02, 50)
        slope = LEADING_SLOPE[act]
        for ax in (ax_g, ax_o):
            ax.plot(grid_r, slope * grid_r, color="0.3", linestyle="--", linewidth=1.0, zorder=0)
            ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
            ax.set(xlim=(0, cap * 1.04), xlabel="depth / width  $L/n$", ylabel=r"excess kurtosis  $\kappa_4$")
        ax_g.set_title(f"(a{row + 1}) {act}, Gaussian weights: Monte Carlo vs 1/n theory")
        ax_o.set_title(f"(b{row + 1}) {act}: Gaussian (open) vs orthogonal (filled) weights")
        handles = [Line2D([], [], color="0.45", linewidth=1.0, label=r"1/n theory $3V/(nK^2)$, each $n$"),
                   Line2D([], [], color="0.3", linewidth=1.0, linestyle="--", label=f"${slope:g}\\,L/n$")]
        if act == "relu":
            handles.append(Line2D([], [], color="0.45", linewidth=0.8, linestyle=":",
                                  label=r"exact $3(1+5/n)^L-3$"))
        first = ax_g.legend(loc="upper left", title="Monte Carlo", title_fontsize=8, fontsize=8)
        ax_g.add_artist(first)
        ax_g.legend(handles=handles, loc="lower right", fontsize=8)
        gauss_all = sub[sub["weights"] == "gaussian"]
        if len(gauss_all):
            worst = float(np.max(np.abs(gauss_all["z_theory"])))
            ax_g.text(0.03, 0.62, f"max |MC − theory| / SE = {worst:.1f}\n{int(gauss_all['n_networks'].iloc[0])} "
                      "networks per point", transform=ax_g.transAxes, fontsize=7.5, va="top", ha="left",
                      color="0.3")
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="kurtosis-depth-width",
    paper="Roberts, Yaida & Hanin 2022, ch. 4-5; Day, Kahn, Roberts et al. 2023 (orthogonal weights)",
    summary="excess kurtosis of pre-activations vs depth/width for relu and tanh at criticality: Monte Carlo against "
            "the leading-1/n theory 3V/(nK^2) (15 L/n, ~2 L/n); orthogonal weights stop tanh's growth",
    config=Config(),
    quick_config=Config(widths=(16,), depths=(2,), seeds=1, n_samples=1000),
    points=points,
    compute=compute,
    plot=plot,
    dtype="float32",
)
