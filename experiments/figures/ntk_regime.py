r"""``ntk-regime-training``: wide networks in the NTK parameterization train like their infinite-width linear model.

A ReLU MLP of width ``n`` in TP IV's NTK parameterization (``a = 0, 1/2, 1/2``, ``b = 0``, SGD ``c = 0``), trained by
full-batch gradient descent on the teacher task (MSE ``1/N sum_i 1/2 (f_i - y_i)^2``), against the linear model of
its infinite-width NTK (Lee et al. 2019; ``theory.training_dynamics``): residuals ``(I - eta Theta / N)^t r_0`` with
``Theta = theory.kernels(theory.parameterize(arch, "ntk", width)).ntk``, the NTK of the trained parameterization.
Per grid point ``(width, seed)``: the measured loss curve and the linear model's from the network's own ``f_0``. The
gap ``delta = RMS_t log(L_t / L_t^lin)`` falls like ``n^-1/2`` (Jacot et al. 2018; Lee et al. 2019, Thm 2.1).

Derivation and notes: docs/figures/ntk_regime.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import theory
from experiments import training
from experiments.figures import style
from experiments.registry import Experiment, Point, grid
from experiments.scaling import fit_power_law
from theory import training_dynamics as td

STEM = "ntk_regime_training"


@dataclass(frozen=True)
class Config:
    """``widths`` of an MLP with ``depth`` hidden layers (ReLU, ``w_std``), ``seeds`` initialisations each,
    ``steps`` full-batch SGD steps at ``learning_rate`` on ``n_samples`` teacher examples with ``features``
    inputs (NTK parameterization)."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    seeds: int = 6
    depth: int = 2
    w_std: float = 2**0.5
    steps: int = 100
    learning_rate: float = 0.5
    n_samples: int = 64
    features: int = 16

    def __post_init__(self) -> None:
        if len(self.widths) < 1 or any(n < 1 for n in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths}")
        for name in ("seeds", "depth", "steps", "n_samples", "features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and self.w_std > 0):
            raise ValueError("learning_rate and w_std must be positive")


def points(c: Config) -> list[Point]:
    return grid(width=c.widths, seed=range(c.seeds), depth=c.depth, w_std=c.w_std, steps=c.steps,
                learning_rate=c.learning_rate, n_samples=c.n_samples, features=c.features)


def _setup(point: Point) -> tuple[theory.MLP, training.Dataset, jax.Array, jax.Array, float]:
    """The architecture, the data, the infinite-width NTK and NNGP on the training inputs, and the largest
    ``eta lambda / N`` (gradient descent on the linear model converges iff it is below 2)."""
    arch = theory.MLP(point["depth"], "relu", w_std=point["w_std"])
    data = training.teacher(point["n_samples"], point["features"], seed=0)
    # TP IV's NTK parameterization trains the input layer with factor d, the others with 1: width-independent.
    ntk = theory.kernels(theory.parameterize(arch, "ntk", 1), data.x, get="ntk").ntk
    nngp = theory.kernels(arch, data.x, get="nngp").nngp
    top = float(jnp.linalg.eigvalsh(ntk)[-1]) * point["learning_rate"] / point["n_samples"]
    return arch, data, ntk, nngp, top


def compute(point: Point) -> dict:
    """The measured loss curve of one network, the linear model's from the same ``f_0``, and ``E L_t``."""
    arch, data, ntk, nngp, top = _setup(point)
    if top >= 2:
        raise ValueError(f"learning_rate {point['learning_rate']} makes eta lambda_max / N = {top:.3g} >= 2: "
                         "gradient descent on the linear model diverges; lower it")
    config = training.TrainConfig(learning_rate=point["learning_rate"], steps=point["steps"],
                                  probe_size=point["n_samples"])  # the probe batch is the whole training set
    result = training.train(arch, "ntk", data, point["width"], config=config, seed=point["seed"])
    f0 = training.forward(result.network, result.init_params, jnp.asarray(data.x, result.init_params[0].W.dtype))[0]
    steps, lr = point["steps"], point["learning_rate"]
    linear = td.loss_curve(ntk, f0, data.y, lr, steps)
    expected = td.expected_loss(ntk, nngp, data.y, lr, steps)
    loss = np.full(steps + 1, np.inf)
    loss[: result.loss.size] = result.loss
    return {"loss": loss.tolist(), "linear": np.asarray(linear).tolist(), "expected": np.asarray(expected).tolist(),
            "diverged_step": -1 if result.diverged_step is None else result.diverged_step,
            "eta_lambda_max_over_n": top}


def gaps(df: pd.DataFrame) -> pd.DataFrame:
    """Per width: ``delta = RMS_t log(L_t / L_t^lin)`` over the steps, mean ± SE over seeds; and the seed-averaged
    loss at the last step over ``E L_T`` with its SE."""
    rows = []
    for width, part in df.groupby("width", sort=True):
        loss, lin = np.array(part["loss"].tolist(), float), np.array(part["linear"].tolist(), float)
        delta = np.sqrt(np.mean(np.log(loss / lin) ** 2, axis=1))
        final, expected = loss[:, -1], float(part["expected"].iloc[0][-1])
        k = len(part)
        final_se = float(final.std(ddof=1) / math.sqrt(k) / expected) if k > 1 else math.nan
        rows.append({"width": int(width), "delta": float(delta.mean()),
                     "delta_se": float(delta.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan,
                     "final_over_expected": float(final.mean() / expected),
                     "final_over_expected_se": final_se,
                     "seeds": k})
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """(a) loss curves with ``E L_t`` dashed; (b) seed-averaged loss over ``E L_t``; (c) the gap against width."""
    table = gaps(df)
    fig, (ax_a, ax_b, ax_c) = style.subplots(1, 3, panel_size=(4.0, 3.3))
    expected = np.asarray(df["expected"].iloc[0], float)
    t = np.arange(expected.size)
    for i, (width, part) in enumerate(df.groupby("width", sort=True)):
        loss = np.array(part["loss"].tolist(), float)
        mean = loss.mean(axis=0)
        se = loss.std(axis=0, ddof=1) / math.sqrt(len(part)) if len(part) > 1 else np.zeros_like(mean)
        col = style.color(i)
        ax_a.plot(t, mean, color=col, linewidth=1.0, label=f"n = {width}")
        ax_a.fill_between(t, np.maximum(mean - se, mean * 1e-3), mean + se, color=col, alpha=0.2, linewidth=0)
        ax_b.plot(t, mean / expected, color=col, linewidth=1.0, label=f"n = {width}")
        ax_b.fill_between(t, (mean - se) / expected, (mean + se) / expected, color=col, alpha=0.2, linewidth=0)
    ax_a.plot(t, expected, color="k", linestyle="--", linewidth=1.3, label=r"$n = \infty$: $E\,L_t$ (NTK)")
    ax_a.set(yscale="log", xlabel="gradient-descent step $t$", ylabel="training loss $L_t$",
             title="(a) NTK parameterization, full-batch GD")
    ax_a.legend(fontsize=7)
    ax_b.axhline(1.0, color="k", linestyle="--", linewidth=1.3)
    ax_b.set(yscale="log", xlabel="gradient-descent step $t$", ylabel=r"mean $L_t$ / $E\,L_t$ (infinite width)",
             title="(b) relative to the infinite-width loss")
    ax_b.legend(fontsize=7)
    ok = table[np.isfinite(table["delta"]) & (table["delta"] > 0)]
    fit = None
    if len(ok) >= 3:
        err = ok["delta_se"].to_numpy()
        fit = fit_power_law(ok["width"], ok["delta"], err if np.all(err > 0) else None, absolute_sigma=False)
        print(f"ntk-regime-training: gap ~ n^({fit.exponent:+.3f} ± {fit.exponent_stderr:.3f})", file=sys.stderr)
    style.errorbar_loglog(ax_c, ok["width"], ok["delta"], ok["delta_se"], index=0, fit=fit or False,
                          label="measured (mean ± SE over seeds)")
    if len(ok):
        style.guide_line(ax_c, ok["width"], -0.5, (ok["width"].iloc[0], ok["delta"].iloc[0]), label=r"$n^{-1/2}$")
    ax_c.set_xscale("log", base=2)
    ax_c.set(xlabel="width $n$", ylabel=r"$\delta = \mathrm{RMS}_t \log(L_t / L_t^{\mathrm{lin}})$",
             title="(c) gap to the linear model, same $f_0$")
    ax_c.legend(fontsize=7)
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="ntk-regime-training",
    paper="Lee et al. 2019 (Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent)",
    summary="training loss of wide NTK-parameterized MLPs under full-batch GD on MSE against the infinite-width "
            "linear model (I - eta Theta / N)^t; the gap shrinks like n^-1/2",
    config=Config(),
    quick_config=Config(widths=(64, 256, 1024), seeds=4, steps=50),
    points=points,
    compute=compute,
    plot=plot,
)
