"""Benchmark ``theory.kernels`` against neural-tangents (NT) on the same machine, in one run.

Run from the repository root with the project environment::

    python benchmarks/kernels.py                   # full run (~18 min on a 2-core CPU)
    python benchmarks/kernels.py --quick           # small sizes: a smoke test (~4 min)
    python benchmarks/kernels.py --skip-nt         # deeplimits only
    python benchmarks/kernels.py --skip-memory     # no N = 20,000 peak-memory runs
    python benchmarks/kernels.py --nt-python /path/to/venv-nt/bin/python --json-out results.json

The NT half runs in the pinned reference environment (jax 0.4.23, neural-tangents 0.6.5), in a
subprocess (``benchmarks/nt_worker.py``, which never imports ``theory``) that answers JSON on
stdout. Its python is ``--nt-python``, else ``.venv-nt/bin/python`` under the repository root,
else ``$DEEPLIMITS_NT_PYTHON``; build it with ``bash tests/reference/setup_nt_env.sh``.

What is measured (see ``benchmarks/README.md``): for each workload, the whole
``theory.kernels(net, x)`` call (NNGP and NTK of ``x`` with itself, float32) and NT's
``jax.jit(kernel_fn, static_argnames="get")(x, None, ("nngp", "ntk"))``: one warm-up call
(compilation), then the median of ``--reps`` calls, each ending in ``block_until_ready``. The two
sides alternate call by call, so that load from elsewhere on the machine falls on both alike.
Also: the machine's float32 matmul rate (1024^3, in both environments), the max relative
difference between the two sides' kernels, and the peak RSS / wall time of one N = 20,000 call
in a fresh process.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "nt_worker.py"
DEFAULT_NT_PYTHON = ".venv-nt/bin/python"
NT_ENV_VAR = "DEEPLIMITS_NT_PYTHON"
SETUP_HINT = "bash tests/reference/setup_nt_env.sh"

MEMORY_N = 20_000
MEMORY_LIMIT_GIB = 15.0  # NT's memory run is stopped above this (ours is reported up to OURS_LIMIT)
OURS_LIMIT_GIB = 18.0
NT_MEMORY_TIME_LIMIT_S = 300.0
SLOW_NT_S = 20.0  # NT calls slower than this are timed 3 times, not --reps times (NT's L=100 takes ~50 s)
SLOW_NT_REPS = 3


@dataclass(frozen=True)
class Workload:
    """One benchmark case; ``to_json`` is what both halves build their network from."""

    key: str
    label: str  # "{n}" is replaced by the number of inputs
    arch: str  # "mlp", "resnet" or "cnn"
    depth: int
    activation: str  # "relu", "erf" or "tanh"
    n: int
    w_std: float
    b_std: float
    target: float  # NT / deeplimits speed ratio the issue asks for
    quadrature_degree: int | None = None  # ours (tanh only)
    nt_quadrature_degree: int | None = None  # NT's ElementwiseNumerical degree (tanh only)
    nt_same_as: str | None = None  # reuse NT's timing and kernels from this (identical NT) workload
    branch_scale: float = 1.0
    depth_exponent: float = 0.5
    features: int = 32  # mlp / resnet: inputs are (n, features)
    image: tuple[int, ...] | None = None  # cnn: inputs are (n, *image), i.e. (n, height, width, channels)
    readout: str | None = None  # cnn: "gap" (GlobalAvgPool) or "flatten" before the Dense(1) readout
    seed: int = 0
    dtype: str = "float32"
    nt_batch_size: int | None = None  # NT: nt.batch(jit(kernel_fn), batch_size) instead of plain jit

    def __post_init__(self) -> None:
        if self.image is not None:  # a list when read back from JSON
            object.__setattr__(self, "image", tuple(int(i) for i in self.image))
        if (self.arch == "cnn") != (self.image is not None and self.readout in ("gap", "flatten")):
            raise ValueError(f"{self.key}: arch 'cnn' needs an image shape and readout 'gap' or 'flatten', "
                             f"and only it takes them (got arch={self.arch!r}, image={self.image}, "
                             f"readout={self.readout!r})")

    @property
    def title(self) -> str:
        return self.label.format(n=f"{self.n:,}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, *self.image) if self.arch == "cnn" else (self.n, self.features)

    def to_json(self, *, nt: bool) -> dict:
        d = asdict(self)
        if nt:
            d["quadrature_degree"] = self.nt_quadrature_degree
            d.pop("nt_same_as")
        return d


SQRT2 = math.sqrt(2.0)
WORKLOADS = (
    Workload("relu_L10", "ReLU MLP L=10 N={n}", "mlp", 10, "relu", 4000, SQRT2, 0.0, 2.0),
    Workload("relu_L100", "ReLU MLP L=100 N={n}", "mlp", 100, "relu", 1000, SQRT2, 0.0, 2.0),
    Workload("erf_L10", "erf MLP L=10 N={n}", "mlp", 10, "erf", 1000, 1.5, 0.1, 2.0),
    # Ours automatic (a Hermite series chosen for the variances met, 1e-7 of the kernel's scale); NT's
    # ElementwiseNumerical at its suggested degree 25, itself ~1e-2 off at these variances (~6). Our 2-D rule at
    # degree 25 or 40 (rows of earlier runs) is now refused at these variances (QuadratureAccuracyError).
    Workload("tanh_L10_auto", "tanh MLP L=10 N={n}, ours automatic (Hermite series) vs NT deg 25", "mlp", 10,
             "tanh", 500, 1.5, 0.1, 10.0, quadrature_degree=None, nt_quadrature_degree=25),
    Workload("resnet_L64", "ReLU ResNet L=64 N={n}, α=1/2", "resnet", 64, "relu", 1000, SQRT2, 0.0,
             2.0),
    # 2-D CNNs on 8x8x3 images: depth x [Conv((3, 3), SAME, w_std=√2, no bias), relu], then the readout
    # (GlobalAvgPool or Flatten) and Dense(1, w_std=1, no bias). NT needs the full (N, N, HW, HW)
    # covariances for the GAP readout (1 GiB per float32 kernel at N = 256); NT runs both rows as
    # nt.batch(jit(kernel_fn), 64): at N = 256 its plain jit took 219 s and 8.6 GiB for the GAP row, batches
    # of 64 114 s and 1.1 GiB (32: 211 s, 128: 146 s), and the Flatten row 0.48 s plain, 0.43 s batched.
    Workload("cnn_L4_gap", "ReLU CNN L=4 8x8x3 GAP N={n}", "cnn", 4, "relu", 256, SQRT2, 0.0, 1.0,
             image=(8, 8, 3), readout="gap", nt_batch_size=64),
    Workload("cnn_L4_flatten", "ReLU CNN L=4 8x8x3 Flatten N={n}", "cnn", 4, "relu", 256, SQRT2, 0.0, 1.0,
             image=(8, 8, 3), readout="flatten", nt_batch_size=64),
)
QUICK_N = {"relu_L10": 400, "relu_L100": 200, "erf_L10": 200, "tanh_L10_auto": 100, "resnet_L64": 200,
           "cnn_L4_gap": 32, "cnn_L4_flatten": 32}
FLOAT64_CHECK_N = {"tanh_L10_auto": 100, "cnn_L4_gap": 16, "cnn_L4_flatten": 16}
DEPTHS = (10, 100, 1000, 10_000)
DEPTH_N = 50
"""Depth rows (deeplimits only: NT composes one layer per Python call and compiles 10,000 of them): MLPs of
every depth in DEPTHS on DEPTH_N inputs, relu (w_std=sqrt 2, b_std=0) and tanh (w_std=1, b_std=0.1)."""
"""Rows whose comparison is repeated in float64 (fresh processes, x64 enabled in both envs), at this N."""


def _with_n(w: Workload, n: int) -> Workload:
    """``w`` with ``n`` inputs; NT's batching is dropped where ``batch_size`` would not split ``n`` in
    several whole batches (``nt.batch`` needs ``n % batch_size == 0``)."""
    batch = w.nt_batch_size if w.nt_batch_size and n % w.nt_batch_size == 0 and n > w.nt_batch_size else None
    return replace(w, n=n, nt_batch_size=batch)


def depth_rows(depths: tuple[int, ...], reps: int) -> list[dict]:
    """Median time of ``theory.kernels`` (NNGP + NTK, float32) over depth for relu and tanh MLPs; the per-layer
    cost and tanh's ratio to relu at each depth."""
    import numpy as np

    import theory

    jax = _jax()
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(DEPTH_N, 32)).astype("float32"))
    out = []
    _say(f"\n[depth] MLPs on N={DEPTH_N} inputs, float32, NNGP+NTK, median of {reps} calls after one warm-up")
    for depth in depths:
        row: dict = {"depth": depth}
        nets = {act: theory.MLP(depth=depth, activation=act, w_std=w_std, b_std=b_std)
                for act, w_std, b_std in (("relu", SQRT2, 0.0), ("tanh", 1.0, 0.1))}
        times: dict = {act: [] for act in nets}
        for act, net in nets.items():
            t0 = time.perf_counter()
            jax.block_until_ready(theory.kernels(net, x))
            row[act] = {"first_call_s": time.perf_counter() - t0}
        for _ in range(reps):  # alternate call by call: load from other processes falls on both alike
            for act, net in nets.items():
                t0 = time.perf_counter()
                jax.block_until_ready(theory.kernels(net, x))
                times[act].append(time.perf_counter() - t0)
        for act in nets:
            row[act].update(s=float(np.median(times[act])), per_layer_ms=1e3 * float(np.median(times[act])) / depth)
        row["tanh_over_relu"] = row["tanh"]["s"] / row["relu"]["s"]
        _say(f"    L={depth:>6,}: relu {row['relu']['s']:.3f} s ({row['relu']['per_layer_ms']:.3f} ms/layer), "
             f"tanh {row['tanh']['s']:.3f} s ({row['tanh']['per_layer_ms']:.3f} ms/layer), tanh/relu "
             f"{row['tanh_over_relu']:.1f}x; first calls {row['relu']['first_call_s']:.1f} / "
             f"{row['tanh']['first_call_s']:.1f} s")
        out.append(row)
    if len(out) >= 2:  # the marginal cost of a layer, free of the per-call work (inputs, checks, series choice)
        lo, hi = out[-2], out[-1]
        slope = {act: (hi[act]["s"] - lo[act]["s"]) / (hi["depth"] - lo["depth"]) for act in ("relu", "tanh")}
        hi["marginal_tanh_over_relu"] = slope["tanh"] / slope["relu"]
        _say(f"    marginal cost per layer between L={lo['depth']:,} and {hi['depth']:,}: relu "
             f"{1e3 * slope['relu']:.3f} ms, tanh {1e3 * slope['tanh']:.3f} ms, tanh/relu "
             f"{hi['marginal_tanh_over_relu']:.1f}x")
    return out


def memory_workload(n: int) -> Workload:
    return Workload("relu_L10_memory", "ReLU MLP L=10 N={n}", "mlp", 10, "relu", n, SQRT2, 0.0, 2.0)


# ---------------------------------------------------------------------------------------------
# The deeplimits half (this environment)


def _jax():
    import jax

    return jax


def _theory_arch(w: Workload):
    import theory

    act = w.activation
    if act == "tanh":
        act = theory.activations.tanh(quadrature_degree=w.quadrature_degree)
    if w.arch == "mlp":
        return theory.MLP(depth=w.depth, activation=act, w_std=w.w_std, b_std=w.b_std)
    if w.arch == "cnn":
        from theory import layers as nn

        body = []
        for _ in range(w.depth):
            body += [nn.Conv((3, 3), padding="SAME", w_std=w.w_std, b_std=w.b_std), nn.Elementwise(act)]
        pool = nn.GlobalAvgPool() if w.readout == "gap" else nn.Flatten()
        return theory.serial(*body, pool, nn.Dense(w_std=1.0))
    return theory.ResNet(depth=w.depth, activation=act, w_std=w.w_std, b_std=w.b_std,
                         branch_scale=w.branch_scale, depth_exponent=w.depth_exponent,
                         readout="activation")


def _inputs(w: Workload):
    import jax.numpy as jnp
    import numpy as np

    x = np.random.default_rng(w.seed).normal(size=w.input_shape)
    return jnp.asarray(x.astype(w.dtype))


def _our_call(w: Workload):
    import theory

    jax = _jax()
    net, x = _theory_arch(w), _inputs(w)

    def call():
        k = theory.kernels(net, x)
        return jax.block_until_ready((k.nngp, k.ntk))

    return call


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    import jax.numpy as jnp
    import numpy as np

    jax = _jax()
    a = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).normal(size=(n, n)), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def internal_main(request: dict) -> dict:
    """One request in a fresh process: ``memory`` (peak RSS of one call) or ``kernels`` (save)."""
    import numpy as np

    jax = _jax()
    jax.config.update("jax_enable_x64", bool(request.get("x64")))
    w = Workload(**request["workload"])
    call = _our_call(w)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    nngp, ntk = call()
    wall = time.perf_counter() - t0
    out = {"ok": True, "wall_s": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_call_mib": rss_before, "shape": list(nngp.shape), "dtype": str(nngp.dtype),
           "finite": bool(np.isfinite(np.asarray(nngp)).all() and np.isfinite(np.asarray(ntk)).all())}
    if request.get("save"):
        np.save(request["save"] + "_nngp.npy", np.asarray(nngp))
        np.save(request["save"] + "_ntk.npy", np.asarray(ntk))
    return out


# ---------------------------------------------------------------------------------------------
# Subprocesses


def child_env() -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("JAX_ENABLE_X64", None)
    return env


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_watched(cmd: list[str], timeout_s: float, rss_limit_gib: float, log: Path) -> dict:
    """Run ``cmd``; stop it (only it) past ``timeout_s`` or above ``rss_limit_gib`` resident.

    Returns its last JSON line (if any) plus ``killed`` (None, "timeout" or "memory"), the peak
    resident memory seen by polling and the wall time.
    """
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env(),
                                cwd=REPO)
        peak, killed = 0.0, None
        while proc.poll() is None:
            peak = max(peak, _rss_mib(proc.pid))
            if peak > rss_limit_gib * 1024:
                killed = "memory"
            elif time.perf_counter() - t0 > timeout_s:
                killed = "timeout"
            if killed:
                proc.kill()
                break
            time.sleep(0.1)
        stdout, _ = proc.communicate()
    result = {}
    for line in reversed(stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    result.setdefault("ok", False)
    result.update(killed=killed, polled_peak_rss_mib=peak, process_wall_s=time.perf_counter() - t0,
                  returncode=proc.returncode, log=str(log))
    return result


class NTWorker:
    """A long-lived ``nt_worker.py --serve`` process: one JSON line in, one JSON line out."""

    def __init__(self, python: str, log: Path):
        self._log = open(log, "w")
        self.log_path = log
        self.proc = subprocess.Popen([python, str(WORKER), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=child_env(), cwd=REPO)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": f"NT worker exited (rc={self.proc.poll()}); see {self.log_path}"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"op": "quit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
                self.proc.kill()
        self._log.close()


def find_nt_python(arg: str | None) -> tuple[str | None, str]:
    """The reference env's python and where it came from (None if none exists)."""
    candidates = []
    if arg:
        candidates.append((arg, "--nt-python"))
    candidates.append((str(REPO / DEFAULT_NT_PYTHON), f"default {DEFAULT_NT_PYTHON}"))
    if os.environ.get(NT_ENV_VAR):
        candidates.append((os.environ[NT_ENV_VAR], f"${NT_ENV_VAR}"))
    for path, origin in candidates:
        p = Path(path)
        if not p.is_absolute():
            p = REPO / p
        if p.exists():
            return str(p), origin
    return None, "tried " + ", ".join(f"{p} ({o})" for p, o in candidates)


# ---------------------------------------------------------------------------------------------
# Comparison and reporting


def max_rel_diff(ours, ref) -> float:
    """``max_ij |ours - ref| / max_ij |ref|``, in float64: the largest difference relative to the
    kernel's scale (its largest entry, on the diagonal). Entry-by-entry ratios are not used: in
    the chaotic phase (the tanh and erf workloads) most off-diagonal entries are ~1e-5 of the
    diagonal, at the level of float32 rounding of the diagonal, so their ratios measure noise."""
    import numpy as np

    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("nan")
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def max_rel_diff_off_diagonal(ours, ref) -> float:
    """:func:`max_rel_diff` over the entries ``i != j`` only. At ``i == j`` (an input with itself) the
    correlation is exactly 1: NT's ReLU evaluates ``arccos`` of a rounded 1, whose slope is infinite, so its
    ReLU NTK diagonal carries an error ~ sqrt(eps) (~3e-4 in float32, ~1e-8 in float64); ours keeps those
    pairs exact."""
    import numpy as np

    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape or ours.ndim != 2 or ours.shape[0] != ours.shape[1]:
        return float("nan")
    off = ~np.eye(ours.shape[0], dtype=bool)
    return float(np.max(np.abs(ours - ref)[off]) / np.max(np.abs(ref)))


def _sym(k):
    return (k + k.T) / 2


def _fmt_s(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t:.3f}" if t < 10 else f"{t:.1f}"


def machine_info() -> dict:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def _table(rows: list[dict], have_nt: bool) -> str:
    lines = ["| workload | deeplimits s | NT s | NT/deeplimits ratio | max rel diff | target |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("ratio")
        if ratio is None:
            ratio_s, verdict = "—", ("not measured" if not have_nt else "NT failed")
        else:
            ratio_s = f"{ratio:.2f}x"
            verdict = f"≥{r['target']:g}x: {'met' if ratio >= r['target'] else 'MISSED'}"
        diff, diff_sym, diff_off = r.get("max_rel_diff"), r.get("max_rel_diff_sym"), r.get("max_rel_diff_off_diag")
        diff_s = "—" if diff is None else f"{diff:.1e}"
        if diff is not None and diff_sym is not None and diff_sym < diff / 10:
            diff_s += f" ({diff_sym:.0e} vs sym. NT)"
        elif diff is not None and diff_off is not None and diff_off < diff / 10:
            diff_s += f" ({diff_off:.0e} off the diagonal)"
        lines.append(f"| {r['label']} | {_fmt_s(r['ours_s'])} | {_fmt_s(r.get('nt_s'))} | {ratio_s} | "
                     f"{diff_s} | {verdict} |")
    return "\n".join(lines)


def _say(*args) -> None:
    print(*args, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N and 2 repetitions (smoke test)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the N = 20,000 peak-memory runs")
    parser.add_argument("--skip-nt", action="store_true", help="deeplimits only")
    parser.add_argument("--skip-depth", action="store_true", help="skip the depth rows (L = 10 ... 10,000)")
    parser.add_argument("--nt-python", default=None,
                        help=f"python of the neural-tangents reference env (default {DEFAULT_NT_PYTHON} "
                        f"under the repo root, then ${NT_ENV_VAR})")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per workload (default 5; 2 with --quick)")
    parser.add_argument("--only", default=None, help="comma-separated workload keys: "
                        + ", ".join(w.key for w in WORKLOADS))
    parser.add_argument("--json-out", default=None, help="also write every number to this JSON file")
    parser.add_argument("--internal", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.internal is not None:  # a fresh-process request from the parent benchmark
        print(json.dumps(internal_main(json.loads(args.internal))), flush=True)
        return 0

    reps = args.reps or (2 if args.quick else 5)
    workloads = [_with_n(w, QUICK_N[w.key]) if args.quick else w for w in WORKLOADS]
    if args.only:
        keys = set(args.only.split(","))
        workloads = [w for w in workloads if w.key in keys]
    memory_n = 2000 if args.quick else MEMORY_N
    tmp = Path(tempfile.mkdtemp(prefix="deeplimits-bench-"))

    jax = _jax()
    jax.config.update("jax_enable_x64", False)
    import numpy as np

    import theory

    results: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "machine": machine_info(), "quick": args.quick, "reps": reps,
                     "deeplimits": {"version": theory.__version__, "jax": jax.__version__,
                                    "devices": [str(d) for d in jax.devices()],
                                    "x64": bool(jax.config.jax_enable_x64)},
                     "load_avg_start": os.getloadavg()}
    m = results["machine"]
    _say(f"# deeplimits kernel benchmark — {results['date']}{' (--quick)' if args.quick else ''}")
    _say(f"machine: {m.get('cpu', '?')}, {m['cpu_count']} cores (affinity {m.get('affinity', '?')}), "
         f"{m.get('mem_gib', '?')} GiB; {m['platform']}")
    _say(f"deeplimits {theory.__version__}: jax {jax.__version__}, devices {results['deeplimits']['devices']}, "
         f"x64={results['deeplimits']['x64']}")
    _say(f"load average at start (1/5/15 min): {results['load_avg_start']}")

    worker, nt_missing = None, None
    if not args.skip_nt:
        nt_python, origin = find_nt_python(args.nt_python)
        if nt_python is None:
            nt_missing = (f"NT reference env not found ({origin}); printing the deeplimits half only. "
                          f"Build it with `{SETUP_HINT}`, or pass --nt-python / set ${NT_ENV_VAR}.")
            _say("\n" + nt_missing)
        else:
            worker = NTWorker(nt_python, tmp / "nt_worker.log")
            hello = worker.ask({"op": "hello"})
            if not hello.get("ok"):
                _say(f"\nNT worker failed to start: {hello.get('error')}; deeplimits half only.")
                worker.close()
                worker = None
            else:
                results["nt"] = {k: v for k, v in hello.items() if k != "ok"} | {"python": nt_python}
                _say(f"NT {hello['neural_tangents']}: jax {hello['jax']}, devices {hello['devices']}, "
                     f"x64={hello['x64']} ({nt_python}, from {origin})")

    gf = matmul_gflops()
    results["matmul_gflops"] = {"deeplimits_env_start": gf}
    line = f"float32 1024x1024 @ 1024x1024 matmul: {gf:.1f} GFLOP/s (project env, jax {jax.__version__})"
    if worker:
        nt_mm = worker.ask({"op": "matmul"})
        if nt_mm.get("ok"):
            results["matmul_gflops"]["nt_env_start"] = nt_mm["gflops"]
            line += f", {nt_mm['gflops']:.1f} GFLOP/s (NT env, jax {results['nt']['jax']})"
    _say(line)
    _say("")

    rows = []
    for w in workloads:
        _say(f"[{w.key}] {w.title} ...")
        call = _our_call(w)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            nngp, ntk = call()
            ours_first = time.perf_counter() - t0
        notes = sorted({f"{c.category.__name__}: {c.message}" for c in caught})
        for note in notes:
            _say(f"    (theory warned) {note}")
        row = {"key": w.key, "label": w.title, "target": w.target, "n": w.n, "workload": asdict(w),
               "ours_first_call_s": ours_first, "warnings": notes}
        nt = None
        reused = next((r for r in rows if r["key"] == w.nt_same_as and r.get("nt_s")), None)
        if worker and reused is None:
            nt = worker.ask({"op": "prepare", "workload": w.to_json(nt=True), "save": str(tmp / w.key)})
            if not nt.get("ok"):
                row["nt_error"] = nt.get("error")
                _say(f"    NT failed: {nt.get('error')}")
                nt = None
        # Alternate the two sides call by call (and which goes first), so that load from
        # elsewhere on the machine falls on both alike.
        ours_times, nt_times = [], []
        for i in range(reps):
            for side in (("ours", "nt") if i % 2 == 0 else ("nt", "ours")):
                if side == "ours":
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # reported once above
                        t0 = time.perf_counter()
                        call()
                        ours_times.append(time.perf_counter() - t0)
                elif nt is not None:
                    if len(nt_times) >= SLOW_NT_REPS and nt_times[0] > SLOW_NT_S:
                        continue  # keep the full run near 15 minutes
                    answer = worker.ask({"op": "call", "key": w.key})
                    if answer.get("ok"):
                        nt_times.append(answer["time_s"])
        row.update(ours_s=float(np.median(ours_times)), ours_times_s=ours_times)
        _say(f"    deeplimits: median {row['ours_s']:.3f} s of {[round(t, 3) for t in ours_times]}, "
             f"first call (compile) {ours_first:.2f} s")
        if reused is not None:  # NT's network is identical to that of an earlier row: reuse it
            nt = {"nngp_path": reused["nt_nngp_path"], "ntk_path": reused["nt_ntk_path"],
                  "first_call_s": reused["nt_first_call_s"], "config": reused["nt_config"]}
            nt_times = reused["nt_times_s"]
            row["nt_reused_from"] = reused["key"]
        if nt is not None and nt_times:
            if reused is None:
                worker.ask({"op": "release", "key": w.key})
            ref_nngp, ref_ntk = np.load(nt["nngp_path"]), np.load(nt["ntk_path"])
            diffs = {"nngp": max_rel_diff(nngp, ref_nngp), "ntk": max_rel_diff(ntk, ref_ntk)}
            # Ours is exactly symmetric (the upper tiles are computed and mirrored); NT's is
            # not where its quadrature rule treats the two inputs differently (tanh).
            diffs_sym = {"nngp": max_rel_diff(nngp, _sym(ref_nngp)), "ntk": max_rel_diff(ntk, _sym(ref_ntk))}
            diffs_off = {"nngp": max_rel_diff_off_diagonal(nngp, ref_nngp),
                         "ntk": max_rel_diff_off_diagonal(ntk, ref_ntk)}
            if any(other.nt_same_as == w.key for other in workloads):
                row.update(nt_nngp_path=nt["nngp_path"], nt_ntk_path=nt["ntk_path"])  # kept for reuse
            elif reused is None:  # a reused row's files serve the later rows too (removed with the folder)
                os.remove(nt["nngp_path"])
                os.remove(nt["ntk_path"])
            row.update(nt_s=float(np.median(nt_times)), nt_times_s=nt_times, nt_reps=len(nt_times),
                       nt_first_call_s=nt["first_call_s"],
                       nt_config=nt["config"], ratio=float(np.median(nt_times)) / row["ours_s"],
                       max_rel_diff=max(diffs.values()), rel_diff=diffs,
                       max_rel_diff_sym=max(diffs_sym.values()), rel_diff_sym=diffs_sym,
                       max_rel_diff_off_diag=max(diffs_off.values()), rel_diff_off_diag=diffs_off)
            if reused is not None:
                _say(f"    NT: same network as [{reused['key']}], its timing and kernels reused")
            _say(f"    NT: median {row['nt_s']:.3f} s of {[round(t, 3) for t in nt_times]}, "
                 f"first call {nt['first_call_s']:.2f} s; NT/deeplimits {row['ratio']:.2f}x; "
                 f"max rel diff nngp {diffs['nngp']:.1e}, ntk {diffs['ntk']:.1e} "
                 f"(vs (NT+NT^T)/2: {diffs_sym['nngp']:.1e}, {diffs_sym['ntk']:.1e}; off the diagonal: "
                 f"{diffs_off['nngp']:.1e}, {diffs_off['ntk']:.1e})")
        del nngp, ntk, call
        rows.append(row)
    results["workloads"] = rows

    # float64 accuracy (small N, fresh processes with x64 enabled in both envs): tanh separates NT's
    # quadrature from rounding; the CNN rows check that both sides compute the same network.
    results["float64_checks"] = {}
    for w in workloads:
        if not worker or w.key not in FLOAT64_CHECK_N:
            continue
        w64 = replace(w, n=FLOAT64_CHECK_N[w.key], dtype="float64", nt_batch_size=None)
        _say(f"\n[{w.key} float64 check] N={w64.n}, x64 enabled ...")
        ours64 = run_watched([sys.executable, __file__, "--internal",
                              json.dumps({"workload": asdict(w64), "x64": True,
                                          "save": str(tmp / f"o64_{w.key}")})],
                             300, OURS_LIMIT_GIB, tmp / f"ours64_{w.key}.log")
        nt64 = run_watched([results["nt"]["python"], str(WORKER), "--x64", "--request",
                            json.dumps({"op": "time", "workload": w64.to_json(nt=True), "reps": 1,
                                        "save": str(tmp / f"n64_{w.key}")})],
                           300, MEMORY_LIMIT_GIB, tmp / f"nt64_{w.key}.log")
        if ours64.get("ok") and nt64.get("ok") and ours64["dtype"] == "float64" and nt64["dtype"] == "float64":
            o64 = {k: np.load(tmp / f"o64_{w.key}_{k}.npy") for k in ("nngp", "ntk")}
            n64 = {k: np.load(tmp / f"n64_{w.key}_{k}.npy") for k in ("nngp", "ntk")}
            d64 = {k: max_rel_diff(o64[k], n64[k]) for k in o64}
            d64s = {k: max_rel_diff(o64[k], _sym(n64[k])) for k in o64}
            d64o = {k: max_rel_diff_off_diagonal(o64[k], n64[k]) for k in o64}
            results["float64_checks"][w.key] = {"n": w64.n, "rel_diff": d64, "rel_diff_sym": d64s,
                                                "rel_diff_off_diag": d64o}
            if w.key == "tanh_L10_auto":  # the names earlier runs' JSON used
                results["tanh_float64_rel_diff"] = d64
                results["tanh_float64_rel_diff_sym"] = d64s
            _say(f"    max rel diff in float64: nngp {d64['nngp']:.1e}, ntk {d64['ntk']:.1e}; "
                 f"vs (NT+NT^T)/2: {d64s['nngp']:.1e}, {d64s['ntk']:.1e}; off the diagonal: "
                 f"{d64o['nngp']:.1e}, {d64o['ntk']:.1e}")
        else:
            _say(f"    float64 check failed (logs {ours64['log']}, {nt64['log']})")

    if not args.skip_depth:
        results["depth"] = depth_rows(DEPTHS[:3] if args.quick else DEPTHS, reps)

    gf_end = matmul_gflops()
    results["matmul_gflops"]["deeplimits_env_end"] = gf_end

    # Peak memory at N = 20,000 (fresh processes).
    if not args.skip_memory:
        wm = memory_workload(memory_n)
        _say(f"\n[memory] {wm.title}, float32, NNGP+NTK, one call in a fresh process ...")
        mem = run_watched([sys.executable, __file__, "--internal", json.dumps({"workload": asdict(wm)})],
                          900, OURS_LIMIT_GIB, tmp / "ours_memory.log")
        results["memory_ours"] = mem
        if mem.get("ok"):
            _say(f"    deeplimits: peak RSS {mem['peak_rss_mib'] / 1024:.2f} GiB "
                 f"(after imports and inputs {mem['rss_before_call_mib'] / 1024:.2f} GiB), "
                 f"call {mem['wall_s']:.1f} s incl. compilation, process {mem['process_wall_s']:.1f} s")
        else:
            _say(f"    deeplimits memory run failed: killed={mem['killed']}, "
                 f"polled peak {mem['polled_peak_rss_mib'] / 1024:.2f} GiB; log {mem['log']}")
        if worker:
            relu = next((r for r in rows if r["key"] == "relu_L10" and r.get("nt_s")), None)
            batch = 4000 if memory_n % 4000 == 0 and memory_n > 4000 else memory_n // 2
            estimate = None
            if relu is not None:
                estimate = relu["nt_s"] * (memory_n / relu["n"]) ** 2
            if estimate is not None and estimate > NT_MEMORY_TIME_LIMIT_S:
                results["memory_nt"] = {"ok": False, "skipped": f"estimated {estimate:.0f} s > 5 min"}
                _say(f"    NT: not run — estimated {estimate:.0f} s from the N={relu['n']} timing "
                     f"(> {NT_MEMORY_TIME_LIMIT_S:.0f} s)")
            else:
                est_s = f" (estimated {estimate:.0f} s)" if estimate else ""
                _say(f"    NT: nt.batch(batch_size={batch}, store_on_device=False){est_s}, "
                     f"limits {MEMORY_LIMIT_GIB:g} GiB / {NT_MEMORY_TIME_LIMIT_S:.0f} s ...")
                ntm = run_watched([results["nt"]["python"], str(WORKER), "--request",
                                   json.dumps({"op": "memory", "workload": wm.to_json(nt=True),
                                               "batch_size": batch})],
                                  NT_MEMORY_TIME_LIMIT_S, MEMORY_LIMIT_GIB, tmp / "nt_memory.log")
                results["memory_nt"] = ntm
                if ntm.get("ok"):
                    _say(f"    NT: peak RSS {ntm['peak_rss_mib'] / 1024:.2f} GiB, call {ntm['wall_s']:.1f} s "
                         f"incl. compilation, process {ntm['process_wall_s']:.1f} s")
                elif ntm["killed"]:
                    _say(f"    NT: stopped ({ntm['killed']}: limit {MEMORY_LIMIT_GIB:g} GiB / "
                         f"{NT_MEMORY_TIME_LIMIT_S:.0f} s), polled peak RSS "
                         f"{ntm['polled_peak_rss_mib'] / 1024:.2f} GiB after {ntm['process_wall_s']:.0f} s")
                else:
                    _say(f"    NT failed: {ntm.get('error')}; log {ntm['log']}")
    if worker:
        worker.close()
    results["load_avg_end"] = os.getloadavg()

    # Summary.
    _say(f"\n## Results ({results['date']}; {m['cpu_count']}-core CPU, {m.get('cpu', '?')})\n")
    _say(_table(rows, worker is not None or "nt" in results))
    configs: dict[str, list[str]] = {}
    for r in rows:
        if r.get("nt_config"):
            configs.setdefault(r["nt_config"], []).append(r["key"])
    nt_cfg = "; ".join(cfg if len(configs) == 1 else f"{cfg} ({', '.join(keys)})" for cfg, keys in configs.items())
    _say("")
    for r in rows:
        if r.get("nt_reps") and r["nt_reps"] < reps:
            _say(f"{r['label']}: NT column is the median of {r['nt_reps']} calls (each > {SLOW_NT_S:g} s).")
        if r.get("nt_reused_from"):
            _say(f"{r['label']}: NT column reused from {r['nt_reused_from']} (the same NT network).")
    _say(f"Median of {reps} calls after one warm-up, float32, NNGP+NTK of x with itself. "
         f"NT: {nt_cfg or 'not run'}. max rel diff: max over nngp and ntk of "
         "max_ij |ours - NT| / max_ij |NT| (off the diagonal: the same over i != j, given where it is "
         "10x smaller: NT's ReLU NTK rounds the diagonal's correlation 1 inside arccos, an error ~sqrt(eps)).")
    for key, c in results["float64_checks"].items():
        d, ds = c["rel_diff"], c["rel_diff_sym"]
        text = (f"{key}, the same comparison in float64 (N={c['n']}, x64 in both envs): max rel diff nngp "
                f"{d['nngp']:.1e}, ntk {d['ntk']:.1e}")
        if key.startswith("tanh"):
            text += (f"; against NT symmetrised, (NT+NT^T)/2: nngp {ds['nngp']:.1e}, ntk {ds['ntk']:.1e} (NT's "
                     "kernel is not symmetric: its rule integrates over the row input's variable first; ours "
                     "is exactly symmetric)")
        else:
            do = c["rel_diff_off_diag"]
            text += f"; off the diagonal: nngp {do['nngp']:.1e}, ntk {do['ntk']:.1e}"
        _say(text + ".")
    mm = results["matmul_gflops"]
    mm_s = f"{mm['deeplimits_env_start']:.1f} (start) / {mm['deeplimits_env_end']:.1f} (end) GFLOP/s"
    if "nt_env_start" in mm:
        mm_s += f"; NT env {mm['nt_env_start']:.1f} GFLOP/s"
    _say(f"float32 1024^3 matmul: {mm_s}. Load average start {results['load_avg_start']}, "
         f"end {results['load_avg_end']}.")
    first = [f"{r['key']} {r['ours_first_call_s']:.1f}/{r['nt_first_call_s']:.1f}" if r.get("nt_first_call_s")
             else f"{r['key']} {r['ours_first_call_s']:.1f}/—" for r in rows]
    _say("First call incl. compilation, deeplimits/NT s: " + ", ".join(first) + ".")
    if not args.skip_memory:
        mo, mn = results.get("memory_ours", {}), results.get("memory_nt")
        parts = []
        if mo.get("ok"):
            parts.append(f"deeplimits peak RSS {mo['peak_rss_mib'] / 1024:.2f} GiB, {mo['wall_s']:.1f} s")
        else:
            parts.append(f"deeplimits failed ({mo.get('killed') or mo.get('error')})")
        if mn is None:
            parts.append("NT not run")
        elif mn.get("ok"):
            parts.append(f"NT (nt.batch) peak RSS {mn['peak_rss_mib'] / 1024:.2f} GiB, {mn['wall_s']:.1f} s")
        elif mn.get("skipped"):
            parts.append(f"NT not run: {mn['skipped']}")
        else:
            parts.append(f"NT stopped/failed ({mn.get('killed') or mn.get('error')}, "
                         f"polled peak {mn.get('polled_peak_rss_mib', 0) / 1024:.2f} GiB)")
        _say(f"Memory, {memory_workload(memory_n).title} (one call incl. compilation, fresh process): "
             + "; ".join(parts) + ".")
    if nt_missing:
        _say(nt_missing)
    missed = [r["key"] for r in rows if r.get("ratio") is not None and r["ratio"] < r["target"]]
    if missed:
        _say("Targets missed: " + ", ".join(missed) + ".")

    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=float))
        _say(f"(all numbers written to {args.json_out})")
    for npy in tmp.glob("*.npy"):
        npy.unlink()
    _say(f"(subprocess logs: {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
