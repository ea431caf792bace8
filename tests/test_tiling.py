"""Kernels in tiles: one output buffer, the upper tiles only when x2 is None, and out= stores that resume."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import theory
from theory import tiling

X = np.random.default_rng(0).normal(size=(23, 4))
Y = np.random.default_rng(1).normal(size=(9, 4))
NET = theory.MLP(3, "relu", w_std=1.4, b_std=0.2)
SMALL = 9 * 200  # memory_budget: a few pairs per tile, so that the 23 x 23 kernel needs many tiles


def _np(k):
    return {n: np.asarray(getattr(k, n)) for n in ("nngp", "ntk")}


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("per_layer", [False, True])
def test_store_equals_memory(tmp_path, cross, per_layer):
    args = (X, Y) if cross else (X,)
    want = _np(theory.kernels(NET, *args, per_layer=per_layer))
    got = theory.kernels(NET, *args, per_layer=per_layer, memory_budget=SMALL, out=tmp_path)
    assert isinstance(got.nngp, np.memmap) and not got.nngp.flags.writeable
    for name in want:
        np.testing.assert_allclose(getattr(got, name), want[name], rtol=1e-12, atol=0)
        if not cross:
            assert np.array_equal(getattr(got, name), np.swapaxes(getattr(got, name), -1, -2))
    stored = np.load(tmp_path / "nngp.npy")
    np.testing.assert_array_equal(stored, got.nngp)


def test_interrupted_run_resumes_from_written_tiles(tmp_path, monkeypatch):
    want = _np(theory.kernels(NET, X))
    original = tiling.KernelStore.write
    written = []

    def stop_after_three(self, *args):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(args[1:3])
        original(self, *args)

    monkeypatch.setattr(tiling.KernelStore, "write", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        theory.kernels(NET, X, memory_budget=SMALL, out=tmp_path)
    resumed = []

    def count(self, *args):
        resumed.append(args[1:3])
        original(self, *args)

    monkeypatch.setattr(tiling.KernelStore, "write", count)
    got = theory.kernels(NET, X, memory_budget=SMALL, out=tmp_path)
    grid = np.load(tmp_path / "done.npy")
    g = grid.shape[0]
    assert g > 3 and grid[np.triu_indices(g)].all() and not grid[np.tril_indices(g, -1)].any()  # upper tiles
    assert len(resumed) == g * (g + 1) // 2 - 3 and not set(resumed) & set(written)
    for name in want:
        np.testing.assert_allclose(getattr(got, name), want[name], rtol=1e-12, atol=0)
    resumed.clear()
    again = theory.kernels(NET, X, memory_budget=SMALL, out=tmp_path)  # finished: read, nothing computed
    assert resumed == [] and np.array_equal(again.ntk, got.ntk)


def test_store_of_another_computation_is_refused(tmp_path, monkeypatch):
    theory.kernels(NET, X, memory_budget=SMALL, out=tmp_path)
    with pytest.raises(ValueError, match="another computation"):
        theory.kernels(NET, X * 1.01, memory_budget=SMALL, out=tmp_path)
    with pytest.raises(ValueError, match="another computation"):
        theory.kernels(theory.MLP(3, "relu", w_std=1.5, b_std=0.2), X, memory_budget=SMALL, out=tmp_path)
    monkeypatch.setattr(tiling, "source_version", lambda: "edited library")
    with pytest.raises(ValueError, match="library source"):
        theory.kernels(NET, X, memory_budget=SMALL, out=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        theory.kernels(NET, X, out=tmp_path / "file")


def test_progress_bar(tmp_path, capsys):
    theory.kernels(NET, X, memory_budget=SMALL, out=tmp_path, progress=True)
    assert "kernels" in capsys.readouterr().err
    theory.kernels(NET, Y, memory_budget=SMALL, progress=False)
    assert capsys.readouterr().err == ""


def test_out_under_jit_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"out= .* jax\.jit"):
        jax.jit(lambda x: theory.kernels(NET, x, out=tmp_path).nngp)(X)


def test_plan_tiles():
    t = tiling.plan_tiles(23, 23, 9, True)
    assert (t.size_r, t.size_c, t.grid) == (3, 3, (8, 8)) and len(t.tiles()) == 36
    assert t.span(7, 0) == (21, 20, 2)  # the last tile is shifted back to end at the edge
    c = tiling.plan_tiles(1000, 10, 100, False)
    assert c.size_c == 10 and c.size_r == 10 and c.grid == (100, 1)
    assert tiling.plan_tiles(5, 5, 10**6, True).grid == (1, 1)
