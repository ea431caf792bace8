"""Generate reference NNGP/NTK kernel fixtures with neural-tangents (NT).

This script is NOT part of the ``deeplimits`` package and never imports it (only
numpy, jax, neural_tangents and the standard library).  It runs in a separate,
pinned environment (neural-tangents 0.6.5, jax 0.4.23, numpy 1.26; see
``tests/reference/constraints.txt``), built with::

    bash tests/reference/setup_nt_env.sh [VENV]    # default VENV: .venv-nt

Usage, from the repository root (``VENV/bin/python``: the pinned interpreter)::

    # write one tests/data/nt_<case>.npz per case (atomic: temp file + os.replace;
    # stale nt_*.npz files in DIR that are no longer cases are removed)
    TF_CPP_MIN_LOG_LEVEL=3 .venv-nt/bin/python \
        tests/reference/make_nt_fixtures.py --out tests/data

    # regenerate everything in memory and compare with the stored files
    # (same case names, same config JSON, arrays within rtol=1e-10, atol=1e-14);
    # one line per problem, then a summary; exit status 1 on any mismatch,
    # missing or extra file, 0 otherwise
    TF_CPP_MIN_LOG_LEVEL=3 .venv-nt/bin/python \
        tests/reference/make_nt_fixtures.py --check tests/data

    # print the case names
    .venv-nt/bin/python tests/reference/make_nt_fixtures.py --list

Generation takes about 3 minutes on 2 CPU cores (mostly the tanh cases).  The
output is deterministic: fixed seeds and fixed zip timestamps, so rerunning
``--out`` in the same environment rewrites byte-identical files.

Every case is a fully connected network (an MLP or a ResNet, see the config
schema below) evaluated in float64 on fixed inputs ``x1`` (5, 4) and ``x2``
(3, 4).  Each ``.npz`` holds:

``config``
    0-d unicode array: JSON (sorted keys) describing the architecture.
``x1``, ``x2``
    the float64 inputs (drawn from ``np.random.default_rng(seed)`` with a seed
    derived from the case name; every row is rescaled so that its norm is
    ``f * sqrt(4)`` with ``f`` in [0.5, 2]; some cases contain a row of ``x1``
    proportional to another row of ``x1`` and/or rows of ``x2`` equal or
    proportional to rows of ``x1``, i.e. pairs with correlation exactly 1).
``nngp_12``, ``ntk_12``
    NT's ``kernel_fn(x1, x2, ("nngp", "ntk"))`` of the full network, (5, 3).
``nngp_11``, ``ntk_11``
    NT's ``kernel_fn(x1, None, ("nngp", "ntk"))``, (5, 5).
``nngp_layers_11``, ``ntk_layers_11``
    only for MLPs with depth <= 3: shape (depth + 1, 5, 5), the kernels (on
    ``x1``) of the pre-activations after each Dense layer (index 0 = the first
    Dense reading x, ..., index depth = the readout), each computed from the
    NT network truncated right after that Dense layer.
``nt_version``, ``jax_version``
    strings.

Config schema (JSON)::

    MLP:    {"arch": "MLP", "depth", "activation", "w_std", "b_std",
             "parameterization", "width", "quadrature_degree"}
    ResNet: {"arch": "ResNet", "depth", "activation", "w_std", "b_std",
             "branch_scale", "depth_exponent", "readout", "stem_w_std",
             "readout_w_std", "parameterization", "width",
             "quadrature_degree"}

``activation`` is ``{"name": ...}`` (plus ``"slope"`` for leaky_relu);
``width`` is the hidden width (an int for the "standard" parameterization,
null for "ntk", where it does not enter the kernels); ``quadrature_degree`` is
the Gauss-Hermite degree given to NT's ``ElementwiseNumerical`` (tanh only,
null otherwise).

Conventions realised with NT (the project's definitions):

* Dense(w_std, b_std): ``stax.Dense(n, W_std=w_std, b_std=b_std)`` in the given
  parameterization; ``b_std == 0`` means *no bias at all* and is passed to NT
  as ``b_std=None`` (in the standard parameterization NT adds +1 to the NTK
  for any bias that exists, even one with std 0).  NT normalises the input
  kernel as ``x . x' / d``.
* MLP(depth=L): L x [Dense(width, w_std, b_std), activation], then the
  readout Dense(1, w_std, b_std).
* ResNet(depth=L): stem Dense(width, stem_w_std, no bias); L blocks
  ``h <- h + s * Dense(act(h))`` with ``s = branch_scale / L**depth_exponent``
  built as ``FanOut(2) >> parallel(Identity(), act >> BRANCH) >> FanInSum()``;
  ``ntk``: BRANCH = Dense(width, s * w_std, s * b_std) (folding s into the
  Dense is exact in this parameterization); ``standard``: BRANCH =
  Dense(width, w_std, b_std, "standard") >> DotGeneral(rhs=s) (a constant,
  non-trainable multiplication by s).  NT's ``ABRelu(s, s)`` gives exactly
  the same kernels but marks its output as non-Gaussian, which ``FanInSum``
  rejects, hence ``DotGeneral``.  Readout: ``"activation"``: act >>
  Dense(1, readout_w_std, no bias); ``"linear"``: Dense(1, readout_w_std, no
  bias).
* Activations: Relu, LeakyRelu(slope), Abs, Erf(1, 1, 0), Identity, Sign,
  Gelu(approximate=False), Sin(1, 1, 0), Cos(1, 1, 0) (= cos x) and, for
  tanh, ``ElementwiseNumerical(jnp.tanh, deg=quadrature_degree)``.

Known NT behaviour baked into the fixtures: Sign's NTK is zero (the
derivative is taken as 0 almost everywhere, no delta term); for pairs with
correlation exactly 1 NT evaluates ``sqrt(q1 q2 - q12**2)`` of a rounding-level
number, so such entries can be off from the exact value by ~1e-8 relative
(Sign's NNGP, ReLU-family NTK) before propagation.  The same entries are the
only ones sensitive to how XLA rounds (jit vs eager moved them by ~3e-8), so
``--check`` at rtol=1e-10 is meant for the pinned environment on one machine;
tests comparing against these fixtures need a tolerance of ~1e-7 there.
"""

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
import zipfile
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax

# float64 everywhere: must run before any jax array or NT layer is created.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

# NT warns on every ElementwiseNumerical / FanInSum construction.
warnings.filterwarnings("ignore", category=UserWarning, module=r"neural_tangents(\.|$)")

N1, N2, D_IN = 5, 3, 4  # x1: (N1, D_IN), x2: (N2, D_IN)
ROW_SCALE = (0.5, 2.0)  # row norm factor range (times sqrt(D_IN))
STANDARD_WIDTH = 64  # hidden width for "standard" cases
NTK_OUT_DIM = 512  # out_dim of hidden Dense in "ntk" (ignored)
# Gauss-Hermite degree for tanh (NT's ElementwiseNumerical; stored per case as
# "quadrature_degree").  NT suggests 25, but tanh' = sech^2 has poles at +-i pi/2, so
# the rule converges only like exp(-c sqrt(deg / q)), and first-layer variances here
# reach q ~ 9.  Entrywise relative error against deg=1000 (same NT code): deg=25 up
# to 4e-2 (NNGP) / 3e-1 (NTK), deg=60 3e-3 / 4e-2, deg=400 with w_std=1 <= 2e-10,
# deg=400 with w_std=1.5 1e-7, deg=700 with w_std=1.5 <= 3e-9.  Hence TANH_DEGREE
# in general and TANH_DEGREE_HIGH for the MLPs with w_std >= 1.5.
TANH_DEGREE = 400
TANH_DEGREE_HIGH = 700
MAX_LAYER_DEPTH = 3  # per-layer kernels stored for MLP depth <= 3
RTOL, ATOL = 1e-10, 1e-14  # --check tolerances
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: byte-identical files

SQRT2 = math.sqrt(2.0)
LEAKY_SLOPE = 0.1
LEAKY_CRIT = math.sqrt(2.0 / (1.0 + LEAKY_SLOPE**2))


# --------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------


def _act_config(name):
    if name == "leaky_relu":
        return {"name": "leaky_relu", "slope": LEAKY_SLOPE}
    return {"name": name}


def _nt_activation(act, quadrature_degree):
    name = act["name"]
    if name == "relu":
        return stax.Relu()
    if name == "leaky_relu":
        return stax.LeakyRelu(act["slope"])
    if name == "abs":
        return stax.Abs()
    if name == "erf":
        return stax.Erf(a=1.0, b=1.0, c=0.0)
    if name == "identity":
        return stax.Identity()
    if name == "sign":
        return stax.Sign()
    if name == "gelu":
        return stax.Gelu(approximate=False)
    if name == "sin":
        return stax.Sin(a=1.0, b=1.0, c=0.0)
    if name == "cos":
        # NT's Cos(a, b, c) = Sin(a, b, c + pi/2) = a cos(b x + c).
        return stax.Cos(a=1.0, b=1.0, c=0.0)
    if name == "tanh":
        return stax.ElementwiseNumerical(jnp.tanh, deg=int(quadrature_degree))
    raise ValueError(f"unknown activation {act!r}")


def _dense(out_dim, w_std, b_std, parameterization):
    # Our b_std == 0 means "no bias": NT's b_std=None.
    return stax.Dense(
        out_dim,
        W_std=float(w_std),
        b_std=None if b_std == 0 else float(b_std),
        parameterization=parameterization,
    )


def _hidden_dim(cfg):
    return cfg["width"] if cfg["parameterization"] == "standard" else NTK_OUT_DIM


def mlp_layers(cfg):
    """Flat list of NT layers and the indices of the Dense layers in it."""
    p, deg = cfg["parameterization"], cfg["quadrature_degree"]
    layers, dense_idx = [], []
    for _ in range(cfg["depth"]):
        dense_idx.append(len(layers))
        layers.append(_dense(_hidden_dim(cfg), cfg["w_std"], cfg["b_std"], p))
        layers.append(_nt_activation(cfg["activation"], deg))
    dense_idx.append(len(layers))
    layers.append(_dense(1, cfg["w_std"], cfg["b_std"], p))
    return layers, dense_idx


def resnet_layers(cfg):
    p, deg = cfg["parameterization"], cfg["quadrature_degree"]
    act = cfg["activation"]
    L = cfg["depth"]
    width = _hidden_dim(cfg)
    s = cfg["branch_scale"] / float(L) ** cfg["depth_exponent"]
    layers = [_dense(width, cfg["stem_w_std"], 0, p)]
    for _ in range(L):
        if p == "ntk":
            # s * Dense(w, b) == Dense(s w, s b) exactly in the NTK parameterization.
            branch = [_dense(width, s * cfg["w_std"], s * cfg["b_std"], "ntk")]
        elif p == "standard":
            # s is a fixed multiplier, not a parameter: a constant DotGeneral.
            branch = [_dense(width, cfg["w_std"], cfg["b_std"], p), stax.DotGeneral(rhs=s)]
        else:
            raise ValueError(p)
        # h <- h + s * Dense(act(h)); the block's layers are spliced into the top-level
        # serial (fewer nesting levels = less NT shape-propagation overhead).
        layers += [
            stax.FanOut(2),
            stax.parallel(stax.Identity(), stax.serial(_nt_activation(act, deg), *branch)),
            stax.FanInSum(),
        ]
    if cfg["readout"] == "activation":
        layers.append(_nt_activation(act, deg))
    elif cfg["readout"] != "linear":
        raise ValueError(cfg["readout"])
    layers.append(_dense(1, cfg["readout_w_std"], 0, p))
    return layers


def network_layers(cfg):
    if cfg["arch"] == "MLP":
        return mlp_layers(cfg)[0]
    if cfg["arch"] == "ResNet":
        return resnet_layers(cfg)
    raise ValueError(cfg["arch"])


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


def _fmt(v):
    s = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


_ACT_LABEL = {"leaky_relu": f"lrelu{_fmt(LEAKY_SLOPE)}"}


def _param_label(parameterization, width):
    return "ntk" if parameterization == "ntk" else f"std{width}"


def mlp_case(act, depth, w_std, b_std, parameterization="ntk"):
    width = STANDARD_WIDTH if parameterization == "standard" else None
    cfg = {
        "arch": "MLP",
        "depth": depth,
        "activation": _act_config(act),
        "w_std": float(w_std),
        "b_std": float(b_std),
        "parameterization": parameterization,
        "width": width,
        "quadrature_degree": None,
    }
    if act == "tanh":
        high = w_std >= 1.5
        cfg["quadrature_degree"] = TANH_DEGREE_HIGH if high else TANH_DEGREE
    name = (
        f"mlp_{_ACT_LABEL.get(act, act)}_L{depth}_w{_fmt(w_std)}_b{_fmt(b_std)}_{_param_label(parameterization, width)}"
    )
    return name, cfg


def resnet_case(
    act,
    depth,
    depth_exponent,
    readout,
    w_std,
    b_std,
    parameterization="ntk",
    branch_scale=1.0,
    stem_w_std=1.0,
    readout_w_std=1.0,
):
    width = STANDARD_WIDTH if parameterization == "standard" else None
    cfg = {
        "arch": "ResNet",
        "depth": depth,
        "activation": _act_config(act),
        "w_std": float(w_std),
        "b_std": float(b_std),
        "branch_scale": float(branch_scale),
        "depth_exponent": float(depth_exponent),
        "readout": readout,
        "stem_w_std": float(stem_w_std),
        "readout_w_std": float(readout_w_std),
        "parameterization": parameterization,
        "width": width,
        "quadrature_degree": TANH_DEGREE if act == "tanh" else None,
    }
    name = (
        f"resnet_{_ACT_LABEL.get(act, act)}_L{depth}"
        f"_e{_fmt(depth_exponent)}_w{_fmt(w_std)}_b{_fmt(b_std)}"
        f"_{_param_label(parameterization, width)}"
        f"_{'act' if readout == 'activation' else 'lin'}"
    )
    if branch_scale != 1.0:
        name += f"_bs{_fmt(branch_scale)}"
    if stem_w_std != 1.0:
        name += f"_stem{_fmt(stem_w_std)}"
    if readout_w_std != 1.0:
        name += f"_ro{_fmt(readout_w_std)}"
    return name, cfg


def build_cases():
    """Ordered list of (name, config)."""
    cases = []
    # MLPs with closed-form activations, NTK parameterization.
    mlp_ntk = [
        ("relu", 1, SQRT2, 0.2),
        ("relu", 3, SQRT2, 0.0),
        ("relu", 10, SQRT2, 0.0),
        ("relu", 3, 1.0, 0.5),
        ("leaky_relu", 1, LEAKY_CRIT, 0.0),
        ("leaky_relu", 3, LEAKY_CRIT, 0.1),
        ("leaky_relu", 10, LEAKY_CRIT, 0.0),
        ("abs", 1, SQRT2, 0.3),
        ("abs", 3, SQRT2, 0.0),
        ("abs", 10, SQRT2, 0.0),
        ("erf", 1, 1.0, 0.0),
        ("erf", 3, 1.5, 0.3),
        ("erf", 10, 1.0, 0.3),
        ("erf", 3, 1.0, 0.0),
        ("identity", 1, 1.0, 0.0),
        ("identity", 3, 1.0, 0.2),
        ("identity", 10, 1.1, 0.1),
        ("sign", 1, 1.0, 0.0),
        ("sign", 3, 1.0, 0.3),
        ("sign", 10, 1.5, 0.0),
        ("gelu", 1, 1.0, 0.0),
        ("gelu", 3, 1.5, 0.3),
        ("gelu", 10, 1.0, 0.3),
        ("gelu", 3, 1.0, 0.0),
        ("sin", 1, 1.5, 0.3),
        ("sin", 3, 1.0, 0.0),
        ("sin", 10, 1.5, 0.0),
        ("cos", 1, 1.0, 0.0),
        ("cos", 3, 1.5, 0.3),
        ("cos", 10, 1.0, 0.3),
    ]
    cases += [mlp_case(a, L, w, b) for a, L, w, b in mlp_ntk]
    # MLP tanh (ElementwiseNumerical), NTK parameterization.
    for depth in (1, 3, 10):
        for w in (1.0, 1.5):
            for b in (0.0, 0.2):
                cases.append(mlp_case("tanh", depth, w, b))
    # MLPs, standard parameterization, width 64.
    for act, w in (("relu", SQRT2), ("erf", 1.0), ("tanh", 1.0), ("identity", 1.0)):
        for b in (0.0, 0.2):
            cases.append(mlp_case(act, 3, w, b, "standard"))
    # ResNets, NTK parameterization: (activation, L, depth_exponent, readout, b_std).
    res_w = {"relu": SQRT2, "tanh": 1.0, "erf": 1.0}
    resnet_ntk = [
        ("relu", 4, 0.5, "activation", 0.0), ("relu", 4, 1.0, "linear", 0.1),
        ("relu", 16, 0.5, "linear", 0.0), ("relu", 16, 1.0, "activation", 0.1),
        ("relu", 64, 0.5, "activation", 0.1), ("relu", 64, 1.0, "linear", 0.0),
        ("tanh", 4, 0.5, "linear", 0.1), ("tanh", 4, 1.0, "activation", 0.0),
        ("tanh", 16, 0.5, "activation", 0.0), ("tanh", 16, 1.0, "linear", 0.1),
        ("tanh", 64, 0.5, "linear", 0.0),  # (tanh L64 is the slowest case: one only)
        ("erf", 4, 0.5, "activation", 0.1), ("erf", 4, 1.0, "linear", 0.0),
        ("erf", 16, 0.5, "linear", 0.1), ("erf", 16, 1.0, "activation", 0.0),
        ("erf", 64, 0.5, "activation", 0.0), ("erf", 64, 1.0, "linear", 0.1),
    ]  # fmt: skip
    cases += [resnet_case(a, L, e, ro, res_w[a], b) for a, L, e, ro, b in resnet_ntk]
    cases += [
        resnet_case("relu", 4, 0.0, "activation", SQRT2, 0.0),
        resnet_case("tanh", 16, 0.5, "activation", 1.0, 0.1, branch_scale=0.5),
        resnet_case("erf", 16, 1.0, "linear", 1.0, 0.0, stem_w_std=1.3),
        resnet_case("relu", 16, 0.5, "linear", SQRT2, 0.1, readout_w_std=0.7),
        resnet_case("erf", 4, 0.5, "activation", 1.5, 0.1, stem_w_std=1.3, readout_w_std=0.7),
    ]
    # ResNets, standard parameterization (width 64).
    cases += [
        resnet_case("relu", 4, 0.5, "activation", SQRT2, 0.0, "standard"),
        resnet_case("tanh", 16, 1.0, "linear", 1.0, 0.1, "standard"),
        resnet_case("erf", 4, 0.0, "activation", 1.0, 0.1, "standard", branch_scale=0.5),
    ]
    names = [n for n, _ in cases]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise AssertionError(f"duplicate case names: {dup}")
    return cases


# --------------------------------------------------------------------------
# Inputs and kernels
# --------------------------------------------------------------------------

_VARIANTS = ("generic", "parallel", "shared", "both")


def case_seed(name):
    # Seed and input variant depend on the case name only, so adding, removing or
    # reordering cases never changes the inputs of the others.
    return zlib.crc32(name.encode("utf-8"))


def make_inputs(seed, variant):
    """x1 (N1, D_IN), x2 (N2, D_IN); row norms sqrt(D_IN) * U[0.5, 2]."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((N1, D_IN))
    x2 = rng.standard_normal((N2, D_IN))
    f1 = rng.uniform(*ROW_SCALE, size=N1)
    f2 = rng.uniform(*ROW_SCALE, size=N2)
    x1 *= (math.sqrt(D_IN) * f1 / np.linalg.norm(x1, axis=1))[:, None]
    x2 *= (math.sqrt(D_IN) * f2 / np.linalg.norm(x2, axis=1))[:, None]
    if variant in ("parallel", "both"):
        # row 4 of x1 is a positive multiple of row 1 (correlation exactly 1).
        x1[4] = x1[1] * (f1[4] / f1[1])
    if variant in ("shared", "both"):
        x2[1] = x1[2]  # identical row in x1 and x2
    if variant == "both":
        x2[2] = x1[0] * (f2[2] / f1[0])  # cross pair with correlation 1
    return x1, x2


def _kernels(layers, x1, x2):
    kernel_fn = stax.serial(*layers)[2]
    k = kernel_fn(x1, x2, ("nngp", "ntk"))
    return (np.asarray(k.nngp, dtype=np.float64), np.asarray(k.ntk, dtype=np.float64))


def case_variant(name):
    return _VARIANTS[case_seed(name) % len(_VARIANTS)]


def compute_case(name, cfg):
    """All arrays of one fixture (dict name -> np.ndarray)."""
    x1, x2 = make_inputs(case_seed(name), case_variant(name))
    layers = network_layers(cfg)
    nngp_12, ntk_12 = _kernels(layers, x1, x2)
    nngp_11, ntk_11 = _kernels(layers, x1, None)
    out = {
        "config": np.array(json.dumps(cfg, sort_keys=True)),
        "x1": x1,
        "x2": x2,
        "nngp_12": nngp_12,
        "ntk_12": ntk_12,
        "nngp_11": nngp_11,
        "ntk_11": ntk_11,
    }
    if cfg["arch"] == "MLP" and cfg["depth"] <= MAX_LAYER_DEPTH:
        mlp, dense_idx = mlp_layers(cfg)
        per_layer = [_kernels(mlp[: i + 1], x1, None) for i in dense_idx]
        out["nngp_layers_11"] = np.stack([k[0] for k in per_layer])
        out["ntk_layers_11"] = np.stack([k[1] for k in per_layer])
    for key, val in out.items():
        if val.dtype == np.float64 and not np.all(np.isfinite(val)):
            raise FloatingPointError(f"{name}: non-finite values in {key}")
    out["nt_version"] = np.array(nt.__version__)
    out["jax_version"] = np.array(jax.__version__)
    return out


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def fixture_filename(name):
    return f"nt_{name}.npz"


def _write_npz(path, arrays):
    """Deterministic .npz (fixed zip timestamps, stored), readable by np.load."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def write_atomic(directory, filename, arrays):
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + filename + ".", dir=directory)
    try:
        os.close(fd)
        _write_npz(tmp, arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, filename))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _existing_fixtures(directory):
    return {f for f in os.listdir(directory) if f.startswith("nt_") and f.endswith(".npz")}


def _compare(filename, expected, path):
    """List of mismatch messages between computed arrays and a stored file."""
    msgs = []
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
    except Exception as e:
        return [f"MISMATCH {filename}: cannot read ({type(e).__name__}: {e})"]
    for key in sorted(set(expected) - set(stored)):
        msgs.append(f"MISMATCH {filename}: missing array {key!r}")
    for key in sorted(set(stored) - set(expected)):
        msgs.append(f"MISMATCH {filename}: unexpected array {key!r}")
    for key in sorted(set(expected) & set(stored)):
        e, s = expected[key], stored[key]
        if e.dtype.kind == "U" or s.dtype.kind == "U":
            if s.dtype.kind != "U" or s.shape != () or str(s) != str(e):
                what = "config JSON" if key == "config" else key
                msgs.append(f"MISMATCH {filename}: {what} differs: stored {str(s)!r} != computed {str(e)!r}")
            continue
        if s.dtype != e.dtype or s.shape != e.shape:
            msgs.append(f"MISMATCH {filename}: {key} dtype/shape {s.dtype}{s.shape} != {e.dtype}{e.shape}")
            continue
        if not np.allclose(e, s, rtol=RTOL, atol=ATOL, equal_nan=False):
            diff = np.abs(e - s)
            rel = diff / np.maximum(np.abs(s), np.finfo(np.float64).tiny)
            msgs.append(
                f"MISMATCH {filename}: {key} max abs diff {np.nanmax(diff):.3e}, max rel diff {np.nanmax(rel):.3e}"
            )
    return msgs


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="DIR", help="write nt_<case>.npz files into DIR")
    mode.add_argument("--check", metavar="DIR", help="regenerate in memory and compare with DIR")
    mode.add_argument("--list", action="store_true", help="print case names")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    args = parser.parse_args(argv)

    cases = build_cases()
    if args.list:
        for name, _ in cases:
            print(name)
        return 0

    directory = args.out or args.check
    if args.out:
        os.makedirs(directory, exist_ok=True)
    elif not os.path.isdir(directory):
        print(f"FAIL: {directory} is not a directory")
        return 1

    expected_files = {fixture_filename(n) for n, _ in cases}
    t_start = time.time()
    problems = []
    for index, (name, cfg) in enumerate(cases):
        t0 = time.time()
        arrays = compute_case(name, cfg)
        filename = fixture_filename(name)
        if args.out:
            write_atomic(directory, filename, arrays)
        else:
            path = os.path.join(directory, filename)
            if not os.path.exists(path):
                problems.append(f"MISSING {filename}")
            else:
                problems += _compare(filename, arrays, path)
        if not args.quiet:
            print(f"[{index + 1:3d}/{len(cases)}] {name} ({time.time() - t0:.2f}s)", file=sys.stderr, flush=True)

    present = _existing_fixtures(directory)
    extra = sorted(present - expected_files)
    if args.out:
        for filename in extra:
            os.remove(os.path.join(directory, filename))
            print(f"removed stale {filename}")
        print(f"wrote {len(cases)} fixtures to {directory} in {time.time() - t_start:.1f}s")
        return 0

    problems += [f"EXTRA {f}" for f in extra]
    for line in problems:
        print(line)
    if problems:
        print(f"FAIL: {len(problems)} problem(s) in {len(cases)} cases ({time.time() - t_start:.1f}s)")
        return 1
    print(
        f"OK: all {len(cases)} fixtures in {directory} match "
        f"(rtol={RTOL:g}, atol={ATOL:g}, {time.time() - t_start:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
