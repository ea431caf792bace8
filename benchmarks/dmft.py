"""Benchmark ``theory.dmft.solve``: cost against P, steps and samples, and against one finite network.

    python benchmarks/dmft.py --quick            # CPU smoke test (~1-2 min)
    python benchmarks/dmft.py                    # the full sweep (a GPU)
    python benchmarks/dmft.py --json-out dmft.json

Workload (``solve``'s default method: one hidden layer samples its neurons in weight space, ``"particles"``, cost
``O(replicas samples steps P d)``; two hidden layers the kernel-space Monte Carlo, ``O(samples M^3)`` per
iteration): ``theory.MLP(L, "tanh", w_std=1)`` in the mean-field parameterization, ``gamma = 1``, learning rate 0.5,
``P`` training inputs of ``d = 8`` standard normal features, targets ``sin(x_0) + x_1 / 2``, 2 test inputs, float64.
Each timing is the second call with the same shapes (the first compiles) and a new key. Reported per row: wall time,
fixed-point iterations, the standard error of the final training loss and of the final test outputs (the spread of
the replicas), and time per iteration. The finite-network comparison: the RMS deviation of one network's final
test outputs from the DMFT's, at several widths (a fit ``c width^-1/2``), the width at which one network is as close
as the DMFT's standard error, and the time to train one network of that width (same steps, jitted, second call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _data(p: int, d: int = 8, q: int = 2):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(p, d))
    return x, np.sin(x[:, 0]) + 0.5 * x[:, 1], rng.normal(size=(q, d))


def _solve(depth, p, steps, samples, replicas, seed=0):
    import jax

    import theory
    from theory import dmft

    x, y, xt = _data(p)
    net = theory.MLP(depth, "tanh", w_std=1.0)
    kw = dict(gamma=1.0, learning_rate=0.5, steps=steps, samples=samples, replicas=replicas,
              kernels="equal_time")
    dmft.solve(net, x, y, xt, key=jax.random.key(seed), **kw)  # compile
    t0 = time.perf_counter()
    sol = dmft.solve(net, x, y, xt, key=jax.random.key(seed + 1), **kw)
    wall = time.perf_counter() - t0
    return sol, wall


def _row(depth, p, steps, samples, replicas):
    sol, wall = _solve(depth, p, steps, samples, replicas)
    return {"depth": depth, "method": sol.method, "P": p, "steps": steps, "samples": samples, "replicas": replicas,
            "wall_s": wall,
            "iterations": sol.iterations, "s_per_iteration": wall / (sol.iterations + 1),
            "loss_T": float(sol.loss[-1]), "loss_se": float(sol.loss_stderr[-1]),
            "f_test_se": float(sol.f_test_stderr[-1].mean())}


def _finite(depth, p, steps, width, seeds, key=1):
    import jax
    import jax.numpy as jnp
    import numpy as np

    x, y, xt = _data(p)
    xa = np.concatenate([x, xt])
    gamma, eta, d = 1.0, 0.5, x.shape[1]

    def forward(params, x):
        w0, ws, w = params
        h = x @ w0.T / np.sqrt(d)
        for wl in ws:
            h = jnp.tanh(h) @ wl.T / np.sqrt(width)
        return jnp.tanh(h) @ w / (gamma * width)

    def run(k):
        k0, k1, k2 = jax.random.split(k, 3)
        params = (jax.random.normal(k0, (width, d)),
                  [jax.random.normal(kk, (width, width)) for kk in jax.random.split(k1, depth - 1)],
                  jax.random.normal(k2, (width,)))
        loss = lambda prm: 0.5 * jnp.mean((forward(prm, x) - y) ** 2)  # noqa: E731

        def step(prm, _):
            g = jax.grad(loss)(prm)
            return jax.tree.map(lambda a, b: a - eta * gamma**2 * width * b, prm, g), None

        prm, _ = jax.lax.scan(step, params, None, length=steps)
        return forward(prm, xa)[p:]

    one = jax.jit(run)
    one(jax.random.key(0)).block_until_ready()
    t0 = time.perf_counter()
    one(jax.random.key(1)).block_until_ready()
    wall = time.perf_counter() - t0
    many = jax.jit(jax.vmap(run))
    out = np.asarray(many(jax.random.split(jax.random.key(key), seeds)))
    return out, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    q = args.quick
    base = dict(depth=2, p=4 if q else 16, steps=5 if q else 20, samples=256 if q else 1024, replicas=4 if q else 8)
    rows = []
    for depth in (1, 2):
        for p in ((2, 4, 8) if q else (4, 8, 16, 32, 64)):
            rows.append({"sweep": "P", **_row(depth, p, base["steps"], base["samples"], base["replicas"])})
        for steps in ((3, 5, 10) if q else (5, 10, 20, 40)):
            rows.append({"sweep": "steps", **_row(depth, base["p"], steps, base["samples"], base["replicas"])})
        for samples in ((64, 128, 256) if q else (256, 512, 1024, 2048, 4096)):
            rows.append({"sweep": "samples", **_row(depth, base["p"], base["steps"], samples, base["replicas"])})
        for r in rows[-1:]:
            print(r, flush=True)
    # finite networks against the reference solution
    ref, ref_wall = _solve(2, base["p"], base["steps"], base["samples"], base["replicas"])
    widths = (128, 256, 512) if q else (256, 512, 1024, 2048, 4096)
    finite = []
    for width in widths:
        out, wall = _finite(2, base["p"], base["steps"], width, 16 if q else 32)
        rms = float(np.sqrt(np.mean((out - ref.f_test[-1]) ** 2)))
        finite.append({"width": width, "rms_deviation": rms, "train_one_s": wall})
        print(finite[-1], flush=True)
    c = np.exp(np.mean([np.log(f["rms_deviation"]) + 0.5 * np.log(f["width"]) for f in finite]))
    se = float(ref.f_test_stderr[-1].mean())
    width_needed = (c / se) ** 2
    result = {"machine": jax.devices()[0].device_kind, "base": base, "rows": rows, "finite": finite,
              "reference": {"wall_s": ref_wall, "f_test_se": se, "iterations": ref.iterations},
              "fit_c": float(c), "width_matching_se": float(width_needed)}
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
