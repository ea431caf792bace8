"""Benchmark ``theory.predict``'s solvers: dense Cholesky against preconditioned conjugate gradients.

    python benchmarks/predict.py                 # N = 5,000 (both solvers), then N = 20,000 (CG, fresh process)
    python benchmarks/predict.py --quick         # N = 1,000 and 2,000: a smoke test
    python benchmarks/predict.py --json-out predict.json

Workload: the NTK of a ReLU MLP (depth 3, ``w_std = sqrt 2``, ``b_std = 0.1``) on ``N`` inputs of 16 standard normal
features, targets ``(N, 10)``, 500 test inputs; the infinite-time posterior mean
``predict.gp_inference(ntk, y, diag_reg=1e-3, solver=...)("ntk", ntk_test_train)`` in float32 (the kernel computed
beforehand, not timed). Reported: the median of 3 calls of each solver (each call builds a new predictor, so the
factorisation / iterations are timed), their ratio, the max relative difference of the two means and of each against
a float64 dense solve, and for the large N the peak resident memory of a fresh process (kernel included).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _problem(n: int, n_test: int = 500):
    import jax.numpy as jnp
    import numpy as np

    import theory

    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(n, 16)).astype(np.float32), rng.normal(size=(n_test, 16)).astype(np.float32)
    y = rng.normal(size=(n, 10)).astype(np.float32)
    net = theory.MLP(3, "relu", 2**0.5, 0.1)
    k = theory.kernels(net, x, get="ntk").ntk
    kt = theory.kernels(net, xt, x, get="ntk").ntk
    return jnp.asarray(k), jnp.asarray(kt), jnp.asarray(y)


def _mean(k, kt, y, solver: str):
    import jax

    from theory import predict

    return jax.block_until_ready(predict.gp_inference(k, y, diag_reg=1e-3, solver=solver)("ntk", kt))


def _median_time(fn, reps: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def compare(n: int) -> dict:
    import numpy as np

    k, kt, y = _problem(n)
    _mean(k, kt, y, "cholesky")
    _mean(k, kt, y, "cg")  # warm-up: compilation
    t_dense, dense = _median_time(lambda: _mean(k, kt, y, "cholesky"))
    t_cg, cg = _median_time(lambda: _mean(k, kt, y, "cg"))
    k64, kt64, y64 = (np.asarray(a, np.float64) for a in (k, kt, y))
    reg = 1e-3 * np.trace(k64) / n
    exact = kt64 @ np.linalg.solve(k64 + reg * np.eye(n), y64)
    scale = np.abs(exact).max()
    return {"n": n, "dense_s": t_dense, "cg_s": t_cg, "dense_over_cg": t_dense / t_cg,
            "cg_vs_dense": float(np.abs(np.asarray(cg) - np.asarray(dense)).max() / scale),
            "dense_vs_float64": float(np.abs(np.asarray(dense) - exact).max() / scale),
            "cg_vs_float64": float(np.abs(np.asarray(cg) - exact).max() / scale)}


def large(n: int) -> dict:
    """CG only, in this process (run it in a fresh one for the peak memory)."""
    import numpy as np

    t0 = time.perf_counter()
    k, kt, y = _problem(n)
    t_kernel = time.perf_counter() - t0
    t0 = time.perf_counter()
    mean = _mean(k, kt, y, "cg")
    return {"n": n, "kernel_s": t_kernel, "cg_s": time.perf_counter() - t0,
            "finite": bool(np.isfinite(np.asarray(mean)).all()),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--large-only", type=int, help=argparse.SUPPRESS)  # the fresh-process half
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    if args.large_only:
        print(json.dumps(large(args.large_only)))
        return 0
    n_small, n_large = (1000, 2000) if args.quick else (5000, 20000)
    import jax

    print(f"jax {jax.__version__}, {jax.devices()[0]}, float32, diag_reg 1e-3 (relative), 10 outputs, 500 test inputs")
    row = compare(n_small)
    print(f"N = {n_small:,}: dense {row['dense_s']:.2f} s, CG {row['cg_s']:.2f} s "
          f"(dense / CG {row['dense_over_cg']:.2f}x);"
          f" max rel diff CG vs dense {row['cg_vs_dense']:.1e}, dense vs float64 {row['dense_vs_float64']:.1e},"
          f" CG vs float64 {row['cg_vs_float64']:.1e}", flush=True)
    out = subprocess.run([sys.executable, __file__, "--large-only", str(n_large)], capture_output=True, text=True,
                         check=True)
    big = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"N = {n_large:,} (fresh process): kernel {big['kernel_s']:.1f} s, CG {big['cg_s']:.1f} s, "
          f"peak RSS {big['peak_rss_gib']:.2f} GiB, finite {big['finite']}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"compare": row, "large": big}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
