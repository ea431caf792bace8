"""Compile time against depth: finite networks (init, apply, empirical NTK) and the kernel recursion.

Each layer program groups consecutive identical units into runs that are applied by one ``lax.scan``, so the
compiled program, and with it the compile time, should not grow with depth. This script measures, for a ReLU MLP
and a ReLU ResNet of width 64 at several depths, the first call (trace + compile + run) and a second call (run)
of ``jax.jit``-ed init + apply, the empirical NTK, and ``theory.kernels``; compile time is their difference.

    python benchmarks/compile_time.py                  # depths 16, 256, 1024
    python benchmarks/compile_time.py --quick          # depths 16, 64
    python benchmarks/compile_time.py --json-out compile.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import theory
from experiments import networks


def _timed(fn) -> tuple[float, float]:
    """(first call, second call) wall seconds; the first includes tracing and compilation."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return first, time.perf_counter() - t0


def measure(kind: str, depth: int, width: int, n: int) -> dict:
    net = (theory.MLP(depth, "relu", math.sqrt(2), 0.1) if kind == "mlp"
           else theory.ResNet(depth, "relu", 1.0, 0.1, depth_exponent=0.5))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n, 8)), jnp.float32)
    key = jax.random.key(0)
    forward = jax.jit(lambda k: networks.apply(net, networks.init(net, width, k, features=8), x))
    ntk = jax.jit(lambda k: networks.empirical_ntk(net, networks.init(net, width, k, features=8), x))
    out = {"kind": kind, "depth": depth, "width": width, "n": n}
    for name, fn in (("init+apply", lambda: forward(key)), ("empirical_ntk", lambda: ntk(key)),
                     ("theory.kernels", lambda: theory.kernels(net, x).ntk)):
        first, second = _timed(fn)
        out[name] = {"first_s": first, "second_s": second, "compile_s": first - second}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depths 16 and 64 only")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--n", type=int, default=8, help="number of inputs")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    depths = (16, 64) if args.quick else (16, 256, 1024)
    rows = []
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, width {args.width}, N = {args.n}, float32")
    print(f"{'network':<8} {'depth':>6}  {'init+apply':>22}  {'empirical NTK':>22}  {'theory.kernels':>22}")
    print(f"{'':<8} {'':>6}  {'compile / run (s)':>22}  {'compile / run (s)':>22}  {'compile / run (s)':>22}")
    for kind in ("mlp", "resnet"):
        for depth in depths:
            row = measure(kind, depth, args.width, args.n)
            rows.append(row)
            cells = [f"{row[k]['compile_s']:9.2f} / {row[k]['second_s']:8.3f}"
                     for k in ("init+apply", "empirical_ntk", "theory.kernels")]
            print(f"{kind:<8} {depth:>6}  {cells[0]:>22}  {cells[1]:>22}  {cells[2]:>22}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"jax": jax.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
