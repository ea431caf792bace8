r"""`commute` and `no-commute`: do the width and depth limits commute? (Hayou & Yang 2023)

For two inputs (input correlation 1/2), sample finite networks of width ``n`` and depth ``L`` and measure
how far ONE network's output covariance (its readout kernel ``G``, the covariance of the outputs given the
hidden layers) is from the limit ``K``: ``D(n, L)`` = the median over networks of ``||G - K|| / ||K||``
(Frobenius norm over the entries ``K11, K12, K22``), with a bootstrap SE. The median, not the mean
square, because deep narrow ReLU MLPs are heavy-tailed (most networks' outputs die, rare ones are huge).

* `commute`: a ReLU ResNet with branches scaled by ``1/sqrt(L)`` (``depth_exponent = 1/2``), against
  its width-then-depth limit (the ODE, ``theory.resnet_limit``). ``D -> 0`` along every path: width
  first (``n = inf``, exactly, by ``theory.kernels`` at depth ``L``; and ``n = n_max``), depth first
  (``L = L_max``, ``n`` growing) and ``n = L``.
* `no-commute`: a ReLU MLP at criticality (``w_std = sqrt(2)``) against its infinite-width kernel at the
  same depth. One network's fluctuation grows like ``L / n`` (for the variance, ``(1 + 5/n)^L - 1``), so
  ``D`` stays put along ``n = L`` and grows with ``L`` at fixed ``n``: the limits do not commute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import theory
from experiments import monte_carlo
from experiments.figures import style
from experiments.registry import Experiment, grid
from experiments.scaling import fit_power_law

INPUTS = np.array([[1.0, 0.0], [0.5, math.sqrt(0.75)]]) * math.sqrt(2)  # unit variance, correlation 1/2
UNIQUE = (np.array([0, 0, 1]), np.array([0, 1, 1]))  # K11, K12, K22


@dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    # Depth 1024: the finite networks are scanned over their identical blocks, so compiling them costs the same
    # at every depth (unrolled, depth 256 was the practical limit).
    depths: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    networks: int = 128
    seeds: int = 1
    branch_scale: float = 1.0


def _architecture(kind: str, depth: int, branch_scale: float):
    if kind == "resnet":
        return theory.ResNet(depth, "relu", w_std=1.0, b_std=0.0, branch_scale=branch_scale,
                             depth_exponent=0.5, readout="linear")
    return theory.MLP(depth, "relu", w_std=math.sqrt(2), b_std=0.0)


def _points(kind: str):
    def points(c: Config) -> list[dict]:
        return grid(kind=kind, width=c.widths, depth=c.depths, seed=range(c.seeds), networks=c.networks,
                    branch_scale=c.branch_scale)

    return points


def _limit(kind: str, arch) -> np.ndarray:
    if kind == "resnet":
        return np.asarray(theory.resnet_limit(arch, INPUTS, get="nngp").nngp)
    return np.asarray(theory.kernels(arch, INPUTS, get="nngp").nngp)


def compute(point: dict) -> dict:
    arch = _architecture(point["kind"], point["depth"], point["branch_scale"])
    key = jax.random.fold_in(jax.random.key(point["seed"]), point["width"] * 100_003 + point["depth"])
    samples = monte_carlo.network_kernels(arch, INPUTS, width=point["width"], n_samples=point["networks"], key=key,
                                          nngp_from="readout_kernel")
    limit = _limit(point["kind"], arch)
    per_network = np.linalg.norm((samples - limit)[:, UNIQUE[0], UNIQUE[1]], axis=1) / np.linalg.norm(limit[UNIQUE])
    typical = monte_carlo.median(per_network, seed=point["seed"])
    # The width-first path: the infinite-width kernel at this depth against the limit (no noise).
    width_first = np.asarray(theory.kernels(arch, INPUTS, get="nngp").nngp)
    d_inf = float(np.linalg.norm((width_first - limit)[UNIQUE]) / np.linalg.norm(limit[UNIQUE]))
    return {"distance": float(typical.mean), "distance_se": float(typical.stderr), "distance_infinite_width": d_inf,
            "dead_fraction": float(np.mean(np.all(samples == 0, axis=(1, 2)))),
            "k12_mean": float(samples[:, 0, 1].mean()), "limit_k12": float(limit[0, 1])}


def _mean_over_seeds(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["width", "depth"])
    out = g.agg(distance=("distance", "mean"), d_inf=("distance_infinite_width", "first")).reset_index()
    out["distance_se"] = g["distance_se"].apply(lambda s: float(np.sqrt(np.sum(s**2))) / len(s)).to_numpy()
    return out


def _plot(kind: str, stem: str, title: str):
    def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
        data = _mean_over_seeds(df)
        widths, depths = sorted(data.width.unique()), sorted(data.depth.unique())
        grid_d = data.pivot(index="depth", columns="width", values="distance").loc[depths, widths]
        fig, axes = style.subplots(1, 2, panel_size=(4.6, 3.6))
        heat, paths = axes
        image = heat.imshow(np.log10(grid_d.to_numpy()), origin="lower", cmap="viridis", aspect="auto")
        heat.set_xticks(range(len(widths)), [str(w) for w in widths])
        heat.set_yticks(range(len(depths)), [str(d) for d in depths])
        heat.set(xlabel="width $n$", ylabel="depth $L$", title=title)
        fig.colorbar(image, ax=heat, label=r"$\log_{10} D(n, L)$")
        n_max, l_max = max(widths), max(depths)
        series = [
            (f"depth first ($L$ = {l_max}), vs $n$", data[data.depth == l_max], "width"),
            ("$n = L$", data[data.width == data.depth], "width"),
            (f"fixed $n$ = {n_max}, vs $L$", data[data.width == n_max], "depth"),
        ]
        for i, (label, part, axis) in enumerate(series):
            part = part.sort_values(axis)
            # D saturates at 1 where the typical network's output covariance has collapsed (G << K: dead or
            # heavy-tailed networks, deep narrow MLPs): fits are over the points resolved away from 0 and from 1.
            se = part.distance_se
            alive = part[(se > 0) & (part.distance > 2 * se) & (1 - part.distance > 3 * se)]
            style.errorbar_loglog(paths, part[axis], part.distance, part.distance_se, label=label, index=i)
            if len(alive) >= 3:
                fit = fit_power_law(alive[axis], alive.distance, alive.distance_se)
                style.plot_fit(paths, fit, alive[axis], index=i, label=fit.label())
        if kind == "resnet":  # for the MLP the reference is the same depth's kernel: zero on this path
            exact = data[data.width == n_max].sort_values("depth")
            paths.plot(exact.depth, exact.d_inf, "k--", lw=1, label=r"width first ($n = \infty$, exact), vs $L$")
        ticks = sorted(set(widths) | set(depths))
        paths.set_xticks(ticks, [str(t) for t in ticks])
        paths.minorticks_off()
        paths.set(xlabel="$n$ or $L$ along the path", ylabel=r"$D$: typical $\|G - K\| / \|K\|$")
        paths.legend(fontsize=7)
        return style.save(fig, outdir, stem)

    return plot


_QUICK = Config(widths=(4, 64), depths=(4, 16, 64), networks=32)

EXPERIMENTS = (
    Experiment(
        name="commute",
        paper="Hayou & Yang 2023, 'Width and Depth Limits Commute in Residual Networks'",
        summary="ReLU ResNet with 1/sqrt(L) branches: one network's covariance reaches the ODE limit along every path",
        config=Config(), quick_config=_QUICK, points=_points("resnet"), compute=compute,
        plot=_plot("resnet", "commute", "ResNet, branches $1/\\sqrt{L}$"),
    ),
    Experiment(
        name="no-commute",
        paper="Hayou & Yang 2023; Hanin & Nica 2019 (MLP fluctuations grow like L/n)",
        summary="ReLU MLP at criticality: one network's covariance does not reach the limit along n = L",
        config=Config(), quick_config=_QUICK, points=_points("mlp"), compute=compute,
        plot=_plot("mlp", "no_commute", "MLP at criticality"),
    ),
)
