r"""`kernel-regression`: NNGP and NTK regression on real data, and finite networks trained toward it.

Classification by regressing centred one-hot labels (``experiments.datasets``: scikit-learn's digits, MNIST-1D's
standard 4000 / 1000 split). **Kernel rows**: for each model (:data:`MODELS`: ReLU / erf MLPs of depth 1-16, a
depth-scaled ReLU ResNet, a 1-D ReLU CNN on MNIST-1D's signals) and kernel (NNGP: the Bayesian posterior mean; NTK:
the infinitely wide network trained to convergence, ``theory.predict.gradient_descent_mse_ensemble`` at ``t = inf``),
the test accuracy and MSE with ``diag_reg`` relative to the mean diagonal (float64). **Network rows**: a ReLU MLP
(depth 2, NTK parameterization) of width ``n`` trained by full-batch gradient descent on MSE
(``experiments.training``, loss ``mean_i 1/2 ||f(x_i) - y_i||^2``) for ``steps`` steps at learning rate
``lr_fraction`` of the largest stable one (``theory.predict.max_learning_rate``), on the first ``network_train``
training inputs; against the infinitely wide linearised network from the *same* initial outputs after the same
steps (``theory.training_dynamics.linear_outputs``, Lee et al. 2019): the relative distance of the test outputs,
expected to fall as ``n^{-1/2}`` (fitted, with its 95% interval), and both test accuracies.

Derivation and notes: docs/figures/kernel_regression.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd

import theory
from experiments import datasets, networks, training
from experiments.figures import style
from experiments.registry import Experiment, grid
from experiments.scaling import fit_power_law
from theory import layers as nn
from theory import predict
from theory import training_dynamics as td

SQRT2 = math.sqrt(2.0)


def _cnn(depth: int) -> theory.Serial:
    body = []
    for _ in range(depth):
        body += [nn.Conv((5,), padding="SAME", w_std=SQRT2, b_std=0.05), nn.Elementwise("relu")]
    return theory.serial(*body, nn.Flatten(), nn.Dense(w_std=1.0))


MODELS: dict[str, Any] = {
    **{f"relu-mlp-{d}": theory.MLP(d, "relu", SQRT2, 0.05) for d in (1, 2, 4, 8, 16)},
    **{f"erf-mlp-{d}": theory.MLP(d, "erf", 1.5, 0.05) for d in (1, 4)},
    "relu-resnet-8": theory.ResNet(8, "relu", SQRT2, 0.05, depth_exponent=0.5),
    "relu-cnn1d-4": _cnn(4),
}
"""Kernel models by name; ``relu-cnn1d-*`` read MNIST-1D's signals as ``(length 40, 1 channel)`` sequences."""

NETWORK = theory.MLP(2, "relu", SQRT2, 0.05)


@dataclass(frozen=True)
class Config:
    """Attributes:
        datasets: names in ``experiments.datasets.NAMES``.
        models: names in :data:`MODELS` (CNNs only run on ``mnist1d``).
        diag_reg: added to the kernel's diagonal, relative to its mean diagonal.
        widths, seeds: the finite networks (``seeds`` of each width).
        network_train: training inputs of the finite networks (the first ones of the split).
        steps, lr_fraction: gradient descent steps, and the learning rate as a fraction of the largest stable one.
    """

    datasets: tuple[str, ...] = ("digits", "mnist1d")
    models: tuple[str, ...] = tuple(MODELS)
    diag_reg: float = 1e-4
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    seeds: int = 4
    network_train: int = 1000
    steps: int = 400
    lr_fraction: float = 0.5

    def __post_init__(self) -> None:
        bad = [d for d in self.datasets if d not in datasets.NAMES] + [m for m in self.models if m not in MODELS]
        if bad:
            raise ValueError(f"unknown data sets / models {bad}; choose among {datasets.NAMES} and {sorted(MODELS)}")
        if not self.diag_reg >= 0 or not 0 < self.lr_fraction < 1:
            raise ValueError("diag_reg must be >= 0 and lr_fraction in (0, 1)")
        if self.seeds < 1 or self.steps < 1 or self.network_train < 2 or any(w < 1 for w in self.widths):
            raise ValueError("seeds, steps, widths must be positive and network_train at least 2")


QUICK = Config(datasets=("digits",), models=("relu-mlp-1", "relu-mlp-2"), widths=(64, 128, 256), seeds=1,
               network_train=200, steps=50)


def points(c: Config) -> list[dict[str, Any]]:
    kernel_rows = [p for p in grid(kind="kernel", dataset=c.datasets, model=c.models, diag_reg=c.diag_reg)
                   if not (p["model"].startswith("relu-cnn") and p["dataset"] != "mnist1d")]
    network_rows = grid(kind="network", dataset=c.datasets, width=c.widths, seed=range(c.seeds),
                        network_train=c.network_train, steps=c.steps, lr_fraction=c.lr_fraction, dtype="float32")
    return kernel_rows + network_rows


def _inputs(model: str, x: np.ndarray) -> np.ndarray:
    return x[:, :, None] if model.startswith("relu-cnn1d") else x


def _kernel_row(point: dict[str, Any]) -> dict[str, Any]:
    data = datasets.load(point["dataset"])
    net = MODELS[point["model"]]
    x_train, x_test = _inputs(point["model"], data.x_train), _inputs(point["model"], data.x_test)
    ens = predict.gradient_descent_mse_ensemble(net, x_train, data.y_train, diag_reg=point["diag_reg"])
    out = ens(None, x_test, ("nngp", "ntk"))
    row = {}
    for g in ("nngp", "ntk"):
        pred = np.asarray(getattr(out, g))
        row[f"{g}_accuracy"] = datasets.accuracy(pred, data.labels_test)
        row[f"{g}_mse"] = float(np.mean(np.sum((pred - data.y_test) ** 2, axis=1)))
    return row


def _network_row(point: dict[str, Any]) -> dict[str, Any]:
    data = datasets.load(point["dataset"]).head(point["network_train"])
    y = data.y_train
    # The NTK of the network as it is trained (its learning-rate factors included), at infinite width.
    trained = training.scaled_network(NETWORK, "ntk", point["width"])
    k_train = theory.kernels(trained, data.x_train, get="ntk").ntk
    k_test = theory.kernels(trained, data.x_test, data.x_train, get="ntk").ntk
    # Stable rate of the steps f <- f - (lr / N) Theta (f - y): 2 N / lambda_max (max_learning_rate's n = N).
    lr = point["lr_fraction"] * predict.max_learning_rate(k_train)
    config = training.TrainConfig(optimizer="sgd", learning_rate=lr, steps=point["steps"], loss="mse")
    result = training.train(NETWORK, "ntk", training.Dataset(data.x_train, y), point["width"], config=config,
                            seed=point["seed"])
    dtype = jnp.float32
    x_train, x_test = jnp.asarray(data.x_train, dtype), jnp.asarray(data.x_test, dtype)
    f0 = networks.apply(result.network, result.init_params, x_train)
    f0_test = networks.apply(result.network, result.init_params, x_test)
    f_test = networks.apply(result.network, result.params, x_test)
    _, lin_test = td.linear_outputs(np.asarray(k_train, np.float64), np.asarray(f0, np.float64), y, lr,
                                    point["steps"], ntk_test_train=np.asarray(k_test, np.float64),
                                    f0_test=np.asarray(f0_test, np.float64))
    lin_test, f_test = np.asarray(lin_test), np.asarray(f_test, np.float64)
    return {"distance": float(np.linalg.norm(f_test - lin_test) / np.linalg.norm(lin_test)),
            "network_accuracy": datasets.accuracy(f_test, data.labels_test),
            "linear_accuracy": datasets.accuracy(lin_test, data.labels_test),
            "train_loss": float(result.loss[-1]), "learning_rate": float(lr)}


def compute(point: dict[str, Any]) -> dict[str, Any]:
    return _kernel_row(point) if point["kind"] == "kernel" else _network_row(point)


def distance_fit(df: pd.DataFrame, dataset: str):
    """Power-law fit of the mean (over seeds) distance against width, weighted by its standard error."""
    rows = df[(df.kind == "network") & (df.dataset == dataset)]
    g = rows.groupby("width")["distance"]
    widths, mean = np.array(g.mean().index, float), g.mean().to_numpy()
    se = (g.std(ddof=1) / np.sqrt(g.count())).to_numpy() if g.count().min() > 1 else None
    if len(widths) < 3:
        return widths, mean, se, None
    # absolute_sigma=False: the scatter about one power law (its curvature) widens the interval, not only the seeds.
    return widths, mean, se, fit_power_law(widths, mean, se, absolute_sigma=False)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    kernels = df[df.kind == "kernel"]
    names = list(config.datasets)
    fig, axes = style.subplots(2, len(names), panel_size=(5.2, 3.4))
    axes = np.asarray(axes).reshape(2, len(names))
    for j, name in enumerate(names):
        ax = axes[0, j]
        rows = kernels[kernels.dataset == name].set_index("model").reindex(
            [m for m in config.models if m in set(kernels[kernels.dataset == name].model)])
        pos = np.arange(len(rows))
        ax.bar(pos - 0.2, 100 * rows.nngp_accuracy, 0.4, color=style.color(0), label="NNGP")
        ax.bar(pos + 0.2, 100 * rows.ntk_accuracy, 0.4, color=style.color(1), label="NTK")
        if name == "mnist1d":
            for k, (label, acc) in enumerate(datasets.MNIST1D_BASELINES.items()):
                ax.axhline(100 * acc, color="0.5", linestyle=(0, (2, 2 + k)), linewidth=0.9)
                ax.text(len(rows) - 0.5, 100 * acc, f" {label}", va="center", fontsize=7, color="0.35")
        ax.set_xticks(pos, rows.index, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{name}: kernel regression (diag_reg {config.diag_reg:g})")
        ax.legend(loc="lower left", fontsize=7)
        ax = axes[1, j]
        widths, mean, se, fit = distance_fit(df, name)
        if len(widths):
            style.errorbar_loglog(ax, widths, mean, se, label="network vs. linearised limit", fit=fit or False)
            style.guide_line(ax, widths, -0.5, (widths[0], mean[0]), label=r"$n^{-1/2}$")
        ax.set_xlabel("width $n$")
        ax.set_ylabel(r"$\|f_n - f_\mathrm{lin}\| / \|f_\mathrm{lin}\|$ (test)")
        ax.set_title(f"{name}: ReLU MLP L=2, {int(config.steps)} GD steps")
        ax.legend(fontsize=7)
    return style.save(fig, outdir, "kernel_regression")


EXPERIMENT = Experiment(
    name="kernel-regression",
    paper="Lee et al. 2018, 2019; Greydanus 2020 (MNIST-1D)",
    summary="NNGP / NTK regression on digits and MNIST-1D; trained finite networks approach the linearised limit",
    config=Config(),
    quick_config=QUICK,
    points=points,
    compute=compute,
    plot=plot,
)

__all__ = ["EXPERIMENT", "MODELS", "Config", "compute", "distance_fit", "plot", "points"]
