"""``deeplimits report``: a markdown summary of what the results store holds and which figures exist;
``deeplimits clean --stale``: remove the records that the current code would not serve.

A record is *stale* when its code version is not its experiment's current one
(``experiments.provenance.code_version``): the code it ran, or a library under it, has changed since, so a run
recomputes the point and the old record only takes space."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from experiments.registry import Experiment, UsageError, discover, get_experiment, list_experiments
from experiments.runner import QUICK_SUBDIR, default_figures_dir
from experiments.store import ENV_RESULTS, Store

FIGURE_SUFFIXES = (".png", ".pdf", ".csv")


def _fmt_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _sort_key(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _axis_summary(values: list[Any], limit: int = 8) -> str:
    distinct = sorted({_fmt_value(v) for v in values}, key=_sort_key)
    if len(distinct) > limit:
        return "{" + ", ".join([*distinct[:3], "…", *distinct[-2:]]) + f"}} ({len(distinct)} values)"
    return "{" + ", ".join(distinct) + "}"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _figure_files(folder: Path, stem: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{stem}*") if p.suffix in FIGURE_SUFFIXES)


def _existing_store(results_dir: str | os.PathLike[str] | None) -> Store:
    """The store; a results folder named by the caller or ``$DEEPLIMITS_RESULTS`` must exist (a typo is not an
    empty store); the default ``./results`` may be missing."""
    store = Store(results_dir)
    named = results_dir is not None or os.environ.get(ENV_RESULTS)
    if named and not store.root.is_dir():
        where = "--results" if results_dir is not None else f"${ENV_RESULTS}"
        what = "is not a folder" if store.root.exists() else "does not exist"
        raise UsageError(f"results folder {store.root} ({where}) {what}")
    return store


def stale_records(store: Store, name: str) -> list[dict[str, Any]]:
    """The records of registered experiment ``name`` whose code version is not its current one."""
    current = get_experiment(name).code_version()
    return [r for r in store.records(name) if r.get("code_version") != current]


def clean_stale(results_dir: str | os.PathLike[str] | None = None, names: list[str] | None = None, *,
                dry_run: bool = False) -> dict[str, int]:
    """Remove the stale records of the registered experiments ``names`` (default: all of them) from the store;
    return ``{experiment: records removed}`` (with ``dry_run``, the counts that would be removed).

    Records of experiments that are not registered are left alone (nothing says what their current code is);
    so are the claim and temporary files of runs in progress. Raises ``UsageError`` for an unknown name or a
    named results folder that does not exist.
    """
    store = _existing_store(results_dir)
    discover()
    names = sorted(names) if names else sorted(set(store.experiments()) & {i.name for i in list_experiments()})
    removed = {}
    for name in names:
        stale = stale_records(store, name)
        if not dry_run:
            for record in stale:
                with contextlib.suppress(FileNotFoundError):
                    (store.root / name / f"{record['digest']}.json").unlink()
            store.clean_temp_files(name)
        removed[name] = len(stale)
    return removed


def report(results_dir: str | os.PathLike[str] | None = None,
           figures_dir: str | os.PathLike[str] | None = None) -> str:
    """Markdown: per experiment (registered or found in the store) its records (how many stale), grid values and
    figures; a last line counts the stale records in all. ``UsageError`` for a named results folder that does
    not exist."""
    store = _existing_store(results_dir)
    figdir = Path(figures_dir) if figures_dir is not None else default_figures_dir()
    discover()
    registered = {info.name for info in list_experiments()}
    names = sorted(registered | set(store.experiments()))
    lines = ["# deeplimits results", "",
             f"Results folder: `{_rel(store.root)}` · figures folder: `{_rel(figdir)}`", ""]
    if not names:
        lines.append("No experiments registered and no results stored.")
    total_stale = 0
    for name in names:
        exp: Experiment | None = get_experiment(name) if name in registered else None
        lines.append(f"## {name}")
        if exp is not None:
            lines += ["", f"{exp.summary} ({exp.paper})"]
        lines.append("")
        records = store.records(name)
        current = exp.code_version() if exp is not None else None
        if not records:
            lines.append(f"- no results yet: `deeplimits run {name} --quick`")
        else:
            versions = Counter(r["code_version"] for r in records)
            vtext = ", ".join(f"`{v}` ({n}{', current' if v == current else ''})" for v, n in versions.most_common())
            dtypes = ", ".join(sorted({r["dtype"] for r in records}))
            lines.append(f"- records: {len(records)} (code versions: {vtext}; dtypes: {dtypes})")
            if current is not None:
                stale = len(records) - versions.get(current, 0)
                total_stale += stale
                if stale:
                    lines.append(f"- stale: {stale} of {len(records)} from older code (`deeplimits run` recomputes "
                                 f"them; `deeplimits clean --stale` removes them)")
            fields: dict[str, list[Any]] = {}
            for r in records:
                for k, v in r["config"].items():
                    fields.setdefault(k, []).append(v)
            grid = "; ".join(f"{k} ∈ {_axis_summary(v)}" for k, v in fields.items())
            lines.append(f"- grid: {grid}")
            total = sum(r["elapsed_s"] for r in records if math.isfinite(r.get("elapsed_s", math.nan)))
            last = max(r.get("timestamp", "") for r in records)
            lines.append(f"- compute time {total:.1f} s in all; last record {last}")
        stem = exp.stem if exp is not None else name.replace("-", "_")
        files, quick = _figure_files(figdir, stem), _figure_files(figdir / QUICK_SUBDIR, stem)
        lines.append("- figures: " + (", ".join(f"`{_rel(p)}`" for p in files) if files else "none yet"))
        if quick:
            lines.append("- quick-run figures: " + ", ".join(f"`{_rel(p)}`" for p in quick))
        lines.append("")
    if names:
        lines.append(f"Stale records: {total_stale}" + (" (remove them with `deeplimits clean --stale`)"
                                                         if total_stale else ""))
    return "\n".join(lines).rstrip() + "\n"
