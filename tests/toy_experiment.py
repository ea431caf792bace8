"""Toy experiments for the runner's tests (not real experiments): ``toy`` (cheap numpy, no theory) and
``jax-toy`` (small JAX kernels in float32 and float64, seeded by JAX keys: bit-identity across processes).

The tests make the command line find them with ``DEEPLIMITS_EXPERIMENT_MODULES=toy_experiment`` and
``tests/`` on ``PYTHONPATH``. Two environment variables instrument it without entering the results
(they are not part of any point's config): ``DEEPLIMITS_TOY_LOG`` names a file to which ``compute``
appends one JSON line per point it *starts*, and ``DEEPLIMITS_TOY_DELAY`` is the seconds it then
sleeps (default 0).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.figures import style
from experiments.registry import Experiment, grid


@dataclass(frozen=True)
class ToyConfig:
    widths: tuple[int, ...] = (4, 8, 16, 32)
    seeds: int = 3
    scale: float = 1.0
    label: str = "toy"
    noisy: bool = True
    exponents: tuple[float, ...] = (-0.5,)

    def __post_init__(self) -> None:
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive, got {self.widths}")


def points(config: ToyConfig) -> list[dict]:
    return grid(width=config.widths, seed=range(config.seeds), scale=config.scale, noisy=config.noisy,
                exponent=config.exponents)


def compute(point: dict) -> dict:
    log = os.environ.get("DEEPLIMITS_TOY_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"width": point["width"], "seed": point["seed"], "pid": os.getpid()}) + "\n")
    time.sleep(float(os.environ.get("DEEPLIMITS_TOY_DELAY", "0")))
    rng = np.random.default_rng([point["seed"], point["width"]])
    mean = point["scale"] * point["width"] ** point["exponent"]
    noise = 0.1 * rng.standard_normal() if point["noisy"] else 0.0
    return {"y": mean * (1 + noise), "y_err": 0.1 * mean, "draws": rng.standard_normal(3)}


def plot(df, config: ToyConfig, outdir: Path) -> list[Path]:
    means = df.groupby("width").agg(y=("y", "mean"), y_err=("y_err", "mean")).reset_index()
    with style.figure(outdir, "toy") as (_, ax, paths):
        style.errorbar_loglog(ax, means.width, means.y, means.y_err, label=config.label, fit=len(means) >= 3)
        ax.set(xlabel="width $n$", ylabel=r"$y$")
        ax.legend()
    return paths


EXPERIMENT = Experiment(
    name="toy",
    paper="test fixture",
    summary="a seeded random number per point falling as n^-1/2",
    config=ToyConfig(),
    quick_config=ToyConfig(widths=(4, 8), seeds=2),
    points=points,
    compute=compute,
    plot=plot,
)


@dataclass(frozen=True)
class JaxToyConfig:
    widths: tuple[int, ...] = (8, 32)
    dtypes: tuple[str, ...] = ("float32", "float64")


def jax_points(config: JaxToyConfig) -> list[dict]:
    return grid(dtype=config.dtypes, width=config.widths, seed=0)


def jax_compute(point: dict) -> dict:
    """A width-n random-feature kernel of tanh (weights from the point's JAX key) and an erf MLP's limit kernels,
    in the point's dtype (JAX's x64 mode is the runner's to set)."""
    import jax
    import jax.numpy as jnp

    import theory

    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    w = jax.random.normal(jax.random.key(point["seed"]), (point["width"], 4))
    h = jnp.tanh(x @ w.T / 2.0)
    limit = theory.kernels(theory.MLP(depth=2, activation="erf", w_std=1.5, b_std=0.1), np.asarray(x))
    return {"features": h @ h.T / point["width"], "nngp": limit.nngp, "ntk": limit.ntk,
            "itemsize": int(x.dtype.itemsize)}


JAX_EXPERIMENT = Experiment(
    name="jax-toy",
    paper="test fixture",
    summary="a random-feature kernel and an MLP's limit kernels in float32 and float64",
    config=JaxToyConfig(),
    quick_config=JaxToyConfig(widths=(8,)),
    points=jax_points,
    compute=jax_compute,
    plot=lambda df, config, outdir: [],
)

EXPERIMENTS = (JAX_EXPERIMENT,)
