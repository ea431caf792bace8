r"""``lr-transfer``: the best learning rate stays put across width under muP and across depth under Depth-muP.

Yang et al. 2022 (TP V, Fig. 1 and Sec. 3) across width; Yang, Yu, Zhu & Hayou 2023 (TP VI, Fig. 1) and Bordelon et
al. 2023 across depth. On scikit-learn's digits (cross-entropy, Adam, minibatches of ``batch_size``, ``steps`` steps):
a ReLU MLP of width ``n`` under SP and muP (TP V Table 3), and a ReLU ResNet of width ``resnet_width`` with ``L``
blocks ``h_l = h_{l-1} + L^-alpha W_l relu(h_{l-1})`` and block learning rate ``eta L^-gamma``, one arm per name in
``depth_arms`` (:data:`DEPTH_ARMS`; Depth-muP ``alpha = gamma = 1/2`` against "sp" ``alpha = gamma = 0`` by default).
The final training loss is measured on the grid ``2^lr_log2_min .. 2^lr_log2_max`` (diverged runs score ``inf``); the
optimum is a parabola vertex in ``(log2 eta, log loss)`` with a bootstrap SE over seeds, and its drift the fitted power
law ``eta* ~ n^p`` (``L^p``): transfer means ``p = 0``.

Derivation and notes: docs/figures/lr_transfer.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

import theory
from experiments import training, transfer
from experiments.figures import style
from experiments.registry import Experiment, Point
from experiments.scaling import PowerLawFit
from theory import parameterizations as pz

STEM = "lr_transfer"
DEPTH_ARMS = {"depth-mup": (0.5, 0.5), "1/sqrt(L) only": (0.5, 0.0), "sp": (0.0, 0.0)}  # (alpha, gamma)
LABELS = {"standard": "SP", "mup": r"$\mu$P", "depth-mup": r"Depth-$\mu$P", "1/sqrt(L) only":
          r"$1/\sqrt{L}$ branches, Adam $\eta$ not scaled", "sp": "no branch scaling"}


@dataclass(frozen=True)
class Config:
    """The sweep. ``widths`` of the MLP (``mlp_depth`` hidden layers) under each of ``parameterizations``;
    ``depths`` of the ResNet (width ``resnet_width``, muP) under each of ``depth_arms``; every network for
    ``seeds`` seeds at the learning rates ``2^k``, ``k = lr_log2_min, lr_log2_min + lr_log2_step, ..,
    lr_log2_max``; ``steps`` Adam steps of minibatches of ``batch_size`` on the first ``n_samples`` digits."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    parameterizations: tuple[str, ...] = ("standard", "mup")
    mlp_depth: int = 2
    depths: tuple[int, ...] = (2, 4, 8, 16)
    depth_arms: tuple[str, ...] = ("depth-mup", "sp")
    resnet_width: int = 128
    seeds: int = 4
    lr_log2_min: float = -16.0
    lr_log2_max: float = 0.0
    lr_log2_step: float = 1.0
    steps: int = 40
    batch_size: int = 32
    n_samples: int = 1797

    def __post_init__(self) -> None:
        if not (self.widths or self.depths):
            raise ValueError("nothing to sweep: give widths, depths or both")
        unknown = [a for a in self.depth_arms if a not in DEPTH_ARMS]
        if unknown:
            raise ValueError(f"unknown depth arms {unknown}; choose among {list(DEPTH_ARMS)}")
        for p in self.parameterizations:
            pz.get(p, "adam")
        if not (self.lr_log2_step > 0 and self.lr_log2_max > self.lr_log2_min):
            raise ValueError("the learning-rate grid needs lr_log2_step > 0 and lr_log2_max > lr_log2_min")
        if len(self.log2_lrs) < 5:
            raise ValueError(f"the learning-rate grid has {len(self.log2_lrs)} points; the optimum's fit needs >= 5")
        for name in ("seeds", "steps", "batch_size", "n_samples", "mlp_depth", "resnet_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def log2_lrs(self) -> np.ndarray:
        n = math.floor((self.lr_log2_max - self.lr_log2_min) / self.lr_log2_step + 1e-9) + 1
        return self.lr_log2_min + self.lr_log2_step * np.arange(n)


def points(c: Config) -> list[Point]:
    common = {"lr_log2_min": c.lr_log2_min, "lr_log2_max": c.lr_log2_max, "lr_log2_step": c.lr_log2_step,
              "steps": c.steps, "batch_size": c.batch_size, "n_samples": c.n_samples}
    width = [{"sweep": "width", "arm": p, "size": n, "seed": s, "mlp_depth": c.mlp_depth, **common}
             for p in c.parameterizations for n in c.widths for s in range(c.seeds)]
    depth = [{"sweep": "depth", "arm": a, "size": L, "seed": s, "resnet_width": c.resnet_width, **common}
             for a in c.depth_arms for L in c.depths for s in range(c.seeds)]
    return width + depth


def compute(point: Point) -> dict:
    """The final training loss at every learning rate of the grid for one network and seed."""
    c = Config(lr_log2_min=point["lr_log2_min"], lr_log2_max=point["lr_log2_max"],
               lr_log2_step=point["lr_log2_step"])
    log2_lrs = c.log2_lrs
    data = training.digits(n_samples=point["n_samples"])
    config = training.TrainConfig(optimizer="adam", steps=point["steps"], batch_size=point["batch_size"],
                                  loss="cross_entropy", probe_size=16)
    if point["sweep"] == "width":
        arch = theory.MLP(point["mlp_depth"], "relu", w_std=math.sqrt(2))
        loss = transfer.final_losses(arch, point["arm"], data, point["size"], config, 2.0**log2_lrs,
                                     seed=point["seed"])
    else:
        alpha, gamma = DEPTH_ARMS[point["arm"]]
        arch = theory.ResNet(point["size"], "relu", w_std=math.sqrt(2), depth_exponent=alpha)
        loss = transfer.final_losses(arch, "mup", data, point["resnet_width"], config, 2.0**log2_lrs,
                                     seed=point["seed"], depth_parameterization=pz.DepthParameterization(alpha, gamma))
    return {"log2_lr": log2_lrs.tolist(), "loss": [float(v) if np.isfinite(v) else math.inf for v in loss]}


def _matrix(part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(log2 lrs, losses (seeds, n_lr))`` of one (sweep, arm, size), NaN or None read back as ``inf``."""
    log2 = np.asarray(part["log2_lr"].iloc[0], float)
    losses = np.array([[math.inf if v is None else float(v) for v in row] for row in part["loss"]], float)
    return log2, np.where(np.isnan(losses), np.inf, losses)


def optima(df: pd.DataFrame, *, n_bootstrap: int = 1000) -> pd.DataFrame:
    """One row per (sweep, arm, size): the optimum ``log2_lr_opt`` ± ``log2_lr_se`` (bootstrap over seeds),
    the loss there, ``on_edge``, the number of seeds and of learning rates at which any seed diverged."""
    rows = []
    for (sweep, arm, size), part in df.groupby(["sweep", "arm", "size"], sort=False):
        log2, losses = _matrix(part)
        opt = transfer.optimum_over_seeds(log2, losses, n_bootstrap=n_bootstrap, seed=int(size))
        rows.append({"sweep": sweep, "arm": arm, "size": int(size), "log2_lr_opt": opt.log2_lr,
                     "log2_lr_se": opt.log2_lr_se, "loss_opt": opt.loss, "on_edge": opt.on_edge,
                     "seeds": losses.shape[0], "diverged_lrs": int(np.sum(~np.isfinite(losses).all(axis=0)))})
    return pd.DataFrame(rows)


def drift(opt: pd.DataFrame, grid_step: float = 1.0) -> dict[tuple[str, str], PowerLawFit]:
    """Per (sweep, arm) the power law ``eta* = C size^p`` fitted to the optima (:func:`experiments.transfer.drift_fits`:
    weighted by the bootstrap SEs floored at a tenth of the grid step, scale from the residuals)."""
    return transfer.drift_fits(opt, grid_step)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """Per sweep: loss against learning rate for each arm (curves per size, optimum ± SE marked), then the
    optimum against size with the fitted drift."""
    opt = optima(df)
    fits = drift(opt, config.lr_log2_step)
    for (sweep, arm), fit in fits.items():
        print(f"lr-transfer: {sweep:5s} {arm:16s} optimal lr ~ {sweep}^({fit.exponent:+.3f} ± "
              f"{fit.exponent_stderr:.3f})", file=sys.stderr)
    sweeps = [(s, list(dict.fromkeys(df[df.sweep == s].arm))) for s in ("width", "depth") if (df.sweep == s).any()]
    ncols = 1 + max(len(arms) for _, arms in sweeps)
    fig, axes = style.subplots(len(sweeps), ncols, panel_size=(3.9, 3.2))
    axes = np.asarray(axes).reshape(len(sweeps), ncols)
    cap = 2 * math.log(10)  # twice the loss of a uniform guess over the 10 digits: the top edge
    for r, (sweep, arms) in enumerate(sweeps):
        for c, arm in enumerate(arms):
            _curves(axes[r, c], df[(df.sweep == sweep) & (df.arm == arm)], opt[(opt.sweep == sweep) & (opt.arm == arm)],
                    sweep, cap)
            title = f"{LABELS.get(arm, arm)}: {'MLP' if sweep == 'width' else 'ResNet'}"
            fit = fits.get((sweep, arm))
            if fit is not None:
                title += f"\n$\\eta^* \\propto {'n' if sweep == 'width' else 'L'}^{{{fit.exponent:+.2f} \\pm " \
                         f"{fit.exponent_stderr:.2f}}}$"
            axes[r, c].set_title(title, fontsize=9.5)
        for c in range(len(arms), ncols - 1):
            axes[r, c].set_visible(False)
        _drift_panel(axes[r, ncols - 1], opt[opt.sweep == sweep], fits, sweep, arms)
    return style.save(fig, outdir, STEM)


def _curves(ax, part: pd.DataFrame, opt: pd.DataFrame, sweep: str, cap: float) -> None:
    sizes = sorted(part["size"].unique())
    for i, size in enumerate(sizes):
        log2, losses = _matrix(part[part["size"] == size])
        mean = losses.mean(axis=0)
        ok = np.isfinite(mean) & (mean < cap)
        se = losses.std(axis=0, ddof=1) / math.sqrt(losses.shape[0]) if losses.shape[0] > 1 else np.zeros_like(mean)
        col = style.color(i)
        lr = 2.0**log2
        ax.plot(lr[ok], mean[ok], color=col, linewidth=1.1, label=f"{'n' if sweep == 'width' else 'L'} = {size}")
        ax.fill_between(lr[ok], (mean - se)[ok], (mean + se)[ok], color=col, alpha=0.2, linewidth=0)
        ax.plot(lr[~ok], np.full((~ok).sum(), cap), linestyle="none", marker="x", color=col, markersize=4)
        row = opt[opt["size"] == size]
        if len(row) and np.isfinite(row["log2_lr_opt"].iloc[0]):
            u, s, lo = row["log2_lr_opt"].iloc[0], row["log2_lr_se"].iloc[0], row["loss_opt"].iloc[0]
            s = 0.0 if not np.isfinite(s) else s
            ax.errorbar([2.0**u], [lo], xerr=[[2.0**u - 2.0 ** (u - s)], [2.0 ** (u + s) - 2.0**u]], color=col,
                        marker=style.marker(i), markersize=5, markeredgecolor="k", markeredgewidth=0.5, capsize=2,
                        zorder=5, linestyle="none")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(top=cap * 1.15)
    ax.set_xlabel(r"learning rate $\eta$ (Adam)")
    ax.set_ylabel("training loss after the budget")
    ax.legend(fontsize=7, loc="lower left")


def _drift_panel(ax, opt: pd.DataFrame, fits: dict, sweep: str, arms: list[str]) -> None:
    for i, arm in enumerate(arms):
        part = opt[(opt.arm == arm) & np.isfinite(opt["log2_lr_opt"])].sort_values("size")
        if part.empty:
            continue
        fit = fits.get((sweep, arm))
        shift = 1 + 0.04 * (i - (len(arms) - 1) / 2)  # keep the error bars of the arms apart
        ax.errorbar(part["size"] * shift, 2.0 ** part["log2_lr_opt"],
                    yerr=[2.0 ** part["log2_lr_opt"] * (1 - 2.0 ** -part["log2_lr_se"].fillna(0)),
                          2.0 ** part["log2_lr_opt"] * (2.0 ** part["log2_lr_se"].fillna(0) - 1)],
                    color=style.color(i), marker=style.marker(i), linestyle="none",
                    label=LABELS.get(arm, arm) + (f": slope {fit.exponent:+.2f} ± {fit.exponent_stderr:.2f}"
                                                   if fit else ""))
        if fit is not None:
            style.plot_fit(ax, fit, part["size"], index=i)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("width $n$" if sweep == "width" else "depth $L$ (blocks)")
    ax.set_ylabel(r"optimal learning rate $\eta^*$")
    ax.set_title("optimum ± bootstrap SE over seeds", fontsize=9.5)
    ax.legend(fontsize=6.5, loc="lower left")
    ax.add_artist(ax.legend(handles=[Line2D([], [], color="0.3", linestyle="--", linewidth=1.0,
                                            label="fitted power law")], fontsize=6.5, loc="center right"))
    ax.legend(fontsize=6.5, loc="lower left")


EXPERIMENT = Experiment(
    name="lr-transfer",
    paper="Yang et al. 2022 (TP V), Fig. 1; Yang, Yu, Zhu & Hayou 2023 (TP VI), Fig. 1",
    summary="training loss after a fixed Adam budget on digits vs. learning rate: the optimum drifts with width "
            "under SP and with depth without Depth-muP's rule, and stays put under muP / Depth-muP (fitted drift "
            "exponents ± bootstrap SE)",
    config=Config(),
    # quick: the width sweep only (each network shape costs a compilation of several seconds)
    quick_config=Config(widths=(32, 128, 512), depths=(), seeds=2, lr_log2_min=-14.0, lr_log2_max=0.0,
                        lr_log2_step=1.0, steps=20, n_samples=512),
    points=points,
    compute=compute,
    plot=plot,
    dtype="float32",
)
