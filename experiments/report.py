"""``deeplimits report``: a markdown summary of what the results store holds and which figures exist."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from experiments.registry import Experiment, discover, get_experiment, list_experiments
from experiments.runner import default_figures_dir
from experiments.store import Store

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


def report(results_dir: str | os.PathLike[str] | None = None,
           figures_dir: str | os.PathLike[str] | None = None) -> str:
    """Markdown: per experiment (registered or found in the store) its records, grid values and figures."""
    store = Store(results_dir)
    figdir = Path(figures_dir) if figures_dir is not None else default_figures_dir()
    discover()
    registered = {info.name for info in list_experiments()}
    names = sorted(registered | set(store.experiments()))
    lines = ["# deeplimits results", "",
             f"Results folder: `{_rel(store.root)}` · figures folder: `{_rel(figdir)}`", ""]
    if not names:
        lines.append("No experiments registered and no results stored.")
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
            if current is not None and current not in versions:
                lines.append("- none from the current code: `deeplimits run` recomputes them")
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
        files = sorted(p for p in figdir.glob(f"{stem}*") if p.suffix in FIGURE_SUFFIXES) if figdir.is_dir() else []
        if files:
            lines.append("- figures: " + ", ".join(f"`{_rel(p)}`" for p in files))
        else:
            lines.append("- figures: none yet")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
