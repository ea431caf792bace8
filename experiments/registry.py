"""Declaring experiments: the :class:`Experiment` record, the registry, grids and ``--set`` overrides.

An experiment is declared once, in its own module under ``experiments/figures/``, as a module-level
``EXPERIMENT = Experiment(...)`` (see ``experiments/figures/__init__.py`` for a complete example).
The registry finds it by importing every module of that package, plus every module named in the
environment variable ``DEEPLIMITS_EXPERIMENT_MODULES`` (comma-separated dotted names: experiments
that live outside the package, e.g. the toy experiment of the test suite), and taking their
``EXPERIMENT`` (or ``EXPERIMENTS``, a sequence) attribute. :func:`register` adds one by hand
(notebooks, tests) for the current process only.

Configuration is a frozen dataclass whose fields are the sweep's axes and fixed parameters, with
types the command line can parse: ``int``, ``float``, ``str``, ``bool``, ``tuple[int, ...]``,
``tuple[float, ...]``, ``tuple[str, ...]`` (and ``X | None``). By convention a field ``seeds: int``
is a *number* of seeds: ``seeds=8`` means seeds ``0, 1, ..., 7``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import itertools
import os
import pkgutil
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from experiments.provenance import code_version

ENV_MODULES = "DEEPLIMITS_EXPERIMENT_MODULES"
FIGURES_PACKAGE = "experiments.figures"
DTYPES = ("float64", "float32", "bfloat16", "float16")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

Point = dict[str, Any]


class UsageError(ValueError):
    """Bad input from the user of the runner (exit code 2 on the command line)."""


class UnknownExperimentError(UsageError):
    """No experiment of that name is registered (the message lists the known ones)."""


class ExperimentModuleError(ImportError):
    """A module named in ``$DEEPLIMITS_EXPERIMENT_MODULES`` (or under ``experiments/figures/``) cannot be imported,
    or declares no experiment."""


class ConfigError(UsageError):
    """A malformed ``--set`` / override: unknown field, unparseable value, or a config that fails validation."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One reproducible experiment: a grid of points, how to compute one point, how to plot them all.

    Attributes:
        name: lower-case words joined by ``-`` (``"width-convergence"``); the figure files are named
            after :attr:`stem` (``width_convergence.png``, ``.pdf``, ``.csv``).
        paper: the reference it reproduces (``"Jacot et al. 2018, Fig. 2"``).
        summary: one line: what the figure shows.
        config: the full sweep, a frozen dataclass instance (see the module docstring for field types).
        quick_config: the reduced sweep for ``--quick`` (a laptop or CI, under a minute); same type.
        points: ``points(config) -> list[dict]``: every grid point, each a dict of JSON-able parameters
            (the seed included) that fixes the computation completely; :func:`grid` builds products.
        compute: ``compute(point) -> dict``: the values of one point (numbers, lists, arrays). It must
            be a pure function of ``point`` (it may run in another process or on another machine) and a
            module-level function (picklable).
        plot: ``plot(df, config, outdir) -> list[Path]``: draws the figures from the DataFrame of all
            points (config fields and values as columns), saves them under ``outdir``, returns the paths.
        dtype: the floating dtype the computation runs in, part of every record's key; a point's own
            ``"dtype"`` entry, if it has one, overrides it. ``"float64"`` runs ``compute`` with JAX's
            x64 mode on, anything else with it off.
    """

    name: str
    paper: str
    summary: str
    config: Any
    quick_config: Any
    points: Callable[[Any], list[Point]]
    compute: Callable[[Point], Mapping[str, Any]]
    plot: Callable[..., list[Path]]
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"experiment name must be lower-case letters, digits and '-', got {self.name!r}")
        for field in ("paper", "summary"):
            if not isinstance(getattr(self, field), str):
                raise ValueError(f"{field} of experiment {self.name!r} must be a string")
        if not _is_frozen_dataclass(self.config):
            raise ValueError(f"config of experiment {self.name!r} must be a frozen dataclass instance, "
                             f"got {self.config!r}")
        if type(self.quick_config) is not type(self.config):
            raise ValueError(f"quick_config of experiment {self.name!r} must be a {type(self.config).__name__}, "
                             f"got {self.quick_config!r}")
        for field in ("points", "compute", "plot"):
            if not callable(getattr(self, field)):
                raise ValueError(f"{field} of experiment {self.name!r} must be callable")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype of experiment {self.name!r} must be one of {DTYPES}, got {self.dtype!r}")
        for tp in config_fields(self.config).values():  # every field must be parseable from --set
            _describe(tp)

    @property
    def stem(self) -> str:
        """File name stem of the figure and data files: the name with ``-`` replaced by ``_``."""
        return self.name.replace("-", "_")

    @property
    def module(self) -> str:
        """The module that defines ``compute`` (it and every module of ours it imports make the code version)."""
        return self.compute.__module__

    def code_version(self) -> str:
        """Package version + hash of the source :attr:`module` reaches (see ``provenance.code_version``)."""
        return code_version(self.module)

    def info(self) -> ExperimentInfo:
        return ExperimentInfo(self.name, self.paper, self.summary)


class ExperimentInfo(NamedTuple):
    """What ``deeplimits list`` shows about an experiment."""

    name: str
    paper: str
    summary: str


def _is_frozen_dataclass(obj: object) -> bool:
    return (dataclasses.is_dataclass(obj) and not isinstance(obj, type)
            and type(obj).__dataclass_params__.frozen)  # type: ignore[attr-defined]


# -- grids ---------------------------------------------------------------------------------------
def grid(**axes: Any) -> list[Point]:
    """Every combination of the axes, as dicts, in the order given (the last axis varies fastest).

    An axis is an iterable of values (a tuple, list or ``range``); a string or any other scalar is a
    fixed value. ``grid(width=(64, 128), seed=range(2), depth=3)`` gives 4 points.
    """
    names, values = [], []
    for name, axis in axes.items():
        names.append(name)
        if isinstance(axis, str | bytes) or not isinstance(axis, Iterable):
            values.append((axis,))
        else:
            values.append(tuple(axis))
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


# -- registry ------------------------------------------------------------------------------------
_REGISTRY: dict[str, Experiment] = {}
_SCANNED: set[str] = set()


def register(experiment: Experiment, *, replace: bool = False) -> Experiment:
    """Add ``experiment`` to the registry (this process only) and return it.

    Registering the same object twice is harmless; another experiment under a taken name is a
    ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(experiment, Experiment):
        raise ValueError(f"register expects an Experiment, got {experiment!r}")
    old = _REGISTRY.get(experiment.name)
    if old is not None and old is not experiment and not replace:
        raise ValueError(f"two experiments are named {experiment.name!r} (from {old.module} and "
                         f"{experiment.module}); rename one or pass replace=True")
    _REGISTRY[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    """Remove an experiment from the registry (tests and notebooks); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def _register_module(module: types.ModuleType) -> None:
    found = getattr(module, "EXPERIMENTS", None) or ()
    single = getattr(module, "EXPERIMENT", None)
    for exp in ([single] if single is not None else []) + list(found):
        register(exp)


def _figure_modules() -> list[str]:
    package = importlib.import_module(FIGURES_PACKAGE)
    return [f"{FIGURES_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
            if not m.name.startswith("_") and m.name != "style"]


def discover() -> None:
    """Import the modules under ``experiments/figures/`` and those in ``$DEEPLIMITS_EXPERIMENT_MODULES``
    (once each) and register their ``EXPERIMENT``/``EXPERIMENTS``.

    Raises :class:`ExperimentModuleError` (an ``ImportError``) naming the module and where it was listed if one
    cannot be imported (whatever it raised), or if a module from the environment declares no experiment.
    """
    extra = [m.strip() for m in os.environ.get(ENV_MODULES, "").split(",") if m.strip()]
    for name in [*_figure_modules(), *extra]:
        if name in _SCANNED:
            continue
        origin = f"${ENV_MODULES}" if name in extra else FIGURES_PACKAGE
        try:
            module = importlib.import_module(name)
        except Exception as err:
            raise ExperimentModuleError(f"cannot import experiment module {name!r} (from {origin}): "
                                        f"{type(err).__name__}: {err}") from err
        if name in extra and getattr(module, "EXPERIMENT", None) is None and not getattr(module, "EXPERIMENTS", ()):
            raise ExperimentModuleError(f"experiment module {name!r} (from {origin}) declares no EXPERIMENT or "
                                        "EXPERIMENTS")
        _register_module(module)
        _SCANNED.add(name)


def get_experiment(name: str | Experiment) -> Experiment:
    """The registered experiment called ``name`` (an :class:`Experiment` is returned as is).

    Raises :class:`UnknownExperimentError` (a ``ValueError``) naming the closest known name and listing all.
    """
    if isinstance(name, Experiment):
        return name
    discover()
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(known) if known else "none registered"
    raise UnknownExperimentError(f"unknown experiment {name!r}{hint} Known experiments: {listing}")


def list_experiments() -> list[ExperimentInfo]:
    """Name, paper and summary of every registered experiment, sorted by name."""
    discover()
    return [_REGISTRY[n].info() for n in sorted(_REGISTRY)]


# -- configuration overrides ---------------------------------------------------------------------
_SCALARS: dict[type, str] = {int: "int", float: "float", str: "string", bool: "bool (true/false)"}


def config_fields(config: Any) -> dict[str, Any]:
    """``{field name: resolved type}`` of a config dataclass (instance or class)."""
    cls = config if isinstance(config, type) else type(config)
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def _describe(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    if inner in _SCALARS:
        desc = _SCALARS[inner]
    elif typing.get_origin(inner) is tuple and len(typing.get_args(inner)) == 2 \
            and typing.get_args(inner)[1] is Ellipsis and typing.get_args(inner)[0] in _SCALARS:
        desc = f"comma-separated {_SCALARS[typing.get_args(inner)[0]]}s"
    else:
        raise ValueError(f"config field type {tp!r} cannot be set from the command line; use int, float, str, "
                         "bool, tuple[int, ...], tuple[float, ...], tuple[str, ...] or X | None")
    return desc + (" or none" if optional else "")


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _scalar(tp: type, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if tp is str:
            return value
        if tp is bool:
            low = text.lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"{value!r} is not a bool (true/false)")
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"{value!r} is not {_a(_SCALARS[tp])}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu":
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iuf":
            return float(value)
    elif tp is str and isinstance(value, str):
        return value
    raise ValueError(f"{value!r} ({type(value).__name__}) is not {_a(_SCALARS[tp])}")


def _coerce(tp: Any, value: Any) -> Any:
    inner, optional = _unwrap_optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", ""))):
        return None
    if inner in _SCALARS:
        return _scalar(inner, value)
    elem = typing.get_args(inner)[0]
    if isinstance(value, str):
        parts = value.split(",")
        if any(not p.strip() for p in parts):
            raise ValueError(f"{value!r} has an empty item (write e.g. 64,128,256)")
    elif isinstance(value, Iterable):
        parts = list(value)
    else:
        parts = [value]
    if not parts:
        raise ValueError("the list is empty")
    return tuple(_scalar(elem, p) for p in parts)


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """``["widths=64,128", "seeds=8"]`` -> ``{"widths": "64,128", "seeds": "8"}``; ``ValueError`` if malformed."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"malformed --set {item!r}: expected KEY=VALUE, e.g. --set widths=64,128,256")
        if key in out:
            raise ConfigError(f"--set {key}=... given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def apply_overrides(config: Any, overrides: Mapping[str, Any] | None, *, experiment: str = "") -> Any:
    """A copy of the frozen ``config`` with ``overrides`` applied, each value parsed into its field's type.

    Values may be strings as typed after ``--set`` (``"64,128,256"``, ``"8"``, ``"1e-3"``, ``"true"``) or
    Python values (``(64, 128)``, ``8``). Raises ``ValueError`` naming the field, the expected type and the
    allowed fields; the config's own ``__post_init__`` validation runs on the result.
    """
    if not overrides:
        return config
    fields = config_fields(config)
    where = f" of experiment {experiment!r}" if experiment else ""
    allowed = ", ".join(f"{n} ({_describe(t)})" for n, t in fields.items())
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config field {key!r}{where}.{hint} Allowed fields: {allowed}")
        try:
            changes[key] = _coerce(fields[key], value)
        except ValueError as err:
            raise ConfigError(f"bad value for {key}={value!r}{where}: expected {_describe(fields[key])}; {err}") \
                from None
    try:
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid config{where} after --set {changes}: {err}") from err
