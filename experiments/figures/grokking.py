r"""``grokking``: grokking as the transition from lazy to rich training (Kumar, Bordelon, Gershman & Pehlevan 2023).

The paper's polynomial regression (``experiments.feature_learning.polynomial_task``: ``y = (beta . x)^2 / (2 D)``,
``D`` input dimensions, ``P`` training points) learnt by a two-layer network ``f = 1/(gamma n) sum_i a_i phi(w_i . x
/ sqrt(D))`` with ``phi(z) = z + epsilon z^2 / 2`` (``theory.grokking.quadratic_activation``), centred, in the
mean-field parameterization with output scale ``alpha = 1 / gamma`` (``experiments.feature_learning.train``),
trained by full-batch gradient descent at learning rate ``eta`` on ``1/P sum 1/2 (f - y)^2``. Per grid point
``(alpha, width, seed)`` the train and test loss over time; once per sweep the *lazy* network's (``alpha -> inf``:
the linear model of the infinite-width NTK ``theory.kernels(theory.MLP(1, phi))``, ``theory.grokking.lazy_losses``),
and its ``t -> inf`` limit, kernel regression (``theory.predict.gradient_descent_mse``); per ``alpha`` the
infinite-width (DMFT) curve of the same network at ``gamma = 1 / alpha`` (``theory.dmft.solve_outputs``: one neuron's
single-site law sampled in weight space, replicas for the standard errors).

* (a) train (dashed) and test (solid) loss for each ``alpha`` at the widest width (mean over seeds), the lazy curves
  in black: the train loss falls on the kernel's schedule while the test loss sits on the lazy plateau, then drops;
* (b) test loss over the lazy test loss: the network leaves the plateau (``grokking_time``: below ``factor`` times it
  for good) later the lazier it is;
* (c) the grokking time against ``alpha``, per width (mean ± SE over seeds) and of the DMFT (jackknife SE over its
  replicas), with fitted power laws (the hidden weights move at a rate ``gamma = 1 / alpha``: a time ``~ alpha`` up
  to logarithms, the grey guide). The DMFT curves are thick pale lines in (a) and (b).

Notes and measured numbers: docs/figures/grokking.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.ticker
import numpy as np
import pandas as pd

import theory
from experiments import feature_learning as fl
from experiments.figures import style
from experiments.registry import Experiment, Point, grid
from experiments.scaling import fit_power_law
from theory import dmft, grokking

STEM = "grokking"


@dataclass(frozen=True)
class Config:
    """The task (``dimension`` D, ``n_train`` P, ``n_test``, ``task_seed``), the activation's ``epsilon``, output
    scales ``alphas`` (``gamma = 1 / alpha``), ``widths``, ``seeds`` per (alpha, width), full-batch gradient descent
    at ``learning_rate`` for ``steps`` steps recorded at ``records`` log-spaced steps, the ``readout`` ("trained";
    "ones" is the paper's fixed all-ones readout) and the grokking criterion ``factor`` (test loss below ``factor``
    times the lazy test loss for good). The infinite-width limit per ``alpha`` (``theory.dmft.solve_outputs``):
    ``dmft_samples`` neurons x ``dmft_replicas`` for the first ``dmft_steps`` steps (0: none; trained readout
    only)."""

    dimension: int = 20
    n_train: int = 60
    n_test: int = 500
    task_seed: int = 0
    epsilon: float = 0.05
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    widths: tuple[int, ...] = (256, 1024)
    seeds: int = 3
    learning_rate: float = 0.5
    steps: int = 6000
    records: int = 60
    readout: str = "trained"
    factor: float = 0.5
    dmft_samples: int = 4096
    dmft_replicas: int = 4
    dmft_steps: int = 3000

    def __post_init__(self) -> None:
        for name in ("dimension", "n_train", "n_test", "seeds", "steps", "records"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be positive output scales, got {self.alphas}")
        if not self.widths or any(n < 1 for n in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths}")
        if not (self.learning_rate > 0 and math.isfinite(self.epsilon)):
            raise ValueError("learning_rate must be positive and epsilon finite")
        if self.readout not in fl.READOUTS:
            raise ValueError(f"readout must be one of {fl.READOUTS}, got {self.readout!r}")
        if not 0 < self.factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {self.factor}")
        if self.dmft_steps and (self.readout != "trained" or self.dmft_samples < 1 or self.dmft_replicas < 2):
            raise ValueError("the DMFT rows need readout='trained', dmft_samples >= 1 and dmft_replicas >= 2 "
                             "(or dmft_steps=0 for none)")


def _common(c: Config) -> dict:
    return {"dimension": c.dimension, "n_train": c.n_train, "n_test": c.n_test, "task_seed": c.task_seed,
            "epsilon": c.epsilon, "learning_rate": c.learning_rate, "steps": c.steps, "records": c.records,
            "readout": c.readout}


def points(c: Config) -> list[Point]:
    common = _common(c)
    dmft = grid(kind="dmft", alpha=c.alphas, width=0, seed=0, samples=c.dmft_samples, replicas=c.dmft_replicas,
                dmft_steps=c.dmft_steps, **common) if c.dmft_steps else []
    return (grid(kind="lazy", alpha=0.0, width=0, seed=0, **common)   # alpha = 0 marks the alpha -> inf row
            + grid(kind="network", alpha=c.alphas, width=c.widths, seed=range(c.seeds), **common) + dmft)


def setup(point: Point) -> tuple[theory.MLP, fl.Task, np.ndarray]:
    """The architecture, the task and the recorded steps of a point."""
    arch = theory.MLP(1, grokking.quadratic_activation(point["epsilon"]), w_std=1.0)
    task = fl.polynomial_task(point["dimension"], point["n_train"], point["n_test"], seed=point["task_seed"])
    return arch, task, fl.log_steps(point["steps"], point["records"])


def lazy_program(arch: theory.MLP, readout: str) -> theory.layers.Program:
    """The program whose ``theory.kernels`` NTK is the tangent kernel of the network as trained."""
    return arch if readout == "trained" else grokking.freeze_readout(arch)


def compute(point: Point) -> dict:
    arch, task, steps = setup(point)
    eta = point["learning_rate"]
    if point["kind"] == "lazy":
        net = lazy_program(arch, point["readout"])
        ntk = theory.kernels(net, task.x_train, get="ntk").ntk
        ntk_test = theory.kernels(net, task.x_test, task.x_train, get="ntk").ntk
        train, test = grokking.lazy_losses(ntk, ntk_test, task.y_train, task.y_test, eta, steps)
        # t -> inf: kernel regression with the NTK (ridgeless), the plateau's end point
        final = theory.predict.gradient_descent_mse(ntk, jnp.asarray(task.y_train)[:, None], learning_rate=eta)
        _, f_test = final(None, jnp.zeros((task.x_train.shape[0], 1)), jnp.zeros((task.x_test.shape[0], 1)), ntk_test)
        kernel_test = 0.5 * float(jnp.mean((f_test[:, 0] - task.y_test) ** 2))
        return {"time": (eta * steps).tolist(), "train_loss": train.tolist(), "test_loss": test.tolist(),
                "kernel_regression_test_loss": kernel_test, "diverged": False}
    if point["kind"] == "dmft":
        rec = steps[steps <= point["dmft_steps"]]
        key = jax.random.fold_in(jax.random.key(point["seed"]), round(point["alpha"] * 1e6))
        sol = dmft.solve_outputs(arch, task.x_train, task.y_train, task.x_test, task.y_test, gamma=1.0 / point["alpha"],
                                 learning_rate=eta, steps=int(rec[-1]), key=key, samples=point["samples"],
                                 replicas=point["replicas"], record_steps=rec)
        # leave-one-replica-out test-loss curves: the jackknife of the grokking time
        r = sol.replicas
        loo = (r * sol.f_test[None] - sol.replica_f_test) / (r - 1)
        loo_test = 0.5 * np.mean((loo - task.y_test) ** 2, axis=-1)
        return {"time": sol.time.tolist(), "train_loss": sol.loss.tolist(), "test_loss": sol.test_loss.tolist(),
                "train_loss_se": sol.loss_stderr.tolist(), "test_loss_se": sol.test_loss_stderr.tolist(),
                "loo_test_loss": loo_test.tolist(), "kernel_regression_test_loss": math.nan, "diverged": False}
    run = fl.train(arch, task, width=point["width"], gamma=1.0 / point["alpha"], learning_rate=eta,
                   record_steps=steps, seed=point["seed"], readout=point["readout"])
    return {"time": run.time.tolist(), "train_loss": run.train_loss.tolist(), "test_loss": run.test_loss.tolist(),
            "kernel_regression_test_loss": math.nan, "diverged": run.diverged}


def times(df: pd.DataFrame, factor: float = 0.5) -> pd.DataFrame:
    """Per network: the grokking time (test loss below ``factor`` times the lazy test loss for good; ``inf`` where
    not reached within the run, NaN for a diverged run)."""
    lazy = df[df["kind"] == "lazy"].iloc[0]
    lazy_test = np.asarray(lazy["test_loss"], float)
    rows = []
    for _, r in df[df["kind"] == "network"].iterrows():
        t, test = np.asarray(r["time"], float), np.asarray(r["test_loss"], float)
        ok = not r["diverged"]
        rows.append({"alpha": r["alpha"], "width": int(r["width"]), "seed": int(r["seed"]),
                     "grokking_time": grokking.grokking_time(t, test, lazy_test, factor) if ok else math.nan})
    return pd.DataFrame(rows)


def dmft_times(df: pd.DataFrame, factor: float = 0.5) -> pd.DataFrame:
    """Per ``alpha``: the infinite-width grokking time (of the replica-mean test-loss curve) and its jackknife
    standard error over the replicas (from the leave-one-out curves); empty without DMFT rows. A curve that has not
    grokked within the DMFT's steps gives ``inf``."""
    lazy = df[df["kind"] == "lazy"].iloc[0]
    lazy_t, lazy_test = np.asarray(lazy["time"], float), np.asarray(lazy["test_loss"], float)
    rows = []
    for _, r in df[df["kind"] == "dmft"].sort_values("alpha").iterrows():
        t = np.asarray(r["time"], float)
        ref = lazy_test[: t.size]
        if not np.allclose(lazy_t[: t.size], t):
            raise ValueError("the DMFT rows must be recorded at the lazy row's first times")
        t_grok = grokking.grokking_time(t, np.asarray(r["test_loss"], float), ref, factor)
        loo = [grokking.grokking_time(t, np.asarray(c, float), ref, factor) for c in r["loo_test_loss"]]
        k = len(loo)
        se = math.sqrt((k - 1) / k * np.sum((np.array(loo) - np.mean(loo)) ** 2)) if np.all(np.isfinite(loo)) \
            else math.nan
        rows.append({"alpha": r["alpha"], "grokking_time": t_grok, "grokking_time_se": se, "replicas": k,
                     "samples": int(r["samples"])})
    return pd.DataFrame(rows, columns=["alpha", "grokking_time", "grokking_time_se", "replicas", "samples"])


def summary(df: pd.DataFrame, factor: float = 0.5) -> pd.DataFrame:
    """Mean ± SE over seeds of the grokking time per ``(alpha, width)`` (``inf`` if any seed did not grok within the
    run)."""
    rows = []
    for (alpha, width), part in times(df, factor).groupby(["alpha", "width"], sort=True):
        row = {"alpha": alpha, "width": width, "seeds": len(part)}
        v = part["grokking_time"].to_numpy(float)
        row["grokking_time"] = float(v.mean()) if np.all(np.isfinite(v)) else math.inf
        row["grokking_time_se"] = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 and np.all(np.isfinite(v)) \
            else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    lazy = df[df["kind"] == "lazy"].iloc[0]
    nets = df[df["kind"] == "network"]
    widest = int(nets["width"].max())
    t = np.asarray(lazy["time"], float)
    lazy_train, lazy_test = np.asarray(lazy["train_loss"], float), np.asarray(lazy["test_loss"], float)
    fig, (ax_a, ax_b, ax_c) = style.subplots(1, 3, panel_size=(4.2, 3.4))
    tt = np.where(t > 0, t, np.nan)  # log axes: the init record is drawn at the first step
    for i, (alpha, part) in enumerate(nets[nets["width"] == widest].groupby("alpha", sort=True)):
        train = np.mean(np.array(part["train_loss"].tolist(), float), axis=0)
        test = np.mean(np.array(part["test_loss"].tolist(), float), axis=0)
        col = style.color(i)
        ax_a.plot(tt, test, color=col, linewidth=1.2, label=rf"$\alpha = {alpha:g}$")
        ax_a.plot(tt, train, color=col, linewidth=1.0, linestyle="--")
        ax_b.plot(tt, test / lazy_test, color=col, linewidth=1.2, label=rf"$\alpha = {alpha:g}$")
    inf = df[df["kind"] == "dmft"].sort_values("alpha")
    for i, (_, r) in enumerate(inf.iterrows()):
        td = np.asarray(r["time"], float)
        td = np.where(td > 0, td, np.nan)
        test = np.asarray(r["test_loss"], float)
        ax_a.plot(td, test, color=style.color(i), linewidth=2.4, alpha=0.35,
                  label=r"DMFT ($n \to \infty$), test" if i == 0 else None)
        ax_b.plot(td, test / lazy_test[: td.size], color=style.color(i), linewidth=2.4, alpha=0.35,
                  label=r"DMFT ($n \to \infty$)" if i == 0 else None)
    ax_a.plot(tt, lazy_test, color="k", linewidth=1.6, label=r"lazy ($\alpha \to \infty$), test")
    ax_a.plot(tt, lazy_train, color="k", linewidth=1.3, linestyle="--", label="lazy, train")
    ax_a.axhline(lazy["kernel_regression_test_loss"], color="0.5", linestyle=":", linewidth=1.2,
                 label=r"kernel regression ($t \to \infty$)")
    ax_a.set(xscale="log", yscale="log", xlabel=r"time $\eta t$", ylabel="loss (solid: test, dashed: train)",
             title=f"(a) width {widest} (mean of {config.seeds} seeds), DMFT")
    ax_a.legend(fontsize=6.5)
    ax_b.axhline(1.0, color="k", linewidth=1.3)
    ax_b.axhline(config.factor, color="0.5", linestyle=":", linewidth=1.2, label=f"grokked: {config.factor:g} x lazy")
    ax_b.set(xscale="log", yscale="log", xlabel=r"time $\eta t$", ylabel="test loss / lazy test loss",
             title="(b) leaving the kernel plateau")
    ax_b.legend(fontsize=6.5)
    table = summary(df, config.factor)
    for j, (width, part) in enumerate(table.groupby("width", sort=True)):
        ok = part[np.isfinite(part["grokking_time"])]
        fit = None
        if len(ok) >= 3:
            err = ok["grokking_time_se"].to_numpy()
            fit = fit_power_law(ok["alpha"], ok["grokking_time"], err if np.all(err > 0) else None,
                                absolute_sigma=False)
            print(f"grokking: width {width}: t_grok ~ alpha^({fit.exponent:.3f} ± {fit.exponent_stderr:.3f})",
                  file=sys.stderr)
        style.errorbar_loglog(ax_c, ok["alpha"], ok["grokking_time"], ok["grokking_time_se"], index=j,
                              fit=fit or False, label=f"grokking time, n = {width}")
    dm = dmft_times(df, config.factor)
    dm = dm[np.isfinite(dm["grokking_time"])]
    if len(dm):
        ax_c.errorbar(dm["alpha"], dm["grokking_time"], yerr=dm["grokking_time_se"], color="k", marker="s",
                      markersize=4, linewidth=0, elinewidth=1.0, capsize=2,
                      label=rf"DMFT ($n \to \infty$, {int(dm['samples'].iloc[0])} x {int(dm['replicas'].iloc[0])})")
        if len(dm) >= 3:
            fit = fit_power_law(dm["alpha"], dm["grokking_time"], dm["grokking_time_se"], absolute_sigma=False)
            print(f"grokking: DMFT: t_grok ~ alpha^({fit.exponent:.3f} ± {fit.exponent_stderr:.3f})", file=sys.stderr)
    finite = table[np.isfinite(table["grokking_time"])]
    if len(finite):
        first = finite.sort_values("alpha").iloc[0]
        style.guide_line(ax_c, finite["alpha"], 1.0, (first["alpha"], first["grokking_time"]),
                         label=r"$\propto \alpha$")
    ax_c.set(xscale="log", yscale="log", xlabel=r"output scale $\alpha = 1/\gamma$ (lazier $\to$)",
             ylabel=r"time $\eta t$", title="(c) grokking time against richness")
    alphas = sorted(set(table["alpha"]))
    ax_c.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax_c.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_c.legend(fontsize=6.5)
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="grokking",
    paper="Kumar, Bordelon, Gershman & Pehlevan 2023 (Grokking as the Transition from Lazy to Rich Training Dynamics)",
    summary="two-layer mean-field networks on the paper's polynomial regression: the test loss sits on the lazy "
            "(infinite-width NTK) plateau while the train loss falls, then drops; the grokking time grows with the "
            "output scale alpha = 1/gamma",
    config=Config(),
    quick_config=Config(alphas=(0.5, 2.0), widths=(256,), seeds=2, steps=2000, records=30, dmft_samples=512,
                        dmft_replicas=2, dmft_steps=1200),
    points=points,
    compute=compute,
    plot=plot,
)
