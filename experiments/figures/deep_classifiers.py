r"""`deep-classifiers`: infinitely wide and deep NTK classifiers (Radhakrishnan, Belkin & Uhler, arXiv 2204.14126).

The normalised bias-free MLP of ``theory.deep_classifiers.network`` on inputs projected to the sphere, trained to
convergence on MSE (the NTK predictor ``Theta(x, X) Theta(X, X)^-1 Y``, ``theory.predict.gradient_descent_mse`` at
``t = inf``, centred one-hot targets), at depths 1 to 4096, against the classifier it tends to
(``theory.deep_classifiers.limit_classifier``): majority vote (ReLU), a singular kernel (erf: ``|x - x'|^{-0.89}``;
the *optimal* activation ``a_1 h_1 + sqrt(1 - a_1^2) h_k`` whose kernel is the Hilbert kernel ``|x - x'|^{-dim}``)
or the nearest neighbour (``(h_2 + h_3) / sqrt(2)``). Two data sets: labels of three arcs on the circle
(``dim = 1``, 1,000 test angles, the decision regions drawn as rings, inner = depth 1, outer = the limit), and
scikit-learn's digits (raw pixels projected to ``S^63``: ``dim = 63``; the shuffled split of
``experiments.datasets``, its first ``n_train`` / ``n_test``). Kernels come from the correlation recursion
``theory.deep_classifiers.ntk`` (variances exactly 1; equal to ``theory.kernels`` of the network, tested); a depth
whose test kernel underflows to 0 for some test input (the nearest-neighbour and optimal kernels separate
exponentially) is left out. Notes: docs/deep_classifiers.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.figures import style
from experiments.registry import Experiment, grid
from theory import deep_classifiers as dc
from theory import predict

ACTIVATIONS = ("relu", "erf", "optimal", "nearest")
DATASETS = ("circle", "digits")
DIMENSION = {"circle": 1, "digits": 63}  # of the data's support: S^1, S^63


def activation(name: str, dataset: str):
    """The activation ``name`` of :data:`ACTIVATIONS` for ``dataset`` (the optimal one depends on its dimension)."""
    if name == "optimal":
        return dc.optimal_activation(DIMENSION[dataset])
    if name == "nearest":
        return dc.nearest_neighbour_activation()
    return name


@dataclass(frozen=True)
class Config:
    """Attributes:
        datasets: among :data:`DATASETS`; activations: among :data:`ACTIVATIONS`.
        depths: increasing depths (hidden layers) of the finite networks.
        circle_train, circle_test: training / test angles on the circle (uniform, seed 0 / 1).
        digits_train, digits_test: the first ones of the digits split.
        region_depths: the depths drawn as decision-region rings (a subset of ``depths``).
        resolution: angles at which the circle's decision regions are evaluated.
        diag_reg: ridge relative to the mean diagonal (shallow kernels of the raw digits, all correlations 0.3-0.98,
            are singular to float64 without one).
    """

    datasets: tuple[str, ...] = DATASETS
    activations: tuple[str, ...] = ACTIVATIONS
    depths: tuple[int, ...] = tuple(2**k for k in range(13))
    circle_train: int = 60
    circle_test: int = 1000
    digits_train: int = 600
    digits_test: int = 300
    region_depths: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)
    resolution: int = 720
    diag_reg: float = 1e-10

    def __post_init__(self) -> None:
        bad = [d for d in self.datasets if d not in DATASETS] + [a for a in self.activations if a not in ACTIVATIONS]
        if bad:
            raise ValueError(f"unknown data sets / activations {bad}; choose among {DATASETS} and {ACTIVATIONS}")
        if not self.depths or list(self.depths) != sorted(set(self.depths)) or self.depths[0] < 1:
            raise ValueError(f"depths must be increasing positive integers, got {self.depths}")
        if not set(self.region_depths) <= set(self.depths):
            raise ValueError("region_depths must be among depths")
        if min(self.circle_train, self.circle_test, self.digits_train, self.digits_test, self.resolution) < 2:
            raise ValueError("data set sizes and resolution must be at least 2")


QUICK = Config(depths=(1, 4, 16, 64), circle_test=200, digits_train=100, digits_test=60, region_depths=(1, 16, 64),
               resolution=180)


def points(c: Config) -> list[dict[str, Any]]:
    rows = []
    for ds in c.datasets:
        size = dict(n_train=c.circle_train, n_test=c.circle_test) if ds == "circle" else dict(
            n_train=c.digits_train, n_test=c.digits_test)
        rows += grid(dataset=ds, activation=c.activations, depths=[list(c.depths)], **size,
                     region_depths=[list(c.region_depths)], resolution=c.resolution if ds == "circle" else 0,
                     diag_reg=c.diag_reg)
    return rows


def _arc_labels(angle: np.ndarray) -> np.ndarray:
    # three arcs of unequal length: class 1 on about 40% of the circle
    return (np.sin(3 * angle + 0.5) > 0.3).astype(np.int64)


def _on_circle(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))  # experiments.datasets' split
    return np.asarray(bunch.data, float)[order] / 16.0, np.asarray(bunch.target, np.int64)[order]


def data(point: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """``(x_train, labels_train, x_test, labels_test, classes)`` of a point."""
    n, m = point["n_train"], point["n_test"]
    if point["dataset"] == "circle":
        a, at = np.random.default_rng(0).uniform(0, 2 * np.pi, n), np.random.default_rng(1).uniform(0, 2 * np.pi, m)
        return _on_circle(a), _arc_labels(a), _on_circle(at), _arc_labels(at), 2
    x, labels = _digits()
    if n > 1200 or m > len(labels) - 1200:
        raise ValueError("digits has 1200 training and 597 test images")
    return x[:n], labels[:n], x[1200:1200 + m], labels[1200:1200 + m], 10


def grid_angles(resolution: int) -> np.ndarray:
    return np.linspace(0, 2 * np.pi, resolution, endpoint=False)


def compute(point: dict[str, Any]) -> dict[str, Any]:
    x, labels, xt, labels_t, classes = data(point)
    act = activation(point["activation"], point["dataset"])
    y = np.eye(classes)[labels] - 1.0 / classes
    queries = [xt] + ([_on_circle(grid_angles(point["resolution"]))] if point["resolution"] else [])
    xq = np.concatenate(queries)
    n, m = len(x), len(xt)
    rho = np.concatenate([dc.correlations(x), dc.correlations(xq, x)])
    theta = np.asarray(dc.ntk(act, rho, point["depths"]).ntk)  # (depths, n + queries, n)
    errors, regions = [], {}
    for depth, k in zip(point["depths"], theta, strict=True):
        scale = k[0, 0]
        k_train, k_query = k[:n] / scale, k[n:] / scale
        if not (np.all(np.isfinite(k)) and np.all(np.any(k_query != 0, axis=1))):
            errors.append(math.nan)  # a test input's kernel underflowed
            continue
        out = predict.gradient_descent_mse(k_train, y, diag_reg=point["diag_reg"])(None, 0.0, 0.0, k_query)[1]
        pred = np.argmax(np.asarray(out), axis=1)
        errors.append(float(np.mean(pred[:m] != labels_t)))
        if depth in point["region_depths"] and point["resolution"]:
            regions[str(depth)] = pred[m:].tolist()
    limit = np.argmax(dc.limit_classifier(act, x, y, xq), axis=1)
    tax = dc.taxonomy(act)
    nearest = np.argmax(dc.correlations(xt, x), axis=1)  # 1-NN (largest cosine = smallest distance on the sphere)
    return {"errors": errors, "limit_error": float(np.mean(limit[:m] != labels_t)),
            "limit_region": limit[m:].tolist() if point["resolution"] else [], "regions": regions,
            "one_nn_error": float(np.mean(labels[nearest] != labels_t)),
            "majority_error": float(np.mean(np.bincount(labels, minlength=classes).argmax() != labels_t)),
            "classifier": tax.classifier, "a1_sq": tax.a1_sq, "slope": tax.slope,
            "exponent": 2 * tax.exponent if tax.classifier == "singular kernel" else math.nan}


# -- figure -------------------------------------------------------------------------------------------------
LABEL = {"relu": "ReLU", "erf": "erf", "optimal": "optimal", "nearest": r"$(h_2+h_3)/\sqrt{2}$"}


def _taxonomy_panel(ax, df) -> None:
    a1 = np.geomspace(1e-12, 1 - 1e-9, 400)
    for j, order in enumerate((2, 4)):
        exponent = 2 * np.log(1 / a1) / np.log(a1 + order * (1 - a1))
        ax.plot(a1, exponent, color=style.color(6), linestyle=("-", "--")[j], linewidth=1,
                label=rf"$a_1h_1+\sqrt{{1-a_1^2}}\,h_{order}$")
    for name in ("erf", "tanh"):
        t = dc.taxonomy(name)
        ax.plot(t.a1_sq, 2 * t.exponent, "o", color=style.color(1 if name == "erf" else 4))
        ax.annotate(name, (t.a1_sq, 2 * t.exponent), textcoords="offset points", xytext=(-12, 6), fontsize=8)
    for dim in (1, 63):
        t = dc.taxonomy(dc.optimal_activation(dim))
        ax.plot(t.a1_sq, dim, "*", color=style.color(2), markersize=9)
        ax.annotate(f"optimal, dim {dim}", (t.a1_sq, dim), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$a_1^2 = \xi'(0)$  ($a_0 = 0$)")
    ax.set_ylabel(r"singular kernel $|x-x'|^{-2\alpha}$: $2\alpha$")
    ax.text(0.02, 0.03, "$a_1 = 0$: nearest neighbour (left edge)\n$a_0 \\neq 0$, $\\xi'(1) \\geq 1$: majority vote "
            "(ReLU)", transform=ax.transAxes, fontsize=7.5, va="bottom")
    ax.set_title("taxonomy (depth $\\to\\infty$)")
    ax.legend(fontsize=7, loc="upper right")


def _convergence_panel(ax, name: str, act) -> None:
    rho = np.linspace(-0.999, 0.999, 400)
    depths = [4, 16, 64, 256, 1024]
    theta = np.asarray(dc.ntk(act, rho, depths).ntk)
    tax = dc.taxonomy(act)
    for i, (depth, t) in enumerate(zip(depths, theta, strict=True)):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a_1^{2L} may underflow: no curve
            y = t / (depth + 1) if tax.classifier == "majority vote" else t / ((depth + 1) * tax.a1_sq**depth)
        ax.plot(rho, y, color=style.color(0), alpha=0.25 + 0.75 * i / (len(depths) - 1), linewidth=1,
                label=f"L = {depth}" if i in (0, len(depths) - 1) else None)
    _finish_convergence(ax, name, act, rho, tax)


def _finish_convergence(ax, name, act, rho, tax) -> None:
    if tax.classifier == "majority vote":
        ax.plot(rho, np.asarray(dc.majority_vote_kernel(act, rho)), "k--", linewidth=1.2, label="limit 1/4")
        ax.set_ylabel(r"$\Theta_L(\rho)\,/\,(L+1)$")
    else:
        ax.plot(rho, np.asarray(dc.singular_kernel(act, rho).kernel), "k--", linewidth=1.2, label=r"limit $C(\rho)$")
        ax.set_ylabel(r"$\Theta_L(\rho)\,/\,((L+1)\,a_1^{2L})$")
        ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel(r"input correlation $\rho$")
    ax.set_title(f"{name}: NTK to its depth limit")
    ax.legend(fontsize=7)


def _ring_panel(ax, rows: pd.DataFrame, name: str, config_depths: list[int]) -> None:
    row = rows.iloc[0]
    angles = grid_angles(int(row.resolution))
    x, labels, _, _, _ = data(row.to_dict())
    rings = [(str(d), row.regions.get(str(d))) for d in config_depths] + [("limit", row.limit_region)]
    width = 2 * np.pi / len(angles)
    for i, (label, pred) in enumerate(rings):
        if pred is None:
            continue
        colors = [style.color(1) if p else style.color(0) for p in pred]
        ax.bar(angles, np.full(len(angles), 0.8), width=width, bottom=1 + i, color=colors, linewidth=0,
               align="edge", alpha=0.9 if label == "limit" else 0.6)
    top = 1 + len(rings) + 0.3
    ax.scatter(np.arctan2(x[:, 1], x[:, 0]) % (2 * np.pi), np.full(len(x), top),
               c=[style.color(1) if v else style.color(0) for v in labels], s=10, edgecolors="k", linewidths=0.3)
    ax.set_ylim(0, top + 0.5)
    ax.set_yticks([1.4 + i for i in range(len(rings))], [lab for lab, _ in rings], fontsize=5.5)
    ax.set_xticks([])
    ax.grid(False)
    ax.set_title(f"{LABEL[name]} ({row.classifier})\nrings: depth (inner) to limit; dots: train", fontsize=8.5)


def _error_panel(ax, rows: pd.DataFrame, dataset: str) -> None:
    for i, name in enumerate(ACTIVATIONS):
        r = rows[rows.activation == name]
        if r.empty:
            continue
        r = r.iloc[0]
        depths, err = np.asarray(r.depths, float), np.asarray(r.errors, float)
        ax.plot(depths, 100 * err, marker=style.marker(i), color=style.color(i), label=LABEL[name])
        ax.axhline(100 * r.limit_error, color=style.color(i), linestyle="--", linewidth=1)
    r = rows.iloc[0]
    ax.axhline(100 * r.one_nn_error, color="0.3", linestyle=":", linewidth=1)
    ax.axhline(100 * r.majority_error, color="0.3", linestyle="-.", linewidth=1)
    ax.text(1, 100 * r.one_nn_error, "1-NN", fontsize=7, color="0.3", va="bottom")
    ax.text(1, 100 * r.majority_error, "majority vote", fontsize=7, color="0.3", va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth $L$")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{dataset}: NTK classifier vs depth (dashed: limit)")
    ax.legend(fontsize=7)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    fig, axes = style.subplots(3, 4, panel_size=(3.6, 3.2))
    axes = np.asarray(axes).reshape(3, 4)
    _taxonomy_panel(axes[0, 0], df)
    for j, (name, act) in enumerate([("ReLU", "relu"), ("erf", "erf"),
                                     ("optimal (dim 1)", dc.optimal_activation(1))]):
        _convergence_panel(axes[0, j + 1], name, act)
    circle = df[df.dataset == "circle"]
    for j, name in enumerate(ACTIVATIONS):
        rows = circle[circle.activation == name]
        ax = axes[1, j]
        if rows.empty:
            ax.set_visible(False)
            continue
        fig.delaxes(ax)
        ax = fig.add_subplot(3, 4, 5 + j, projection="polar")
        _ring_panel(ax, rows, name, list(config.region_depths))
    for j, dataset in enumerate(("circle", "digits")):
        rows = df[df.dataset == dataset]
        if rows.empty:
            axes[2, j].set_visible(False)
            continue
        _error_panel(axes[2, j], rows, dataset)
    for ax in axes[2, 2:]:
        ax.set_visible(False)
    digits = df[df.dataset == "digits"]
    if not digits.empty:
        ax = axes[2, 2]
        ax.set_visible(True)
        ax.axis("off")
        lines = ["digits (S^63): limit classifiers", ""]
        for _, r in digits.iterrows():
            lines.append(f"{r.activation:8s} {r.classifier:17s} {100 * r.limit_error:5.1f}%")
        lines += ["", f"1-NN {100 * digits.iloc[0].one_nn_error:.1f}%, "
                  f"majority {100 * digits.iloc[0].majority_error:.1f}%"]
        ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5)
    return style.save(fig, outdir, "deep_classifiers")


EXPERIMENT = Experiment(
    name="deep-classifiers",
    paper="Radhakrishnan, Belkin & Uhler, Wide and Deep Neural Networks Achieve Optimality for Classification",
    summary="infinitely deep NTK classifiers: majority vote (ReLU), singular kernel (erf, optimal), 1-NN",
    config=Config(),
    quick_config=QUICK,
    points=points,
    compute=compute,
    plot=plot,
)

__all__ = ["ACTIVATIONS", "DATASETS", "EXPERIMENT", "Config", "activation", "compute", "data", "plot", "points"]
