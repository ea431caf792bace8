r"""``laziness``: how far each trained residual block is from its linearisation, against depth, for the branch
multipliers ``L^-1/2`` (Depth-muP) and ``L^-1`` (CompleteP) (Dey et al. 2025, "Don't be lazy: CompleteP enables
compute-efficient deep transformers", arXiv 2505.01618, Sec. 4).

Networks (muP in width, Adam, the depth rule ``theory.parameterizations.depth_family(alpha)``: branch ``L^-alpha``,
block learning rate ``eta L^(alpha - 1)``, Adam epsilon ``eps L^-alpha``):

* ``"resnet"``: ``Dense`` stem, ``L`` two-layer blocks ``h <- h + L^-alpha Dense(phi(Dense(h)))``, ``Dense`` readout,
  on the teacher regression task (``experiments.training.teacher``);
* ``"transformer"``: ``theory.Transformer(L)`` (pre-LN: an attention and an MLP block per layer, one ``L`` for both),
  on in-context linear regression (``experiments.sequence_tasks.linear_regression``: ``length - 1`` context
  tokens and a query, ``features`` dimensions).

Per grid point ``(architecture, alpha, width, depth, seed)`` and recorded step ``t``: ``d_l(t)`` of every block
(``experiments.laziness``: the part of the block's change that its linearisation in its own parameters misses,
relative to the change, on the block's own input). CompleteP's claim: with blocks of two or more layers, ``alpha =
1/2`` blocks turn lazy with depth, ``d ~ L^-1/2`` (their weights move by ``L^-1/2``, and a block's remainder is
second order in its own move), while ``alpha = 1`` keeps ``d = Theta(1)`` in ``L`` (its blocks' weights move by
``Theta(1)``). The figure fits ``d ~ L^p`` (mean over seeds, 95% CI) for each architecture, alpha, width and step.

Notes and measured numbers: docs/figures/laziness.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import theory
from experiments import coord_checks, sequence_tasks, training
from experiments import laziness as diagnostic
from experiments.figures import style
from experiments.registry import Experiment, Point, grid
from experiments.scaling import PowerLawFit
from theory import layers as nn
from theory import parameterizations as pz

STEM = "laziness"
ARCHITECTURES = ("resnet", "transformer")
LABELS = {"resnet": "ResNet, two-layer blocks", "transformer": "pre-LN transformer"}


@dataclass(frozen=True)
class Config:
    """Branch exponents ``alphas`` (each in [1/2, 1]), ``architectures`` (any of "resnet", "transformer"),
    ``widths``, depths ``L`` per architecture (``resnet_depths``: blocks; ``transformer_depths``: layers of two
    blocks), ``seeds`` initialisations, Adam at base ``learning_rate`` with the distance recorded after the
    largest of ``steps`` full-batch steps at every width and depth, and after each of ``steps`` at the widest width
    and the smallest and largest depth (each recorded step count is a separately compiled training run), the
    blocks' ``activation``, ``n_samples`` examples of ``features`` inputs (for the transformer: sequences of
    ``length`` tokens of in-context regression in ``features`` dimensions, ``n_heads`` heads) and ``task_seed``."""

    alphas: tuple[float, ...] = (0.5, 1.0)
    architectures: tuple[str, ...] = ARCHITECTURES
    widths: tuple[int, ...] = (64, 256)
    resnet_depths: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    transformer_depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    seeds: int = 3
    steps: tuple[int, ...] = (1, 4, 16)
    learning_rate: float = 0.05
    activation: str = "tanh"
    n_samples: int = 32
    features: int = 8
    length: int = 8
    n_heads: int = 2
    task_seed: int = 0

    def __post_init__(self) -> None:
        for alpha in self.alphas:
            pz.depth_family(alpha)  # raises for alpha outside [1/2, 1]
        if not self.alphas:
            raise ValueError("alphas must name at least one branch exponent in [1/2, 1], e.g. (0.5, 1.0)")
        bad = [a for a in self.architectures if a not in ARCHITECTURES]
        if bad or not self.architectures:
            raise ValueError(f"architectures must be a non-empty subset of {ARCHITECTURES}, got {self.architectures}")
        for name in ("widths", "resnet_depths", "transformer_depths", "steps"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or int(v) != v or v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {values}")
        for name in ("seeds", "n_samples", "features", "length", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite positive number, got {self.learning_rate}")


def points(c: Config) -> list[Point]:
    common = {"learning_rate": c.learning_rate, "activation": c.activation, "n_samples": c.n_samples,
              "features": c.features, "task_seed": c.task_seed}
    out = []
    for arch in c.architectures:
        depths = c.resnet_depths if arch == "resnet" else c.transformer_depths
        extra = {"length": c.length, "n_heads": c.n_heads} if arch == "transformer" else {}
        # seeds vary fastest: they share one compiled training loop
        for p in grid(architecture=arch, alpha=c.alphas, width=c.widths, depth=depths, seed=range(c.seeds),
                      **common, **extra):
            ends = p["width"] == max(c.widths) and p["depth"] in (min(depths), max(depths))
            steps = sorted(set(c.steps)) if ends else [max(c.steps)]
            out.append({**p, "steps": steps})
    return out


# -- networks and data --------------------------------------------------------------------------------------------
def resnet(depth: int, activation: str = "tanh") -> nn.Serial:
    """``Dense`` stem, ``depth`` blocks ``Residual(Dense, phi, Dense)`` (scale 1: the depth rule multiplies it by
    ``L^-alpha``), ``Dense`` readout."""
    block = nn.Residual(nn.Dense(), nn.Elementwise(activation), nn.Dense())
    return theory.serial(nn.Dense(), *([block] * depth), nn.Dense())


def setup(point: Point) -> tuple[theory.layers.Program, training.Dataset]:
    """The architecture and the data of a grid point."""
    if point["architecture"] == "resnet":
        return (resnet(point["depth"], point["activation"]),
                training.teacher(point["n_samples"], point["features"], seed=point["task_seed"]))
    arch = theory.Transformer(point["depth"], point["n_heads"], point["activation"], depth_exponent=point["alpha"])
    task = sequence_tasks.linear_regression(point["n_samples"], point["length"] - 1, dim=point["features"],
                                            seed=point["task_seed"])
    return arch, task.dataset


def compute(point: Point) -> dict:
    arch, data = setup(point)
    config = training.TrainConfig(optimizer="adam", learning_rate=point["learning_rate"])
    df = diagnostic.laziness(arch, "mup", data, point["width"], steps=tuple(point["steps"]), config=config,
                             depth_parameterization=pz.depth_family(point["alpha"]), seed=point["seed"],
                             probe_size=point["n_samples"])
    table = df.pivot(index="step", columns="layer", values="distance").sort_index()
    names = df.drop_duplicates("layer").sort_values("layer").layer_name.tolist()
    return {"recorded_steps": table.index.tolist(), "layer_names": names, "distance": table.to_numpy().tolist(),
            "diverged": bool(df.diverged.any())}


# -- analysis -------------------------------------------------------------------------------------------------------
def block_kind(name: str) -> str:
    """"attention" or "mlp" for a transformer's blocks, "block" for a ResNet's."""
    return "attention" if name.endswith("attention") else "mlp" if name.endswith("mlp") else "block"


def long_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (grid point, recorded step, residual block): ``architecture``, ``alpha``, ``width``, ``depth``,
    ``seed``, ``step``, ``block`` (1-based position in the stream), ``position`` (``block / n_blocks``), ``kind``
    ("block", "attention", "mlp"), ``distance``, ``diverged``. The stem / embedding and the readout, which are
    linear in their parameters (``d = 0``), are left out."""
    rows = []
    for rec in df.itertuples(index=False):
        names = list(rec.layer_names)[1:-1]
        for step, row in zip(rec.recorded_steps, rec.distance, strict=True):
            for j, (name, d) in enumerate(zip(names, list(row)[1:-1], strict=True)):
                rows.append({"architecture": rec.architecture, "alpha": rec.alpha, "width": rec.width,
                             "depth": rec.depth, "seed": rec.seed, "step": step, "block": j + 1,
                             "position": (j + 1) / len(names), "kind": block_kind(name), "distance": float(d),
                             "diverged": bool(rec.diverged)})
    return pd.DataFrame(rows)


def block_means(long: pd.DataFrame, by_kind: bool = False) -> pd.DataFrame:
    """The mean ``d`` over a network's blocks, per (architecture, alpha, width, depth, seed, step), with ``kind``
    "all"; with ``by_kind``, over each kind of block separately (a transformer's attention and MLP blocks)."""
    keys = ["architecture", "alpha", "width", "depth", "seed", "step"]
    ok = long[~long.diverged]
    if by_kind:
        return ok.groupby([*keys, "kind"], as_index=False).distance.mean()
    return ok.groupby(keys, as_index=False).distance.mean().assign(kind="all")


def fit_depth_slopes(means: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """``d ~ C L^p`` per (architecture, alpha, kind, width, step): ``experiments.scaling.fit_power_law`` of the
    mean over seeds against depth, weighted by its standard error with the scale re-estimated from the residuals
    (Student-t interval; unweighted with one seed). Columns ``slope``, ``slope_se``, ``ci_low``, ``ci_high``,
    ``n_depths``, ``fit`` (the :class:`~experiments.scaling.PowerLawFit`, from
    :func:`experiments.coord_checks.fit_seed_means`). Groups with fewer than 3 depths are left out."""
    rows = []
    keys = ["architecture", "alpha", "kind", "width", "step"]
    for key, part in means.groupby(keys, sort=True):
        fit = coord_checks.fit_seed_means(part, "depth", "distance", confidence)
        if fit is None:
            continue
        rows.append({**dict(zip(keys, key, strict=True)),
                     "slope": fit.exponent, "slope_se": fit.exponent_stderr, "ci_low": fit.ci_low,
                     "ci_high": fit.ci_high, "n_depths": fit.n_points, "fit": fit})
    return pd.DataFrame(rows, columns=[*keys, "slope", "slope_se", "ci_low", "ci_high", "n_depths", "fit"])


# -- figure ---------------------------------------------------------------------------------------------------------
def _alpha_label(alpha: float) -> str:
    names = {0.5: r"$\alpha = 1/2$ (Depth-$\mu$P)", 1.0: r"$\alpha = 1$ (CompleteP)"}
    return names.get(alpha, rf"$\alpha = {alpha:g}$")


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    long = long_frame(df)
    means = block_means(long)
    kinds = block_means(long[long.kind != "block"], by_kind=True)
    slopes = fit_depth_slopes(pd.concat([means, kinds], ignore_index=True))
    _print(df, pd.concat([means, kinds], ignore_index=True), slopes)
    archs = [a for a in ARCHITECTURES if a in set(long.architecture)]
    alphas = sorted(set(long.alpha))
    widths = sorted(set(long.width))
    last = int(long.step.max())
    fig, axes = style.subplots(len(archs), 4, panel_size=(4.1, 3.3))
    axes = np.atleast_2d(axes)
    for r, arch in enumerate(archs):
        m = means[means.architecture == arch]
        sl = slopes[(slopes.architecture == arch) & (slopes.kind == "all")]
        sk = slopes[slopes.architecture == arch]
        ax = axes[r, 0]
        for i, alpha in enumerate(alphas):
            for k, width in enumerate(widths):
                part = m[(m.alpha == alpha) & (m.width == width) & (m.step == last)]
                stats = part.groupby("depth").distance.agg(["mean", "std", "count"])
                if stats.empty:
                    continue
                err = (stats["std"] / np.sqrt(stats["count"])).fillna(0).to_numpy()
                row = sl[(sl.alpha == alpha) & (sl.width == width) & (sl.step == last)]
                label = f"{_alpha_label(alpha)}, n = {width}"
                if len(row):
                    label += f": p = {row.slope.iloc[0]:+.2f} [{row.ci_low.iloc[0]:+.2f}, {row.ci_high.iloc[0]:+.2f}]"
                style.errorbar_loglog(ax, stats.index, stats["mean"], err if np.any(err > 0) else None, label=label,
                                      index=i, marker=style.marker(k), alpha=0.5 + 0.5 * (k + 1) / len(widths))
                if len(row):
                    fit: PowerLawFit = row.fit.iloc[0]
                    style.plot_fit(ax, fit, stats.index, index=i, alpha=0.6)
        ax.set(xlabel="depth $L$", ylabel=f"mean $d_l$ over blocks, step {last}",
               title=f"{LABELS[arch]}: distance from linearisation")
        ax.set_xscale("log", base=2)
        # (b) along the stream at the deepest depth, widest width
        ax = axes[r, 1]
        sub = long[(long.architecture == arch) & (long.step == last) & ~long.diverged]
        deepest, widest = sub.depth.max(), sub.width.max()
        for i, alpha in enumerate(alphas):
            part = sub[(sub.alpha == alpha) & (sub.depth == deepest) & (sub.width == widest)]
            for j, (kind, pk) in enumerate(part.groupby("kind", sort=False)):
                prof = pk.groupby("position").distance.mean()
                ax.plot(prof.index, prof.to_numpy(), color=style.color(i), marker=style.marker(j), markersize=3,
                        linestyle="-" if j == 0 else ":", label=f"{_alpha_label(alpha)}"
                        + ("" if kind == "block" else f", {kind}"))
        ax.set(xlabel="$l / L$", ylabel=f"$d_l$ at step {last}", yscale="log",
               title=f"per block, L = {deepest}, n = {widest}")
        # (c) over training, shallowest and deepest depth, widest width
        ax = axes[r, 2]
        shallow = m.depth.min()
        for i, alpha in enumerate(alphas):
            for depth, ls in ((shallow, ":"), (deepest, "-")):
                part = m[(m.alpha == alpha) & (m.depth == depth) & (m.width == widest)]
                stats = part.groupby("step").distance.agg(["mean", "std", "count"])
                err = (stats["std"] / np.sqrt(stats["count"])).fillna(0).to_numpy()
                ax.errorbar(stats.index, stats["mean"], yerr=err, color=style.color(i), marker=style.marker(i),
                            linestyle=ls, label=f"{_alpha_label(alpha)}, L = {depth}")
        ax.set(xlabel="training step $t$", ylabel="mean $d_l$ over blocks", xscale="log", yscale="log",
               title=f"over training, n = {widest}")
        # (d) fitted exponent against the width, per kind of block
        ax = axes[r, 3]
        kind_list = [k for k in ("all", "attention", "mlp") if k in set(sk.kind)]
        for i, alpha in enumerate(alphas):
            for j, kind in enumerate(kind_list):
                part = sk[(sk.alpha == alpha) & (sk.kind == kind) & (sk.step == last)].sort_values("width")
                if part.empty:
                    continue
                shift = 1 + 0.05 * (j - (len(kind_list) - 1) / 2)
                ax.errorbar(part.width * shift, part.slope,
                            yerr=np.vstack([part.slope - part.ci_low, part.ci_high - part.slope]),
                            color=style.color(i), marker=style.marker(j), linestyle="-" if j == 0 else ":",
                            label=_alpha_label(alpha) + ("" if kind == "all" else f", {kind} blocks"))
        for level, text in ((0.0, "CompleteP: $p = 0$"), (-0.5, "Depth-$\\mu$P: $p = -1/2$")):
            ax.axhline(level, color="0.45", linestyle=":", linewidth=1.2)
            ax.annotate(text, (0.02, level), xycoords=("axes fraction", "data"), fontsize=7, color="0.35",
                        va="bottom")
        ax.set(xlabel="width $n$", ylabel=f"fitted $p$ in $d \\sim L^p$, step {last} (95% CI)", xscale="log",
               title="depth exponent of the distance")
        ax.set_xscale("log", base=2)
    for ax in axes.ravel():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    return style.save(fig, outdir, STEM)


def _print(df: pd.DataFrame, means: pd.DataFrame, slopes: pd.DataFrame) -> None:
    gone = df[df.diverged]
    if len(gone):
        print(f"laziness: {len(gone)} runs diverged (left out):",
              ", ".join(f"{r.architecture} alpha {r.alpha} n {r.width} L {r.depth}" for r in gone.itertuples()))
    print("laziness: mean d over blocks (mean over seeds), and the fitted d ~ L^p (95% CI)")
    for (arch, alpha, kind, width, step), part in means.groupby(["architecture", "alpha", "kind", "width", "step"]):
        d = part.groupby("depth").distance.mean()
        row = slopes[(slopes.architecture == arch) & (slopes.alpha == alpha) & (slopes.kind == kind)
                     & (slopes.width == width) & (slopes.step == step)]
        fit = (f"p = {row.slope.iloc[0]:+.3f} [{row.ci_low.iloc[0]:+.3f}, {row.ci_high.iloc[0]:+.3f}]"
               if len(row) else "")
        print(f"  {arch:>11} alpha {alpha:g} {kind:>9} n {width:>4} step {step:>3}: "
              + " ".join(f"{v:.2e}" for v in d.to_numpy()) + f"   {fit}")


EXPERIMENT = Experiment(
    name="laziness",
    paper="Dey et al. 2025 (CompleteP), Sec. 4; Yang et al. 2023 (TP VI); Bordelon et al. 2024",
    summary="ResNets with two-layer blocks and pre-LN transformers, Adam: per-block distance from the "
            "linearisation against depth for alpha = 1/2 and 1, fitted d ~ L^p",
    config=Config(),
    # two depths each (the slope between them): every (architecture, alpha, depth) is a compilation, 4-9 s of CPU
    quick_config=Config(widths=(64,), resnet_depths=(2, 32), transformer_depths=(2, 8), seeds=3, steps=(8,)),
    points=points, compute=compute, plot=plot,
)
