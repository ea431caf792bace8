r"""``deep-linear-dynamics``: exact learning dynamics of deep linear networks (Saxe, McClelland & Ganguli 2014).

Full-batch gradient descent on a whitened regression task whose input-output correlation has singular values
``strengths`` (``experiments.deep_linear``), learning rate ``eta = learning_rate / n`` for ``n = depth + 1`` weight
matrices (the stable rate shrinks like ``1/n``), against ``theory.deep_linear`` with ``tau = 1/eta``:

* (a) one hidden layer, i.i.d. Gaussian weights of variance ``gaussian_variance / width``: the mean over networks of
  each mode strength (gradient descent at ``eta`` and ``eta/2``, Richardson-extrapolated to the gradient flow) against
  the infinite-width theory (``initial = 0``, ``weight_norm = gaussian_variance``), with standard errors;
* (b) decoupled, balanced initial conditions (end-to-end strength ``decoupled_initial`` per mode) at several depths:
  each mode's plateau and sigmoidal transition, ordered by strength, against the balanced theory (exact up to the
  ``O(eta)`` of gradient descent);
* (c) learning time (steps until every mode reaches ``fraction`` of its strength) against depth for decoupled
  (theory: exact, and its depth limit ``depth_limit_learning_time / learning_rate``), small Gaussian
  (``small_scale``), scaled Gaussian and Haar-orthogonal initialisations (scale 1); runs that do not get there
  within ``max_steps`` are drawn at the top edge.

Notes and measured numbers: docs/deep_linear.md.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from experiments import deep_linear as dlx
from experiments.figures import style
from experiments.registry import Experiment, Point
from theory import deep_linear as dl

STEM = "deep_linear_dynamics"
INIT_SCALES = {"decoupled": None, "small": None, "gaussian": 1.0, "orthogonal": 1.0}
RECORDS = 60


@dataclass(frozen=True)
class Config:
    """The three panels' sweeps (see the module docstring).

    Attributes:
        strengths: the task's nonzero singular values; features: its input and output dimension.
        width: hidden width of panels (b), (c); random_widths: widths of panel (a).
        learning_rate: ``eta_0``; the learning rate is ``eta_0 / (depth + 1)``.
        gaussian_variance: panel (a)'s weight variance times the width; seeds: networks per width in (a);
            time_seeds: seeds per random initialisation and depth in (c).
        dynamics_depths: panel (b)'s depths (hidden layers); decoupled_initial: end-to-end initial strength ``u0``.
        time_depths, inits: panel (c)'s depths and initialisations; small_scale: the small Gaussian's scale;
            fraction: the learning criterion; max_steps: the step budget.
    """

    strengths: tuple[float, ...] = (2.0, 1.0, 0.5)
    features: int = 8
    width: int = 64
    learning_rate: float = 0.02
    random_widths: tuple[int, ...] = (64, 256)
    gaussian_variance: float = 0.01
    seeds: int = 16
    time_seeds: int = 8
    dynamics_depths: tuple[int, ...] = (1, 3, 7)
    decoupled_initial: float = 0.05
    time_depths: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 15, 31)
    inits: tuple[str, ...] = ("decoupled", "small", "gaussian", "orthogonal")
    small_scale: float = 0.5
    fraction: float = 0.9
    max_steps: int = 8000

    def __post_init__(self) -> None:
        unknown = [i for i in self.inits if i not in INIT_SCALES]
        if unknown:
            raise ValueError(f"inits must be among {tuple(INIT_SCALES)}, got {self.inits}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        for name in ("learning_rate", "gaussian_variance", "decoupled_initial", "small_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.decoupled_initial >= min(self.strengths):
            raise ValueError(f"decoupled_initial must be below the weakest strength {min(self.strengths)}")
        if self.seeds < 2 or self.time_seeds < 2:
            raise ValueError(f"seeds and time_seeds must be >= 2 (a standard error needs two networks), got "
                             f"{self.seeds}, {self.time_seeds}")


def points(c: Config) -> list[Point]:
    common = {"strengths": list(c.strengths), "features": c.features, "learning_rate": c.learning_rate}
    out: list[Point] = []
    out += [{"panel": "random", "depth": 1, "width": n, "seed": s, "init": "gaussian", **common,
             "variance": c.gaussian_variance} for n in c.random_widths for s in range(c.seeds)]
    out += [{"panel": "dynamics", "depth": L, "width": c.width, "seed": 0, "init": "decoupled", **common,
             "initial": c.decoupled_initial} for L in c.dynamics_depths]
    for init in c.inits:
        seeds = 1 if init == "decoupled" else c.time_seeds
        out += [{"panel": "time", "depth": L, "width": c.width, "seed": s, "init": init, **common,
                 "initial": c.decoupled_initial, "small_scale": c.small_scale, "fraction": c.fraction,
                 "max_steps": c.max_steps} for L in c.time_depths for s in range(seeds)]
    return out


def _key(point: Point) -> jax.Array:
    tag = zlib.crc32(f"{point['panel']}/{point['init']}/{point['width']}/{point['depth']}".encode())
    return jax.random.fold_in(jax.random.key(point["seed"]), tag)


def _steps(duration: float, records: int = RECORDS) -> tuple[int, int]:
    every = max(1, math.ceil(duration / records))
    return every * records, every


def compute(point: Point) -> dict:
    data = dlx.task(tuple(point["strengths"]), point["features"], seed=0)
    s = data.strengths
    depth, n = point["depth"], point["depth"] + 1
    lr = point["learning_rate"] / n
    if point["panel"] == "random":
        var = point["variance"]
        flow = float(np.max(dl.learning_time(s, 0.0, 0.95 * s, 1 / lr, 1, weight_norm=var)))
        steps, every = _steps(flow)
        ws = dlx.init("gaussian", 1, point["width"], data, _key(point), scale=math.sqrt(var))
        coarse = dlx.train(ws, data, learning_rate=lr, steps=steps, every=every)
        fine = dlx.train(ws, data, learning_rate=lr / 2, steps=2 * steps, every=2 * every)
        theory = dl.mode_strength(coarse.steps[:, None], s, 0.0, 1 / lr, 1, weight_norm=var)
        return {"steps": coarse.steps.tolist(), "modes": (2 * fine.modes - coarse.modes).tolist(),
                "modes_gd": coarse.modes.tolist(), "theory": np.asarray(theory).tolist()}
    u0 = point["initial"]
    if point["panel"] == "dynamics":
        flow = float(np.max(dl.learning_time(s, u0, 0.97 * s, 1 / lr, depth)))
        steps, every = _steps(flow)
        ws = dlx.init("decoupled", depth, point["width"], data, _key(point), scale=u0)
        run = dlx.train(ws, data, learning_rate=lr, steps=steps, every=every)
        grid = np.linspace(0, steps, 400)
        theory = np.asarray(dl.mode_strength(run.steps[:, None], s, u0, 1 / lr, depth))
        return {"steps": run.steps.tolist(), "modes": run.modes.tolist(), "theory_steps": grid.tolist(),
                "theory": np.asarray(dl.mode_strength(grid[:, None], s, u0, 1 / lr, depth)).tolist(),
                "max_abs_error": float(np.max(np.abs(run.modes - theory)))}
    init = point["init"]
    scale = {"decoupled": u0, "small": point["small_scale"]}.get(init, INIT_SCALES[init])
    kind = "gaussian" if init == "small" else init
    ws = dlx.init(kind, depth, point["width"], data, _key(point), scale=scale)
    every = 5 if init == "decoupled" else 10
    run = dlx.train(ws, data, learning_rate=lr, steps=point["max_steps"], every=every,
                    stop_fraction=point["fraction"])
    frac = point["fraction"]
    theory = limit = float("nan")
    if init == "decoupled":
        theory = float(np.max(dl.learning_time(s, u0, frac * s, 1 / lr, depth)))
        limit = float(np.max(dl.depth_limit_learning_time(s, u0, frac * s, 1.0))) / point["learning_rate"]
    return {"learning_time": float("nan") if run.reached is None else float(run.reached),
            "reached": run.reached is not None, "diverged": run.diverged, "resolution": every,
            "theory_time": theory, "depth_limit_time": limit}


def _series(part: pd.DataFrame, column: str) -> np.ndarray:
    return np.array([np.asarray(v, dtype=float) for v in part[column]])


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    fig, (ax_a, ax_b, ax_c) = style.subplots(1, 3, panel_size=(4.6, 3.6))
    s = np.asarray(config.strengths)
    # (a) one hidden layer, random Gaussian weights: mean +- SE against the infinite-width theory.
    rand = df[df["panel"] == "random"]
    worst, worst_se = 0.0, 0.0
    for i, width in enumerate(sorted(rand["width"].unique())):
        part = rand[rand["width"] == width]
        modes = _series(part, "modes")  # (seeds, T, r)
        steps = np.asarray(part["steps"].iloc[0])
        mean, se = modes.mean(0), modes.std(0, ddof=1) / math.sqrt(len(modes))
        theory = np.asarray(part["theory"].iloc[0])
        worst, worst_se = max(worst, float(np.max(np.abs(mean - theory)))), max(worst_se, float(np.max(se)))
        for a in range(len(s)):
            ax_a.errorbar(steps, mean[:, a], yerr=se[:, a], color=style.color(a), marker=style.marker(i), ms=3,
                          linestyle="none", alpha=0.8, label=f"width {width}" if a == 0 else None)
        if i == 0:
            for a in range(len(s)):
                ax_a.plot(steps, theory[:, a], color=style.color(a), lw=1.2, label=f"theory, $s$ = {s[a]:g}")
    ax_a.set(xlabel="gradient-descent steps", ylabel=r"mode strength $u_\alpha$",
             title=f"(a) one hidden layer, Gaussian init ($\\sigma^2$ = {config.gaussian_variance:g})")
    ax_a.text(0.97, 0.04, f"{config.seeds} networks per width; GD at $\\eta$, $\\eta/2$ extrapolated\n"
              f"max |mean − theory| = {worst:.3f} (largest SE {worst_se:.3f})",
              transform=ax_a.transAxes, ha="right", va="bottom", fontsize=7.5, color="0.3")
    ax_a.legend(fontsize=7, loc="upper left")
    # (b) decoupled, balanced: each depth's modes against the exact theory.
    dyn = df[df["panel"] == "dynamics"].sort_values("depth")
    styles = ["-", "--", ":", "-."]
    for j, (_, row) in enumerate(dyn.iterrows()):
        modes, steps = np.asarray(row["modes"]), np.asarray(row["steps"])
        grid, theory = np.asarray(row["theory_steps"]), np.asarray(row["theory"])
        for a in range(len(s)):
            ax_b.plot(grid, theory[:, a], color=style.color(a), lw=1.0, linestyle=styles[j % len(styles)],
                      label=f"theory, $L$ = {row['depth']}" if a == 0 else None)
            ax_b.plot(steps[::2], modes[::2, a], color=style.color(a), marker=style.marker(j), ms=3,
                      linestyle="none")
    ax_b.set_xscale("log")
    ax_b.set(xlabel=r"steps ($\eta = \eta_0 / (L + 1)$)", ylabel=r"mode strength $u_\alpha$",
             title=f"(b) decoupled, balanced init ($u_0$ = {config.decoupled_initial:g})")
    ax_b.legend(fontsize=7, loc="upper left")
    if len(dyn):
        ax_b.text(0.03, 0.72, "markers: gradient descent, width " f"{config.width}\nmax |GD − theory| = "
                  f"{dyn['max_abs_error'].max():.3f}", transform=ax_b.transAxes, ha="left", va="top",
                  fontsize=7.5, color="0.3")
    # (c) learning time against depth.
    times = df[df["panel"] == "time"]
    labels = {"decoupled": f"decoupled ($u_0$ = {config.decoupled_initial:g})",
              "small": f"small Gaussian (scale {config.small_scale:g})", "gaussian": "scaled Gaussian",
              "orthogonal": "orthogonal"}
    top = config.max_steps
    for i, init in enumerate(config.inits):
        part = times[times["init"] == init]
        if not len(part):
            continue
        g = part.groupby("depth")
        depths = np.asarray(sorted(part["depth"].unique())) + 1
        mean = g["learning_time"].mean().to_numpy()
        se = g["learning_time"].std(ddof=1).fillna(0.0).to_numpy() / np.sqrt(g.size().to_numpy())
        missed = g["reached"].apply(lambda r: not r.all()).to_numpy()
        ok = ~missed
        ax_c.errorbar(depths[ok], mean[ok], yerr=se[ok], color=style.color(i + 3), marker=style.marker(i),
                      ms=4, linestyle="-", lw=0.8, label=labels[init])
        if missed.any():
            ax_c.plot(depths[missed], np.full(missed.sum(), top), color=style.color(i + 3), marker="^",
                      linestyle="none", ms=5)
        if init == "decoupled":
            th = g["theory_time"].first().to_numpy()
            ax_c.plot(depths, th, color="k", lw=1.0, label="theory (decoupled)")
            ax_c.axhline(float(part["depth_limit_time"].iloc[0]), color="k", lw=0.8, linestyle="--",
                         label=r"theory, depth $\to \infty$")
    ax_c.set(xscale="log", yscale="log", xlabel="weight matrices $L + 1$",
             ylabel=f"steps until every $u_\\alpha \\geq$ {config.fraction:g} $s_\\alpha$",
             title=r"(c) learning time, $\eta = \eta_0 / (L + 1)$")
    ticks = sorted({L + 1 for L in times["depth"].unique()})
    ax_c.set_xticks(ticks, [str(t) for t in ticks])
    ax_c.minorticks_off()
    ax_c.axhline(top, color="0.6", lw=0.6)
    ax_c.text(0.02, 0.97, f"▲: not learned in {top} steps", transform=ax_c.transAxes, fontsize=7, va="top",
              color="0.3")
    ax_c.legend(fontsize=7, loc="center left")
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="deep-linear-dynamics",
    paper="Saxe, McClelland & Ganguli 2014, 'Exact solutions to the nonlinear dynamics of learning in deep linear "
          "neural networks'",
    summary="deep linear networks by gradient descent: mode strengths against the exact mode dynamics (plateaus, "
            "sigmoidal transitions ordered by strength) and learning time against depth for four initialisations",
    config=Config(),
    quick_config=Config(random_widths=(64,), seeds=2, time_seeds=2, dynamics_depths=(1, 3), time_depths=(1, 3),
                        max_steps=3000),
    points=points,
    compute=compute,
    plot=plot,
)
