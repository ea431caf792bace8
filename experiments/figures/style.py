"""The one matplotlib style of every deeplimits figure, and helpers for log-log plots with error bars.

The runner calls each experiment's ``plot`` inside :func:`context`, so the style applies to
everything drawn there; in a notebook, wrap your own plotting in ``with style.context():``.
Figures are ``matplotlib.figure.Figure`` objects (no pyplot, no global state, no GUI backend):
:func:`subplots` makes one, :func:`save` writes it as PNG and PDF.

A typical plot function::

    def plot(df, config, outdir):      # the runner calls it inside style.context()
        fig, ax = style.subplots()
        fit = style.errorbar_loglog(ax, df.width, df.err, df.err_se, label="NNGP", index=0, fit=True)
        ax.set(xlabel="width $n$", ylabel="kernel error")
        ax.legend()                    # the fit's label: "slope = -1.00 ± 0.02"
        return style.save(fig, outdir, "width_convergence")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from experiments.scaling import PowerLawFit, fit_power_law

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and in greyscale print.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

RC: dict[str, Any] = {
    "font.family": "serif",
    "font.serif": ["DejaVu Serif"],  # ships with matplotlib: the same glyphs on every machine
    "mathtext.fontset": "dejavuserif",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.grid": True,
    "axes.grid.which": "major",
    "grid.alpha": 0.35,
    "grid.linestyle": ":",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=list(COLORS)),
    "lines.linewidth": 1.5,
    "lines.markersize": 5,
    "errorbar.capsize": 2.5,
    "figure.figsize": (4.0, 3.0),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
    "ps.fonttype": 42,
}


def context() -> contextlib.AbstractContextManager:
    """A context in which matplotlib uses :data:`RC` (nests; restores the caller's settings on exit)."""
    return mpl.rc_context(RC)


def color(index: int) -> str:
    """The ``index``-th colour of the palette (cycled)."""
    return COLORS[index % len(COLORS)]


def marker(index: int) -> str:
    """The ``index``-th marker (cycled), paired with :func:`color` so series stay apart in greyscale."""
    return MARKERS[index % len(MARKERS)]


def subplots(nrows: int = 1, ncols: int = 1, *, panel_size: tuple[float, float] = (4.0, 3.0),
             **kwargs: Any) -> tuple[Figure, Any]:
    """A styled figure with a grid of axes (``Figure.subplots`` arguments), ``panel_size`` inches per panel."""
    with context():
        fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=True, **kwargs)
    return fig, axes


def errorbar_loglog(ax: Axes, x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                    yerr: Sequence[float] | np.ndarray | None = None, *, label: str | None = None,
                    index: int = 0, fit: bool | PowerLawFit = False, fit_name: str = "slope",
                    **kwargs: Any) -> PowerLawFit | None:
    """Points with error bars on log-log axes, optionally with a fitted power law and its slope in the legend.

    ``index`` picks colour and marker. Lower error bars reaching zero or below are clipped just above
    zero (a log axis cannot show them). ``fit=True`` fits ``y = C x^p`` (weighted by ``yerr`` when given,
    :func:`experiments.scaling.fit_power_law`) and draws it dashed; a :class:`PowerLawFit` is drawn as
    is. Returns the fit (or ``None``).
    """
    x_arr, y_arr = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    err = None
    if yerr is not None:
        e = np.asarray(yerr, dtype=float)
        err = np.vstack([np.minimum(e, y_arr * (1 - 1e-3)), e])
    ax.set_xscale("log")
    ax.set_yscale("log")
    style = {"color": color(index), "marker": marker(index), "linestyle": "none", **kwargs}
    ax.errorbar(x_arr, y_arr, yerr=err, label=label, **style)
    result: PowerLawFit | None = None
    if fit is True:
        result = fit_power_law(x_arr, y_arr, None if yerr is None else np.asarray(yerr, dtype=float))
    elif isinstance(fit, PowerLawFit):
        result = fit
    if result is not None:
        plot_fit(ax, result, x_arr, index=index, label=result.label(fit_name))
    return result


def plot_fit(ax: Axes, fit: PowerLawFit, x: Sequence[float] | np.ndarray, *, index: int = 0,
             label: str | None = None, **kwargs: Any) -> None:
    """Draw ``fit.prefactor * x ** fit.exponent`` dashed over the range of ``x``."""
    x_arr = np.asarray(x, dtype=float)
    xs = np.geomspace(x_arr.min(), x_arr.max(), 64)
    ax.plot(xs, fit.predict(xs), **{"color": color(index), "linestyle": "--", "linewidth": 1.0, "label": label,
                                   **kwargs})


def guide_line(ax: Axes, x: Sequence[float] | np.ndarray, slope: float, through: tuple[float, float], *,
               label: str | None = None, **kwargs: Any) -> None:
    """A grey reference power law ``y ∝ x^slope`` through the point ``through`` (e.g. the theory's 1/n)."""
    x_arr = np.asarray(x, dtype=float)
    xs = np.geomspace(x_arr.min(), x_arr.max(), 64)
    ys = through[1] * (xs / through[0]) ** slope
    ax.plot(xs, ys, **{"color": "0.45", "linestyle": ":", "linewidth": 1.2, "label": label, **kwargs})


def save(fig: Figure, outdir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``outdir/stem.png`` and ``.pdf`` (styled), creating ``outdir``; return the paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with context():
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            fig.savefig(path, format=fmt)
            paths.append(path)
    return paths


@contextlib.contextmanager
def figure(outdir: str | Path, stem: str, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Iterator[tuple]:
    """``with style.figure(outdir, "name") as (fig, ax, paths):`` draw, and on exit the figure is saved;
    ``paths`` (a list) is filled with the written files."""
    paths: list[Path] = []
    with context():
        fig, axes = subplots(nrows, ncols, **kwargs)
        yield fig, axes, paths
        paths.extend(save(fig, outdir, stem))
