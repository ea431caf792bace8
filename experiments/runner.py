"""Running an experiment's sweep: only the missing grid points are computed, each stored as soon as it is done.

``run(name)`` takes the experiment's config (``quick_config`` with ``quick=True``), applies the
overrides, lists its grid points, looks each one up in the results store (``experiments.store``),
computes the missing ones, writes every finished point atomically at once (an interrupted sweep loses
at most the points in flight; a re-run recomputes nothing that was finished), then plots all points
into the figures folder (PNG and PDF, and the data as ``<stem>.csv``) and returns them as a DataFrame.

The figures folder is the ``figures_dir`` argument, else ``$DEEPLIMITS_FIGURES``, else ``figures/``
under the current directory; the results folder is ``results_dir``, else ``$DEEPLIMITS_RESULTS``,
else ``results/``.

Distribution: a grid point is a pure function of its config. :func:`compute_point` is the whole unit
of work (module-level, picklable arguments, returns plain JSON-able values and the time taken), so
any ``concurrent.futures.Executor`` can run it: ``run(name, executor=ProcessPoolExecutor(4))``, or a
Dask ``Client.get_executor()``. Only the calling process touches the store.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.registry import DTYPES, Experiment, Point, apply_overrides, get_experiment
from experiments.store import META_COLUMNS, RecordKey, Store, records_to_frame, to_jsonable

if TYPE_CHECKING:
    import pandas as pd

ENV_FIGURES = "DEEPLIMITS_FIGURES"
DEFAULT_FIGURES_DIRNAME = "figures"


def default_figures_dir() -> Path:
    """``$DEEPLIMITS_FIGURES`` if set, else ``./figures``."""
    env = os.environ.get(ENV_FIGURES)
    return Path(env) if env else Path.cwd() / DEFAULT_FIGURES_DIRNAME


def _x64(enabled: bool) -> contextlib.AbstractContextManager:
    import jax

    manager = getattr(jax, "enable_x64", None)
    if manager is None:  # older JAX
        from jax.experimental import enable_x64 as manager
    return manager(enabled)


def compute_point(compute: Callable[[Point], Mapping[str, Any]], point: Point, dtype: str) -> tuple[dict, float]:
    """Run ``compute(point)`` under ``dtype`` (JAX x64 mode on for ``"float64"``, off otherwise).

    Returns the values as plain JSON types (device arrays are fetched, so the time is honest) and the
    wall-clock seconds. This is the unit of work an executor runs.
    """
    start = time.perf_counter()
    with _x64(dtype == "float64"):
        values = compute(dict(point))
        if not isinstance(values, Mapping):
            raise ValueError(f"compute must return a dict of values, got {type(values).__name__} for point {point}")
        values = to_jsonable(values)
    return values, time.perf_counter() - start


def _point_dtype(experiment: Experiment, point: Point) -> str:
    dtype = point.get("dtype", experiment.dtype)
    if dtype not in DTYPES:
        raise ValueError(f"point {point} of {experiment.name!r} has dtype {dtype!r}; expected one of {DTYPES}")
    return dtype


def _keys(experiment: Experiment, points: list[Point], version: str) -> list[RecordKey]:
    if not isinstance(points, list | tuple) or not points:
        raise ValueError(f"points() of {experiment.name!r} must return a non-empty list of dicts, got {points!r}")
    keys, seen = [], {}
    for point in points:
        if not isinstance(point, Mapping):
            raise ValueError(f"points() of {experiment.name!r} returned {point!r}, not a dict")
        key = RecordKey(experiment.name, dict(point), version, _point_dtype(experiment, point))
        if key.digest in seen:
            raise ValueError(f"points() of {experiment.name!r} returned the same point twice: {point}")
        seen[key.digest] = point
        keys.append(key)
    return keys


def _frame(points: list[Point], records: list[dict]) -> pd.DataFrame:
    """One row per point in grid order: the point's fields (its own order), the values (sorted), meta."""
    df = records_to_frame(records)
    config_cols = list(points[0])
    for p in points[1:]:
        config_cols += [k for k in p if k not in config_cols]
    value_cols = sorted({k for r in records for k in r["values"]})
    meta_cols = [c for c in META_COLUMNS if c not in config_cols]  # a point may carry its own "dtype"
    return df[config_cols + value_cols + meta_cols]


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """``df`` as CSV, list cells written as JSON (``[1.0, 2.0]``) so they read back with ``json.loads``."""
    out = df.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, list | dict)).any():
            out[col] = out[col].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)
    out.to_csv(path, index=False)
    return path


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_values(experiment: Experiment, point: Point, values: Mapping[str, Any]) -> None:
    clash = [k for k in values if k in point or k in META_COLUMNS]
    if clash:
        raise ValueError(f"compute of {experiment.name!r} returned {clash}, which clash with the point's fields "
                         f"or {META_COLUMNS}; rename them")


def run(
    name: str | Experiment,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    *,
    results_dir: str | os.PathLike[str] | None = None,
    figures_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    executor: cf.Executor | None = None,
    plot: bool = True,
    quiet: bool = False,
) -> pd.DataFrame:
    """Run the sweep of experiment ``name`` and return the DataFrame of all its points (this config).

    Args:
        name: a registered experiment's name (``deeplimits list``) or an :class:`Experiment`.
        quick: use the experiment's reduced ``quick_config``.
        overrides: config fields to change, ``{"widths": "64,128,256", "seeds": 8}`` (strings are parsed
            as after ``--set``; see ``registry.apply_overrides``).
        results_dir: the store's folder (default ``$DEEPLIMITS_RESULTS`` or ``./results``).
        figures_dir: where figures and the CSV go (default ``$DEEPLIMITS_FIGURES`` or ``./figures``).
        progress: show a tqdm bar on stderr; ``None``: only when stderr is a terminal.
        executor: a ``concurrent.futures.Executor`` to compute points on (default: in this process, in
            grid order). Finished points are stored as they complete.
        plot: draw and save the figures (and CSV); ``False`` only computes and returns the data.
        quiet: do not print the one-line summary to stderr.

    Returns:
        One row per grid point, in grid order: the point's fields, the computed values (list values as
        lists), and ``dtype``, ``code_version``, ``timestamp``, ``elapsed_s``, ``digest``. ``df.attrs``
        holds ``experiment``, ``config`` (dict), ``computed``, ``cached``, ``figures`` (paths) and
        ``summary`` (the one-line summary).

    Raises:
        ValueError: unknown experiment (lists the known ones), bad overrides, bad points or values.
        OSError: the results or figures folder cannot be written.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    experiment = get_experiment(name)
    config = apply_overrides(experiment.quick_config if quick else experiment.config, overrides,
                             experiment=experiment.name)
    points = experiment.points(config)
    keys = _keys(experiment, points, experiment.code_version())
    points = [dict(p) for p in points]

    store = Store(results_dir)
    store.ensure_writable(experiment.name)
    store.clean_temp_files(experiment.name)
    records: dict[str, dict] = {}
    for key in keys:
        rec = store.get(key)
        if rec is not None:
            records[key.digest] = rec
    missing = [k for k in keys if k.digest not in records]
    cached = len(keys) - len(missing)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    with tqdm(total=len(keys), initial=cached, desc=experiment.name, unit="pt", disable=not show,
              file=sys.stderr, dynamic_ncols=True) as bar:

        def finish(key: RecordKey, values: dict, elapsed: float) -> None:
            _check_values(experiment, key.config, values)
            records[key.digest] = store.put(key, values, elapsed_s=elapsed)
            bar.update(1)

        if executor is None:
            for key in missing:
                finish(key, *compute_point(experiment.compute, dict(key.config), key.dtype))
        else:
            futures = {executor.submit(compute_point, experiment.compute, dict(k.config), k.dtype): k
                       for k in missing}
            try:
                for fut in cf.as_completed(futures):
                    finish(futures[fut], *fut.result())
            finally:
                for fut in futures:
                    fut.cancel()

    df = _frame(points, [records[k.digest] for k in keys])
    figures: list[Path] = []
    if plot:
        from experiments.figures import style

        outdir = Path(figures_dir) if figures_dir is not None else default_figures_dir()
        try:
            outdir.mkdir(parents=True, exist_ok=True)
            csv = write_csv(df, outdir / f"{experiment.stem}.csv")  # the data first: kept even if plotting fails
        except OSError as err:
            raise type(err)(f"figures folder {outdir} cannot be written: {err}") from err
        with style.context():
            figures = [Path(p) for p in experiment.plot(df.copy(), config, outdir)]
        missing_files = [p for p in figures if not p.exists()]
        if missing_files:
            raise ValueError(f"plot of {experiment.name!r} returned paths it did not write: {missing_files}")
        figures.append(csv)

    computed = len(missing)
    shown = next((p for p in figures if p.suffix == ".png"), figures[0] if figures else None)
    target = _display(shown) if shown is not None else f"{_display(store.root / experiment.name)} (no plot)"
    summary = (f"{experiment.name}: {len(keys)} points ({computed} computed, {cached} cached) "
               f"in {time.perf_counter() - start:.1f} s -> {target}")
    df.attrs.update(experiment=experiment.name, config=dataclasses.asdict(config), computed=computed,
                    cached=cached, figures=[str(p) for p in figures], summary=summary)
    if not quiet:
        print(summary, file=sys.stderr)
    return df


__all__ = ["compute_point", "default_figures_dir", "run", "write_csv"]
