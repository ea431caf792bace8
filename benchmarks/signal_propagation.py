"""Benchmark ``theory.signal_propagation``: a tanh phase diagram, against the previous implementation.

Run from the repository root with the project environment::

    python benchmarks/signal_propagation.py            # 200x200 grid, and the old scheme on 50x50
    python benchmarks/signal_propagation.py --quick    # 100x100 and 25x25

What is measured, in one process (float64, one warm-up call each for compilation, then the median of
``--reps`` calls): the whole ``signal_propagation("tanh", C_W, C_b)`` call over an ``n x n`` grid of
``C_W`` in [0.25, 4.5], ``C_b`` in [0, 0.5]; and the implementation before the Hermite-series / Newton
solver (commit ``OLD_COMMIT``: 2000 plain iterations of the variance map by a 1-D rule, then the correlation
map iterated by the 2-D Gauss-Hermite rule until nothing moves), loaded from git into a temporary module,
on a smaller grid (it is slow: ~20 s for 50x50 on a 2-core machine). Both run on the small grid, so the
speed-up is a ratio measured on the same machine in the same run; the big grid shows the new cost at scale.
The maximum difference of ``c*`` between the two on the small grid is printed as a sanity check (the old
scheme's 2-D rule has ~1e-4 error at q* ~ 3).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent
OLD_COMMIT = "6937c80"


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.linspace(0.25, 4.5, n), np.linspace(0.0, 0.5, n))


def _time(fn, reps: int) -> float:
    fn()  # compile
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _old_module():
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:theory/signal_propagation.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    # The Gauss-Hermite rule it used has since become public under another name.
    source = source.replace("from theory.gaussian import _hermite_rule",
                            "from theory.gaussian import hermite_rule as _hermite_rule")
    path = Path(tempfile.mkdtemp()) / "old_signal_propagation.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_signal_propagation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100x100 and 25x25 grids")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, str(REPO))
    from theory.signal_propagation import signal_propagation

    big, small = (100, 25) if args.quick else (200, 50)
    w, b = _grid(big)
    new_big = _time(lambda: signal_propagation("tanh", w, b), args.reps)
    ws, bs = _grid(small)
    new_small = _time(lambda: signal_propagation("tanh", ws, bs), args.reps)
    old = _old_module()
    # The old code reads the activation's degree field, which is None (automatic) by default now.
    from theory.activations import tanh
    tanh40 = tanh(quadrature_degree=40)
    old_small = _time(lambda: old.signal_propagation(tanh40, ws, bs), 1)
    new_sp, old_sp = signal_propagation("tanh", ws, bs), old.signal_propagation(tanh40, ws, bs)
    # where q* = 0 (C_b = 0, ordered) the correlation is 0/0: the old scheme reported 0, the new one the limit 1
    defined = new_sp.q_star > 1e-6
    diff = np.nanmax(np.abs(new_sp.c_star - old_sp.c_star)[defined])
    print(f"new: {big}x{big} tanh grid {new_big:.2f} s; {small}x{small} {new_small:.3f} s")
    print(f"old ({OLD_COMMIT}): {small}x{small} {old_small:.2f} s  -> speed-up on the same grid "
          f"x{old_small / new_small:.0f}")
    print(f"old cost extrapolated to {big}x{big} (linear in points): {old_small * (big / small) ** 2:.0f} s")
    print(f"max |c*_new - c*_old| on {small}x{small} where q* > 1e-6: {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
