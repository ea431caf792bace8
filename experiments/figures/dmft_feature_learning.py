r"""``dmft-feature-learning``: finite mean-field / muP networks converge to the DMFT of feature learning.

An MLP (``depth`` hidden layers, ``activation``, ``w_std``, no biases) in the mean-field / muP parameterization with
richness ``gamma`` (output ``f = w_std w . phi(h^L) / (gamma n)``, weights trained at ``eta gamma^2 n``; Bordelon &
Pehlevan 2022), trained by full-batch gradient descent on ``1/P sum 1/2 (f - y)^2`` for ``steps`` steps on
Kumar et al.'s quadratic target (``experiments.feature_learning.polynomial_task``). Per ``gamma``:

* ``kind = "dmft"``: the infinite-width trajectory of ``theory.dmft.solve`` (one hidden layer: the neurons' single-site
  law sampled in weight space, ``method="particles"``; deeper: Monte Carlo over the fields, which needs a smooth
  activation; ``replicas`` independent solves for the standard errors): train loss, test loss, the NTK and the last
  hidden layer's feature kernel ``Phi^L(t, t)`` on the training inputs;
* ``kind = "network"``: finite networks of each width and seed (``experiments.feature_learning.train``, centred:
  ``f - f_0``, which has the same infinite-width limit and removes the ``O(1 / (gamma sqrt n))`` initial output),
  recording the same quantities.

The figure: (a) train loss, (b) the centred kernel-target alignment of the NTK (``theory.grokking.kernel_alignment``)
over the steps, DMFT (lines, SE band) against the widest networks (markers, mean ± SE over seeds); (c) the distance
of the seed-averaged loss curve to the DMFT's (``RMS_t``) against width, with the one-network spread, and their
fitted power laws (expected ``n^-1`` and ``n^-1/2``).

Notes and measured numbers: docs/figures/dmft_feature_learning.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import theory
from experiments import feature_learning as fl
from experiments.figures import style
from experiments.registry import Experiment, Point, grid
from experiments.scaling import fit_power_law
from theory import dmft, grokking

STEM = "dmft_feature_learning"


@dataclass(frozen=True)
class Config:
    """The task (``dimension``, ``n_train``, ``n_test``, ``task_seed``), the MLP (``depth``, ``activation``,
    ``w_std``), ``gammas``, ``steps`` of gradient descent at ``learning_rate``; finite ``widths`` with ``seeds``
    each; the DMFT's ``samples`` per replica and ``replicas``."""

    dimension: int = 8
    n_train: int = 8
    n_test: int = 4
    task_seed: int = 0
    depth: int = 1
    activation: str = "relu"
    w_std: float = 1.0
    gammas: tuple[float, ...] = (0.25, 1.0, 2.0)
    steps: int = 12
    learning_rate: float = 1.0
    widths: tuple[int, ...] = (128, 512, 2048)
    seeds: int = 16
    samples: int = 16384
    replicas: int = 16

    def __post_init__(self) -> None:
        for name in ("dimension", "n_train", "n_test", "depth", "steps", "seeds", "samples", "replicas"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.gammas or any(not gamma > 0 for gamma in self.gammas):
            raise ValueError(f"gammas must be positive, got {self.gammas}")
        if not self.widths or any(n < 1 for n in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths}")
        if not (self.learning_rate > 0 and self.w_std > 0):
            raise ValueError("learning_rate and w_std must be positive")


def _common(c: Config) -> dict:
    return {"dimension": c.dimension, "n_train": c.n_train, "n_test": c.n_test, "task_seed": c.task_seed,
            "depth": c.depth, "activation": c.activation, "w_std": c.w_std, "steps": c.steps,
            "learning_rate": c.learning_rate}


def points(c: Config) -> list[Point]:
    common = _common(c)
    return (grid(kind="dmft", gamma=c.gammas, width=0, seed=0, samples=c.samples, replicas=c.replicas, **common)
            + grid(kind="network", gamma=c.gammas, width=c.widths, seed=range(c.seeds), samples=0, replicas=0,
                   **common))


def setup(point: Point) -> tuple[theory.MLP, fl.Task]:
    arch = theory.MLP(point["depth"], point["activation"], w_std=point["w_std"])
    task = fl.polynomial_task(point["dimension"], point["n_train"], point["n_test"], seed=point["task_seed"])
    return arch, task


def _alignment(kernels: np.ndarray, y: np.ndarray) -> list[float]:
    return [grokking.kernel_alignment(k, y) for k in kernels]


def compute(point: Point) -> dict:
    arch, task = setup(point)
    steps, eta, p = point["steps"], point["learning_rate"], point["n_train"]
    if point["kind"] == "dmft":
        key = jax.random.fold_in(jax.random.key(point["seed"]), round(point["gamma"] * 1e6))
        sol = dmft.solve(arch, task.x_train, task.y_train, task.x_test, gamma=point["gamma"], learning_rate=eta,
                         steps=steps, key=key, samples=point["samples"], replicas=point["replicas"],
                         kernels="equal_time")
        resid = sol.f_test - task.y_test[None]
        test = 0.5 * np.mean(resid**2, axis=1)
        # delta method, without assuming the test points' errors independent (an upper bound)
        test_se = np.sum(np.abs(resid) * sol.f_test_stderr, axis=1) / resid.shape[1]
        ntk = sol.ntk[:, :p, :p]
        features = sol.phi[-1][:, :p, :p] * point["w_std"] ** 2   # Phi^L(t, t), times the readout's w_std^2
        return {"train_loss": sol.loss.tolist(), "train_loss_se": sol.loss_stderr.tolist(),
                "test_loss": test.tolist(), "test_loss_se": test_se.tolist(),
                "ntk_alignment": _alignment(ntk, task.y_train),
                "feature_alignment": _alignment(features, task.y_train),
                "ntk_trace": (np.trace(ntk, axis1=1, axis2=2) / p).tolist(),
                "iterations": sol.iterations, "diverged": False}
    run = fl.train(arch, task, width=point["width"], gamma=point["gamma"], learning_rate=eta,
                   record_steps=np.arange(steps + 1), seed=point["seed"], kernels=True)
    nan = [math.nan] * (steps + 1)
    return {"train_loss": run.train_loss.tolist(), "train_loss_se": nan,
            "test_loss": run.test_loss.tolist(), "test_loss_se": nan,
            "ntk_alignment": _alignment(run.ntk, task.y_train),
            "feature_alignment": _alignment(run.features, task.y_train),
            "ntk_trace": (np.trace(run.ntk, axis1=1, axis2=2) / p).tolist(),
            "iterations": 0, "diverged": run.diverged}


def deviations(df: pd.DataFrame, value: str = "train_loss") -> pd.DataFrame:
    """Per ``(gamma, width)``: ``bias = RMS_t |mean_seeds value_n(t) - value_DMFT(t)|`` over the steps ``t >= 1``
    (with its SE from the seeds and the DMFT's SE added in quadrature; ``noise_floor`` is ``RMS_t`` of that per-step
    SE: a bias below it is not resolved), and ``spread = RMS_t std_seeds value_n(t)`` (one network's fluctuation,
    with the SE of a sample standard deviation)."""
    rows = []
    for gamma, part in df.groupby("gamma", sort=True):
        ref = part[part["kind"] == "dmft"].iloc[0]
        want, want_se = np.asarray(ref[value], float)[1:], np.asarray(ref[value + "_se"], float)[1:]
        for width, nets in part[part["kind"] == "network"].groupby("width", sort=True):
            v = np.array(nets[value].tolist(), float)[:, 1:]
            k = v.shape[0]
            mean, std = v.mean(axis=0), v.std(axis=0, ddof=1)
            gap = mean - want
            bias = float(np.sqrt(np.mean(gap**2)))
            # SE of the RMS gap: propagate each step's SE (seeds and DMFT) through d RMS / d gap_t = gap_t / (T RMS)
            se_t = np.sqrt(std**2 / k + want_se**2)
            bias_se = float(np.sqrt(np.sum((gap * se_t) ** 2)) / (gap.size * bias)) if bias > 0 else math.nan
            rows.append({"gamma": gamma, "width": int(width), "bias": bias, "bias_se": bias_se,
                         "noise_floor": float(np.sqrt(np.mean(se_t**2))),
                         "spread": float(np.sqrt(np.mean(std**2))),
                         # a sample standard deviation of k Gaussian values is off by ~ 1 / sqrt(2 (k - 1))
                         "spread_se": float(np.sqrt(np.mean(std**2)) / math.sqrt(2 * (k - 1))), "seeds": k})
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    fig, (ax_a, ax_b, ax_c) = style.subplots(1, 3, panel_size=(4.2, 3.4))
    nets = df[df["kind"] == "network"]
    widest = int(nets["width"].max())
    t = np.arange(config.steps + 1)
    for i, (gamma, part) in enumerate(df.groupby("gamma", sort=True)):
        col = style.color(i)
        ref = part[part["kind"] == "dmft"].iloc[0]
        loss, se = np.asarray(ref["train_loss"], float), np.asarray(ref["train_loss_se"], float)
        ax_a.plot(t, loss, color=col, linewidth=1.4, label=rf"DMFT, $\gamma = {gamma:g}$")
        ax_a.fill_between(t, loss - 2 * se, loss + 2 * se, color=col, alpha=0.25, linewidth=0)
        ax_b.plot(t, ref["ntk_alignment"], color=col, linewidth=1.4, label=rf"DMFT, $\gamma = {gamma:g}$")
        ax_b.plot(t, ref["feature_alignment"], color=col, linewidth=1.0, linestyle=":")
        wide = part[(part["kind"] == "network") & (part["width"] == widest)]
        for ax, name in ((ax_a, "train_loss"), (ax_b, "ntk_alignment")):
            v = np.array(wide[name].tolist(), float)
            ax.errorbar(t, v.mean(axis=0), yerr=v.std(axis=0, ddof=1) / math.sqrt(len(v)), color=col,
                        marker="o", markersize=3, linestyle="none", markerfacecolor="none")
    ax_a.plot([], [], "ko", markerfacecolor="none", markersize=3, label=f"networks, n = {widest}")
    ax_a.set(yscale="log", xlabel="gradient-descent step $t$", ylabel="train loss",
             title=rf"(a) loss: DMFT ($\pm$2 SE) vs width {widest}")
    ax_a.legend(fontsize=6.5)
    ax_b.plot([], [], "k:", label=r"feature kernel $\Phi^L$ (DMFT)")
    ax_b.set(xlabel="gradient-descent step $t$", ylabel="kernel-target alignment (centred)",
             title="(b) NTK alignment with the targets")
    ax_b.legend(fontsize=6.5)
    table = deviations(df)
    for i, (gamma, part) in enumerate(table.groupby("gamma", sort=True)):
        fit = None
        if len(part) >= 3:
            fit = fit_power_law(part["width"], part["bias"], part["bias_se"], absolute_sigma=False)
            spread = fit_power_law(part["width"], part["spread"], part["spread_se"], absolute_sigma=True)
            print(f"dmft-feature-learning: gamma {gamma:g}: mean deviation ~ n^({fit.exponent:.2f} ± "
                  f"{fit.exponent_stderr:.2f}), one network ~ n^({spread.exponent:.2f} ± "
                  f"{spread.exponent_stderr:.2f})", file=sys.stderr)
        style.errorbar_loglog(ax_c, part["width"], part["bias"], part["bias_se"], index=i, fit=fit or False,
                              label=rf"mean deviation, $\gamma = {gamma:g}$")
        ax_c.errorbar(part["width"], part["spread"], yerr=part["spread_se"], color=style.color(i),
                      marker=style.marker(i), linestyle=":", markerfacecolor="none", linewidth=1.0,
                      label=rf"one network, $\gamma = {gamma:g}$")
        ax_c.plot(part["width"], part["noise_floor"], color=style.color(i), linestyle="-", linewidth=0.6, alpha=0.6)
    if len(table):
        w = table["width"].to_numpy(float)
        first = table[table["width"] == w.min()]
        style.guide_line(ax_c, w, -1.0, (w.min(), float(first["bias"].max())), label=r"$n^{-1}$")
        style.guide_line(ax_c, w, -0.5, (w.min(), float(first["spread"].max())), label=r"$n^{-1/2}$")
    ax_c.set_xscale("log", base=2)
    if len(table):   # a bias at the noise floor has an error bar down to ~0: keep the axis on the measured range
        ax_c.set_ylim(bottom=0.3 * float(np.min(table[["bias", "spread", "noise_floor"]].to_numpy()[
            table[["bias", "spread", "noise_floor"]].to_numpy() > 0])))
    ax_c.plot([], [], color="0.3", linewidth=0.6, label="noise floor of the mean deviation")
    ax_c.set(xlabel="width $n$", ylabel=r"RMS$_t$ over the steps", title="(c) distance to the DMFT loss")
    ax_c.legend(fontsize=5.5, ncol=2)
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="dmft-feature-learning",
    paper="Bordelon & Pehlevan 2022 (Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide Neural "
          "Networks)",
    summary="loss curves and NTK-target alignment over gradient descent for several richness gamma: the DMFT "
            "(theory.dmft) against finite mean-field / muP networks of several widths",
    config=Config(),
    quick_config=Config(gammas=(0.5, 2.0), widths=(128, 512), seeds=4, steps=6, samples=256, replicas=2),
    points=points,
    compute=compute,
    plot=plot,
)
