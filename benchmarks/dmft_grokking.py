"""Convergence of the grokking experiment's DMFT rows in the number of sampled neurons ``S``.

    python benchmarks/dmft_grokking.py                           # alpha = 1, S = 512 ... 16384, 16 replicas
    python benchmarks/dmft_grokking.py --alphas 4 --steps 3000 --samples 512 1024 2048 4096 8192 --replicas 8
    python benchmarks/dmft_grokking.py --json-out grokking_dmft.json

The ``grokking`` experiment's task, network, recorded steps and lazy row (``experiments.figures.grokking``: its
default ``Config``, ``setup``, ``compute``, ``dmft_times``); per ``alpha`` and ``S`` one DMFT row computed as the
experiment computes it (``theory.dmft.solve_outputs``, ``S`` neurons x ``replicas``, the loss of the replica-mean
outputs, leave-one-replica-out curves), with an independent key per ``S``. Reported: the grokking time (the
experiment's definition, jackknife SE) and the mean ± SE of the per-replica grokking times; the test loss at a few
times with its jackknife SE, its difference to the largest ``S`` in SE, and the part of it that is the replica mean's
own variance (``0.5 mean_x se_f(x)^2``, an ``O(1 / (S replicas))`` positive bias of the loss of a mean); weighted
least-squares fits of ``value = limit + b / S`` and ``limit + b / sqrt(S)`` with their ``chi^2`` per degree of
freedom. Not a timing benchmark (numbers: docs/dmft.md, "Grokking: convergence in the sampled neurons").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _fit(s, v, se, power):
    """Weighted least squares ``v = limit + b S^-power``: ``(limit, se, b, se, chi2 / dof)``."""
    import numpy as np

    a = np.stack([np.ones_like(s), s**-power], axis=1) / se[:, None]
    coef, *_ = np.linalg.lstsq(a, v / se, rcond=None)
    cov = np.linalg.inv(a.T @ a)
    dof = max(len(s) - 2, 1)
    chi2 = float(np.sum((a @ coef - v / se) ** 2)) / dof
    return float(coef[0]), float(np.sqrt(cov[0, 0])), float(coef[1]), float(np.sqrt(cov[1, 1])), chi2


def run_alpha(alpha: float, samples: list[int], replicas: int, steps: int, seed: int) -> dict:
    import jax
    import numpy as np
    import pandas as pd

    from experiments.figures import grokking as fig
    from theory import dmft, grokking

    c = fig.EXPERIMENT.config
    lazy_pt = next(p for p in fig.points(c) if p["kind"] == "lazy")
    lazy = {**lazy_pt, **fig.compute(lazy_pt)}
    dm_pt = next(p for p in fig.points(c) if p["kind"] == "dmft")
    arch, task, rec = fig.setup(dm_pt)
    rec = rec[rec <= steps]
    eta = c.learning_rate
    rows, extra = [], []
    for s in samples:
        key = jax.random.fold_in(jax.random.key(seed), s)
        t0 = time.perf_counter()
        sol = dmft.solve_outputs(arch, task.x_train, task.y_train, task.x_test, task.y_test, gamma=1.0 / alpha,
                                 learning_rate=eta, steps=int(rec[-1]), key=key, samples=s, replicas=replicas,
                                 record_steps=rec)
        wall = time.perf_counter() - t0
        r = sol.replicas   # the experiment's leave-one-replica-out curves (experiments.figures.grokking.compute)
        loo = (r * sol.f_test[None] - sol.replica_f_test) / (r - 1)
        loo_test = 0.5 * np.mean((loo - task.y_test) ** 2, axis=-1)
        rows.append({**dm_pt, "alpha": alpha, "samples": s, "replicas": replicas, "time": sol.time.tolist(),
                     "test_loss": sol.test_loss.tolist(), "loo_test_loss": loo_test.tolist()})
        per = 0.5 * np.mean((sol.replica_f_test - task.y_test) ** 2, axis=-1)     # (replicas, records)
        lazy_test = np.asarray(lazy["test_loss"], float)[: sol.time.size]
        t_rep = [grokking.grokking_time(sol.time, p, lazy_test, c.factor) for p in per]
        extra.append({"test_loss_se": sol.test_loss_stderr, "variance_part": 0.5 * np.mean(sol.f_test_stderr**2, -1),
                      "replica_t_grok": t_rep, "wall_s": wall})
        print(f"alpha {alpha} S {s}: {wall:.1f} s, replica grokking times {np.round(t_rep, 1).tolist()}", flush=True)
    df = pd.DataFrame([lazy, *rows])
    times = fig.dmft_times(df, c.factor).sort_values("samples")
    t = np.asarray(rows[0]["time"])
    s_arr = np.asarray(samples, float)
    out = {"alpha": alpha, "replicas": replicas, "steps": int(rec[-1]), "samples": samples, "per_S": []}
    for row, ex, (_, tg) in zip(rows, extra, times.iterrows(), strict=True):
        tr = np.asarray(ex["replica_t_grok"])
        out["per_S"].append({"samples": row["samples"], "wall_s": ex["wall_s"],
                             "t_grok": tg["grokking_time"], "t_grok_se": tg["grokking_time_se"],
                             "replica_t_grok": tr.tolist(), "replica_t_grok_mean": float(tr.mean()),
                             "replica_t_grok_se": float(tr.std(ddof=1) / math.sqrt(tr.size))})
    # test-loss curves against S at every recorded time; the fits at a few
    loss = np.array([r["test_loss"] for r in rows])                   # (S, records)
    se = np.array([e["test_loss_se"] for e in extra])
    var = np.array([e["variance_part"] for e in extra])
    diff_se = np.sqrt(se**2 + se[-1] ** 2)
    z = (loss - loss[-1]) / np.where(diff_se > 0, diff_se, np.inf)
    t_ref = out["per_S"][-1]["t_grok"] if math.isfinite(out["per_S"][-1]["t_grok"]) else t[-1]
    picks = sorted({max(int(np.argmin(np.abs(t - x))), 1) for x in (0.5 * t_ref, t_ref, 1.5 * t_ref, 2 * t_ref, t[-1])})
    out["times"] = []
    for k in picks:
        entry = {"time": float(t[k]), "lazy_test_loss": float(np.asarray(lazy["test_loss"])[k]),
                 "test_loss": loss[:, k].tolist(), "test_loss_se": se[:, k].tolist(),
                 "variance_part": var[:, k].tolist(),
                 "relative_diff_to_largest": (loss[:, k] / loss[-1, k] - 1).tolist(), "z_to_largest": z[:, k].tolist()}
        for name, p in (("fit_1_over_S", 1.0), ("fit_1_over_sqrtS", 0.5)) if len(samples) >= 3 else ():
            entry[name] = dict(zip(("limit", "limit_se", "b", "b_se", "chi2_dof"), _fit(s_arr, loss[:, k], se[:, k], p),
                                   strict=True))
        out["times"].append(entry)
    tg = np.array([p["t_grok"] for p in out["per_S"]])
    tg_se = np.array([p["t_grok_se"] for p in out["per_S"]])
    if len(samples) >= 3 and np.all(np.isfinite(tg)) and np.all(tg_se > 0):
        for name, p in (("t_grok_fit_1_over_S", 1.0), ("t_grok_fit_1_over_sqrtS", 0.5)):
            fit = _fit(s_arr, tg, tg_se, p)
            out[name] = dict(zip(("limit", "limit_se", "b", "b_se", "chi2_dof"), fit, strict=True))
    # the largest |z| over all recorded times after t = 0, per S (how far each curve is from the largest S's)
    out["max_abs_z_to_largest"] = np.max(np.abs(z[:, 1:]), axis=1).tolist()
    out["max_relative_diff_to_largest"] = np.max(np.abs(loss[:, 1:] / loss[-1, 1:] - 1), axis=1).tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    parser.add_argument("--samples", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000, help="last step (the experiment's records up to it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    result = {"alphas": [run_alpha(a, sorted(args.samples), args.replicas, args.steps, args.seed)
                         for a in args.alphas]}
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
