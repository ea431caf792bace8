"""An embedded results store: one JSON file per grid point, keyed by a hash of everything that fixes it.

Layout::

    <root>/<experiment>/<digest>.json

``root`` is, in order of precedence, the ``root`` argument, the environment variable
``DEEPLIMITS_RESULTS``, or ``results/`` under the current working directory.

A record's key (:class:`RecordKey`) is the experiment name, the full config (seed included), the code version
(``experiments.provenance.code_version``: ``__version__`` plus a hash of the source of every module of ``theory`` and
``experiments`` the experiment's module reaches, and of the numerical libraries' versions) and the dtype; ``digest``
is the sha256 of their canonical JSON. A record holds ``experiment``, ``digest``, ``config``, ``code_version``,
``dtype``, ``values``, ``timestamp`` (ISO-8601 UTC) and ``elapsed_s``. Writes are atomic (temporary
file, fsync, ``os.replace``); an unreadable record is reported with a :class:`CorruptRecordWarning`, moved aside to
``<digest>.json.corrupt`` and treated as missing.

Claims (:meth:`Store.claim`): a run computing a point holds an exclusive ``flock`` on ``.<digest>.claim`` in the
experiment's folder, so two runs on one folder never compute the same point at once; the kernel drops the lock
when its process dies (even by SIGKILL), so a claim is never stale.

Derivation and notes: docs/results_store.md (the digest, what invalidates a record, the atomic write, temp files,
claims).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import re
import secrets
import socket
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: claims do not exclude other runs
    fcntl = None  # type: ignore[assignment]

ENV_RESULTS = "DEEPLIMITS_RESULTS"
DEFAULT_RESULTS_DIRNAME = "results"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CLAIM_RE = re.compile(r"^\.(?P<digest>[0-9a-f]{64})\.claim$")
_TMP_RE = re.compile(r"^\.(?P<digest>[0-9a-f]{64})\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


class CorruptRecordWarning(UserWarning):
    """A record file in the store could not be read back; it was moved aside and is treated as missing."""


def default_root() -> Path:
    """The results folder used when none is given: ``$DEEPLIMITS_RESULTS``, else ``./results``."""
    env = os.environ.get(ENV_RESULTS)
    return Path(env) if env else Path.cwd() / DEFAULT_RESULTS_DIRNAME


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: tuples and arrays become lists, numpy scalars Python numbers.

    Raises ``ValueError`` naming the offending value for anything else (objects, sets, ...).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"record keys must be strings, got {k!r} ({type(k).__name__})")
            out[k] = to_jsonable(v)
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    # numpy / jax scalars and arrays, without importing numpy here
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        kind = getattr(value.dtype, "kind", None)
        if kind in ("b", "i", "u", "f"):
            return to_jsonable(value.tolist())
        raise ValueError(f"cannot store an array of dtype {value.dtype} (only bool, int and float arrays)")
    raise ValueError(f"cannot store {value!r} ({type(value).__name__}): use numbers, strings, lists or dicts")


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (sorted keys, no whitespace, ASCII, no NaN): what gets hashed."""
    try:
        return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except ValueError as err:
        raise ValueError(f"config is not hashable as canonical JSON ({err}): {value!r}") from None


def _check_name(experiment: str) -> str:
    if not isinstance(experiment, str) or not _NAME_RE.match(experiment):
        raise ValueError(
            f"experiment name must be letters, digits, '-', '_' or '.' (not starting with one of the last three), "
            f"got {experiment!r}"
        )
    return experiment


@dataclass(frozen=True)
class RecordKey:
    """What identifies one stored grid point: experiment, full point config, code version, dtype."""

    experiment: str
    config: Mapping[str, Any]
    code_version: str
    dtype: str

    def __post_init__(self) -> None:
        _check_name(self.experiment)
        if not isinstance(self.config, Mapping):
            raise ValueError(f"config must be a mapping of parameter -> value, got {self.config!r}")
        canonical_json(self.config)  # raises early, naming the value, if it cannot be hashed
        for name in ("code_version", "dtype"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")

    def __hash__(self) -> int:
        return hash(self.digest)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of ``[experiment, config, code_version, dtype]``."""
        payload = {"experiment": self.experiment, "config": self.config, "code_version": self.code_version,
                   "dtype": self.dtype}
        return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A held claim on one point's computation: the open claim file (``fd``) with an exclusive flock on it."""

    digest: str
    path: Path
    fd: int


def _claim_file(path: Path, digest: str) -> Claim | None:
    """An exclusive non-blocking flock on ``path`` (created if missing), or ``None`` if another holds it."""
    if fcntl is None:
        return Claim(digest, path, -1)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino  # not unlinked by a releaser meanwhile
        except (BlockingIOError, FileNotFoundError) as err:
            os.close(fd)
            if isinstance(err, BlockingIOError):
                return None
            continue
        except BaseException:
            os.close(fd)
            raise
        if not same:
            os.close(fd)
            continue
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        return Claim(digest, path, fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem can open or fsync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_writable_folder(folder: Path, what: str) -> Path:
    """Create ``folder`` and check that a file can be written there (a probe file, written and removed).

    Raises ``OSError`` (``NotADirectoryError``, ``PermissionError``, ...) naming the ``what`` folder and why.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise type(err)(f"{what} folder {folder} is not writable: {err}") from err
    return folder


class Store:
    """Records on disk under ``root`` (see the module docstring for layout, keys and atomicity)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------
    def _dir(self, experiment: str) -> Path:
        return self.root / _check_name(experiment)

    def path(self, key: RecordKey) -> Path:
        """Where the record of ``key`` lives (whether or not it exists)."""
        return self._dir(key.experiment) / f"{key.digest}.json"

    def ensure_writable(self, experiment: str | None = None) -> Path:
        """Create the store's folder (and the experiment's) and check that a file can be written there.

        Raises ``OSError`` (``NotADirectoryError``, ``PermissionError``, ...) saying which folder and why.
        """
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"results folder {self.root} is not writable: it exists and is not a folder")
        return ensure_writable_folder(self._dir(experiment) if experiment is not None else self.root, "results")

    # -- single records ------------------------------------------------------------------------
    def has(self, key: RecordKey) -> bool:
        """Whether a readable record of ``key`` exists (a corrupt one is moved aside and counts as absent)."""
        return self.get(key) is not None

    def get(self, key: RecordKey) -> dict[str, Any] | None:
        """The record of ``key``, or ``None`` if there is none (or it was corrupt: warned, moved aside)."""
        path = self.path(key)
        if not path.exists():
            return None
        return self._read(path, expected_digest=key.digest)

    def put(self, key: RecordKey, values: Mapping[str, Any], *, elapsed_s: float = math.nan) -> dict[str, Any]:
        """Write the record of ``key`` with the computed ``values`` atomically; return the record.

        ``values`` are numbers, strings, lists or nested dicts of them (numpy arrays are converted).
        An existing record of the same key is replaced (same key, same content up to timestamps).
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"values must be a mapping of name -> value, got {values!r}")
        record = {
            "experiment": key.experiment,
            "digest": key.digest,
            "config": to_jsonable(key.config),
            "code_version": key.code_version,
            "dtype": key.dtype,
            "values": to_jsonable(values),
            "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "elapsed_s": float(elapsed_s),
        }
        text = json.dumps(record, sort_keys=True, indent=1, allow_nan=True)
        folder = self._dir(key.experiment)
        if not folder.is_dir():
            self.ensure_writable(key.experiment)
        final = folder / f"{key.digest}.json"
        tmp = folder / f".{key.digest}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(folder)
        return record

    def _read(self, path: Path, expected_digest: str | None = None) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not {"config", "values", "digest"} <= record.keys():
                raise ValueError("not a record (missing config/values/digest)")
            digest = path.name.removesuffix(".json")
            if record["digest"] != digest or (expected_digest is not None and digest != expected_digest):
                raise ValueError(f"digest {record['digest']!r} does not match the file name")
        except (OSError, ValueError, UnicodeDecodeError) as err:
            aside = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            warnings.warn(f"corrupt record {path} ({err}); moved to {aside.name}, it will be recomputed",
                          CorruptRecordWarning, stacklevel=3)
            return None
        return record

    # -- claims: which run computes a point ------------------------------------------------------
    def claim_path(self, key: RecordKey) -> Path:
        """The claim file of ``key``: ``<root>/<experiment>/.<digest>.claim``."""
        return self._dir(key.experiment) / f".{key.digest}.claim"

    def claim(self, key: RecordKey) -> Claim | None:
        """Claim the computation of ``key`` for this run: a :class:`Claim` (release it), or ``None`` if another run
        (another process, or another claim in this one) holds it now.

        The claim is an exclusive ``flock`` on :meth:`claim_path`, which names the holder (pid and host); the
        kernel releases it when the holder dies, so a crashed run never blocks a point. Without ``fcntl`` (not
        POSIX) every claim succeeds.
        """
        path = self.claim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _claim_file(path, key.digest)

    @staticmethod
    def release(claim: Claim) -> None:
        """Give up ``claim`` (after its record is written, or when the run stops): its file is removed."""
        if claim.fd < 0:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                claim.path.unlink()  # while holding the lock: a new claimer re-checks the inode
        finally:
            os.close(claim.fd)

    def holder(self, key: RecordKey) -> str:
        """Who holds the claim of ``key``, for messages: ``"pid 123 on host"`` (``"another run"`` if unknown)."""
        try:
            info = json.loads(self.claim_path(key).read_text(encoding="utf-8"))
            return f"pid {int(info['pid'])} on {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another run"

    # -- many records --------------------------------------------------------------------------
    def experiments(self) -> list[str]:
        """Names of the experiments that have a folder in the store, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def records(self, experiment: str, *, code_version: str | None = None,
                as_frame: bool = False) -> list[dict[str, Any]] | Any:
        """Every readable record of ``experiment`` (optionally only one code version), sorted by file name.

        With ``as_frame=True`` a pandas DataFrame with one row per record: the config's fields, the
        values, then ``dtype``, ``code_version``, ``timestamp``, ``elapsed_s``, ``digest``.
        Temporary files are never read; corrupt records are warned about and skipped.
        """
        folder = self._dir(experiment)
        out = []
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                record = self._read(path)
                if record is not None and (code_version is None or record.get("code_version") == code_version):
                    out.append(record)
        if as_frame:
            return records_to_frame(out)
        return out

    def clean_temp_files(self, experiment: str | None = None) -> list[Path]:
        """Remove temporary files left by writers that were killed (their pid is gone) and claim files nobody
        holds; return them.

        Files of a process that is still running are left alone: it may be about to rename them.
        """
        folders = [self._dir(experiment)] if experiment is not None else [self._dir(e) for e in self.experiments()]
        removed = []
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in folder.glob(".*.tmp"):
                m = _TMP_RE.match(path.name)
                if m is not None and _pid_alive(int(m.group("pid"))):
                    continue
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
            for path in folder.glob(".*.claim"):
                m = _CLAIM_RE.match(path.name)
                if m is None:
                    continue
                claim = _claim_file(path, m.group("digest"))
                if claim is not None:
                    self.release(claim)
                    removed.append(path)
        return removed


META_COLUMNS = ("dtype", "code_version", "timestamp", "elapsed_s", "digest")


def records_to_frame(records: Iterable[Mapping[str, Any]]) -> Any:
    """One DataFrame row per record: config fields, values, then :data:`META_COLUMNS`.

    List values stay Python lists in their cells. Raises ``ValueError`` if a value has the same name as
    a config field or a meta column.
    """
    import pandas as pd

    rows = []
    for rec in records:
        row = dict(rec["config"])
        for name, value in rec["values"].items():
            if name in row or name in META_COLUMNS:
                raise ValueError(f"value {name!r} of experiment {rec.get('experiment')!r} clashes with a config "
                                 f"field or one of {META_COLUMNS}; rename it")
            row[name] = value
        for name in META_COLUMNS:
            row[name] = rec.get(name)
        rows.append(row)
    return pd.DataFrame(rows)
