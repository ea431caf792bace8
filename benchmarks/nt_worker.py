"""neural-tangents half of ``benchmarks/kernels.py``: runs in the pinned reference environment.

This script never imports ``theory`` (it runs under jax 0.4.23 / neural-tangents 0.6.5, see
``tests/reference/constraints.txt``). It builds each benchmark workload with ``nt.stax``, times
NT's kernel function and answers in JSON, one object per line, on stdout (everything else that
gets printed, including TensorFlow / NT warnings, is sent to stderr).

Two modes:

* ``nt_worker.py --serve``: read one JSON request per line on stdin, answer one JSON line per
  request on stdout, until ``{"op": "quit"}`` or end of input. ``kernels.py`` keeps one such
  worker alive for the whole run so that it can interleave its own timings with NT's.
* ``nt_worker.py --request '<json>' [--x64]``: answer one request in a fresh process (used for
  the peak-memory run, whose ``ru_maxrss`` must not include anything else, and for the float64
  accuracy check).

Requests (``workload`` is the dict built by ``kernels.py``'s ``Workload.to_json``)::

    {"op": "hello"}                                   versions, devices, x64 flag
    {"op": "matmul"}                                  float32 1024^3 matmul GFLOP/s
    {"op": "time", "workload": {...}, "reps": 5,      warm up once, then time ``reps`` calls;
     "save": "/dir/prefix" or null,                   save nngp/ntk as <prefix>_{nngp,ntk}.npy
     "batch_size": null or int}                       nt.batch(...) instead of plain jit
    {"op": "prepare", "workload": {...},              build and warm up (first call, compiled);
     "save": ..., "batch_size": ...}                  keep it for "call"; save the kernels
    {"op": "call", "key": "<workload key>"}           time one call of a prepared workload
    {"op": "release", "key": "<workload key>"}        drop a prepared workload
    {"op": "memory", "workload": {...},               one (first) call, incl. compilation;
     "batch_size": null or int}                       reports wall time and peak RSS
    {"op": "quit"}

``kernels.py`` uses prepare / call so that it can alternate its own calls with NT's, one by one.

Conventions (the project's, see ``tests/reference/make_nt_fixtures.py``): a Dense layer with
``b_std == 0`` has no bias (``b_std=None`` in NT); MLP(depth=L) is L x [Dense, act] then
Dense(1); ResNet(depth=L) is a stem Dense(W_std=1, no bias), L blocks
``FanOut(2) >> parallel(Identity(), act >> Dense(s w_std, s b_std)) >> FanInSum()`` with
``s = branch_scale / L**depth_exponent``, then act >> Dense(1, W_std=1, no bias); CNN(depth=L) on
``(N, height, width, channels)`` images is L x [Conv(3x3, padding SAME, w_std, b_std), act], then
GlobalAvgPool (readout "gap") or Flatten (readout "flatten"), then Dense(1, W_std=1, no bias).
A workload's ``nt_batch_size`` (if set) runs NT as ``nt.batch(jit(kernel_fn), batch_size)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WIDTH = 512  # irrelevant for the kernels in the NTK parameterization


def _build(workload: dict):
    from jax import numpy as jnp
    from neural_tangents import stax

    def dense(out, w_std, b_std):
        return stax.Dense(out, W_std=w_std, b_std=(b_std if b_std > 0 else None), parameterization="ntk")

    def act():
        name = workload["activation"]
        if name == "relu":
            return stax.Relu()
        if name == "erf":
            return stax.Erf(a=1.0, b=1.0, c=0.0)
        if name == "tanh":
            return stax.ElementwiseNumerical(jnp.tanh, deg=int(workload["quadrature_degree"]))
        raise ValueError(f"no NT layer for activation {name!r}")

    depth, w_std, b_std = workload["depth"], workload["w_std"], workload["b_std"]
    if workload["arch"] == "cnn":
        layers = []
        for _ in range(depth):
            layers += [stax.Conv(WIDTH, (3, 3), padding="SAME", W_std=w_std, b_std=(b_std if b_std > 0 else None),
                                 parameterization="ntk"), act()]
        readout = workload["readout"]
        if readout not in ("gap", "flatten"):
            raise ValueError(f"unknown CNN readout {readout!r}")
        layers += [stax.GlobalAvgPool() if readout == "gap" else stax.Flatten(), dense(1, 1.0, 0.0)]
    elif workload["arch"] == "mlp":
        layers = []
        for _ in range(depth):
            layers += [dense(WIDTH, w_std, b_std), act()]
        layers.append(dense(1, w_std, b_std))
    elif workload["arch"] == "resnet":
        s = workload["branch_scale"] / depth ** workload["depth_exponent"]
        layers = [dense(WIDTH, 1.0, 0.0)]
        for _ in range(depth):
            layers.append(stax.serial(
                stax.FanOut(2),
                stax.parallel(stax.Identity(), stax.serial(act(), dense(WIDTH, s * w_std, s * b_std))),
                stax.FanInSum(),
            ))
        layers += [act(), dense(1, 1.0, 0.0)]
    else:
        raise ValueError(f"unknown arch {workload['arch']!r}")
    _, _, kernel_fn = stax.serial(*layers)
    return kernel_fn


def _inputs(workload: dict):
    import numpy as np
    from jax import numpy as jnp

    if workload["arch"] == "cnn":
        shape = (workload["n"], *workload["image"])  # (N, height, width, channels)
    else:
        shape = (workload["n"], workload["features"])
    x = np.random.default_rng(workload["seed"]).normal(size=shape)
    return jnp.asarray(x.astype(workload["dtype"]))


def _kernel_call(workload: dict, batch_size: int | None):
    import jax

    if batch_size is None:
        batch_size = workload.get("nt_batch_size")

    kernel_fn = jax.jit(_build(workload), static_argnames="get")
    how = "jax.jit(kernel_fn, static_argnames='get')"
    if batch_size:
        import neural_tangents as nt

        kernel_fn = nt.batch(kernel_fn, batch_size=int(batch_size), store_on_device=False)
        how = f"nt.batch(jit(kernel_fn), batch_size={batch_size}, store_on_device=False)"
    x = _inputs(workload)

    def call():
        k = kernel_fn(x, None, ("nngp", "ntk"))
        return jax.block_until_ready((k.nngp, k.ntk))

    return call, how


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def op_hello(_req: dict) -> dict:
    import jax
    import neural_tangents as nt
    import numpy as np

    return {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "neural_tangents": nt.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
    }


def op_matmul(req: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = int(req.get("n", 1024))
    a = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).normal(size=(n, n)), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(int(req.get("reps", 20))):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"gflops": 2 * n**3 / float(np.median(times)) / 1e9, "median_s": float(np.median(times))}


def op_time(req: dict) -> dict:
    import numpy as np

    workload = req["workload"]
    call, how = _kernel_call(workload, req.get("batch_size"))
    t0 = time.perf_counter()
    nngp, ntk = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(int(req.get("reps", 5))):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    out = {"first_call_s": first, "times_s": times, "median_s": float(np.median(times)), "config": how,
           "dtype": str(nngp.dtype)}
    _save(req, out, nngp, ntk)
    return out


_PREPARED: dict = {}


def _save(req: dict, out: dict, nngp, ntk) -> None:
    import numpy as np

    if req.get("save"):
        for name, k in (("nngp", nngp), ("ntk", ntk)):
            path = f"{req['save']}_{name}.npy"
            np.save(path, np.asarray(k))
            out[f"{name}_path"] = path


def op_prepare(req: dict) -> dict:
    workload = req["workload"]
    call, how = _kernel_call(workload, req.get("batch_size"))
    t0 = time.perf_counter()
    nngp, ntk = call()
    out = {"first_call_s": time.perf_counter() - t0, "config": how, "dtype": str(nngp.dtype)}
    _save(req, out, nngp, ntk)
    _PREPARED[workload["key"]] = call
    return out


def op_call(req: dict) -> dict:
    call = _PREPARED[req["key"]]
    t0 = time.perf_counter()
    call()
    return {"time_s": time.perf_counter() - t0}


def op_release(req: dict) -> dict:
    _PREPARED.pop(req["key"], None)
    return {}


def op_memory(req: dict) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    call, how = _kernel_call(req["workload"], req.get("batch_size"))
    nngp, ntk = call()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mib": _rss_mib(), "config": how, "shape": list(nngp.shape),
            "finite": bool(np.isfinite(nngp).all() and np.isfinite(ntk).all())}


OPS = {"hello": op_hello, "matmul": op_matmul, "time": op_time, "prepare": op_prepare, "call": op_call,
       "release": op_release, "memory": op_memory}


def answer(req: dict) -> dict:
    try:
        return {"ok": True, **OPS[req["op"]](req)}
    except Exception as err:  # report, never crash the benchmark
        traceback.print_exc(file=sys.stderr)
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", action="store_true", help="answer JSON lines from stdin")
    mode.add_argument("--request", help="answer this one JSON request and exit")
    parser.add_argument("--x64", action="store_true", help="enable float64 (jax_enable_x64)")
    args = parser.parse_args()

    # Keep stdout for JSON only: anything else printed goes to stderr.
    json_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    warnings.filterwarnings("ignore")
    import jax

    jax.config.update("jax_enable_x64", bool(args.x64))

    def reply(obj: dict) -> None:
        json_out.write(json.dumps(obj) + "\n")
        json_out.flush()

    if args.request:
        reply(answer(json.loads(args.request)))
        return
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "quit":
            reply({"ok": True})
            break
        reply(answer(req))


if __name__ == "__main__":
    main()
