"""Sweeps on Dask: a full sweep with --jobs 1 against --jobs 2, and the Dask path's overhead per point.

    python benchmarks/sweeps.py --full relu-kurtosis        # --jobs 1 then --jobs 2 (minutes each)
    python benchmarks/sweeps.py --quick relu-kurtosis       # serial against --jobs 1 on the quick sweep, + fixed costs

Each sweep is a fresh `deeplimits run ... --no-plot` process into a new results folder (nothing cached), timed
from the outside. The overhead per point is (wall time of --jobs 1 - wall time serial) / points: what a point
costs more when it goes through the scheduler, a worker process and back, including the cluster's start and stop
and the worker's own imports and compilations, shared out over the sweep's points. The steady-state cost of one
point (cluster warm, nothing to compile) is measured on the test suite's toy experiment (400 points that compute
nothing), and the fixed cost of a local cluster (start, first point, stop) on its own. Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def sweep(name: str, *args: str, env: dict | None = None) -> tuple[float, str]:
    """Wall seconds and summary line of one `deeplimits run NAME --no-plot` into a fresh results folder."""
    with tempfile.TemporaryDirectory() as results:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "experiments", "run", name, "--no-plot", "--no-progress",
                              "--results", results, *args], capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return wall, out.stdout.strip()


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def fixed_cost() -> float:
    """Seconds to start a local cluster of one worker, run one trivial point on it (the worker imports the
    runner, hence JAX) and stop it; the main process's own imports (which a serial run pays too) not counted."""
    code = ("import time\n"
            "from experiments.cluster import dask_engine\n"
            "from experiments.runner import compute_point\n"
            "import toy_experiment\n"
            "t = time.perf_counter()\n"
            "with dask_engine(1) as e:\n"
            "    e.executor.submit(compute_point, toy_experiment.compute, {'width': 4, 'seed': 0, 'scale': 1.0,"
            " 'noisy': True, 'exponent': -0.5}, 'float64', 'x').result()\n"
            "print(time.perf_counter() - t)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                check=True).stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", metavar="NAME", help="time the full sweep of NAME with --jobs 1 and --jobs 2")
    parser.add_argument("--quick", metavar="NAME", help="overhead per point on the quick sweep of NAME")
    args = parser.parse_args()
    if args.full:
        times = {}
        for jobs in (1, 2):
            print(f"--jobs {jobs}: load {load()}", flush=True)
            times[jobs], summary = sweep(args.full, "--jobs", str(jobs))
            print(f"  {times[jobs]:.1f} s  ({summary})", flush=True)
        print(f"speed-up --jobs 2 / --jobs 1: {times[1] / times[2]:.2f}x (load after: {load()})")
    if args.quick:
        print(f"load {load()}", flush=True)
        serial, summary = sweep(args.quick, "--quick")
        n = int(summary.split(": ", 1)[1].split(" points")[0])
        dask1, _ = sweep(args.quick, "--quick", "--jobs", "1")
        print(f"quick {args.quick}: {n} points, serial {serial:.1f} s, --jobs 1 {dask1:.1f} s: "
              f"{(dask1 - serial) / n * 1000:.0f} ms per point more through Dask (start and stop included)")
        fixed = fixed_cost()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               "DEEPLIMITS_EXPERIMENT_MODULES": "toy_experiment"}
        many = ("--set", "widths=" + ",".join(str(4 + w) for w in range(100)), "--set", "seeds=4")
        toy_serial, _ = sweep("toy", *many, env=env)
        toy_dask, _ = sweep("toy", *many, "--jobs", "1", env=env)
        print(f"local cluster start + first point + stop: {fixed:.1f} s; toy, 400 points: serial {toy_serial:.1f} s, "
              f"--jobs 1 {toy_dask:.1f} s: {(toy_dask - toy_serial - fixed) / 400 * 1000:.1f} ms per point in "
              f"steady state (load after: {load()})")


if __name__ == "__main__":
    main()
