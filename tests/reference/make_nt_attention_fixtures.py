"""Reference kernels of neural-tangents' ``stax.GlobalSelfAttention`` (0.6.5) for ``theory.layers.SelfAttention``.

Like ``make_nt_fixtures.py`` this never imports ``deeplimits``; it runs in the pinned reference environment
(``tests/reference/setup_nt_env.sh``). From the repository root::

    TF_CPP_MIN_LOG_LEVEL=3 .venv-nt/bin/python tests/reference/make_nt_attention_fixtures.py --out tests/data
    TF_CPP_MIN_LOG_LEVEL=3 .venv-nt/bin/python tests/reference/make_nt_attention_fixtures.py --check tests/data

``--out`` writes one ``attn_nt_<case>.npz`` per case (deterministic bytes; stale ``attn_nt_*.npz`` removed);
``--check`` recomputes every case and compares (rtol 1e-10, atol 1e-14), exit status 1 on any difference,
missing or extra file. Everything is float64; about 20 s.

Kernel cases (``arch: "program"``): a layer program in the schema of ``make_nt_fixtures.py`` plus the layer::

    {"layer": "SelfAttention", "n_heads", "n_chan_key", "n_chan_val", "linear_scaling",
     "W_key_std", "W_query_std", "W_value_std", "W_out_std", "b_std" (0: no bias),
     "attention": "SOFTMAX" | "IDENTITY" | "ABS" | "RELU",
     "positional": "NONE" | "SUM" | "CONCAT", "pos_std", "pos_p_norm",
     "pos_decay": null | {"kind": "exp", "length": l} (d -> exp(-d / l)) | {"kind": "power", "length": l}
                  (d -> (1 + d / l)^-1), "pos_channels": int | null, "pos_values": bool}

realised as ``stax.GlobalSelfAttention`` with those arguments (``b_std`` 0 -> None, ``pos_channels`` ->
``n_chan_pos_emb``), ``Residual`` as in ``make_nt_fixtures.py`` (``FanOut``, ``parallel(Identity, branch >>
DotGeneral(rhs=scale))``, ``FanInSum``), LayerNorm over channels (eps 1e-12). Hidden Dense layers have 8
channels (ignored by NT's kernels; attention's ``n_chan_*`` likewise). Inputs ``x1`` (4, *input_shape), ``x2``
(3, *input_shape), standard normal from ``np.random.default_rng(crc32(case name))``, each example rescaled to a
mean square uniform in [0.5, 2]; ``x2[1] = x1[2]`` (an identical pair). Stored: ``config`` (JSON), ``x1``,
``x2``, ``nngp_12``, ``ntk_12`` (4, 3), ``nngp_11``, ``ntk_11`` (4, 4), versions.

Finite case (``attn_nt_empirical``): NT's ``init_fn`` (``PRNGKey(EMP_SEED)``) and ``apply_fn`` of a program with
one attention layer (``n_out`` 2), its outputs on ``x1`` and its empirical NTK ``ntk_12`` (3, 2, 2, 2: examples,
outputs) from ``nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0)``, and the parameters: Dense ``W_i``,
``b_i``; attention ``K_i`` (heads, C_k, d_k), ``V_i`` (heads, C_v, d_v), ``O_i`` (heads d_v, C_out), ``b_i``,
``E_i`` (positional embeddings, (*spatial, C_pe)), in program order.
"""

import argparse
import json
import os
import sys
import time
import warnings
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from make_nt_fixtures import write_atomic  # noqa: E402  (the deterministic .npz writer of the other fixtures)
from neural_tangents import stax  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning, module=r"neural_tangents(\.|$)")

N1, N2 = 4, 3
MEAN_SQ = (0.5, 2.0)
HIDDEN = 8
LN_EPS = 1e-12
EMP_N1, EMP_N2, EMP_WIDTH, EMP_N_OUT, EMP_SEED = 3, 2, 6, 2, 20261206
RTOL, ATOL = 1e-10, 1e-14
PREFIX = "attn_nt_"


# -- architectures -----------------------------------------------------------------------------------------------
def decay_fn(spec):
    """The positional covariance as a function of the distance (shared with the test through the config)."""
    if spec is None:
        return None
    length = float(spec["length"])
    if spec["kind"] == "exp":
        return lambda d: jnp.exp(-d / length)
    if spec["kind"] == "power":
        return lambda d: 1.0 / (1.0 + d / length)
    raise ValueError(spec)


def _attention(spec, out_dim):
    return stax.GlobalSelfAttention(
        n_chan_out=out_dim, n_chan_key=spec["n_chan_key"], n_chan_val=spec["n_chan_val"], n_heads=spec["n_heads"],
        linear_scaling=spec["linear_scaling"], W_key_std=spec["W_key_std"], W_value_std=spec["W_value_std"],
        W_query_std=spec["W_query_std"], W_out_std=spec["W_out_std"],
        b_std=None if spec["b_std"] == 0 else spec["b_std"], attention_mechanism=spec["attention"],
        pos_emb_type=spec["positional"], pos_emb_p_norm=spec["pos_p_norm"],
        pos_emb_decay_fn=decay_fn(spec["pos_decay"]),
        n_chan_pos_emb=spec["pos_channels"], W_pos_emb_std=spec["pos_std"], val_pos_emb=spec["pos_values"])


def _layer(spec, out_dim):
    kind = spec["layer"]
    if kind == "Dense":
        return stax.Dense(out_dim, W_std=spec["w_std"], b_std=None if spec["b_std"] == 0 else spec["b_std"])
    if kind == "SelfAttention":
        return _attention(spec, out_dim)
    if kind == "Elementwise":
        return {"relu": stax.Relu(), "erf": stax.Erf(a=1.0, b=1.0, c=0.0)}[spec["activation"]["name"]]
    if kind == "LayerNorm":
        return stax.LayerNorm(axis=-1, eps=spec["eps"])
    if kind == "GlobalAvgPool":
        return stax.GlobalAvgPool()
    if kind == "Flatten":
        return stax.Flatten()
    if kind == "Residual":
        branch = [_layer(sub, HIDDEN) for sub in spec["branch"]]
        if spec["scale"] != 1:
            branch.append(stax.DotGeneral(rhs=float(spec["scale"])))
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.serial(*branch)), stax.FanInSum())
    raise ValueError(spec)


def program(cfg):
    layers = cfg["layers"]
    hidden = cfg.get("width") or HIDDEN
    return stax.serial(*[_layer(s, hidden) for s in layers[:-1]], _layer(layers[-1], cfg.get("n_out", 1)))


def Attn(n_heads=1, qk=(1.0, 1.0), ov=(1.0, 1.0), b=0.0, linear=True, attention="SOFTMAX", positional="NONE",
         pos_std=1.0, p_norm=2.0, decay=None, pos_channels=None, pos_values=False, d=4):
    return {"layer": "SelfAttention", "n_heads": n_heads, "n_chan_key": d, "n_chan_val": d, "linear_scaling": linear,
            "W_key_std": float(qk[0]), "W_query_std": float(qk[1]), "W_value_std": float(ov[0]),
            "W_out_std": float(ov[1]), "b_std": float(b), "attention": attention, "positional": positional,
            "pos_std": float(pos_std), "pos_p_norm": float(p_norm), "pos_decay": decay, "pos_channels": pos_channels,
            "pos_values": pos_values}


def Dense(w=1.0, b=0.0):
    return {"layer": "Dense", "w_std": float(w), "b_std": float(b)}


def Act(name):
    return {"layer": "Elementwise", "activation": {"name": name}, "quadrature_degree": None}


def LN():
    return {"layer": "LayerNorm", "eps": LN_EPS}


def Res(*branch, scale=1.0):
    return {"layer": "Residual", "scale": float(scale), "branch": list(branch)}


POOL = {"layer": "GlobalAvgPool"}
FLAT = {"layer": "Flatten"}


def transformer(depth, attn, act="relu", w=1.0, b=0.0, exponent=0.5, embed=1.0, readout=1.0):
    s = 1.0 / depth**exponent
    blocks = []
    for _ in range(depth):
        blocks += [Res(LN(), attn, scale=s), Res(LN(), Dense(w, b), Act(act), Dense(w, b), scale=s)]
    return [Dense(embed), *blocks, LN(), POOL, Dense(readout)]


def build_cases():
    """(name, config) for every kernel case."""
    cases = []

    def add(name, layers, shape):
        cases.append((name, {"arch": "program", "input_shape": list(shape), "weight_scaling": "ntk", "width": None,
                             "layers": layers}))

    seq = {3: (3, 3), 7: (7, 3), 12: (12, 3)}
    # One attention layer on a Dense embedding: heads, scalings, mechanisms, lengths, bias.
    add("softmax_h1_L7", [Dense(1.2), Attn(1), POOL, Dense()], seq[7])
    add("softmax_h4_L7_qk2_ov1.5_b0.3", [Dense(1.2), Attn(4, qk=(2.0, 1.0), ov=(1.5, 1.0), b=0.3), POOL, Dense()],
        seq[7])
    add("softmax_h8_L3_qk0.5_split", [Dense(1.0, 0.2), Attn(8, qk=(0.25, 2.0), ov=(0.7, 2.0)), Act("relu"), Dense(),
                                      POOL, Dense()], seq[3])
    add("softmax_h2_L12_qk3_flat", [Dense(1.5), Attn(2, qk=(3.0, 1.0), b=0.1), Act("erf"), Dense(), FLAT, Dense()],
        seq[12])
    add("softmax_raw_L7", [Attn(2, qk=(1.5, 1.0), b=0.2), Act("relu"), Dense(), POOL, Dense()], seq[7])
    add("identity_linear_L7", [Dense(), Attn(2, attention="IDENTITY", qk=(0.5, 1.0)), POOL, Dense()], seq[7])
    add("abs_linear_L7", [Dense(), Attn(2, attention="ABS", b=0.2), POOL, Dense()], seq[7])
    add("relu_linear_L3", [Dense(), Attn(1, attention="RELU", qk=(1.3, 1.0)), POOL, Dense()], seq[3])
    add("identity_sqrt_L7", [Dense(), Attn(2, attention="IDENTITY", linear=False, qk=(0.6, 1.0), ov=(1.2, 1.0),
                                           b=0.1), POOL, Dense()], seq[7])
    add("identity_sqrt_L12_relu", [Dense(1.0, 0.1), Attn(4, attention="IDENTITY", linear=False, qk=(0.3, 1.0)),
                                   Act("relu"), Dense(), POOL, Dense()], seq[12])
    # Positional embeddings.
    add("pos_sum_L7", [Dense(), Attn(2, positional="SUM", pos_std=0.8), POOL, Dense()], seq[7])
    add("pos_sum_values_L7", [Dense(), Attn(2, positional="SUM", pos_std=1.3, pos_values=True, b=0.2), POOL,
                              Dense()], seq[7])
    add("pos_concat_exp_L12", [Dense(), Attn(1, positional="CONCAT", decay={"kind": "exp", "length": 3.0},
                                             qk=(2.0, 1.0)), POOL, Dense()], seq[12])
    add("pos_concat_power_p1_values_L7", [Dense(), Attn(2, positional="CONCAT", p_norm=1.0, pos_values=True,
                                                        decay={"kind": "power", "length": 2.0}), POOL, Dense()],
        seq[7])
    add("pos_concat_raw_channels_L7", [Attn(1, positional="CONCAT", pos_channels=5, pos_std=1.5), Act("relu"),
                                       Dense(), POOL, Dense()], seq[7])
    add("pos_sum_exp_identity_sqrt_L7", [Dense(), Attn(2, attention="IDENTITY", linear=False, positional="SUM",
                                                       decay={"kind": "exp", "length": 2.0}, qk=(0.5, 1.0)), POOL,
                                         Dense()], seq[7])
    add("pos_concat_identity_sqrt_values_L3", [Dense(), Attn(1, attention="IDENTITY", linear=False,
                                                             positional="CONCAT", pos_values=True, qk=(0.7, 1.0)),
                                               POOL, Dense()], seq[3])
    # Images: attention over the flattened positions.
    add("image_softmax_pos_exp", [Dense(), Attn(2, positional="SUM", decay={"kind": "exp", "length": 2.0}, b=0.1),
                                  POOL, Dense()], (3, 4, 2))
    # Pre-LN transformers.
    add("transformer_d1_relu", transformer(1, Attn(2, qk=(1.5, 1.0))), seq[7])
    add("transformer_d2_relu_b", transformer(2, Attn(4, qk=(2.0, 1.0), b=0.1), w=1.4, b=0.1), seq[7])
    add("transformer_d3_erf_pos", transformer(3, Attn(2, positional="SUM", pos_std=0.7), act="erf", exponent=1.0),
        seq[12])
    add("transformer_d4_relu_e0", transformer(4, Attn(1, qk=(0.8, 1.0)), exponent=0.0), seq[3])
    return cases


EMPIRICAL_LAYERS = [Dense(1.2, 0.1),
                    Attn(2, qk=(1.5, 1.0), ov=(1.2, 1.0), b=0.3, positional="SUM", decay={"kind": "exp", "length": 2.0},
                         d=3),
                    Act("relu"), POOL, Dense(1.0, 0.1)]


# -- inputs and computation --------------------------------------------------------------------------------------
def case_seed(name):
    return zlib.crc32(name.encode("utf-8"))


def make_inputs(name, shape, n1=N1, n2=N2):
    rng = np.random.default_rng(case_seed(name))
    x1 = rng.standard_normal((n1, *shape))
    x2 = rng.standard_normal((n2, *shape))

    def rescale(x):
        m = rng.uniform(*MEAN_SQ, size=len(x))
        ms = np.mean(x.reshape(len(x), -1) ** 2, axis=1)
        return x * np.sqrt(m / ms).reshape((-1,) + (1,) * (x.ndim - 1))

    x1, x2 = rescale(x1), rescale(x2)
    x2[1] = x1[2]
    return x1, x2


def _versions():
    return {"nt_version": np.array(nt.__version__), "jax_version": np.array(jax.__version__)}


def compute_case(name, cfg):
    x1, x2 = make_inputs(name, tuple(cfg["input_shape"]))
    kernel_fn = program(cfg)[2]
    k12 = kernel_fn(x1, x2, ("nngp", "ntk"))
    k11 = kernel_fn(x1, None, ("nngp", "ntk"))
    out = {"config": np.array(json.dumps(cfg, sort_keys=True)), "x1": x1, "x2": x2,
           "nngp_12": np.asarray(k12.nngp, np.float64), "ntk_12": np.asarray(k12.ntk, np.float64),
           "nngp_11": np.asarray(k11.nngp, np.float64), "ntk_11": np.asarray(k11.ntk, np.float64)}
    for key, val in out.items():
        if val.dtype == np.float64 and not np.all(np.isfinite(val)):
            raise FloatingPointError(f"{name}: non-finite {key}")
    if out["nngp_12"].shape != (N1, N2):
        raise ValueError(f"{name}: kernels of shape {out['nngp_12'].shape}")
    out.update(_versions())
    return out


def compute_empirical():
    cfg = {"arch": "program", "input_shape": [5, 3], "weight_scaling": "ntk", "width": EMP_WIDTH,
           "n_out": EMP_N_OUT, "layers": EMPIRICAL_LAYERS}
    x1, x2 = make_inputs("empirical", (5, 3), EMP_N1, EMP_N2)
    init_fn, apply_fn, _ = program(cfg)
    _, params = init_fn(jax.random.PRNGKey(EMP_SEED), (-1, 5, 3))
    ntk_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0)
    out = {"config": np.array(json.dumps(cfg, sort_keys=True)), "x1": x1, "x2": x2,
           "outputs_1": np.asarray(apply_fn(params, x1), np.float64),
           "ntk_12": np.asarray(ntk_fn(x1, x2, params), np.float64)}
    for i, (spec, p) in enumerate(zip(cfg["layers"], params, strict=True)):
        if spec["layer"] == "Dense":
            out[f"W_{i}"] = np.asarray(p[0], np.float64)
            if p[1] is not None:
                out[f"b_{i}"] = np.asarray(p[1], np.float64).reshape(-1)
        elif spec["layer"] == "SelfAttention":
            query, key, value, w_out, b, pos = p
            if query is not None:
                raise ValueError("the empirical case uses linear scaling (tied query and key weights)")
            out[f"K_{i}"] = np.asarray(key, np.float64)
            out[f"V_{i}"] = np.asarray(value, np.float64)
            out[f"O_{i}"] = np.asarray(w_out, np.float64)
            if b is not None:
                out[f"b_{i}"] = np.asarray(b, np.float64).reshape(-1)
            if pos is not None:
                out[f"E_{i}"] = np.asarray(pos, np.float64)[0]
    out.update(_versions())
    return out


# -- I/O ---------------------------------------------------------------------------------------------------------
def compare(filename, expected, path):
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
    except Exception as e:
        return [f"MISMATCH {filename}: cannot read ({type(e).__name__}: {e})"]
    msgs = [f"MISMATCH {filename}: missing array {k!r}" for k in sorted(set(expected) - set(stored))]
    msgs += [f"MISMATCH {filename}: unexpected array {k!r}" for k in sorted(set(stored) - set(expected))]
    for key in sorted(set(expected) & set(stored)):
        e, s = np.asarray(expected[key]), stored[key]
        if e.dtype.kind == "U" or s.dtype.kind == "U":
            if str(s) != str(e):
                msgs.append(f"MISMATCH {filename}: {key} differs: stored {str(s)!r} != computed {str(e)!r}")
        elif s.shape != e.shape or s.dtype != e.dtype:
            msgs.append(f"MISMATCH {filename}: {key} dtype/shape {s.dtype}{s.shape} != {e.dtype}{e.shape}")
        elif not np.allclose(e, s, rtol=RTOL, atol=ATOL):
            msgs.append(f"MISMATCH {filename}: {key} max abs diff {np.max(np.abs(e - s)):.3e}")
    return msgs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="DIR")
    mode.add_argument("--check", metavar="DIR")
    mode.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    cases = [(name, (lambda name=name, cfg=cfg: compute_case(name, cfg))) for name, cfg in build_cases()]
    cases.append(("empirical", compute_empirical))
    if args.list:
        print("\n".join(name for name, _ in cases))
        return 0
    directory = args.out or args.check
    if args.out:
        os.makedirs(directory, exist_ok=True)
    start, problems = time.time(), []
    for name, compute in cases:
        arrays = compute()
        filename = f"{PREFIX}{name}.npz"
        if args.out:
            write_atomic(directory, filename, arrays)
        elif not os.path.exists(os.path.join(directory, filename)):
            problems.append(f"MISSING {filename}")
        else:
            problems += compare(filename, arrays, os.path.join(directory, filename))
    expected = {f"{PREFIX}{name}.npz" for name, _ in cases}
    extra = sorted(f for f in os.listdir(directory)
                   if f.startswith(PREFIX) and f.endswith(".npz") and f not in expected)
    if args.out:
        for f in extra:
            os.remove(os.path.join(directory, f))
        print(f"wrote {len(cases)} attention fixtures to {directory} in {time.time() - start:.1f}s")
        return 0
    problems += [f"EXTRA {f}" for f in extra]
    for line in problems:
        print(line)
    if problems:
        print(f"FAIL: {len(problems)} problem(s) in {len(cases)} cases")
        return 1
    print(f"OK: all {len(cases)} attention fixtures in {directory} match (rtol={RTOL:g}, atol={ATOL:g}, "
          f"{time.time() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
