"""Running an experiment's sweep: only the missing grid points are computed, each stored as soon as it is done.

``run(name)`` takes the experiment's config (``quick_config`` with ``quick=True``), applies the
overrides, lists its grid points, looks each one up in the results store (``experiments.store``),
computes the missing ones, writes every finished point atomically at once (an interrupted sweep loses
at most the points in flight; a re-run recomputes nothing that was finished), then plots all points
into the figures folder (PNG and PDF, and the data as ``<stem>.csv``) and returns them as a DataFrame.

The figures folder is the ``figures_dir`` argument, else ``$DEEPLIMITS_FIGURES``, else ``figures/``
under the current directory, and for a quick run its ``quick/`` subfolder (a quick run never replaces a full
run's figures); the results folder is ``results_dir``, else ``$DEEPLIMITS_RESULTS``, else ``results/``.

Distribution: a grid point is a pure function of its config. :func:`compute_point` is the whole unit
of work (module-level, picklable arguments, returns plain JSON-able values and the time taken), so
any ``concurrent.futures.Executor`` can run it: ``run(name, executor=ProcessPoolExecutor(4,
mp_context=multiprocessing.get_context("spawn")))`` (spawn: forking a process that has imported JAX can deadlock);
``jobs=N`` and ``scheduler=ADDRESS`` run it on Dask (``experiments.cluster``). Only the calling process touches the
store, and it claims each point before computing it, so two runs on one results folder share the work.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from experiments import provenance
from experiments.provenance import LIBRARIES
from experiments.registry import DTYPES, Experiment, Point, UsageError, apply_overrides, get_experiment
from experiments.store import (
    META_COLUMNS,
    Claim,
    RecordKey,
    Store,
    canonical_json,
    ensure_writable_folder,
    records_to_frame,
    to_jsonable,
)

if TYPE_CHECKING:
    import pandas as pd

ENV_FIGURES = "DEEPLIMITS_FIGURES"
DEFAULT_FIGURES_DIRNAME = "figures"
QUICK_SUBDIR = "quick"
"""Quick runs write their figures to this subfolder of the default figures folder (``figures/quick/``)."""
POLL_S = 0.25
"""Seconds between looks at the points another run on the same results folder is computing."""


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


def compute_point(compute: Callable[[Point], Mapping[str, Any]], point: Point, dtype: str,
                  code_version: str | None = None) -> tuple[dict, float, str | None]:
    """Run ``compute(point)`` under ``dtype`` (JAX x64 mode on for ``"float64"``, off otherwise).

    Returns the values as plain JSON types (device arrays are fetched, so the time is honest), the wall-clock
    seconds, and, when ``code_version`` (the caller's) is given, the code version of ``compute``'s module as this
    process loaded it (``provenance.loaded_code_version``): the caller checks that a worker in another process or
    on another machine ran the same code (``None`` for ``__main__``, which a worker receives by value). This is the
    unit of work an executor runs.
    """
    start = time.perf_counter()
    with _x64(dtype == "float64"):
        values = compute(dict(point))
        if not isinstance(values, Mapping):
            raise ValueError(f"compute must return a dict of values, got {type(values).__name__} for point {point}")
        values = to_jsonable(values)
    elapsed = time.perf_counter() - start
    here = None
    if code_version is not None and compute.__module__ != "__main__":
        here = provenance.loaded_code_version(compute.__module__)
    return values, elapsed, here


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


class _InlineExecutor(cf.Executor):
    """Runs each submitted call at once, in this process (the serial path); its futures are already done."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # re-raised by future.result(), with its traceback
            future.set_exception(err)
        return future


def _spread(keys: list[RecordKey]) -> list[RecordKey]:
    """``keys`` in the order to hand them to parallel workers: seed-major. Points that differ only in their
    ``"seed"`` usually run the same compiled programs; in grid order (seed fastest) the workers would all start by
    compiling the first shape at once. Here the first points in flight are of different shapes, and the later
    seeds find their programs compiled (in the worker, or in the local cluster's shared compilation cache).
    Without a ``"seed"`` field the order is unchanged."""
    groups: dict[str, int] = {}
    rank: list[tuple[int, int]] = []
    for key in keys:
        group = canonical_json({k: v for k, v in key.config.items() if k != "seed"})
        groups[group] = groups.get(group, -1) + 1
        rank.append((groups[group], len(rank)))
    return [keys[i] for _, i in sorted(rank)]


def _window(executor: cf.Executor) -> Callable[[], int]:
    """How many points to hold claims on and have in flight at once: twice what can run at once (so workers never
    idle between points), and no more, so that a second run on the same folder finds unclaimed points to share."""
    from experiments.cluster import executor_capacity

    if isinstance(executor, _InlineExecutor):
        return lambda: 1
    if executor_capacity(executor) is not None:  # a Dask cluster: as many as its workers have threads now
        return lambda: 2 * max(1, executor_capacity(executor) or 0)
    workers = getattr(executor, "_max_workers", None) or os.cpu_count() or 1
    return lambda: 2 * int(workers)


def _figures_dir(figures_dir: str | os.PathLike[str] | None, quick: bool) -> Path:
    """``figures_dir`` as given; else the default folder, or its ``quick/`` subfolder for a quick run (a quick run
    never replaces the figures of a full one)."""
    if figures_dir is not None:
        return Path(figures_dir)
    return default_figures_dir() / QUICK_SUBDIR if quick else default_figures_dir()


def run(
    name: str | Experiment,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    *,
    results_dir: str | os.PathLike[str] | None = None,
    figures_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    executor: cf.Executor | None = None,
    jobs: int | None = None,
    scheduler: str | None = None,
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
        figures_dir: where figures and the CSV go (default ``$DEEPLIMITS_FIGURES`` or ``./figures``, and its
            ``quick/`` subfolder for a quick run).
        progress: show a tqdm bar on stderr; ``None``: only when stderr is a terminal.
        executor: a ``concurrent.futures.Executor`` to compute points on (default: in this process, in
            grid order). Finished points are stored as they complete.
        jobs: compute on a new local Dask cluster of ``jobs`` worker processes (``experiments.cluster``).
        scheduler: compute on the running Dask cluster whose scheduler has this address (``tcp://host:8786``).
        plot: draw and save the figures (and CSV); ``False`` only computes and returns the data.
        quiet: do not print the one-line summary to stderr.

    Points are claimed before they are computed (``Store.claim``): a point that another run on the same results
    folder is computing is not computed twice; this run waits for its record (and computes it itself if that
    run stops first). With workers in other processes every point's result carries the worker's code version,
    checked against this process's.

    Returns:
        One row per grid point, in grid order: the point's fields, the computed values (list values as
        lists), and ``dtype``, ``code_version``, ``timestamp``, ``elapsed_s``, ``digest``. ``df.attrs``
        holds ``experiment``, ``config`` (dict), ``computed``, ``cached``, ``from_other_runs``, ``figures``
        (paths) and ``summary`` (the one-line summary).

    Raises:
        ValueError: unknown experiment (lists the known ones), bad overrides, bad points or values, bad ``jobs``
            or ``scheduler``, or more than one of ``executor``, ``jobs``, ``scheduler``.
        OSError: the results or figures folder cannot be written (checked before computing anything);
            ``cluster.ClusterError`` the scheduler cannot be reached.
    """
    from experiments.cluster import check_engine_args

    start = time.perf_counter()
    check_engine_args(jobs, scheduler)
    if executor is not None and (jobs is not None or scheduler is not None):
        raise UsageError("give an executor, jobs or a scheduler, not more than one")
    experiment = get_experiment(name)
    config = apply_overrides(experiment.quick_config if quick else experiment.config, overrides,
                             experiment=experiment.name)
    points = experiment.points(config)
    version = experiment.code_version()
    keys = _keys(experiment, points, version)
    points = [dict(p) for p in points]

    store = Store(results_dir)
    store.ensure_writable(experiment.name)
    store.clean_temp_files(experiment.name)
    outdir = _figures_dir(figures_dir, quick)
    if plot:
        ensure_writable_folder(outdir, "figures")  # before the sweep, not after hours of it
    records: dict[str, dict] = {}
    for key in keys:
        rec = store.get(key)
        if rec is not None:
            records[key.digest] = rec
    missing = [k for k in keys if k.digest not in records]
    cached = len(keys) - len(missing)
    if missing and executor is None and jobs is None and scheduler is None:
        changed = provenance.changed_since_import(experiment.module)
        if changed:
            raise RuntimeError(
                f"{', '.join(changed)} changed on disk after this process imported them: {experiment.name!r} would "
                "be computed by the old code in memory but stored under the new code's version. Restart the Python "
                "process (or the notebook kernel) and run again, or run with --jobs / a Dask scheduler, whose "
                "workers import the code afresh")

    show = sys.stderr.isatty() if progress is None else bool(progress)
    counts = {"computed": 0, "others": 0}
    with contextlib.ExitStack() as stack:

        def note(message: str) -> None:
            tqdm.write(f"{experiment.name}: {message}", file=sys.stderr)

        if missing and (jobs is not None or scheduler is not None):
            from experiments.cluster import dask_engine

            engine = stack.enter_context(dask_engine(jobs, scheduler))
            executor = engine.executor
            if engine.capacity() == 0:
                note(f"{engine.description} has no workers yet; the points wait for some (`dask worker ADDRESS`)")
        remote = executor is not None
        pool = executor if executor is not None else _InlineExecutor()
        bar = stack.enter_context(tqdm(total=len(keys), initial=cached, desc=experiment.name, unit="pt",
                                       disable=not show, file=sys.stderr, dynamic_ncols=True))

        def finish(key: RecordKey, values: dict, elapsed: float, worker_version: str | None) -> None:
            if worker_version is not None and worker_version != version:
                raise RuntimeError(f"a worker computed {experiment.name!r} with code version {worker_version}, this "
                                   f"process has {version}: run every worker on the same deeplimits source and "
                                   f"libraries ({', '.join(LIBRARIES)}); the point was not stored")
            _check_values(experiment, key.config, values)
            records[key.digest] = store.put(key, values, elapsed_s=elapsed)
            counts["computed"] += 1
            bar.update(1)

        order = _spread(missing) if remote else missing
        _sweep(store, pool, _window(pool), experiment, order, version if remote else None, records, finish, counts,
               bar, note)

    df = _frame(points, [records[k.digest] for k in keys])
    figures: list[Path] = []
    if plot:
        from experiments.figures import style

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

    computed, others = counts["computed"], counts["others"]
    shown = next((p for p in figures if p.suffix == ".png"), figures[0] if figures else None)
    target = _display(shown) if shown is not None else f"{_display(store.root / experiment.name)} (no plot)"
    from_others = f", {others} from another run" if others else ""
    summary = (f"{experiment.name}: {len(keys)} points ({computed} computed, {cached} cached{from_others}) "
               f"in {time.perf_counter() - start:.1f} s -> {target}")
    df.attrs.update(experiment=experiment.name, config=dataclasses.asdict(config), computed=computed,
                    cached=cached, from_other_runs=others, figures=[str(p) for p in figures], summary=summary)
    if not quiet:
        print(summary, file=sys.stderr)
    return df


@contextlib.contextmanager
def _ctrl_c_deferred() -> Any:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block ends, then deliver it to the handler
    that was installed. Only the main thread can install signal handlers; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])
        elif caught and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def _sweep(store: Store, pool: cf.Executor, window: Callable[[], int], experiment: Experiment,
           missing: list[RecordKey], version: str | None, records: dict[str, dict],
           finish: Callable[..., None], counts: dict[str, int], bar: Any, note: Callable[[str], None]) -> None:
    """Compute the ``missing`` points on ``pool``: claim each (a point another run holds is waited for, and taken
    over if that run stops), keep at most ``window()`` in flight, store each as it completes. On any exception
    (Ctrl-C included) the points already finished are stored, the rest cancelled, every claim released."""
    pending = collections.deque(missing)
    waiting: dict[str, RecordKey] = {}
    running: dict[cf.Future, tuple[RecordKey, Claim]] = {}
    told = False

    held: dict[int, Any] = {}  # the claims this run holds (by identity): each released once, also on Ctrl-C

    def take(key: RecordKey) -> Any:
        with _ctrl_c_deferred():  # a claim file is either registered here or never made
            claim = store.claim(key)
            if claim is not None:
                held[id(claim)] = claim
        return claim

    def drop(claim: Any) -> None:
        with _ctrl_c_deferred():  # unregistered only once its file is gone
            if held.pop(id(claim), None) is not None:
                store.release(claim)

    def adopt(key: RecordKey, record: dict) -> None:
        records[key.digest] = record
        counts["others"] += 1
        bar.update(1)

    try:
        while pending or running or waiting:
            capacity = window()
            while pending and len(running) < capacity:
                key = pending.popleft()
                claim = take(key)
                if claim is None:
                    waiting[key.digest] = key
                    if not told:
                        told = True
                        note(f"point {dict(key.config)} is being computed by another run ({store.holder(key)}); this "
                             "run computes the others, reads that run's records as they appear, and computes any "
                             "point it leaves")
                    continue
                try:
                    record = store.get(key)  # finished by another run since this one looked?
                    if record is not None:
                        drop(claim)
                        adopt(key, record)
                        continue
                    future = pool.submit(compute_point, experiment.compute, dict(key.config), key.dtype, version)
                except BaseException:
                    drop(claim)
                    raise
                running[future] = (key, claim)
            if running:
                done, _ = cf.wait(running, timeout=POLL_S if waiting else None, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    key, claim = running.pop(future)
                    try:
                        values, elapsed, worker_version = future.result()
                        finish(key, values, elapsed, worker_version)
                    finally:
                        drop(claim)
            elif waiting:
                time.sleep(POLL_S)
            for digest, key in list(waiting.items()):
                record = store.get(key)
                if record is not None:
                    del waiting[digest]
                    adopt(key, record)
                else:
                    del waiting[digest]
                    pending.appendleft(key)  # its claim is tried again (and taken if that run has stopped)
    except BaseException:
        for future, (key, _) in list(running.items()):  # keep what finished before the stop
            if future.done() and not future.cancelled() and future.exception() is None:
                with contextlib.suppress(Exception):
                    finish(key, *future.result())
        for future in running:
            future.cancel()
        raise
    finally:
        for claim in list(held.values()):  # every claim this run took, wherever an interrupt fell
            drop(claim)


__all__ = ["compute_point", "default_figures_dir", "run", "write_csv"]
