"""Reference outputs of neural-tangents' ``nt.predict`` (0.6.5) for ``theory.predict``'s tests.

Like ``make_nt_fixtures.py`` this never imports ``deeplimits``; it runs in the pinned reference environment
(``tests/reference/setup_nt_env.sh``; jax 0.4.23 needs scipy < 1.13 there). From the repository root::

    TF_CPP_MIN_LOG_LEVEL=3 .venv-nt/bin/python tests/reference/make_nt_predict_fixtures.py --out tests/data
    TF_CPP_MIN_LOG_LEVEL=3 .venv-nt/bin/python tests/reference/make_nt_predict_fixtures.py --check tests/data

``--out`` writes ``predict_nt.npz``; ``--check`` recomputes it and compares (rtol 1e-10, atol 1e-14), exit 1 on a
difference. Everything is float64.

Networks (NTK parameterization, one output per kernel): ``erf``: Dense(512, 1.5, 0.1) >> Erf >> Dense(1, 1.5,
0.1); ``relu``: 2 x [Dense(512, sqrt 2, 0.05) >> Relu] >> Dense(1, 1, 0). Inputs ``x_train`` (12, 4), ``x_test``
(5, 4), targets ``y`` (12, 3) and ``y1`` (12, 1), initial outputs ``f0`` (12, 3), ``ft0`` (5, 3): fixed seeds.
Stored: ``config`` (JSON), the inputs, NT's kernels (``k_<net>_<train|test|testtest>_<nngp|ntk>``) and, for each
network and ``diag_reg`` in (0, 1e-2 relative, 0.3 absolute):

* ``gd_<net>_<reg>_{train,test}_t``: ``gradient_descent_mse(ntk, y, learning_rate=0.7, ...)(ts, f0, ft0, k_test)``
  at ``ts`` = (0, 0.5, 3, 40), ``_inf``: at ``t=None``; ``gd_<net>_<reg>_testonly_t``: ``fx_train_0=None``;
  ``gd_<net>_<reg>_y1_t`` one output, ``t`` a (2, 2) array.
* ``gp_<net>_<reg>_<g>_{mean,cov}`` for ``g`` in nngp, ntk, ntkgp: ``gp_inference(k_train, y, ...)(g, k_test,
  k_testtest)``; ``gp_<net>_<reg>_both_<g>`` the mean from ``get=None``.
* ``ens_<net>_<reg>_<g>_<t|inf>_<test|train>_{mean,cov}``: ``gradient_descent_mse_ensemble(kernel_fn, x_train, y,
  learning_rate=0.7, ...)(t, x_test or None, g, compute_cov=True)``.
* ``mlr_<net>``, ``mlr_<net>_momentum``: ``max_learning_rate(ntk)`` and ``(ntk, y_train_size=36, momentum=0.9)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

RTOL, ATOL = 1e-10, 1e-14
FILENAME = "predict_nt.npz"
TIMES = np.array([0.0, 0.5, 3.0, 40.0])
REGS = {"r0": (0.0, False), "r1e-2": (1e-2, False), "abs0.3": (0.3, True)}
LEARNING_RATE = 0.7


def _kernel_fns():
    from neural_tangents import stax

    _, _, erf = stax.serial(stax.Dense(512, 1.5, 0.1), stax.Erf(), stax.Dense(1, 1.5, 0.1))
    _, _, relu = stax.serial(stax.Dense(512, 2**0.5, 0.05), stax.Relu(), stax.Dense(512, 2**0.5, 0.05), stax.Relu(),
                             stax.Dense(1, 1.0, None))
    return {"erf": erf, "relu": relu}


def compute() -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import neural_tangents as nt

    rng = np.random.default_rng(20261206)
    out = {
        "x_train": rng.normal(size=(12, 4)), "x_test": rng.normal(size=(5, 4)), "y": rng.normal(size=(12, 3)),
        "y1": rng.normal(size=(12, 1)), "f0": rng.normal(size=(12, 3)), "ft0": rng.normal(size=(5, 3)),
        "f0_1": rng.normal(size=(12, 1)), "ft0_1": rng.normal(size=(5, 1)), "ts": TIMES,
        "ts22": np.array([[0.25, 2.0], [7.0, 100.0]]),
    }
    config = {"learning_rate": LEARNING_RATE, "regs": REGS, "nets": {
        "erf": "Dense(512, 1.5, 0.1) >> Erf() >> Dense(1, 1.5, 0.1)",
        "relu": "2 x [Dense(512, sqrt 2, 0.05) >> Relu()] >> Dense(1, 1, None)"}}
    xtr, xte, y = out["x_train"], out["x_test"], out["y"]
    for name, kfn in _kernel_fns().items():
        ktr, kte = kfn(xtr, None, ("nngp", "ntk")), kfn(xte, xtr, ("nngp", "ntk"))
        ktt = kfn(xte, None, ("nngp", "ntk"))
        for part, k in (("train", ktr), ("test", kte), ("testtest", ktt)):
            out[f"k_{name}_{part}_nngp"], out[f"k_{name}_{part}_ntk"] = k.nngp, k.ntk
        for reg_name, (reg, absolute) in REGS.items():
            tag = f"{name}_{reg_name}"
            gd = nt.predict.gradient_descent_mse(ktr.ntk, y, LEARNING_RATE, reg, absolute)
            for t_name, t in (("t", TIMES), ("inf", None)):
                out[f"gd_{tag}_train_{t_name}"], out[f"gd_{tag}_test_{t_name}"] = gd(t, out["f0"], out["ft0"], kte.ntk)
                out[f"gd_{tag}_testonly_{t_name}"] = gd(t, None, out["ft0"], kte.ntk)
            gd1 = nt.predict.gradient_descent_mse(ktr.ntk, out["y1"], LEARNING_RATE, reg, absolute)
            out[f"gd_{tag}_y1_train_t"], out[f"gd_{tag}_y1_test_t"] = gd1(out["ts22"], out["f0_1"], out["ft0_1"],
                                                                          kte.ntk)
            gp = nt.predict.gp_inference(ktr, y, reg, absolute)
            for g in ("nngp", "ntk", "ntkgp"):
                r = gp(g, kte, ktt.ntk if g == "ntkgp" else ktt.nngp)
                out[f"gp_{tag}_{g}_mean"], out[f"gp_{tag}_{g}_cov"] = r.mean, r.covariance
            both = gp(None, kte)
            out[f"gp_{tag}_both_nngp"], out[f"gp_{tag}_both_ntk"] = both.nngp, both.ntk
            ens = nt.predict.gradient_descent_mse_ensemble(kfn, xtr, y, LEARNING_RATE, reg, absolute)
            for g in ("nngp", "ntk"):
                for t_name, t in (("t", TIMES), ("inf", None)):
                    for where, x in (("test", xte), ("train", None)):
                        r = ens(t, x, g, True)
                        out[f"ens_{tag}_{g}_{t_name}_{where}_mean"] = r.mean
                        out[f"ens_{tag}_{g}_{t_name}_{where}_cov"] = r.covariance
        out[f"mlr_{name}"] = np.array(nt.predict.max_learning_rate(ktr.ntk))
        out[f"mlr_{name}_momentum"] = np.array(nt.predict.max_learning_rate(ktr.ntk, y_train_size=36, momentum=0.9))
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    return arrays


def _compare(arrays: dict, path: str) -> list[str]:
    stored = np.load(path)
    problems = [f"missing key {k}" for k in arrays if k not in stored.files]
    problems += [f"extra key {k}" for k in stored.files if k not in arrays]
    for key, value in arrays.items():
        if key not in stored.files:
            continue
        ref = stored[key]
        if key == "config":
            if str(ref) != str(value):
                problems.append("config differs")
        elif ref.shape != value.shape:
            problems.append(f"{key}: shape {value.shape} != stored {ref.shape}")
        elif not np.allclose(value, ref, rtol=RTOL, atol=ATOL):
            problems.append(f"{key}: max |diff| {np.max(np.abs(value - ref)):.3g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="DIR")
    mode.add_argument("--check", metavar="DIR")
    args = parser.parse_args(argv)
    arrays = compute()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.out, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(args.out, FILENAME))
        print(f"wrote {len(arrays)} arrays to {os.path.join(args.out, FILENAME)}")
        return 0
    path = os.path.join(args.check, FILENAME)
    if not os.path.exists(path):
        print(f"FAIL: {path} is missing")
        return 1
    problems = _compare(arrays, path)
    for line in problems:
        print(line)
    print(f"FAIL: {len(problems)} problem(s)" if problems else f"OK: {FILENAME} matches ({len(arrays)} arrays, "
          f"rtol={RTOL:g}, atol={ATOL:g})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
