"""The code version of a stored result: a hash of every source file of ours that the experiment can run.

A record's code version is ``"<package version>+<12 hex digits>"``. The digits are a sha256 of

- the source of the experiment's module and of every module of the ``theory`` and ``experiments`` packages it
  can reach through ``import`` statements (followed transitively, function bodies included; importing
  ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``), read from disk, and
- the installed versions of the numerical libraries the computations run on (:data:`LIBRARIES`).

So a fix anywhere in the code an experiment calls (``theory/kernels.py`` reached through ``import theory``)
gives its records a new key, and they are recomputed; editing a module it cannot reach (another figure's
module, the command line) does not. Modules outside the two packages are not followed: third-party code enters
through the library versions, the experiment's own module through its source.

Every call reads the files again (an edit is seen at the next call); only the parse of a file's imports is cached,
keyed on its text. First call ~0.3 s (parsing ~40 files), then a few ms.
Derivation and notes: docs/results_store.md.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from theory import __version__

PACKAGES = ("theory", "experiments")
"""Our packages: imports of their modules are followed; anything else is third-party (or the root module)."""

LIBRARIES = ("jax", "jaxlib", "numpy", "scipy", "optax", "scikit-learn", "mnist1d")
"""Distributions whose installed versions are part of every code version (their numbers enter the results)."""


def library_versions() -> dict[str, str]:
    """``{distribution: installed version}`` of :data:`LIBRARIES` (``"absent"`` for one not installed)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _package_dirs() -> dict[str, Path]:
    dirs = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"cannot locate the {package!r} package")
        dirs[package] = Path(next(iter(spec.submodule_search_locations)))
    return dirs


def _ours_file(name: str, dirs: dict[str, Path]) -> Path | None:
    """The source file of module ``name`` of our packages (``None``: not ours, or no such module)."""
    top, *rest = name.split(".")
    if top not in dirs:
        return None
    base = dirs[top].joinpath(*rest)
    for candidate in (base / "__init__.py", base.with_suffix(".py")) if rest else (base / "__init__.py",):
        if candidate.is_file():
            return candidate
    return None


def _root_file(module: ModuleType | str) -> tuple[str, Path | None]:
    """Name and source file of the root module (an experiment's module, possibly outside our packages)."""
    if isinstance(module, ModuleType):
        name, file = module.__name__, getattr(module, "__file__", None)
    else:
        name = module
        loaded = sys.modules.get(name)
        if loaded is not None:
            file = getattr(loaded, "__file__", None)
        else:
            spec = importlib.util.find_spec(name)
            if spec is None:
                raise ValueError(f"no module named {name!r}")
            file = spec.origin
    path = Path(file) if file and str(file).endswith(".py") else None
    return name, path


def _statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Every statement, nested ones included (imports are statements: expressions need not be walked)."""
    for stmt in body:
        yield stmt
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(stmt, field, None)
            if isinstance(inner, list):
                yield from _statements(inner)


@functools.lru_cache(maxsize=1024)
def _imports(source: bytes, name: str, is_package: bool) -> frozenset[str]:
    """Dotted names of the modules (and candidate submodules) that module ``name`` with ``source`` imports.

    Cached on the source text itself, so an edited file is parsed again.
    """
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in _statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if not base:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    return frozenset(".".join(n.split(".")[:i]) for n in found for i in range(1, n.count(".") + 2))


def _reachable(modules: tuple[ModuleType | str, ...]) -> dict[str, tuple[Path | None, bytes | None]]:
    if not modules:
        raise ValueError("code_version needs at least one module (the experiment's own module)")
    dirs = _package_dirs()
    found: dict[str, tuple[Path | None, bytes | None]] = {}
    todo: list[tuple[str, Path | None]] = []
    for module in modules:
        name = module.__name__ if isinstance(module, ModuleType) else module
        ours = _ours_file(name, dirs)
        todo.append((name, ours) if ours is not None else _root_file(module))
    while todo:
        name, path = todo.pop()
        if name in found:
            continue
        source = path.read_bytes() if path is not None else None
        found[name] = (path, source)
        if source is None:
            continue
        for dep in _imports(source, name, path.name == "__init__.py"):
            if dep not in found:
                dep_path = _ours_file(dep, dirs)
                if dep_path is not None:
                    todo.append((dep, dep_path))
    return dict(sorted(found.items()))


def reachable_modules(*modules: ModuleType | str) -> dict[str, Path | None]:
    """``{module name: source file}`` of the root ``modules`` and every module of ours they reach by imports.

    Sorted by name. A root without a source file on disk (interactive, frozen) maps to ``None``.
    """
    return {name: path for name, (path, _) in _reachable(modules).items()}


def code_version(*modules: ModuleType | str) -> str:
    """``"<package version>+<12 hex digits>"``: sha256 of the source of ``modules`` and of every module of
    ``theory`` and ``experiments`` they reach by imports, and of the versions of :data:`LIBRARIES`.

    ``modules`` are modules or dotted names (an experiment's module). Editing any reachable file, or installing
    another version of a library, gives a new code version: records of the old one are no longer found (they
    stay on disk, under their old digest, until ``deeplimits clean --stale``).
    """
    h = hashlib.sha256()
    for name, (_, source) in _reachable(modules).items():
        h.update(name.encode() + b"\0" + (source if source is not None else b"<no source>") + b"\0")
    for lib, version in sorted(library_versions().items()):
        h.update(f"{lib}=={version}\0".encode())
    return f"{__version__}+{h.hexdigest()[:12]}"


@functools.cache
def loaded_code_version(module: str) -> str:
    """:func:`code_version` of ``module`` as this process first computed it: the code a worker process runs is the
    code it imported (at its first point, just before this is first called), not what is on disk later, while a
    developer edits the checkout during a long sweep. Python does not re-import a module, so this is fixed per
    process."""
    return code_version(module)


@functools.cache
def _source_at_import(name: str) -> bytes | None:
    """The source of loaded module ``name`` when this process first looked (at this module's import for every module
    of ours loaded by then, else at the first :func:`changed_since_import` that reaches it)."""
    file = getattr(sys.modules.get(name), "__file__", None)
    if not file or not str(file).endswith(".py"):
        return None
    try:
        return Path(file).read_bytes()
    except OSError:
        return None


def changed_since_import(*modules: ModuleType | str) -> list[str]:
    """Names of the modules ``modules`` reach (as :func:`code_version` follows them) that this process has imported
    and whose source on disk has changed since.

    Such a process computes with the old code while :func:`code_version` reads the new: its results would be stored
    under a key they do not belong to. A Jupyter session open while the checkout is edited is the usual case.
    """
    changed = []
    for name, (_, source) in _reachable(modules).items():
        if name in sys.modules and source is not None:
            before = _source_at_import(name)
            if before is not None and before != source:
                changed.append(name)
    return changed


def _remember_loaded_sources() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            _source_at_import(name)


_remember_loaded_sources()

__all__ = ["LIBRARIES", "PACKAGES", "changed_since_import", "code_version", "library_versions",
           "loaded_code_version", "reachable_modules"]
