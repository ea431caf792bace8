r"""``width-convergence``: finite-width NNGP and NTK against their infinite-width limits.

For each architecture in :data:`ARCHITECTURES` (a ReLU MLP and a depth-scaled ReLU ResNet) and each
width ``n``, ``experiments.monte_carlo.estimate_kernels`` samples independent width-``n`` networks and
measures, on a fixed set of seeded inputs, two kernels per network: the NNGP sample
``K̂ = c^2 <h(x), h(x')> + c_b^2`` (the readout's conditional covariance, ``nngp_from="readout_kernel"``:
the same mean as ``f f^T`` without the readout's O(1) sampling noise) and the exact NTK ``Θ̂`` (averaged
over ``n_out`` output units). ``theory.kernels`` gives the limits ``K_∞``, ``Θ_∞`` (Neal 1996;
Lee et al. 2018; Jacot et al. 2018). Two quantities are plotted against ``n``, both relative to the
limit's Frobenius norm: the **bias of the mean kernel** ``‖E K̂_n − K_∞‖_F / ‖K_∞‖_F`` (``O(1/n)``; debiased for the
Monte-Carlo noise, its ``1/n`` slope fitted over the widths where it is resolved above ``resolved_sigma`` standard
errors) and the **fluctuation of one network's kernel** ``sqrt(E‖K̂_n − E K̂_n‖_F²) / ‖K_∞‖_F`` (``O(1/sqrt(n))``,
Hanin & Nica 2019; slope fitted from ``fluctuation_fit_from`` on). A grid point is ``(architecture, width, seed)``
with ``batches`` independent batches of networks, pooled per width as replicates (delete-one jackknife error bars);
float32 networks, float64 accumulation.

Derivation and notes: docs/figures/width_convergence.md (the estimators, the measured slopes of the default sweep).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib as mpl
import numpy as np
import pandas as pd

import theory
from experiments import monte_carlo
from experiments.figures import style
from experiments.registry import Experiment, grid
from experiments.scaling import PowerLawFit, fit_power_law

KERNELS = ("nngp", "ntk")

ARCHITECTURES: dict[str, theory.MLP | theory.ResNet] = {
    "relu-mlp": theory.MLP(depth=3, activation="relu", w_std=2**0.5, b_std=0.1),
    "relu-resnet": theory.ResNet(depth=8, activation="relu", w_std=2**0.5, b_std=0.1, branch_scale=1.0,
                                 depth_exponent=0.5),
}
"""The architectures this experiment can sweep, by the name used in the config and the grid points."""

TITLES: dict[str, str] = {
    "relu-mlp": r"ReLU MLP, $L=3$, $\sigma_w^2=2$, $\sigma_b=0.1$",
    "relu-resnet": r"ReLU ResNet, $L=8$, branches $\times 1/\sqrt{L}$",
}


@dataclass(frozen=True)
class Config:
    """The sweep: architectures x widths x seeds, and how many networks each point samples.

    Attributes:
        architectures: names in :data:`ARCHITECTURES`.
        widths: hidden widths ``n``.
        seeds: number of seeds (``0 .. seeds-1``); the figure pools them.
        n_inputs, features, input_seed: the fixed inputs, ``N(0, 1)`` entries from ``numpy``'s
            ``default_rng(input_seed)``, shape ``(n_inputs, features)``.
        n_out: readout units (the NTK sample is averaged over them).
        sample_budget: networks per point are ``sample_budget / (n² · layers)`` (equal compute per width:
            a network costs ~ ``n² · layers``), clipped to ``[min_samples, max_samples]`` and rounded up
            to a multiple of ``batches``. The cap binds at small widths, where networks are cheap and the
            bias is resolvable; ``min_samples`` binds at the largest widths, where only the fluctuation
            (which needs few networks) is measurable.
        batches: independent batches per point (replicates for the jackknife error bars).
        resolved_sigma: the bias counts as resolved where it exceeds this many of its standard errors,
            from the smallest width up to the first width where it does not.
        fluctuation_fit_from: smallest width in the fluctuation fits (the ``n^(-1/2)`` law is the
            leading order; at ``n ~ 16`` the next order still bends the curve).
    """

    architectures: tuple[str, ...] = ("relu-mlp", "relu-resnet")
    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    seeds: int = 2
    n_inputs: int = 4
    features: int = 8
    input_seed: int = 0
    n_out: int = 8
    sample_budget: float = 1e9
    min_samples: int = 64
    max_samples: int = 48000
    batches: int = 8
    resolved_sigma: float = 3.0
    fluctuation_fit_from: int = 128

    def __post_init__(self) -> None:
        unknown = [a for a in self.architectures if a not in ARCHITECTURES]
        if unknown or not self.architectures:
            raise ValueError(f"unknown architectures {unknown}; choose among {sorted(ARCHITECTURES)}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths}")
        if len(set(self.widths)) != len(self.widths):
            raise ValueError(f"widths must be distinct, got {self.widths}")
        for name in ("seeds", "n_inputs", "features", "n_out", "min_samples", "max_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_inputs < 2:
            raise ValueError(f"n_inputs must be at least 2 (off-diagonal kernel entries), got {self.n_inputs}")
        if self.batches < 2:
            raise ValueError(f"batches must be at least 2 (jackknife replicates), got {self.batches}")
        if self.min_samples > self.max_samples:
            raise ValueError(f"min_samples ({self.min_samples}) exceeds max_samples ({self.max_samples})")
        for name in ("sample_budget", "resolved_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def n_samples(self, architecture: str, width: int) -> int:
        """Networks sampled by one point (all its batches together)."""
        per_network = width**2 * ARCHITECTURES[architecture].n_layers
        target = min(max(round(self.sample_budget / per_network), self.min_samples), self.max_samples)
        return max(2, math.ceil(target / self.batches)) * self.batches


QUICK = Config(widths=(16, 64, 256), sample_budget=5e7, min_samples=32, max_samples=8000, batches=4,
               fluctuation_fit_from=16)


def points(config: Config) -> list[dict[str, Any]]:
    """One point per (architecture, width, seed), carrying everything that fixes its computation."""
    out = []
    for arch in config.architectures:
        for width in config.widths:
            out += grid(architecture=arch, width=width, seed=range(config.seeds),
                        n_samples=config.n_samples(arch, width), batches=config.batches, n_inputs=config.n_inputs,
                        features=config.features, input_seed=config.input_seed, n_out=config.n_out)
    return out


def inputs(n_inputs: int, features: int, input_seed: int) -> np.ndarray:
    """The fixed inputs ``(n_inputs, features)``: standard normal entries, seeded."""
    return np.random.default_rng(input_seed).normal(size=(n_inputs, features))


def _key(point: Mapping[str, Any]) -> jax.Array:
    arch_id = zlib.crc32(point["architecture"].encode())
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(point["seed"]), point["width"]), arch_id)


def compute(point: Mapping[str, Any]) -> dict[str, Any]:
    """Limit and Monte-Carlo NNGP/NTK of one (architecture, width, seed), in ``batches`` independent batches.

    Returns per kernel ``k``: ``{k}_limit`` (``(N, N)``), ``{k}_mean`` and ``{k}_se`` (``(batches, N, N)``:
    each batch's mean and standard error) and this point's own summaries (see :func:`summarize`):
    ``{k}_bias_sq``, ``{k}_bias_sq_se``, ``{k}_noise_floor``, ``{k}_fluctuation``, ``{k}_fluctuation_se``.
    """
    arch = ARCHITECTURES[point["architecture"]]
    x = jnp.asarray(inputs(point["n_inputs"], point["features"], point["input_seed"]), jnp.result_type(float))
    limit = theory.kernels(arch, x)
    per_batch = point["n_samples"] // point["batches"]
    means: dict[str, list[np.ndarray]] = {k: [] for k in KERNELS}
    ses: dict[str, list[np.ndarray]] = {k: [] for k in KERNELS}
    for key in jax.random.split(_key(point), point["batches"]):
        est = monte_carlo.estimate_kernels(arch, x, width=point["width"], n_samples=per_batch, key=key,
                                           n_out=point["n_out"], nngp_from="readout_kernel")
        for k in KERNELS:
            means[k].append(getattr(est, k).mean)
            ses[k].append(getattr(est, k).stderr)
    values: dict[str, Any] = {"description": repr(arch)}
    for k in KERNELS:
        lim = np.asarray(getattr(limit, k))
        m, s = np.stack(means[k]), np.stack(ses[k])
        values |= {f"{k}_limit": lim, f"{k}_mean": m, f"{k}_se": s}
        values |= {f"{k}_{name}": v for name, v in summarize(lim, m, s, per_batch).items()}
    return values


# -- bookkeeping of the estimates ------------------------------------------------------------------
def _bias_sq(d: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Debiased squared norm of the mean of replicates ``d`` (R, ...) with per-replicate SEs ``se``:
    ``‖mean d‖² − Σ SE_pooled²`` (with ``SE_pooled² = Σ_r se_r² / R²``), and that noise term."""
    r = d.shape[0]
    noise = float(np.sum(se**2) / r**2)
    return float(np.sum(d.mean(axis=0) ** 2)) - noise, noise


def _jackknife_se(stat, r: int) -> float:
    """Delete-one jackknife standard error of ``stat(index array)`` over ``r`` replicates."""
    full = np.arange(r)
    values = np.array([stat(np.delete(full, i)) for i in range(r)])
    return float(math.sqrt((r - 1) / r * np.sum((values - values.mean()) ** 2)))


def summarize(limit: np.ndarray, means: np.ndarray, ses: np.ndarray, per_batch: int) -> dict[str, float]:
    """Relative bias and one-network fluctuation from ``R`` independent batch estimates of a kernel.

    Args:
        limit: the infinite-width kernel ``(N, N)``.
        means, ses: each batch's mean kernel and its standard error, ``(R, N, N)``.
        per_batch: networks per batch (the per-network variance is ``se² · per_batch``).

    Returns (all relative to ``‖limit‖_F``):
        ``bias_sq``: ``‖d̄‖² − Σ SE²``, an unbiased estimate of ``‖E K̂ − K_∞‖²`` (can be negative);
        ``bias_sq_se``: its jackknife standard error over the batches; ``noise_floor``: ``sqrt(Σ SE²)``,
        the expected norm of the pure Monte-Carlo error of the pooled mean; ``fluctuation``:
        ``sqrt(Σ_ij Var(K̂_ij))`` with the within-batch variances pooled; ``fluctuation_se``: its
        jackknife standard error.
    """
    norm = float(np.linalg.norm(limit))
    d, se = (means - limit) / norm, ses / norm
    r = d.shape[0]
    var = ses**2 * per_batch / norm**2
    bias_sq, noise = _bias_sq(d, se)
    return {
        "bias_sq": bias_sq,
        "bias_sq_se": _jackknife_se(lambda idx: _bias_sq(d[idx], se[idx])[0], r),
        "noise_floor": math.sqrt(noise),
        "fluctuation": float(math.sqrt(np.sum(var.mean(axis=0)))),
        "fluctuation_se": _jackknife_se(lambda idx: math.sqrt(np.sum(var[idx].mean(axis=0))), r),
    }


def pooled(df: pd.DataFrame, resolved_sigma: float = 3.0) -> pd.DataFrame:
    """One row per (architecture, width, kernel): the batches of all seeds pooled (see :func:`summarize`).

    Adds ``bias`` = ``sqrt(max(bias_sq, 0))``, its interval ``bias_low``/``bias_high`` from
    ``bias_sq ∓ bias_sq_se``, the delta-method ``bias_se = bias_sq_se / (2 bias)`` (for the fit),
    ``resolved`` (``bias > resolved_sigma * bias_se`` at this width and at every smaller one: a lone
    noise excursion at a large width does not enter the fit), ``replicates`` and ``networks``.
    """
    rows = []
    for (arch, width), group in df.groupby(["architecture", "width"], sort=False):
        per_batch = int(group.n_samples.iloc[0]) // int(group.batches.iloc[0])
        for k in KERNELS:
            means = np.concatenate([np.asarray(v, dtype=float) for v in group[f"{k}_mean"]])
            ses = np.concatenate([np.asarray(v, dtype=float) for v in group[f"{k}_se"]])
            s = summarize(np.asarray(group[f"{k}_limit"].iloc[0], dtype=float), means, ses, per_batch)
            bias = math.sqrt(max(s["bias_sq"], 0.0))
            bias_se = s["bias_sq_se"] / (2 * bias) if bias > 0 else math.inf
            rows.append({
                "architecture": arch, "width": int(width), "kernel": k, **s, "bias": bias,
                "bias_low": math.sqrt(max(s["bias_sq"] - s["bias_sq_se"], 0.0)),
                "bias_high": math.sqrt(max(s["bias_sq"] + s["bias_sq_se"], 0.0)),
                "bias_se": bias_se, "resolved": bool(bias > resolved_sigma * bias_se),
                "replicates": len(means), "networks": per_batch * len(means),
            })
    table = pd.DataFrame(rows).sort_values(["architecture", "kernel", "width"], kind="stable")
    table["resolved"] = table.groupby(["architecture", "kernel"]).resolved.cummin().astype(bool)
    return table.reset_index(drop=True)


# -- figure ----------------------------------------------------------------------------------------
LABELS = {"nngp": "NNGP $K$", "ntk": r"NTK $\Theta$"}


def _fit(x: np.ndarray, y: np.ndarray, err: np.ndarray) -> PowerLawFit | None:
    return fit_power_law(x, y, err) if len(x) >= 3 and len(np.unique(x)) >= 2 else None


def _bias_panel(ax, table: pd.DataFrame) -> list[str]:
    """Resolved biases (filled, asymmetric 1-SE bars from ``bias_sq ∓ SE``) with a fit over them, unresolved
    ones as open 2-sigma upper limits, and the noise floor dashed; returns one note per kernel."""
    notes = []
    for i, k in enumerate(KERNELS):
        t = table[table.kernel == k].sort_values("width")
        ax.plot(t.width, t.noise_floor, color=style.color(i), linestyle="--", linewidth=0.9, alpha=0.6)
        res, unres = t[t.resolved], t[~t.resolved]
        ax.errorbar(res.width, res.bias, yerr=[res.bias - res.bias_low, res.bias_high - res.bias],
                    color=style.color(i), marker=style.marker(i), linestyle="none", label=LABELS[k])
        if len(unres):
            upper = np.sqrt(np.maximum(unres.bias_sq, 0.0) + 2 * unres.bias_sq_se)
            ax.errorbar(unres.width, upper, yerr=[0.45 * upper, 0 * upper], uplims=True, color=style.color(i),
                        marker=style.marker(i), markerfacecolor="white", linestyle="none", alpha=0.7)
        fit = _fit(res.width.to_numpy(float), res.bias.to_numpy(float), res.bias_se.to_numpy(float))
        name = "NNGP" if k == "nngp" else "NTK"
        if fit is not None:
            style.plot_fit(ax, fit, res.width.to_numpy(float), index=i, label=fit.label(f"{name} slope"))
            notes.append(f"{name}: resolved for $n \\leq {int(res.width.max())}$, fitted there")
        else:
            notes.append(f"{name}: resolved at {len(res)} width(s): too few to fit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.05 * float(table.noise_floor.min()))
    return notes


def _fluctuation_panel(ax, table: pd.DataFrame, fit_from: int) -> list[PowerLawFit | None]:
    """Fluctuations with jackknife error bars (open markers: below ``fit_from``) and power-law fits over the
    widths ``>= fit_from``."""
    fits = []
    for i, k in enumerate(KERNELS):
        t = table[table.kernel == k].sort_values("width")
        f, rest = t[t.width >= fit_from], t[t.width < fit_from]
        style.errorbar_loglog(ax, f.width, f.fluctuation, f.fluctuation_se, index=i,
                              label=LABELS[k] + (" (last layer)" if k == "nngp" else ""))
        if len(rest):
            style.errorbar_loglog(ax, rest.width, rest.fluctuation, rest.fluctuation_se, index=i,
                                  markerfacecolor="white")
        fit = _fit(f.width.to_numpy(float), f.fluctuation.to_numpy(float), f.fluctuation_se.to_numpy(float))
        if fit is not None:
            name = "NNGP" if k == "nngp" else "NTK"
            style.plot_fit(ax, fit, f.width.to_numpy(float), index=i, label=fit.label(f"{name} slope"))
        fits.append(fit)
    return fits


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """2 columns (mean-kernel bias; one-network fluctuation) x one row per architecture."""
    table = pooled(df, config.resolved_sigma)
    archs = list(dict.fromkeys(df.architecture))
    fig, axes = style.subplots(len(archs), 2, panel_size=(4.6, 3.4))
    axes = np.asarray(axes).reshape(len(archs), 2)
    for row, arch in enumerate(archs):
        t = table[table.architecture == arch]
        n = np.sort(t.width.unique()).astype(float)
        ax_b, ax_f = axes[row]
        notes = _bias_panel(ax_b, t)
        top = float(t[t.width == n[0]].bias_high.max())
        style.guide_line(ax_b, n, -1.0, (n[0], top * 2.0), label=r"$\propto 1/n$")
        ax_b.plot([], [], color="0.4", linestyle="--", linewidth=0.9, label=r"noise floor $(\sum\mathrm{SE}^2)^{1/2}$")
        ax_b.errorbar([], [], yerr=[], uplims=True, color="0.4", marker="o", markerfacecolor="white",
                      linestyle="none", label="unresolved: 2$\\sigma$ upper limit")
        ax_b.text(0.98, 0.98, "\n".join(notes) + f"\n(resolved: bias > {config.resolved_sigma:g} SE; slopes ± 1 SE)",
                  transform=ax_b.transAxes, fontsize=7, va="top", ha="right", color="0.3")
        ax_b.set(xlabel="width $n$", ylabel=r"$\|\mathbb{E}\,\hat K_n - K_\infty\|_F\,/\,\|K_\infty\|_F$",
                 title=f"{TITLES.get(arch, arch)}: mean-kernel bias")
        ax_b.legend(loc="lower left", fontsize=7, ncol=2)
        _fluctuation_panel(ax_f, t, config.fluctuation_fit_from)
        first = t[t.width == n[0]]
        style.guide_line(ax_f, n, -0.5, (n[0], float(first.fluctuation.max()) * 1.6), label=r"$\propto n^{-1/2}$")
        ax_f.set(xlabel="width $n$",
                 ylabel=r"$(\mathbb{E}\|\hat K_n - \mathbb{E}\hat K_n\|_F^2)^{1/2}\,/\,\|K_\infty\|_F$",
                 title="one-network fluctuation")
        ax_f.text(0.98, 0.98, f"fits over $n \\geq {config.fluctuation_fit_from}$ (slopes ± 1 SE)\nopen: excluded, "
                  "where the next order\nin $1/n$ still steepens the curve",
                  transform=ax_f.transAxes, fontsize=7, va="top", ha="right", color="0.3")
        ax_f.legend(loc="lower left", fontsize=7)
        for ax in (ax_b, ax_f):
            ax.set_xticks(n, [str(int(w)) for w in n])
            ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
            ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
    return style.save(fig, outdir, "width_convergence")


EXPERIMENT = Experiment(
    name="width-convergence",
    paper="Jacot et al. 2018; Hanin & Nica 2019",
    summary="Monte-Carlo NNGP/NTK vs. the limit: mean-kernel bias ~ 1/n, one network's fluctuation ~ 1/sqrt(n)",
    config=Config(),
    quick_config=QUICK,
    points=points,
    compute=compute,
    plot=plot,
    dtype="float32",
)
