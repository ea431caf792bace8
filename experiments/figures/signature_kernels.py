r"""`signature-kernels`: finite controlled ResNets against the neural signature kernel (Muca Cirone, Lemercier &
Salvi 2023).

Three fixed 2-D paths (5 points each). For each activation, width ``n`` and refinement ``m`` (Euler steps per path
segment: depth ``4 m``), ``networks`` independent homogeneous controlled ResNets
(:mod:`experiments.controlled_resnets`) give per-network kernels ``G = <Y^x, Y^y> / n``; the limit ``K`` is
:func:`theory.neural_signature_kernel` (width, then depth, to infinity) and ``K_m`` the exact infinite-width kernel at
depth ``4 m`` (:func:`theory.signature_kernels.controlled_resnet_kernel`). Measured, relative to ``||K||_F`` over the
6 distinct entries: one network's distance ``||G - K||`` (width axis, at the largest ``m``: ``~ n^-1/2``), the bias of
the mean ``||E G - K||`` against the exact ``||K_m - K||`` (depth axis, at the largest ``n``: ``~ 1/m``), and the
largest ``|E G - K_m| / SE`` (Monte Carlo against the finite-depth theory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import theory
from experiments import controlled_resnets
from experiments.figures import style
from experiments.registry import Experiment
from experiments.scaling import fit_power_law
from theory import signature_kernels

_T = np.linspace(0.0, 1.0, 5)
PATHS = 0.6 * np.stack([
    np.stack([_T, np.sin(np.pi * _T)], axis=1),
    np.stack([np.cos(np.pi * _T), _T**2], axis=1),
    np.stack([_T, -_T + 0.5 * _T**3], axis=1),
])
"""Three 2-D paths ``(3, 5, 2)``."""

UPPER = np.triu_indices(3)
SIGMA_B = 0.3


@dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("identity", "relu", "erf")
    widths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    refinements: tuple[int, ...] = (1, 2, 4, 8, 16)
    networks: int = 64
    seeds: int = 1


def points(c: Config) -> list[dict]:
    out = []
    for act in c.activations:
        for seed in range(c.seeds):
            axis = [(n, max(c.refinements)) for n in c.widths] + [(max(c.widths), m) for m in c.refinements]
            for width, m in dict.fromkeys(axis):
                out.append({"activation": act, "width": width, "refinement": m, "networks": c.networks,
                            "seed": seed})
    return out


def compute(point: dict) -> dict:
    act, width, m = point["activation"], point["width"], point["refinement"]
    key = jax.random.fold_in(jax.random.key(point["seed"]), width * 1000 + m)
    g = controlled_resnets.network_kernels(PATHS, act, width=width, refinement=m, n_samples=point["networks"],
                                           key=key, sigma_b=SIGMA_B)
    limit = np.asarray(theory.neural_signature_kernel(PATHS, activation=act, sigma_b=SIGMA_B))
    finite_depth = np.asarray(signature_kernels.controlled_resnet_kernel(PATHS, activation=act, sigma_b=SIGMA_B,
                                                                         refinement=m))
    norm = np.linalg.norm(limit[UPPER])
    per_network = np.linalg.norm((g - limit)[:, UPPER[0], UPPER[1]], axis=1) / norm
    mean = g.mean(axis=0)
    se = g.std(axis=0, ddof=1) / np.sqrt(len(g))
    return {
        "distance": float(per_network.mean()), "distance_se": float(per_network.std(ddof=1) / np.sqrt(len(g))),
        "bias": float(np.linalg.norm((mean - limit)[UPPER]) / norm),
        "bias_se": float(np.linalg.norm(se[UPPER]) / norm),
        "depth_gap": float(np.linalg.norm((finite_depth - limit)[UPPER]) / norm),
        "z_finite_depth": float(np.max(np.abs(mean - finite_depth)[UPPER] / se[UPPER])),
        "mc_mean": mean[UPPER].tolist(), "mc_se": se[UPPER].tolist(), "limit": limit[UPPER].tolist(),
    }


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    fig, (ax_w, ax_d, ax_p) = style.subplots(1, 3, panel_size=(4.2, 3.4))
    m_max, n_max = max(config.refinements), max(config.widths)
    for i, act in enumerate(config.activations):
        part = df[(df.activation == act) & (df.refinement == m_max)].sort_values("width")
        fit = fit_power_law(part.width, part.distance, part.distance_se) if len(part) >= 3 else None
        style.errorbar_loglog(ax_w, part.width, part.distance, part.distance_se, label=act, index=i,
                              fit=fit if fit is not None else False)
        depth = df[(df.activation == act) & (df.width == n_max)].sort_values("refinement")
        steps = 4 * depth.refinement
        ax_d.plot(steps, depth.depth_gap, "-", color=style.color(i), lw=1,
                  label=f"{act}: $n=\\infty$ (exact)")
        style.errorbar_loglog(ax_d, steps, depth.bias, depth.bias_se, index=i, label=f"{act}: $n={n_max}$")
        if len(depth) >= 3:
            exact = fit_power_law(steps, depth.depth_gap)
            ax_d.plot([], [], " ", label=f"  exact {exact.label()}")
        last = df[(df.activation == act) & (df.width == n_max) & (df.refinement == m_max)]
        if len(last):
            row = last.iloc[0]
            ax_p.errorbar(row.limit, row.mc_mean, yerr=2 * np.asarray(row.mc_se), fmt=style.marker(i),
                          color=style.color(i), ms=4, label=act)
    lo = min(min(v) for v in df.limit)
    hi = max(max(v) for v in df.limit)
    ax_p.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax_w.set_xticks(list(config.widths), [str(w) for w in config.widths])
    ax_w.minorticks_off()
    ax_d.set_xticks([4 * m for m in config.refinements], [str(4 * m) for m in config.refinements])
    ax_d.minorticks_off()
    ax_w.set(xlabel="width $n$", ylabel=r"one network: $\|G - K\| / \|K\|$", title=f"depth {4 * m_max}")
    ax_d.set(xlabel="depth (Euler steps)", ylabel=r"$\|E\,G - K\| / \|K\|$", title=f"width {n_max}")
    ax_p.set(xlabel="neural signature kernel $K$", ylabel="Monte Carlo $E\\,G$ (±2 SE)",
             title=f"$n = {n_max}$, depth {4 * m_max}")
    for ax in (ax_w, ax_d, ax_p):
        ax.legend(fontsize=6)
    return style.save(fig, outdir, "signature_kernels")


EXPERIMENT = Experiment(
    name="signature-kernels",
    paper="Muca Cirone, Lemercier & Salvi 2023, 'Neural signature kernels as infinite-width-depth-limits of "
          "controlled ResNets'",
    summary="controlled ResNets' kernels converge to the neural signature kernel: n^-1/2 per network, 1/depth bias",
    config=Config(),
    quick_config=Config(activations=("relu",), widths=(32, 128, 512), refinements=(1, 2, 4), networks=16),
    points=points, compute=compute, plot=plot,
)
