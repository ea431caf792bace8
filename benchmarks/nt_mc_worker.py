"""neural-tangents half of ``benchmarks/monte_carlo.py``: runs in the pinned reference environment.

Never imports ``theory``. One request per process::

    python nt_mc_worker.py '<json request>'

with ``{"width", "depth", "n", "features", "n_samples", "w_std", "seed", "implementation", "reps"}``.
It builds the project's ReLU MLP convention with ``nt.stax`` (``depth`` x [Dense(width), Relu],
then Dense(1), "ntk" parameterization, no bias), wraps it in
``nt.monte_carlo_kernel_fn(init_fn, apply_fn, key, n_samples, implementation=...)``, and times
``kernel_fn(x, None, ("nngp", "ntk"))``: one first call (compilation included), then the median of
``reps`` calls. The answer is one JSON line on stdout; the kernels are saved next to ``save``.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(request: dict) -> dict:
    import jax
    import neural_tangents as nt
    import numpy as np
    from neural_tangents import stax

    layers = []
    for _ in range(request["depth"]):
        layers += [stax.Dense(request["width"], W_std=request["w_std"], parameterization="ntk"), stax.Relu()]
    layers.append(stax.Dense(1, W_std=request["w_std"], parameterization="ntk"))
    init_fn, apply_fn, _ = stax.serial(*layers)
    kernel_fn = nt.monte_carlo_kernel_fn(
        init_fn, apply_fn, jax.random.PRNGKey(request["seed"]), request["n_samples"],
        implementation=nt.NtkImplementation(request["implementation"]),
    )
    x = np.random.default_rng(request["seed"]).normal(size=(request["n"], request["features"]))
    x = jax.numpy.asarray(x.astype(np.float32))

    def call():
        k = kernel_fn(x, None, ("nngp", "ntk"))
        return jax.block_until_ready((k.nngp, k.ntk))

    t0 = time.perf_counter()
    nngp, ntk = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(request["reps"]):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    if request.get("save"):
        np.save(request["save"] + "_nngp.npy", np.asarray(nngp))
        np.save(request["save"] + "_ntk.npy", np.asarray(ntk))
    return {"ok": True, "first_call_s": first, "times_s": times, "median_s": float(np.median(times)),
            "implementation": nt.NtkImplementation(request["implementation"]).name, "jax": jax.__version__,
            "neural_tangents": nt.__version__, "dtype": str(nngp.dtype)}


if __name__ == "__main__":
    try:
        answer = main(json.loads(sys.argv[1]))
    except Exception as exc:  # reported to the parent, which prints the deeplimits half anyway
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
