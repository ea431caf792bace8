r"""``phase-diagram``: the order-to-chaos phase diagram of deep MLPs, with depth scales measured on finite networks.

Poole et al. 2016; Schoenholz et al. 2017 ("Deep Information Propagation", Fig. 1-2). For tanh and erf MLPs over a
grid of ``(C_W, C_b) = (w_std^2, b_std^2)``: the correlation depth scale ``xi_c = -1 / ln chi_c``,
``chi_c = C_W E[phi'(u) phi'(v)]`` at ``c*`` (``theory.signal_propagation``), which diverges on the critical line
``chi_1 = 1``, against ``xi_c`` fitted on finite networks (one grid point per ``(activation, C_W, C_b, seed)``:
``networks`` MLPs of width ``width``, two inputs at variance ``q*``; ``-1 / slope`` of ``ln |mean_l c_l - c*|``
against ``l``, jackknife SE over ``groups`` groups of networks).

Derivation and notes: docs/figures/phase_diagram.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import FuncFormatter, NullFormatter

import theory
from experiments import monte_carlo
from experiments.figures import style
from experiments.registry import Experiment
from theory import signal_propagation as sp

STEM = "phase_diagram"


@dataclass(frozen=True)
class Config:
    """The theory grid and the Monte-Carlo points.

    Attributes:
        activations: activations drawn (one diagram each).
        w_vars, b_vars: the Monte-Carlo points, paired elementwise (``C_W``, ``C_b``), for every activation.
        grid: theory grid points per axis over ``[w_min, w_max] x [0, b_max]``.
        width, depth, networks: the finite MLPs sampled per point.
        groups: jackknife groups of networks for the standard error of the fitted depth scale.
        seeds: seeds per point (``0 .. seeds - 1``).
    """

    activations: tuple[str, ...] = ("tanh", "erf")
    w_vars: tuple[float, ...] = (0.8, 4.0, 2.5)
    b_vars: tuple[float, ...] = (0.1, 0.3, 0.05)
    grid: int = 200
    w_min: float = 0.25
    w_max: float = 4.5
    b_max: float = 0.5
    width: int = 384
    depth: int = 30
    networks: int = 64
    groups: int = 8
    seeds: int = 1

    def __post_init__(self) -> None:
        if len(self.w_vars) != len(self.b_vars) or not self.w_vars:
            raise ValueError(f"w_vars and b_vars must pair up, got {self.w_vars} and {self.b_vars}")
        if any(w <= 0 for w in self.w_vars) or any(b < 0 for b in self.b_vars):
            raise ValueError(f"need C_W > 0 and C_b >= 0, got {self.w_vars}, {self.b_vars}")
        if self.grid < 2 or not 0 < self.w_min < self.w_max or self.b_max <= 0:
            raise ValueError(f"bad theory grid: grid={self.grid}, w in [{self.w_min}, {self.w_max}], "
                             f"b in [0, {self.b_max}]")
        if self.groups < 2 or self.networks < 2 * self.groups:
            raise ValueError(f"need groups >= 2 and networks >= 2 * groups, got {self.groups}, {self.networks}")
        for name in ("width", "depth", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def points(config: Config) -> list[dict]:
    return [{"activation": a, "w_var": w, "b_var": b, "seed": s, "width": config.width, "depth": config.depth,
             "networks": config.networks, "groups": config.groups}
            for a in config.activations
            for w, b in zip(config.w_vars, config.b_vars, strict=True)
            for s in range(config.seeds)]


def _inputs(q_star: float, c_first: float, w_var: float, b_var: float) -> np.ndarray:
    """Two inputs of dimension 2 whose first-layer kernel is ``q* [[1, c], [c, 1]]``:
    ``q^1 = C_W x.x' / d + C_b``, so ``|x|^2 / d = (q* - C_b) / C_W`` and ``x.x' / d = (c q* - C_b) / C_W``."""
    norm2 = (q_star - b_var) / w_var
    rho = (c_first * q_star - b_var) / w_var / norm2
    r = math.sqrt(2 * norm2)
    return np.array([[r, 0.0], [r * rho, r * math.sqrt(max(1 - rho**2, 0.0))]])


def _fit_slope(layers: np.ndarray, deviation: np.ndarray) -> float:
    return float(np.polyfit(layers, np.log(deviation), 1)[0])


def compute(point: dict) -> dict:
    """Theory at the point, and the depth scale fitted to the finite networks' correlations."""
    act, w, b = point["activation"], point["w_var"], point["b_var"]
    res = sp.signal_propagation(act, w, b)
    q_star, c_star, xi = float(res.q_star), float(res.c_star), float(res.xi_c)
    chaotic = c_star < 1
    c_first = max(c_star - 0.3, -0.9) if chaotic else b / q_star
    x = _inputs(q_star, c_first, w, b)
    arch = theory.MLP(point["depth"], act, math.sqrt(w), math.sqrt(b))
    key = jax.random.fold_in(jax.random.key(point["seed"]), round(1e6 * w) * 1000 + round(1e3 * b))
    corr = monte_carlo.layer_correlations(arch, x, width=point["width"], n_samples=point["networks"], key=key)
    c = corr[:, :, 0, 1]  # (networks, layers)
    mean, se = c.mean(axis=0), c.std(axis=0, ddof=1) / math.sqrt(c.shape[0])
    layer = np.arange(1, c.shape[1] + 1)
    deviation = np.abs(mean - c_star)
    window = (layer >= 2) & (deviation < 0.15) & (deviation > np.maximum(6 * se, 4 / point["width"]))
    if window.sum() < 3:
        raise ValueError(f"too few layers resolve the decay at {point}: deviations {deviation}, SE {se}")
    groups = np.array_split(np.arange(c.shape[0]), point["groups"])
    slopes = []
    for g in groups:  # leave-one-group-out
        keep = np.setdiff1d(np.arange(c.shape[0]), g)
        dev = np.abs(c[keep][:, window].mean(axis=0) - c_star)
        slopes.append(_fit_slope(layer[window], np.maximum(dev, 1e-300)))
    slope = _fit_slope(layer[window], deviation[window])
    slopes = np.asarray(slopes)
    n_groups = len(groups)
    slope_se = math.sqrt((n_groups - 1) / n_groups * np.sum((slopes - slopes.mean()) ** 2))
    xi_mc = -1 / slope
    xi_se = slope_se / slope**2  # delta method for -1 / slope
    return {"q_star": q_star, "c_star": c_star, "chi_1": float(res.chi_1), "chi_c": float(res.chi_c),
            "xi_theory": xi, "xi_mc": xi_mc, "xi_se": xi_se, "z": (xi_mc - xi) / xi_se,
            "first_layer": int(layer[window][0]), "last_layer": int(layer[window][-1]),
            "correlation": mean.tolist(), "correlation_se": se.tolist()}


def theory_grid(activation: str, config: Config) -> tuple[np.ndarray, np.ndarray, sp.SignalPropagation]:
    """``(C_W, C_b)`` meshes and the signal-propagation arrays over the config's grid (one vectorised call)."""
    w, b = np.meshgrid(np.linspace(config.w_min, config.w_max, config.grid), np.linspace(0, config.b_max,
                                                                                          config.grid))
    with jax.enable_x64(True):  # plot() runs outside the runner's float64 context
        return w, b, sp.signal_propagation(activation, w, b)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """One diagram per activation (xi_c colour, critical line, MC points), then MC vs theory."""
    acts = list(config.activations)
    fig, axes = style.subplots(1, len(acts) + 1, panel_size=(4.2, 3.6))
    norm = LogNorm(vmin=0.5, vmax=200)
    mesh = None
    b_line = np.linspace(0, config.b_max, 60)
    for i, (act, ax) in enumerate(zip(acts, axes, strict=False)):
        w, b, res = theory_grid(act, config)
        xi = np.clip(np.where(np.isfinite(res.xi_c), res.xi_c, 200), 0.5, 200)
        mesh = ax.pcolormesh(w, b, xi, norm=norm, cmap="viridis", shading="auto", rasterized=True)
        with jax.enable_x64(True):
            line = sp.critical_line(act, b_line, w_var_max=config.w_max)
        ax.plot(line, b_line, color="white", linewidth=2.0)
        ax.plot(line, b_line, color="black", linewidth=1.0, linestyle="--", label=r"critical line $\chi_1 = 1$")
        sub = df[df["activation"] == act]
        ax.scatter(sub["w_var"], sub["b_var"], marker="o", s=36, facecolor=style.color(1), edgecolor="white",
                   zorder=3, label="Monte-Carlo points")
        for _, row in sub.iterrows():
            right = row["w_var"] > 0.7 * config.w_max  # keep the label inside the axes
            ax.annotate(f"{row['xi_mc']:.2g}±{row['xi_se']:.1g}", (row["w_var"], row["b_var"]),
                        textcoords="offset points", xytext=(-4 if right else 4, 5), fontsize=7.5, color="white",
                        ha="right" if right else "left")
        ax.text(0.04, 0.92, "ordered", transform=ax.transAxes, color="white", fontsize=9)
        ax.text(0.70, 0.06, "chaotic", transform=ax.transAxes, color="white", fontsize=9)
        ax.set(xlim=(config.w_min, config.w_max), ylim=(0, config.b_max), xlabel=r"$C_W = \sigma_w^2$",
               ylabel=r"$C_b = \sigma_b^2$",
               title=f"({'ab'[i] if i < 2 else i}) {act}: depth scale $\\xi_c$\n"
                     r"dashed: $\chi_1 = 1$; dots: measured $\xi_c \pm$ SE")
        ax.grid(False)
    fig.colorbar(mesh, ax=list(axes[:len(acts)]), label=r"$\xi_c = -1/\ln \chi_c$ (layers)", shrink=0.9)
    ax = axes[len(acts)]
    for i, act in enumerate(acts):
        sub = df[df["activation"] == act]
        ax.errorbar(sub["xi_theory"], sub["xi_mc"], yerr=sub["xi_se"], color=style.color(i), marker=style.marker(i),
                    linestyle="none", label=act)
    lim = (0.8 * min(df["xi_theory"].min(), (df["xi_mc"] - df["xi_se"]).min()),
           1.25 * max(df["xi_theory"].max(), (df["xi_mc"] + df["xi_se"]).max()))
    ax.plot(lim, lim, color="0.3", linewidth=1.0, label="theory")
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel=r"$\xi_c$ theory (infinite width)",
           ylabel=r"$\xi_c$ measured", title=f"({'abc'[len(acts)] if len(acts) < 3 else ''}) finite networks\n"
                                             "fitted depth scale vs. theory")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    worst = float(np.max(np.abs(df["z"])))
    ax.text(0.04, 0.96, f"width {config.width}, {config.networks} networks\nmax |MC − theory| / SE = {worst:.1f}",
            transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(loc="lower right")
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="phase-diagram",
    paper="Poole et al. 2016; Schoenholz et al. 2017, Fig. 1-2",
    summary="order/chaos phase diagram of tanh and erf MLPs: correlation depth scale xi_c over (C_W, C_b) with the "
            "critical line chi_1 = 1, and xi_c fitted to finite networks at a few points",
    config=Config(),
    quick_config=Config(activations=("tanh",), w_vars=(0.8, 4.0), b_vars=(0.1, 0.3), grid=40, width=256, depth=20,
                        networks=64),
    points=points,
    compute=compute,
    plot=plot,
)
