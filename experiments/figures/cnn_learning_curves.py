r"""`cnn-learning-curves`: what a deep CNN kernel learns fast, a local teacher, and what it does not, a global one.

Cagnetta, Favero & Wyart 2023 ("What Can Be Learnt With Wide Convolutional Neural Networks?"); Favero, Cagnetta &
Wyart 2021. Inputs ``x in R^d``, ``d = s^L``, with ``d / s`` patches of ``s`` adjacent variables uniform on spheres
(``experiments.teacher_student``); a Gaussian-random-field teacher with a Laplace covariance on the first patch
(``local``) or on all ``d`` variables (``global``). Students: the NTK of a hierarchical ReLU CNN (``L`` convolutions
of filter ``s`` and stride ``s``, Flatten, Dense: a tree whose leaves are the patches) and of a ReLU MLP of the same
depth. **Measured**: ridgeless kernel regression (``theory.predict`` at ``t = inf``) on nested training sets of ``P``
points, test MSE on ``n_test`` points, mean and standard error over ``seeds`` draws of data and teacher; decay
exponents fitted over ``P >= fit_from`` with 95% intervals. **Eigenlearning**: the same curves predicted from the
kernels' spectra (``theory.learning_curves``, Nyström on ``spectrum_samples`` points, for ``P <= samples / 16``).

Derivation of the asymptotic exponents and notes: docs/figures/cnn_learning_curves.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

import theory
from experiments import teacher_student as ts
from experiments.figures import style
from experiments.registry import Experiment, grid
from experiments.scaling import PowerLawFit, fit_power_law
from theory import layers as nn
from theory import learning_curves, predict

STUDENTS = ("cnn", "fc")
Y_TICKS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
SQRT2 = math.sqrt(2.0)


def parse_geometry(name: str) -> tuple[int, int]:
    """``"3^2"`` -> ``(patch s = 3, depth L = 2)``: inputs of ``d = s^L`` variables."""
    try:
        s, depth = (int(v) for v in name.split("^"))
    except ValueError:
        raise ValueError(f"geometry {name!r} must read 's^L' (patch size ^ depth), e.g. '3^2'") from None
    if s < 2 or depth < 1:
        raise ValueError(f"geometry {name!r}: need patch size >= 2 and depth >= 1")
    return s, depth


def student(kind: str, s: int, depth: int) -> theory.Serial:
    """The student's layer program: the hierarchical CNN (reads ``(n, d, 1)``) or the MLP (reads ``(n, d)``)."""
    if kind == "cnn":
        body = []
        for _ in range(depth):
            body += [nn.Conv((s,), strides=(s,), padding="VALID", w_std=SQRT2, b_std=0.0), nn.Elementwise("relu")]
        return theory.serial(*body, nn.Flatten(), nn.Dense(w_std=1.0))
    if kind == "fc":
        return theory.MLP(depth, "relu", SQRT2, 0.0)
    raise ValueError(f"unknown student {kind!r}; choose among {STUDENTS}")


def _student_ntk(kind: str, s: int, depth: int, x: np.ndarray) -> np.ndarray:
    inputs = x[:, :, None] if kind == "cnn" else x
    return np.asarray(theory.kernels(student(kind, s, depth), inputs, get="ntk").ntk)


def asymptotic_exponents(s: int, depth: int) -> dict[str, tuple[float, float]]:
    """The derived large-``P`` exponents (low, high) per ``student_teacher`` (docs/figures/cnn_learning_curves.md).

    ``D = d (s - 1) / s`` is the dimension of the input manifold. Fully connected students and the CNN on the
    global teacher: ``1 / D``. The CNN on the local teacher: ``(1 + 2^(1-L) / D) / s`` once the learned modes are
    counted by the full-input sector, ``1 / (s - 1)`` while the patch sectors dominate the count.
    """
    big_d = s**depth * (s - 1) / s
    flat = (1 / big_d, 1 / big_d)
    return {"fc_local": flat, "fc_global": flat, "cnn_global": flat,
            "cnn_local": ((1 + 2.0 ** (1 - depth) / big_d) / s, 1 / (s - 1))}


@dataclass(frozen=True)
class Config:
    """Attributes:
        geometries: ``"s^L"`` (patch size ^ depth): inputs of ``d = s^L`` variables, students of depth ``L``.
        n_train: training-set sizes ``P`` (nested: the first ``P`` points of one draw).
        n_test: test points.
        seeds: draws of the inputs per geometry (the standard errors are over these).
        teachers: teachers of each kind drawn on each draw of the inputs (their errors are averaged).
        fit_from: smallest ``P`` in the exponent fits.
        spectrum_samples: Nyström samples for the eigenlearning prediction (0: none); it is drawn for
            ``P <= spectrum_samples / 16`` (where its bias is below ~5%: docs/figures/cnn_learning_curves.md).
    """

    geometries: tuple[str, ...] = ("2^3", "2^4", "3^2", "3^3")
    n_train: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    n_test: int = 1024
    seeds: int = 8
    teachers: int = 32
    fit_from: int = 64
    spectrum_samples: int = 8192

    def __post_init__(self) -> None:
        for g in self.geometries:
            parse_geometry(g)
        if sorted(set(self.n_train)) != list(self.n_train) or min(self.n_train) < 2:
            raise ValueError(f"n_train must be increasing and >= 2, got {self.n_train}")
        if self.n_test < 1 or self.seeds < 1 or self.teachers < 1 or not (
                self.spectrum_samples == 0 or self.spectrum_samples >= 64):
            raise ValueError("n_test and seeds must be >= 1, spectrum_samples 0 or >= 64")
        if sum(p >= self.fit_from for p in self.n_train) < 3:
            raise ValueError(f"need at least 3 n_train >= fit_from = {self.fit_from} to fit an exponent")


QUICK = Config(geometries=("3^2",), n_train=(16, 32, 64, 128, 256, 512), n_test=512, seeds=4,
               spectrum_samples=2048)


def points(c: Config) -> list[dict[str, Any]]:
    measured = grid(kind="measured", geometry=c.geometries, seed=range(c.seeds), n_train=[list(c.n_train)],
                    n_test=c.n_test, teachers=c.teachers)
    if not c.spectrum_samples:
        return measured
    shown = [p for p in c.n_train if p <= c.spectrum_samples // 16]
    return measured + grid(kind="eigenlearning", geometry=c.geometries, student=STUDENTS, seed=10_000,
                           n_train=[shown], spectrum_samples=c.spectrum_samples)


def _measured(point: dict[str, Any]) -> dict[str, Any]:
    s, depth = parse_geometry(point["geometry"])
    sizes, n_test = point["n_train"], point["n_test"]
    n = sizes[-1] + n_test
    x = ts.sphere_patches(n, s**depth, s, seed=point["seed"])
    draws = point["teachers"]
    # Several teachers per draw of inputs: one kernel solve serves them all (columns).
    y = np.concatenate([ts.gaussian_field(ts.teacher_covariance(x, t, s), point["seed"] + 7919 * (i + 1), draws)
                        for i, t in enumerate(ts.TEACHERS)], axis=1)
    test = slice(sizes[-1], n)
    row: dict[str, Any] = {}
    for kind in STUDENTS:
        k = _student_ntk(kind, s, depth, x)
        errors = []
        for p in sizes:
            # Ridgeless regression = the infinitely wide network trained to convergence from zero outputs.
            gd = predict.gradient_descent_mse(k[:p, :p], y[:p])
            _, f_test = gd(None, np.zeros_like(y[:p]), np.zeros_like(y[test]), k[test, :p])
            errors.append(np.mean((np.asarray(f_test) - y[test]) ** 2, axis=0))
        for i, t in enumerate(ts.TEACHERS):
            row[f"{kind}_{t}"] = [float(np.mean(e[i * draws:(i + 1) * draws])) for e in errors]
    return row


def _eigenlearning(point: dict[str, Any]) -> dict[str, Any]:
    s, depth = parse_geometry(point["geometry"])
    x = ts.sphere_patches(point["spectrum_samples"], s**depth, s, seed=point["seed"])
    k = _student_ntk(point["student"], s, depth, x)
    covariances = np.stack([ts.teacher_covariance(x, t, s) for t in ts.TEACHERS])
    lam, power = learning_curves.nystrom_spectrum(k, target_covariance=covariances)
    return {f"{point['student']}_{t}": learning_curves.eigenlearning(lam, power[i], point["n_train"]).tolist()
            for i, t in enumerate(ts.TEACHERS)}


def compute(point: dict[str, Any]) -> dict[str, Any]:
    return _measured(point) if point["kind"] == "measured" else _eigenlearning(point)


def curves(df: pd.DataFrame, geometry: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P, mean test MSE, standard error)`` over the seeds of the measured rows."""
    rows = df[(df.kind == "measured") & (df.geometry == geometry)]
    errors = np.array(rows[column].tolist(), dtype=float)
    se = errors.std(axis=0, ddof=1) / np.sqrt(len(errors)) if len(errors) > 1 else np.zeros(errors.shape[1])
    return np.asarray(rows.n_train.iloc[0], float), errors.mean(axis=0), se


def exponent_fit(df: pd.DataFrame, geometry: str, column: str, fit_from: int) -> PowerLawFit:
    """Power-law fit of the measured mean error over ``P >= fit_from``; its interval is widened by the
    scatter about one power law (the curves bend), not only by the seeds."""
    p, mean, se = curves(df, geometry, column)
    keep = p >= fit_from
    return fit_power_law(p[keep], mean[keep], se[keep] if np.all(se[keep] > 0) else None, absolute_sigma=False)


def prediction(df: pd.DataFrame, geometry: str, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    rows = df[(df.kind == "eigenlearning") & (df.geometry == geometry) & (df.student == column.split("_")[0])]
    if rows.empty:
        return None
    return np.asarray(rows.n_train.iloc[0], float), np.asarray(rows[column].iloc[0], float)


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    names = list(config.geometries)
    fig, axes = style.subplots(2, len(names), panel_size=(4.0, 3.3), sharey="row")
    axes = np.asarray(axes).reshape(2, len(names))
    for j, geometry in enumerate(names):
        s, depth = parse_geometry(geometry)
        theory_exp = asymptotic_exponents(s, depth)
        for i, teacher in enumerate(ts.TEACHERS):
            ax = axes[i, j]
            for k, kind in enumerate(STUDENTS):
                column = f"{kind}_{teacher}"
                p, mean, se = curves(df, geometry, column)
                fit = exponent_fit(df, geometry, column, config.fit_from)
                lo, hi = theory_exp[column]
                band = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
                style.errorbar_loglog(ax, p, mean, se, index=k, label=f"{kind.upper()} student")
                style.plot_fit(ax, fit, p[p >= config.fit_from], index=k,
                               label=rf"$\beta$ = {-fit.exponent:.2f} [{-fit.ci_high:.2f}, {-fit.ci_low:.2f}]"
                                     f" (asympt. {band})")
                pred = prediction(df, geometry, column)
                if pred is not None:
                    ax.plot(*pred, color=style.color(k), linewidth=0.9, alpha=0.6, label="eigenlearning (Nyström)")
            ax.set_title(f"d = {s}^{depth} = {s**depth}, patches of s = {s}: {teacher} teacher", fontsize=8)
            ax.set_xticks(p, [str(int(v)) for v in p], fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_yticks(Y_TICKS, [f"{v:g}" for v in Y_TICKS])
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("training points $P$")
            ax.set_ylabel("test MSE")
            ax.legend(fontsize=6)
    return style.save(fig, outdir, "cnn_learning_curves")


EXPERIMENT = Experiment(
    name="cnn-learning-curves",
    paper="Cagnetta, Favero & Wyart 2023 (ICML); Favero, Cagnetta & Wyart 2021",
    summary="learning curves of deep CNN and MLP kernels on local and global teachers: locality beats dimension",
    config=Config(),
    quick_config=QUICK,
    points=points,
    compute=compute,
    plot=plot,
)

__all__ = ["EXPERIMENT", "STUDENTS", "Config", "asymptotic_exponents", "compute", "curves", "exponent_fit",
           "parse_geometry", "plot", "points", "prediction", "student"]
