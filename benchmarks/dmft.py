"""Benchmark ``theory.dmft``: cost against P, steps and samples of both solvers, and against finite networks.

    python benchmarks/dmft.py --quick            # CPU smoke test (~2 min)
    python benchmarks/dmft.py                    # the full sweep (a GPU)
    python benchmarks/dmft.py --json-out dmft.json

Workload: ``theory.MLP(L, "tanh", w_std=1)`` in the mean-field parameterization, ``gamma = 1``, learning rate 0.5,
``P`` training inputs of ``d = 8`` standard normal features, targets ``sin(x_0) + x_1 / 2``, 2 test inputs, float64,
``M = (steps + 1)(P + 2)``. Each timing (wall and process CPU time) is the fastest of up to 3 calls (until 2 s are
spent) after a first that compiles, each with a new key (on a shared machine the minimum is the least disturbed).

1. ``solve(method="particles")``, one hidden layer (the default there): neurons sampled in weight space, one pass,
   ``O(replicas samples steps (P d + N^2))`` with the equal-time kernels ``Phi(t, t)``, ``G(t, t)`` recorded at
   every step (``N = P + 2``); per row the wall and CPU time, the SE of the final training loss and test outputs
   (the replicas' spread) and ``cpu_ns_per_unit`` = CPU time / (replicas samples steps P d).
2. ``solve(method="monte_carlo")`` (kernel-space fields, fixed-point iteration), one and two hidden layers:
   ``O(samples M^2)`` per sweep with one, ``O(samples M^3)`` with two; per row the iterations and time per
   iteration; and the particle solver at the same base point. Then the responses (two hidden layers, base point):
   differentiated paths (``responses="pathwise"``, ``O(samples M^3)``: a JVP per direction) against Gaussian
   integration by parts (``"stein"``, ``O(samples M^2)`` plus an ``eigh`` per step) for tanh, and relu (rough:
   integration by parts, its default), at the default samples (integration by parts: 32 per field regressed on).
3. Two hidden layers against finite networks: the RMS deviation of one network's final test outputs from the
   kernel-space DMFT's at several widths (a fit ``c width^-1/2``), the width at which one network is as close as
   the DMFT's standard error, and the CPU time to train that width (extrapolated by ``width^2`` from the widest).
4. ``solve_outputs`` (no kernels, ``O(replicas samples steps P d)``) on a long run (1000 steps quick, 2000 full)
   against one network of one hidden layer, plain and centred (``f - f_0``: what the particle solver samples):
   the same fit, the width matching the solver's SE and the time to train one network of it (measured where that
   width is at most 2^14 quick / 2^20 full, else extrapolated linearly in width from the widest).
"""

from __future__ import annotations

import argparse
import functools
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


def _timed(call, budget=2.0, repeats=3):
    """``(result, wall seconds, CPU seconds)``: the fastest of up to ``repeats`` calls (wall and process CPU time,
    all threads, each the minimum over the calls), stopping once ``budget`` seconds are spent. The machine may be
    shared: the minimum is the least disturbed wall time, and CPU time counts this process's work only.
    ``call(i)`` gets the repeat's index."""
    best, cpu, spent, out = float("inf"), float("inf"), 0.0, None
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = call(i)
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        best, cpu, spent = min(best, wall), min(cpu, used), spent + wall
        if spent > budget:
            break
    return out, best, cpu


def _solve(depth, p, steps, samples, replicas, method, seed=0, activation="tanh", responses="auto"):
    import jax

    import theory
    from theory import dmft

    x, y, xt = _data(p)
    net = theory.MLP(depth, activation, w_std=1.0)
    kw = dict(gamma=1.0, learning_rate=0.5, steps=steps, samples=samples, method=method, kernels="equal_time")
    if method == "monte_carlo":
        kw["responses"] = responses
    # compile: the particle solver runs one jitted replica at a time, so two replicas compile it; the kernel-space
    # solver's shapes include the replicas
    dmft.solve(net, x, y, xt, key=jax.random.key(seed), replicas=2 if method == "particles" else replicas, **kw)
    kw["replicas"] = replicas
    return _timed(lambda i: dmft.solve(net, x, y, xt, key=jax.random.key(seed + 1 + i), **kw))


@functools.cache
def _row(depth, p, steps, samples, replicas, method, activation="tanh", responses="auto"):
    """One timed solve (a sweep's base point is shared by its three sweeps: measured once)."""
    sol, wall, cpu = _solve(depth, p, steps, samples, replicas, method, activation=activation, responses=responses)
    row = {"depth": depth, "method": sol.method, "activation": activation, "responses": responses, "P": p,
           "steps": steps, "samples": sol.samples, "replicas": replicas,
           "M": (steps + 1) * (p + 2), "wall_s": wall, "cpu_s": cpu, "iterations": sol.iterations,
           "loss_T": float(sol.loss[-1]), "loss_se": float(sol.loss_stderr[-1]),
           "f_test_se": float(sol.f_test_stderr[-1].mean())}
    if method == "particles":   # one pass: the work is replicas * samples * steps * P * d
        row["cpu_ns_per_unit"] = 1e9 * cpu / (replicas * samples * steps * p * 8)
    else:
        row["cpu_s_per_iteration"] = cpu / (sol.iterations + 1)
    return row


def _finite(depth, p, steps, width, seeds, centred=False, key=1):
    """Final test outputs of ``seeds`` networks of ``width`` ``(seeds, 2)`` and the time to train one (jitted, second
    call). ``centred``: the output minus the initial output (``f - f_0``, what the particle solver samples)."""
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
        f0 = forward(params, xa) if centred else jnp.zeros(xa.shape[0])
        loss = lambda prm: 0.5 * jnp.mean((forward(prm, x) - f0[:p] - y) ** 2)  # noqa: E731

        def step(prm, _):
            g = jax.grad(loss)(prm)
            return jax.tree.map(lambda a, b: a - eta * gamma**2 * width * b, prm, g), None

        prm, _ = jax.lax.scan(step, params, None, length=steps)
        return (forward(prm, xa) - f0)[p:]

    one = jax.jit(run)
    one(jax.random.key(0)).block_until_ready()
    _, wall, cpu = _timed(lambda i: one(jax.random.key(1 + i)).block_until_ready())
    if not seeds:
        return None, wall, cpu
    many = jax.jit(jax.vmap(run))
    out = np.asarray(many(jax.random.split(jax.random.key(key), seeds)))
    return out, wall, cpu


def _against_finite(ref_f, ref_se, depth, p, steps, widths, seeds, centred=False):
    """One network's RMS deviation of the final test outputs from the DMFT's ``ref_f`` at each width, the fit
    ``c / sqrt(width)`` and the width at which it equals the DMFT's standard error ``ref_se``."""
    import numpy as np

    finite = []
    for width in widths:
        out, wall, cpu = _finite(depth, p, steps, width, seeds, centred)
        rms = float(np.sqrt(np.mean((out - ref_f) ** 2)))
        finite.append({"width": width, "rms_deviation": rms, "train_one_s": wall, "train_one_cpu_s": cpu})
        print({"depth": depth, "centred": centred, **finite[-1]}, flush=True)
    c = float(np.exp(np.mean([np.log(f["rms_deviation"]) + 0.5 * np.log(f["width"]) for f in finite])))
    return {"depth": depth, "P": p, "steps": steps, "centred": centred, "seeds": seeds, "widths": finite,
            "fit_c": c, "dmft_f_test_se": ref_se, "width_matching_se": (c / ref_se) ** 2}


def _outputs_long(p, steps, samples, replicas, records=20):
    """``theory.dmft.solve_outputs`` (one hidden layer) for ``steps`` steps: the solution, wall and CPU time."""
    import jax
    import numpy as np

    import theory
    from theory import dmft

    x, y, xt = _data(p)
    rec = np.unique(np.round(np.geomspace(1, steps, records - 1)).astype(int))
    kw = dict(gamma=1.0, learning_rate=0.5, steps=steps, samples=samples, replicas=replicas,
              record_steps=np.concatenate([[0], rec]))
    net = theory.MLP(1, "tanh", w_std=1.0)
    dmft.solve_outputs(net, x, y, xt, key=jax.random.key(0), **{**kw, "replicas": 2})  # compile (one replica's)
    return _timed(lambda i: dmft.solve_outputs(net, x, y, xt, key=jax.random.key(1 + i), **kw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    q = args.quick
    start = time.perf_counter()
    rows = []

    def sweep(method, depth, base, ps, stepss, sampless):
        for p in ps:
            rows.append({"sweep": "P", **_row(depth, p, base["steps"], base["samples"], base["replicas"], method)})
        for steps in stepss:
            rows.append({"sweep": "steps", **_row(depth, base["p"], steps, base["samples"], base["replicas"],
                                                  method)})
        for samples in sampless:
            rows.append({"sweep": "samples", **_row(depth, base["p"], base["steps"], samples, base["replicas"],
                                                    method)})
        print(rows[-1], flush=True)

    # (1) one hidden layer, the default solver: neurons sampled in weight space
    pbase = dict(p=16 if q else 64, steps=50 if q else 200, samples=1024 if q else 16384, replicas=8)
    sweep("particles", 1, pbase, (4, 16, 64) if q else (16, 64, 256, 1024), (10, 50, 250) if q else (50, 200, 800),
          (256, 1024, 4096) if q else (4096, 16384, 65536, 262144))
    sections = {"particles": time.perf_counter() - start}
    # (2) the kernel-space Monte Carlo, one and two hidden layers; and the particle solver at its base point
    base = dict(p=4 if q else 16, steps=5 if q else 20, samples=256 if q else 1024, replicas=4 if q else 8)
    for depth in (1, 2):
        sweep("monte_carlo", depth, base, (4, 8) if q else (4, 8, 16, 32, 64), (5, 10) if q else (5, 10, 20, 40),
              (64, 256) if q else (256, 512, 1024, 2048, 4096))
    # the responses of the kernel-space solver: differentiated paths against Gaussian integration by parts (two
    # hidden layers; tanh both ways, relu by integration by parts only: its default)
    for activation, responses, samples in (("tanh", "pathwise", base["samples"]), ("tanh", "pathwise", None),
                                           ("tanh", "stein", None), ("relu", "auto", None)):  # None: the default
        rows.append({"sweep": "responses", **_row(2, base["p"], base["steps"], samples, base["replicas"],
                                                  "monte_carlo", activation, responses)})
        print(rows[-1], flush=True)
    sections["monte_carlo"] = time.perf_counter() - start - sum(sections.values())
    rows.append({"sweep": "same as monte_carlo base", **_row(1, base["p"], base["steps"], base["samples"],
                                                             base["replicas"], "particles")})
    # (3) finite networks against the kernel-space solution (2 hidden layers)
    ref, ref_wall, ref_cpu = _solve(2, base["p"], base["steps"], base["samples"], base["replicas"], "monte_carlo")
    finite_mc = _against_finite(ref.f_test[-1], float(ref.f_test_stderr[-1].mean()), 2, base["p"], base["steps"],
                                (128, 256, 512) if q else (256, 512, 1024, 2048, 4096), 16 if q else 32)
    finite_mc.update(dmft_wall_s=ref_wall, dmft_cpu_s=ref_cpu, dmft_method=ref.method,
                     dmft_iterations=ref.iterations,
                     dmft_samples=base["samples"], dmft_replicas=base["replicas"],
                     train_matching_cpu_s_extrapolated=finite_mc["widths"][-1]["train_one_cpu_s"]
                     * (finite_mc["width_matching_se"] / finite_mc["widths"][-1]["width"]) ** 2)
    sections["finite_monte_carlo"] = time.perf_counter() - start - sum(sections.values())
    # (4) solve_outputs on a long run (one hidden layer) against one finite network, plain and centred
    lbase = dict(p=16 if q else 64, steps=1000 if q else 2000, samples=2048 if q else 16384, replicas=8)
    long, long_wall, long_cpu = _outputs_long(lbase["p"], lbase["steps"], lbase["samples"], lbase["replicas"])
    long_se = float(long.f_test_stderr[-1].mean())
    finite_long = []
    for centred in (False, True):
        res = _against_finite(long.f_test[-1], long_se, 1, lbase["p"], lbase["steps"],
                              (128, 512, 2048) if q else (256, 1024, 4096, 16384), 16 if q else 32, centred)
        need = round(res["width_matching_se"])
        # train one network of the width that matches the SE, timed, where affordable; else linear in width
        if need <= (2**14 if q else 2**20):
            _, res["train_matching_s"], res["train_matching_cpu_s"] = _finite(1, lbase["p"], lbase["steps"], need, 0,
                                                                               centred)
        else:
            res["train_matching_cpu_s_extrapolated"] = (res["widths"][-1]["train_one_cpu_s"] * need
                                                        / res["widths"][-1]["width"])
        res.update(dmft_wall_s=long_wall, dmft_cpu_s=long_cpu, dmft_samples=lbase["samples"],
                   dmft_replicas=lbase["replicas"], dmft_loss_T=float(long.loss[-1]),
                   dmft_loss_se=float(long.loss_stderr[-1]))
        finite_long.append(res)
    sections["long_run"] = time.perf_counter() - start - sum(sections.values())
    result = {"machine": jax.devices()[0].device_kind, "sections_s": sections, "rows": rows,
              "finite_monte_carlo": finite_mc, "finite_long": finite_long, "total_s": time.perf_counter() - start}
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
