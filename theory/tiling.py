"""Kernel matrices assembled tile by tile into one output buffer: in memory, or a memory-mapped store on disk.

The pairs ``(x1[r], x2[c])`` are cut into a grid of equal tiles; every tile has the same shape (one compiled
program), the last one in a row or column of the grid shifted back to end at the edge, so it overlaps its
neighbour and writes only the entries it owns (its nominal block). With ``x2 = x1`` only the tiles on and above
the diagonal are computed; each is written with its transpose, so the result is exactly symmetric.

A :class:`KernelStore` holds the kernels as ``.npy`` files (``numpy.load(..., mmap_mode="r")`` reads them) and
a map of finished tiles; a run that stops resumes from the tiles already written. The store is keyed on a
fingerprint of the computation (network, inputs, options and the source of :mod:`theory`): a store made by
other code or for other inputs is refused, never served.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclass(frozen=True)
class Tiling:
    """A grid of ``(size_r, size_c)`` tiles over a ``(rows, cols)`` kernel; ``symmetric``: only ``j >= i``."""

    rows: int
    cols: int
    size_r: int
    size_c: int
    symmetric: bool

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.rows // self.size_r), -(-self.cols // self.size_c)

    def tiles(self) -> list[tuple[int, int]]:
        n_r, n_c = self.grid
        return [(i, j) for i in range(n_r) for j in range(n_c) if not self.symmetric or j >= i]

    def span(self, index: int, axis: int) -> tuple[int, int, int]:
        """``(nominal start, window start, nominal length)`` of tile ``index`` along ``axis`` (0 rows, 1 cols)."""
        total, size = (self.rows, self.size_r) if axis == 0 else (self.cols, self.size_c)
        start = index * size
        return start, min(start, total - size), min(size, total - start)


def plan_tiles(rows: int, cols: int, max_pairs: int, symmetric: bool) -> Tiling:
    """The fewest equal tiles of at most ``max_pairs`` pairs each (square when ``symmetric``), balanced so that
    the last tile overlaps its neighbour as little as possible."""
    max_pairs = max(1, max_pairs)
    if rows * cols <= max_pairs:
        return Tiling(rows, cols, rows, cols, symmetric)
    if symmetric:
        side = max(1, math.isqrt(max_pairs))
        side = -(-rows // -(-rows // side))
        return Tiling(rows, cols, side, side, True)
    size_c = min(cols, max(math.isqrt(max_pairs), max_pairs // rows))
    size_c = -(-cols // -(-cols // size_c))
    size_r = max(1, min(rows, max_pairs // size_c))
    size_r = -(-rows // -(-rows // size_r))
    return Tiling(rows, cols, size_r, size_c, False)


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("mirror",))
def place(buffers: tuple, tiles: tuple, window: Array, nominal: Array, *, mirror: bool) -> tuple:
    """Write the owned part of each tile (entries at or after ``nominal``) into its buffer at ``window`` (and,
    ``mirror``, its transpose at the transposed place), in place: the buffers are donated."""
    out = []
    for buf, tile in zip(buffers, tiles, strict=True):
        lead = (jnp.int32(0),) * (tile.ndim - 2)
        br, bc = tile.shape[-2:]
        own = ((window[0] + jnp.arange(br) >= nominal[0])[:, None]
               & (window[1] + jnp.arange(bc) >= nominal[1])[None, :])
        if mirror:  # a diagonal tile is made exactly symmetric before it is written
            tile = jnp.where(window[0] == window[1], (tile + jnp.swapaxes(tile, -1, -2)) / 2, tile)
        at = (*lead, window[0], window[1])
        buf = jax.lax.dynamic_update_slice(buf, jnp.where(own, tile, jax.lax.dynamic_slice(buf, at, tile.shape)), at)
        if mirror:
            flipped = jnp.swapaxes(tile, -1, -2)
            at = (*lead, window[1], window[0])
            buf = jax.lax.dynamic_update_slice(
                buf, jnp.where(own.T, flipped, jax.lax.dynamic_slice(buf, at, flipped.shape)), at)
        out.append(buf)
    return tuple(out)


def owned_block(tile: np.ndarray, tiling: Tiling, i: int, j: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The part of a computed tile that tile ``(i, j)`` owns, and where it goes in the full kernel."""
    (r0, wr, lr), (c0, wc, lc) = tiling.span(i, 0), tiling.span(j, 1)
    block = tile[..., r0 - wr:r0 - wr + lr, c0 - wc:c0 - wc + lc]
    if tiling.symmetric and i == j:
        block = (block + np.swapaxes(block, -1, -2)) / 2
    return block, (slice(r0, r0 + lr), slice(c0, c0 + lc))


def source_version() -> str:
    """sha256 of the source of the :mod:`theory` package: a store written by other code is not reused."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(parts: Sequence[Any], arrays: Sequence[np.ndarray]) -> str:
    """sha256 of ``parts`` (their ``repr``) and the bytes, shapes and dtypes of ``arrays``."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class KernelStore:
    """Kernels on disk, ``<directory>/<name>.npy``, with ``done.npy`` marking the finished tiles and
    ``store.json`` the fingerprint of the computation."""

    def __init__(self, directory: str | os.PathLike, key: str, names: Sequence[str], shape: tuple[int, ...],
                 dtype: Any, grid: tuple[int, int]):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"out must be a directory for the kernel files, but {self.directory} is a file")
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / "store.json"
        meta = {"fingerprint": key, "names": list(names), "shape": list(shape), "dtype": np.dtype(dtype).name,
                "grid": list(grid)}
        files = [self.directory / f"{n}.npy" for n in names]
        done_path = self.directory / "done.npy"
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise ValueError(
                    f"{self.directory} holds kernels of another computation (other network, inputs, options or "
                    f"library source: {found.get('names')} {tuple(found.get('shape', ()))} "
                    f"{found.get('dtype')}); choose another directory, or delete this one to start over")
            self.arrays = [np.lib.format.open_memmap(f, mode="r+") for f in files]
            self.done = np.lib.format.open_memmap(done_path, mode="r+")
        else:
            for f in (*files, done_path):
                f.unlink(missing_ok=True)
            self.arrays = [np.lib.format.open_memmap(f, mode="w+", dtype=dtype, shape=shape) for f in files]
            self.done = np.lib.format.open_memmap(done_path, mode="w+", dtype=bool, shape=grid)
            self.done.flush()
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, meta_path)  # written last: a store without it is started over
        self.files = files

    def pending(self, tiles: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        return [t for t in tiles if not self.done[t]]

    def write(self, tiling: Tiling, i: int, j: int, tiles: Sequence[np.ndarray]) -> None:
        """Write tile ``(i, j)`` of every kernel (and its transpose when symmetric), then mark it done."""
        for array, tile in zip(self.arrays, tiles, strict=True):
            block, (rows, cols) = owned_block(tile, tiling, i, j)
            array[..., rows, cols] = block
            if tiling.symmetric and i != j:
                array[..., cols, rows] = np.swapaxes(block, -1, -2)
            array.flush()
        self.done[i, j] = True
        self.done.flush()

    def read(self) -> list[np.ndarray]:
        """The kernels as read-only memory maps."""
        return [np.load(f, mmap_mode="r") for f in self.files]


def progress_bar(total: int, show: bool | None, desc: str) -> Iterator[Any]:
    """A tqdm bar on stderr (``show=None``: only when stderr is a terminal)."""
    import sys

    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if show is None else bool(show)
    return tqdm(total=total, desc=desc, unit="tile", disable=not show, file=sys.stderr, dynamic_ncols=True)


__all__ = ["KernelStore", "Tiling", "fingerprint", "owned_block", "place", "plan_tiles", "progress_bar",
           "source_version"]
