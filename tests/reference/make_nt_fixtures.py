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

Generation (and ``--check``) takes 4-5 minutes on 2 shared CPU cores (measured
under a load average of ~5: 228 s / 298 s; peak memory 3 GB), the tanh cases (NT's
quadrature at degree 1000) about half of it.  The output is deterministic:
fixed seeds and fixed zip timestamps, so rerunning ``--out`` in the same
environment rewrites byte-identical files.

There are three kinds of fixtures, all float64: fully connected MLP / ResNet
cases (``nt_mlp_*``, ``nt_resnet_*``), layer programs (``nt_prog_*``: CNNs,
pooling, LayerNorm, residual blocks; see "Layer programs" below) and one
finite network's empirical NTK (``nt_empirical_cnn``, see the end).

MLP / ResNet cases are evaluated on fixed inputs ``x1`` (5, 4) and ``x2``
(3, 4), the tanh cases on ``x1`` (3, 4) and ``x2`` (3, 4) (``TANH_N1``,
``TANH_N2``: NT's quadrature costs deg**2 per pair of inputs and layer); below,
5 and 3 stand for the sizes of x1 and x2.  Each ``.npz`` holds:

``config``
    0-d unicode array: JSON (sorted keys) describing the architecture.
``x1``, ``x2``
    the float64 inputs (drawn from ``np.random.default_rng(seed)`` with a seed
    derived from the case name; every row is rescaled so that its norm is
    ``f * sqrt(4)`` with ``f`` in [0.5, 2]; some cases contain a row of ``x1``
    proportional to another row of ``x1`` and/or rows of ``x2`` equal or
    proportional to rows of ``x1``, i.e. pairs with correlation exactly 1:
    by the name-derived variant, nothing more, ``x1[-1] = c * x1[1]``,
    ``x2[1] = x1[2]``, or both plus ``x2[2] = c' * x1[0]``, c, c' > 0).
``nngp_12``, ``ntk_12``
    NT's ``kernel_fn(x1, x2, ("nngp", "ntk"))`` of the full network, (5, 3).
``nngp_11``, ``ntk_11``
    NT's ``kernel_fn(x1, None, ("nngp", "ntk"))``, (5, 5).
``nngp_layers_11``, ``ntk_layers_11``
    only for MLPs with depth <= 3: shape (depth + 1, 5, 5), the kernels (on
    ``x1``) of the pre-activations after each Dense layer (index 0 = the first
    Dense reading x, ..., index depth = the readout), each computed from the
    NT network truncated right after that Dense layer (tanh: read off the one
    staged evaluation of the network, see ``_staged_kernels``).
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
the Gauss-Hermite degree NT's ``ElementwiseNumerical`` used (tanh only, null
otherwise): TANH_DEGREE = 1000, where NT's kernels are converged to ~4e-11 (see
TANH_DEGREE).  It records how the reference was computed; a test reproducing
the kernels is not meant to use it.

NT evaluates the closed-form cases eagerly (``kernel_fn`` as is) and the tanh
cases under ``jax.jit``: programs as one jitted ``kernel_fn``, MLPs / ResNets
stage by stage (``_staged_kernels``: one jitted ``kernel_fn`` per distinct
stage, reused for identical layers / residual blocks).  Jitting is 2-4x faster
at degree 1000 and agrees with the eager evaluation to ~1e-16 of the kernels'
scale.

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

Layer programs (``nt_prog_<description>.npz``)
----------------------------------------------

Config schema (JSON, sorted keys; every key listed is always present)::

    {"arch": "program",
     "input_shape": [H, W, C] (images) | [L, C] (sequences) | [D] (vectors),
     "weight_scaling": "ntk" | "standard",   # NT's parameterization, every Dense/Conv
     "width": int | null,                    # hidden channels: 16 for "standard",
                                             # null for "ntk" (NT gets 8, ignored)
     "layers": [layer, ...]}

    {"layer": "Dense", "w_std", "b_std"}
    {"layer": "Conv", "filter_shape": [..], "strides": [..] | null,
     "padding": "SAME" | "VALID" | "CIRCULAR", "w_std", "b_std"}
    {"layer": "Elementwise", "activation": {"name"[, "slope"]},
     "quadrature_degree": int | null}
    {"layer": "AvgPool", "window_shape": [..], "strides": [..] | null,
     "padding": "VALID" | "SAME" | "CIRCULAR"}
    {"layer": "GlobalAvgPool"}   {"layer": "Flatten"}   {"layer": "Identity"}
    {"layer": "LayerNorm", "eps"}
    {"layer": "Residual", "scale", "branch": [layer, ...]}

NT realisation: Dense -> ``stax.Dense`` (as above, ``b_std == 0`` -> no
bias; on images / sequences it acts on the channel axis); Conv ->
``stax.Conv(hidden, filter_shape, strides, padding, W_std, b_std)``
(channels last, NHWC / NWC and HWIO; strides null = 1; 1-D or 2-D by
``len(filter_shape)``; SAME pads like ``lax``, the odd extra zero after, which
NT's kernels follow: checked against a direct computation for linear CNNs
with even filters and strides); Elementwise -> the activations below (tanh by
``ElementwiseNumerical(jnp.tanh, deg=quadrature_degree)``); AvgPool ->
``stax.AvgPool(window_shape, strides, padding)`` (``normalize_edges=False``:
SAME divides by the full window size, zero padding counted); GlobalAvgPool,
Flatten, Identity -> the NT layers; LayerNorm -> ``stax.LayerNorm(axis=-1,
eps)`` (over channels; all cases use eps = 1e-12); Residual -> ``h + scale *
branch(h)`` = ``serial(FanOut(2), parallel(Identity(), serial(*branch,
DotGeneral(rhs=scale))), FanInSum())`` (no DotGeneral when scale == 1).  The
last top-level layer is the Dense readout with 1 output unit; every other
Dense/Conv (residual branches included) has the hidden width.  Every
image / sequence program ends with Flatten or GlobalAvgPool before the
readout, so the kernels have no spatial axes (checked: NT silently returns
kernels with spatial axes, e.g. (4, 3, W, W, H, H), when a Dense readout reads
an image).

Inputs: ``x1`` (4, *input_shape), ``x2`` (3, *input_shape) (tanh programs:
(3, ...) and (2, ...), ``PROG_TANH_N1``, ``PROG_TANH_N2``), with H, W, C = 5,
4, 3 (non-square on purpose), L, C = 7, 2 and D = 6; standard normal from
``np.random.default_rng(crc32(case name))`` (e.g. "prog_cnn2d_relu_same_flat"),
each example rescaled to a mean square per entry uniform in [0.5, 2]; by the
name-derived variant (as for the MLPs): nothing more, ``x1[-1] = c * x1[1]``
(c > 0), ``x2[1] = x1[2]``, or both plus ``x2[2] = c' * x1[0]``.  NT
normalises the input kernel by the channel count: ``x . x' / C`` per pair of
positions.  In the "standard" scaling the NTK grows with the width (NT adds
fan_in x the input NNGP per Dense/Conv, fan_in = channels x filter size), so
the stored width (16) matters.  Each file holds ``config``, ``x1``, ``x2``, ``nngp_12``,
``ntk_12`` (4, 3), ``nngp_11``, ``ntk_11`` (4, 4), ``nt_version``,
``jax_version`` (no per-layer kernels).

What NT accepts (the cases are built accordingly): every activation and
LayerNorm must read a Gaussian input, i.e. the output of a Dense/Conv, possibly
through AvgPool, GlobalAvgPool, Identity, LayerNorm, DotGeneral or a FanInSum
of Gaussian terms; otherwise NT raises ``ValueError: The input to the
activation function must be Gaussian ...`` (e.g. relu -> relu, relu ->
AvgPool -> relu, Flatten -> relu, an activation on the raw input, or
``Residual(relu, Conv)`` applied to an activation's output) or
``NotImplementedError: LayerNorm only implemented for Gaussian inputs``.
Flatten marks its output non-Gaussian, GlobalAvgPool does not.  FanInSum
rejects non-Gaussian summands (the ABRelu note above) and inputs of different
channel counts (a residual block on the raw input).  Flatten readouts let NT
keep only spatially diagonal kernels (cheap, hence the tanh programs use
them); GlobalAvgPool needs the full (N1, N2, H, H, W, W) covariances, which
for ElementwiseNumerical would cost deg**2 times that.  Quadrature accuracy
of the tanh programs: see TANH_DEGREE.

Empirical NTK (``nt_empirical_cnn.npz``)
----------------------------------------

A finite CNN given by a program config (plus ``"n_out": 2``; ``"width": 6``
hidden channels, "ntk" weight scaling): Conv(3x3, SAME, 1.5, 0.1) -> relu ->
Conv(2x2, strides (2, 1), VALID, sqrt 2) -> Residual(relu, Conv(3x3, SAME,
1.0, 0.2), scale 0.5) -> relu -> GlobalAvgPool -> Dense(2 outputs, 1.0, 0.1).
NT's ``init_fn`` with ``jax.random.PRNGKey(20240)`` (float64 parameters),
inputs ``x1`` (3, 5, 4, 3), ``x2`` (2, 5, 4, 3) (as above, with ``x2[1] =
x1[2]``).  Arrays: ``config``, ``x1``, ``x2``, ``ntk_12`` (3, 2, 2, 2) and
``ntk_11`` (3, 3, 2, 2) from ``nt.empirical_ntk_fn(apply_fn, trace_axes=(),
vmap_axes=0)`` (indices: example 1, example 2, output 1, output 2),
``outputs_1`` = ``apply_fn(params, x1)`` (3, 2), ``n_weight_layers`` (int)
and the parameters of the Dense/Conv layers in program order (depth-first,
a residual branch's layers where the branch sits): ``W_i`` (Conv:
(*filter_shape, in, out); Dense: (in, out)) and ``b_i`` (out,) (absent for a
layer without bias; NT's (1, .., 1, out) reshaped).  NT's "ntk" forward pass:
``w_std / sqrt(fan_in) * (x * W) + b_std * b`` with fan_in = in channels x
filter size.  ``--check`` compares it like the others.

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
# Fewer inputs for the tanh cases: NT's ElementwiseNumerical costs deg**2 per pair and
# layer (deg = TANH_DEGREE), and x1-x1 pairs (N1**2) dominate.
TANH_N1, TANH_N2 = 3, 3
ROW_SCALE = (0.5, 2.0)  # row norm factor range (times sqrt(D_IN))
STANDARD_WIDTH = 64  # hidden width for "standard" cases
NTK_OUT_DIM = 512  # out_dim of hidden Dense in "ntk" (ignored)
# Gauss-Hermite degree for tanh (NT's ElementwiseNumerical; stored per case as
# "quadrature_degree"), the same for every tanh case (MLP, ResNet, program).  NT suggests
# 25, but tanh' = sech^2 has poles at +-i pi/2, so the rule converges only like
# exp(-c sqrt(deg / q)), and first-layer variances here reach q ~ 9.  Measured
# (earlier inputs; entrywise relative error against deg=1000, same NT code): deg=25 up
# to 4e-2 (NNGP) / 3e-1 (NTK), deg=60 3e-3 / 4e-2, deg=400 with w_std=1 <= 2e-10,
# deg=400 with w_std=1.5 1e-7, deg=700 with w_std=1.5 <= 3e-9.  At TANH_DEGREE, on the
# current cases and inputs, deg=1000 against deg=2000, entrywise relative error
# |d| / (|entry| + 1e-3 max|entry|) over all stored arrays: MLPs with w_std=1.5 up to
# 3.8e-11 (mlp_tanh_L1_w1.5_b0.2_ntk; the others <= 5e-12), MLPs with w_std=1 <= 2e-13,
# ResNets <= 5e-14, programs <= 1e-12 (prog_cnn1d_tanh_valid_flat 9.3e-13,
# prog_cnn2d_tanh_same_s22_flat 8e-14, prog_mlp_ln_tanh_bias 5e-14).
TANH_DEGREE = 1000
MAX_LAYER_DEPTH = 3  # per-layer kernels stored for MLP depth <= 3
RTOL, ATOL = 1e-10, 1e-14  # --check tolerances
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: byte-identical files

# Layer programs ("program" cases): x1 (PROG_N1, *input_shape), x2 (PROG_N2, *input_shape).
PROG_N1, PROG_N2 = 4, 3
PROG_INPUT_SHAPES = {"image": (5, 4, 3), "seq": (7, 2), "vec": (6,)}  # (H, W, C), (L, C), (D,)
PROG_MEAN_SQ = (0.5, 2.0)  # per-example mean square per entry, uniform in this range
PROG_STANDARD_WIDTH = 16  # hidden channels of "standard" programs
PROG_NTK_OUT_DIM = 8  # hidden channels of "ntk" programs (ignored by kernel_fn)
# tanh programs: TANH_DEGREE as well, on x1 (PROG_TANH_N1, ...), x2 (PROG_TANH_N2, ...)
# (each pair of examples costs deg**2 per spatial position and layer, in time and memory).
# Measured earlier (older inputs, entrywise relative error against deg=1000/2000):
# prog_cnn2d_tanh_same_flat (w_std 1, per-position variances q <~ 2) deg=200 <= 2e-11;
# prog_cnn1d_tanh_valid_flat (w_std 1.5, q up to 6.2) deg=200 1e-5, deg=400 2e-8,
# deg=600 <= 1e-10; prog_mlp_ln_tanh_bias (after LayerNorm q = 1) deg=200 <= 3e-14.
PROG_TANH_N1, PROG_TANH_N2 = 3, 2
LN_EPS = 1e-12
# Empirical NTK fixture: a finite "ntk"-scaled CNN.
EMP_N1, EMP_N2, EMP_WIDTH, EMP_N_OUT, EMP_SEED = 3, 2, 6, 2, 20240

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
    if cfg["arch"] == "program":
        return program_layers(cfg)
    raise ValueError(cfg["arch"])


def _tuple_or_none(v):
    return None if v is None else tuple(int(i) for i in v)


def _program_layer(layer, cfg, out_dim):
    """One NT layer of a program; ``out_dim``: output channels of a Dense/Conv."""
    kind, p = layer["layer"], cfg["weight_scaling"]
    if kind == "Dense":
        return _dense(out_dim, layer["w_std"], layer["b_std"], p)
    if kind == "Conv":
        return stax.Conv(
            out_dim,
            _tuple_or_none(layer["filter_shape"]),
            strides=_tuple_or_none(layer["strides"]),
            padding=layer["padding"],
            W_std=float(layer["w_std"]),
            b_std=None if layer["b_std"] == 0 else float(layer["b_std"]),
            parameterization=p,
        )
    if kind == "Elementwise":
        return _nt_activation(layer["activation"], layer["quadrature_degree"])
    if kind == "AvgPool":
        return stax.AvgPool(
            _tuple_or_none(layer["window_shape"]),
            strides=_tuple_or_none(layer["strides"]),
            padding=layer["padding"],
        )
    if kind == "GlobalAvgPool":
        return stax.GlobalAvgPool()
    if kind == "Flatten":
        return stax.Flatten()
    if kind == "LayerNorm":
        return stax.LayerNorm(axis=-1, eps=float(layer["eps"]))
    if kind == "Identity":
        return stax.Identity()
    if kind == "Residual":
        hidden = _program_hidden_dim(cfg)
        branch = [_program_layer(sub, cfg, hidden) for sub in layer["branch"]]
        if layer["scale"] != 1:
            # A constant, non-trainable factor (see the ResNet notes above).
            branch.append(stax.DotGeneral(rhs=float(layer["scale"])))
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.serial(*branch)), stax.FanInSum())
    raise ValueError(f"unknown layer {layer!r}")


def _program_hidden_dim(cfg):
    return PROG_NTK_OUT_DIM if cfg["width"] is None else cfg["width"]


def program_layers(cfg):
    """NT layers of a layer program; the last top-level layer is the Dense readout."""
    layers = cfg["layers"]
    if not layers or layers[-1]["layer"] != "Dense":
        raise ValueError("a program must end with its Dense readout")
    hidden = _program_hidden_dim(cfg)
    out = [_program_layer(layer, cfg, hidden) for layer in layers[:-1]]
    out.append(_program_layer(layers[-1], cfg, cfg.get("n_out", 1)))
    return out


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
        cfg["quadrature_degree"] = TANH_DEGREE
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


# Layer-program builders (config dicts; every key always present).
def _Dense(w, b=0.0):
    return {"layer": "Dense", "w_std": float(w), "b_std": float(b)}


def _Conv(filter_shape, padding="SAME", w=1.0, b=0.0, strides=None):
    return {
        "layer": "Conv",
        "filter_shape": list(filter_shape),
        "strides": None if strides is None else list(strides),
        "padding": padding,
        "w_std": float(w),
        "b_std": float(b),
    }


def _Act(name, quadrature_degree=TANH_DEGREE):
    return {
        "layer": "Elementwise",
        "activation": _act_config(name),
        "quadrature_degree": int(quadrature_degree) if name == "tanh" else None,
    }


def _AvgPool(window_shape, strides=None, padding="VALID"):
    return {
        "layer": "AvgPool",
        "window_shape": list(window_shape),
        "strides": None if strides is None else list(strides),
        "padding": padding,
    }


def _Res(branch, scale=1.0):
    return {"layer": "Residual", "scale": float(scale), "branch": list(branch)}


_GAP = {"layer": "GlobalAvgPool"}
_FLAT = {"layer": "Flatten"}
_LN = {"layer": "LayerNorm", "eps": LN_EPS}
_ID = {"layer": "Identity"}


def program_config(input_kind, layers, weight_scaling="ntk", width=None):
    if width is None and weight_scaling == "standard":
        width = PROG_STANDARD_WIDTH
    return {
        "arch": "program",
        "input_shape": list(PROG_INPUT_SHAPES[input_kind]),
        "weight_scaling": weight_scaling,
        "width": width,
        "layers": list(layers),
    }


def program_cases():
    """(name, config) of the layer-program cases (names: prog_<description>)."""
    S2 = SQRT2
    relu, erf = _Act("relu"), _Act("erf")
    c33 = (3, 3)
    P = []

    def add(name, kind, layers, weight_scaling="ntk"):
        P.append(("prog_" + name, program_config(kind, layers, weight_scaling)))

    # fmt: off
    # 1. 2-D convolutions: paddings, strides, filter (2, 3), Flatten / GAP readouts.
    add("cnn2d_relu_same_flat", "image",
        [_Conv(c33, "SAME", S2), relu, _Conv(c33, "SAME", S2, 0.1), relu, _FLAT, _Dense(1.0)])
    add("cnn2d_erf_valid_f23_gap", "image",
        [_Conv(c33, "SAME", 1.5, 0.2), erf, _Conv((2, 3), "VALID", 1.0), erf, _GAP, _Dense(1.0, 0.1)])
    add("cnn2d_relu_circular_gap", "image",
        [_Conv(c33, "CIRCULAR", S2, 0.1), relu, _Conv(c33, "CIRCULAR", S2), relu, _GAP, _Dense(1.0)])
    add("cnn2d_relu_same_s21_flat", "image",
        [_Conv(c33, "SAME", S2, strides=(2, 1)), relu, _Conv(c33, "SAME", 1.5, 0.2), relu, _FLAT,
         _Dense(1.0)])
    add("cnn2d_erf_valid_s22_gap", "image",
        [_Conv(c33, "VALID", 1.0, 0.3, strides=(2, 2)), erf, _GAP, _Dense(1.5)])
    add("cnn2d_relu_circular_s22_f23_flat", "image",
        [_Conv(c33, "CIRCULAR", S2, 0.1, strides=(2, 2)), relu, _Conv((2, 3), "CIRCULAR", S2), relu,
         _FLAT, _Dense(1.0)])
    add("cnn2d_erf_same_f23_s21_gap", "image",
        [_Conv((2, 3), "SAME", 1.5, strides=(2, 1)), erf, _Conv((2, 3), "SAME", 1.0, 0.1), erf, _GAP,
         _Dense(1.0)])
    # 4. Flatten readout reading a Conv directly (no activation in between).
    add("cnn2d_relu_same_flat_after_conv", "image",
        [_Conv(c33, "SAME", S2), relu, _Conv((2, 3), "SAME", S2, 0.2), _FLAT, _Dense(1.0)])
    add("cnn2d_conv_gap_linear", "image", [_Conv(c33, "VALID", 1.0, 0.1), _GAP, _Dense(1.0)])
    # 2. 1-D convolutions (sequences).
    add("cnn1d_relu_same_gap", "seq",
        [_Conv((3,), "SAME", S2, 0.1), relu, _Conv((3,), "SAME", S2), relu, _GAP, _Dense(1.0)])
    add("cnn1d_erf_valid_flat", "seq",
        [_Conv((3,), "VALID", 1.5), erf, _Conv((2,), "VALID", 1.0, 0.2), erf, _FLAT, _Dense(1.0)])
    add("cnn1d_relu_circular_gap", "seq",
        [_Conv((5,), "CIRCULAR", S2), relu, _Conv((3,), "CIRCULAR", S2, 0.1), relu, _GAP, _Dense(1.0)])
    add("cnn1d_relu_same_s2_flat", "seq",
        [_Conv((3,), "SAME", S2, strides=(2,)), relu, _Conv((3,), "VALID", S2, 0.3), relu, _FLAT,
         _Dense(1.0)])
    add("cnn1d_erf_circular_s2_gap", "seq",
        [_Conv((4,), "CIRCULAR", 1.0, 0.2, strides=(2,)), erf, _Conv((2,), "SAME", 1.5), erf, _GAP,
         _Dense(1.0, 0.1)])
    # 3. Average pooling after a Conv (and once after an activation).
    add("cnn2d_avgpool2_valid_gap", "image",
        [_Conv(c33, "SAME", S2), _AvgPool((2, 2)), relu, _Conv(c33, "SAME", S2, 0.1), relu, _GAP,
         _Dense(1.0)])
    add("cnn2d_avgpool2s2_same_flat", "image",
        [_Conv(c33, "SAME", 1.5, 0.2), _AvgPool((2, 2), (2, 2), "SAME"), erf, _Conv((2, 2), "SAME", 1.0),
         erf, _FLAT, _Dense(1.0)])
    add("cnn2d_avgpool2_circular_gap", "image",
        [_Conv(c33, "CIRCULAR", S2, 0.1), _AvgPool((2, 2), None, "CIRCULAR"), relu,
         _Conv(c33, "CIRCULAR", S2), relu, _GAP, _Dense(1.0)])
    add("cnn2d_avgpool2s2_valid_after_relu_flat", "image",
        [_Conv(c33, "SAME", S2), relu, _AvgPool((2, 2), (2, 2), "VALID"), _Conv(c33, "SAME", S2, 0.1),
         relu, _FLAT, _Dense(1.0)])
    add("cnn1d_avgpool2_same_gap", "seq",
        [_Conv((3,), "SAME", S2, 0.1), _AvgPool((2,), None, "SAME"), relu, _Conv((3,), "SAME", S2),
         relu, _GAP, _Dense(1.0)])
    # 5. LayerNorm (channel axis) in MLPs and CNNs.
    add("mlp_ln_relu_ln_erf", "vec",
        [_Dense(S2), _LN, relu, _Dense(1.5), _LN, erf, _Dense(1.0)])
    add("mlp_ln_relu_bias", "vec",
        [_Dense(S2, 0.2), _LN, relu, _Dense(S2, 0.1), _LN, relu, _Dense(1.0, 0.1)])
    add("mlp_ln_gelu_ln_sin", "vec",
        [_Dense(1.5, 0.3), _LN, _Act("gelu"), _Dense(1.0), _LN, _Act("sin"), _Dense(1.0, 0.2)])
    add("cnn2d_ln_relu_gap", "image",
        [_Conv(c33, "SAME", S2), _LN, relu, _Conv(c33, "SAME", S2, 0.1), _LN, relu, _GAP, _Dense(1.0)])
    add("cnn2d_ln_erf_valid_flat", "image",
        [_Conv(c33, "VALID", 1.5, 0.2), _LN, erf, _Conv((2, 2), "SAME", 1.0), _LN, erf, _FLAT,
         _Dense(1.0)])
    add("cnn1d_ln_relu_gap", "seq",
        [_Conv((3,), "SAME", 1.0, 0.1), _LN, relu, _Conv((3,), "SAME", S2), relu, _GAP, _Dense(1.0)])
    # 6. Residual networks: h + s * branch(h), blocks reading Gaussian h.
    def block(s, b=0.0):
        return _Res([relu, _Conv(c33, "SAME", S2, b)], s)

    add("rescnn2d_relu_3blk_s1_gap", "image",
        [_Conv(c33, "SAME", 1.0)] + [block(1.0)] * 3 + [relu, _GAP, _Dense(1.0)])
    add("rescnn2d_relu_2blk_s0.5_flat", "image",
        [_Conv(c33, "SAME", 1.5, 0.1)] + [block(0.5, 0.1)] * 2 + [relu, _FLAT, _Dense(1.0)])
    add("rescnn2d_preln_4blk_s0.7_gap", "image",
        [_Conv(c33, "SAME", 1.0)]
        + [_Res([_LN, relu, _Conv(c33, "SAME", S2)], 0.7)] * 4
        + [_LN, relu, _GAP, _Dense(1.0)])
    add("rescnn2d_twoconv_2blk_s0.7_gap", "image",
        [_Conv(c33, "SAME", 1.0, 0.1)]
        + [_Res([relu, _Conv(c33, "SAME", S2), relu, _Conv(c33, "SAME", S2, 0.1)], 0.7)] * 2
        + [relu, _GAP, _Dense(1.0)])
    add("rescnn1d_relu_3blk_s0.5_flat", "seq",
        [_Conv((3,), "SAME", 1.0)] + [_Res([relu, _Conv((3,), "SAME", S2, 0.2)], 0.5)] * 3
        + [relu, _FLAT, _Dense(1.0)])
    add("resmlp_relu_3blk_s0.5", "vec",
        [_Dense(1.0)] + [_Res([relu, _Dense(S2, 0.1)], 0.5)] * 3 + [relu, _Dense(1.0)])
    add("resmlp_erf_2blk_s1_linear", "vec",
        [_Dense(1.5, 0.1)] + [_Res([erf, _Dense(1.0)], 1.0)] * 2 + [_Dense(1.0)])
    # 7. More activations (closed forms; tanh by quadrature, Flatten readouts).
    add("cnn2d_abs_circular_gap", "image",
        [_Conv(c33, "CIRCULAR", S2, 0.2), _Act("abs"), _Conv(c33, "CIRCULAR", S2), _Act("abs"), _GAP,
         _Dense(1.0)])
    add("cnn2d_gelu_same_s21_gap", "image",
        [_Conv(c33, "SAME", 1.5, strides=(2, 1)), _Act("gelu"), _Conv(c33, "SAME", 1.0, 0.1),
         _Act("gelu"), _GAP, _Dense(1.0)])
    add("cnn1d_sin_valid_flat", "seq",
        [_Conv((3,), "VALID", 1.5), _Act("sin"), _Conv((3,), "VALID", 1.0, 0.3), _Act("sin"), _FLAT,
         _Dense(1.0)])
    add("cnn2d_lrelu_same_flat", "image",
        [_Conv(c33, "SAME", LEAKY_CRIT, 0.1), _Act("leaky_relu"), _Conv(c33, "SAME", LEAKY_CRIT),
         _Act("leaky_relu"), _FLAT, _Dense(1.0)])
    # 9. Identity activation and Identity layer.
    add("cnn2d_identity_act_idlayer_gap", "image",
        [_Conv(c33, "SAME", 1.0, 0.1), _Act("identity"), _Conv((2, 3), "VALID", 1.5), _ID, _GAP,
         _Dense(1.0)])
    # (strides 2: 3 x 2 positions, not 5 x 4; NT's quadrature arrays are deg**2 per pair of
    # examples and position: 4.8 GB and 20 s at deg 1000 with 5 x 4)
    add("cnn2d_tanh_same_s22_flat", "image",
        [_Conv(c33, "SAME", 1.0, strides=(2, 2)), _Act("tanh"), _Conv(c33, "SAME", 1.0, 0.1), _Act("tanh"),
         _FLAT, _Dense(1.0)])
    add("cnn1d_tanh_valid_flat", "seq",
        [_Conv((3,), "VALID", 1.5, 0.2), _Act("tanh"), _FLAT, _Dense(1.0)])
    add("mlp_ln_tanh_bias", "vec",
        [_Dense(1.5, 0.1), _LN, _Act("tanh"), _Dense(1.0, 0.2), _LN, _Act("tanh"), _Dense(1.0, 0.1)])
    # 8. "standard" weight scaling, width 16.
    add("cnn2d_relu_same_gap_std16", "image",
        [_Conv(c33, "SAME", S2), relu, _Conv(c33, "SAME", S2), relu, _GAP, _Dense(1.0)], "standard")
    add("cnn2d_erf_valid_flat_bias_std16", "image",
        [_Conv(c33, "VALID", 1.5, 0.2), erf, _Conv((2, 3), "SAME", 1.0, 0.1), erf, _FLAT,
         _Dense(1.0, 0.1)], "standard")
    add("rescnn2d_relu_2blk_s0.5_gap_std16", "image",
        [_Conv(c33, "SAME", 1.0)] + [block(0.5)] * 2 + [relu, _GAP, _Dense(1.0)], "standard")
    # 9. Dense on images (acts on the channel axis).
    add("cnn2d_dense_chan_then_conv_gap", "image",
        [_Dense(1.0, 0.1), relu, _Conv(c33, "SAME", S2), relu, _GAP, _Dense(1.0)])
    add("cnn2d_conv_dense_chan_flat", "image",
        [_Conv(c33, "SAME", S2), relu, _Dense(S2, 0.1), erf, _FLAT, _Dense(1.0)])
    # 10. Deeper: 6 identical blocks.
    add("cnn2d_relu_deep6_flat", "image",
        [_Conv(c33, "SAME", 1.0)] + [relu, _Conv(c33, "SAME", S2, 0.1)] * 6 + [_FLAT, _Dense(1.0)])
    add("rescnn2d_relu_deep6_s0.5_gap", "image",
        [_Conv(c33, "SAME", 1.0)] + [block(0.5)] * 6 + [relu, _GAP, _Dense(1.0)])
    # fmt: on
    return P


def empirical_cases():
    """(name, config) of the finite-network (empirical NTK) fixtures."""
    layers = [
        _Conv((3, 3), "SAME", 1.5, 0.1),
        _Act("relu"),
        _Conv((2, 2), "VALID", SQRT2, strides=(2, 1)),
        _Res([_Act("relu"), _Conv((3, 3), "SAME", 1.0, 0.2)], 0.5),
        _Act("relu"),
        _GAP,
        _Dense(1.0, 0.1),
    ]
    cfg = program_config("image", layers, "ntk", width=EMP_WIDTH)
    cfg["n_out"] = EMP_N_OUT
    return [("empirical_cnn", cfg)]


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
    # Layer programs (CNNs, pooling, LayerNorm, residual blocks), then the
    # empirical-NTK fixture(s).
    cases += program_cases()
    cases += empirical_cases()
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


def make_inputs(seed, variant, n1=N1, n2=N2):
    """x1 (n1, D_IN), x2 (n2, D_IN); row norms sqrt(D_IN) * U[0.5, 2]."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((n1, D_IN))
    x2 = rng.standard_normal((n2, D_IN))
    f1 = rng.uniform(*ROW_SCALE, size=n1)
    f2 = rng.uniform(*ROW_SCALE, size=n2)
    x1 *= (math.sqrt(D_IN) * f1 / np.linalg.norm(x1, axis=1))[:, None]
    x2 *= (math.sqrt(D_IN) * f2 / np.linalg.norm(x2, axis=1))[:, None]
    if variant in ("parallel", "both"):
        # the last row of x1 is a positive multiple of row 1 (correlation exactly 1).
        x1[-1] = x1[1] * (f1[-1] / f1[1])
    if variant in ("shared", "both"):
        x2[1] = x1[2]  # identical row in x1 and x2
    if variant == "both":
        if n2 < 3:
            raise ValueError(f"the 'both' input variant needs 3 rows in x2, got {n2}")
        x2[2] = x1[0] * (f2[2] / f1[0])  # cross pair with correlation 1
    return x1, x2


def make_program_inputs(seed, variant, input_shape, n1=PROG_N1, n2=PROG_N2):
    """x1 (n1, *input_shape), x2 (n2, *input_shape); mean square of each example ~ U(PROG_MEAN_SQ)."""
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((n1, *input_shape))
    x2 = rng.standard_normal((n2, *input_shape))
    m1 = rng.uniform(*PROG_MEAN_SQ, size=n1)
    m2 = rng.uniform(*PROG_MEAN_SQ, size=n2)

    def rescale(x, m):
        ms = np.mean(x.reshape(len(x), -1) ** 2, axis=1)
        return x * np.sqrt(m / ms).reshape((-1,) + (1,) * (x.ndim - 1))

    x1, x2 = rescale(x1, m1), rescale(x2, m2)
    if variant in ("parallel", "both"):
        x1[-1] = x1[1] * math.sqrt(m1[-1] / m1[1])  # positive multiple of example 1
    if variant in ("shared", "both"):
        x2[1] = x1[2]  # identical example in x1 and x2
    if variant == "both":
        if n2 < 3:
            raise ValueError(f"the 'both' input variant needs 3 examples in x2, got {n2}")
        x2[2] = x1[0] * math.sqrt(m2[2] / m1[0])  # cross pair, positive multiple
    return x1, x2


def _kernels(layers, x1, x2, jit=False):
    kernel_fn = stax.serial(*layers)[2]
    if jit:
        kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    k = kernel_fn(x1, x2, ("nngp", "ntk"))
    return (np.asarray(k.nngp, dtype=np.float64), np.asarray(k.ntk, dtype=np.float64))


def _staged_kernels(stages, x1, x2):
    """[(nngp, ntk) after each stage] of the NT network ``stages[0] + stages[1] + ...`` (lists of NT
    layers): stage 0 reads the inputs, each later one the previous stage's Kernel through its
    ``kernel_fn`` jitted once per distinct stage object, so that a network of L identical blocks
    compiles one block, not L of them (jitting a whole ResNet-64 takes about a minute; evaluating
    it eagerly materialises every deg x deg quadrature array, 2-3x slower than jitted), and one pass
    gives the kernels after every layer.  Used for the tanh MLPs / ResNets; values within 1e-16 of
    the kernels' scale of the eager whole-network ``_kernels`` (measured)."""
    out, jitted, k = [], {}, None
    for i, stage in enumerate(stages):
        if i == 0:
            k = stax.serial(*stage)[2](x1, x2)
        else:
            if id(stage) not in jitted:
                jitted[id(stage)] = jax.jit(stax.serial(*stage)[2])
            k = jitted[id(stage)](k)
        out.append((np.asarray(k.nngp, dtype=np.float64), np.asarray(k.ntk, dtype=np.float64)))
    return out


def network_stages(cfg):
    """MLP: [Dense], [act, Dense] x (depth - 1) (one list object), [act, readout Dense]: the stages
    end at the Dense layers.  ResNet: [stem], block x depth (one list object), [[act,] readout]."""
    if cfg["arch"] == "MLP":
        layers, _ = mlp_layers(cfg)
        hidden = layers[1:3]
        return [layers[:1]] + [hidden] * (cfg["depth"] - 1) + [layers[-2:]]
    layers = resnet_layers(cfg)
    depth = cfg["depth"]
    block = layers[1:4]  # FanOut(2), parallel(Identity, act >> BRANCH), FanInSum: identical blocks
    return [layers[:1]] + [block] * depth + [layers[1 + 3 * depth :]]


def case_variant(name):
    return _VARIANTS[case_seed(name) % len(_VARIANTS)]


def _check_finite(name, arrays):
    for key, val in arrays.items():
        if val.dtype == np.float64 and not np.all(np.isfinite(val)):
            raise FloatingPointError(f"{name}: non-finite values in {key}")


def _versions():
    return {"nt_version": np.array(nt.__version__), "jax_version": np.array(jax.__version__)}


def _weight_params(layers, params):
    """[(W, b or None)] of the Dense/Conv layers of a program, in program order."""
    out = []
    # params[len(layers):]: the DotGeneral closing a scaled residual branch (no params).
    for layer, p in zip(layers, params[: len(layers)], strict=True):
        kind = layer["layer"]
        if kind in ("Dense", "Conv"):
            W, b = p
            out.append((np.asarray(W), None if b is None else np.asarray(b).reshape(-1)))
        elif kind == "Residual":
            # serial(FanOut, parallel(Identity, serial(*branch[, DotGeneral])), FanInSum)
            out += _weight_params(layer["branch"], p[1][1])
    return out


def compute_empirical_case(name, cfg):
    """Finite network: NT's init_fn / apply_fn / empirical NTK (full output axes)."""
    shape = tuple(cfg["input_shape"])
    x1, x2 = make_program_inputs(case_seed(name), "shared", shape, EMP_N1, EMP_N2)
    init_fn, apply_fn, _ = stax.serial(*program_layers(cfg))
    _, params = init_fn(jax.random.PRNGKey(EMP_SEED), (-1, *shape))
    ntk_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0)
    out = {
        "config": np.array(json.dumps(cfg, sort_keys=True)),
        "x1": x1,
        "x2": x2,
        "ntk_12": np.asarray(ntk_fn(x1, x2, params), dtype=np.float64),
        "ntk_11": np.asarray(ntk_fn(x1, None, params), dtype=np.float64),
        "outputs_1": np.asarray(apply_fn(params, x1), dtype=np.float64),
    }
    weights = _weight_params(cfg["layers"], params)
    for i, (W, b) in enumerate(weights):
        out[f"W_{i}"] = W.astype(np.float64)
        if b is not None:
            out[f"b_{i}"] = b.astype(np.float64)
    _check_finite(name, out)
    out["n_weight_layers"] = np.array(len(weights))
    out.update(_versions())
    return out


def uses_quadrature(cfg):
    """Whether a case has a tanh (NT's ElementwiseNumerical) layer."""
    if cfg["arch"] != "program":
        return cfg["quadrature_degree"] is not None

    def walk(layers):
        for layer in layers:
            if layer["layer"] == "Elementwise" and layer["quadrature_degree"] is not None:
                return True
            if layer["layer"] == "Residual" and walk(layer["branch"]):
                return True
        return False

    return walk(cfg["layers"])


def compute_program_case(name, cfg):
    quad = uses_quadrature(cfg)
    sizes = (PROG_TANH_N1, PROG_TANH_N2) if quad else (PROG_N1, PROG_N2)
    x1, x2 = make_program_inputs(case_seed(name), case_variant(name), tuple(cfg["input_shape"]), *sizes)
    layers = program_layers(cfg)
    nngp_12, ntk_12 = _kernels(layers, x1, x2, jit=quad)
    nngp_11, ntk_11 = _kernels(layers, x1, None, jit=quad)
    if nngp_12.shape != (len(x1), len(x2)) or nngp_11.shape != (len(x1), len(x1)):
        # e.g. no Flatten / GlobalAvgPool before the readout: NT keeps the spatial axes.
        raise ValueError(f"{name}: kernels of shape {nngp_12.shape}, expected (N1, N2)")
    out = {
        "config": np.array(json.dumps(cfg, sort_keys=True)),
        "x1": x1,
        "x2": x2,
        "nngp_12": nngp_12,
        "ntk_12": ntk_12,
        "nngp_11": nngp_11,
        "ntk_11": ntk_11,
    }
    _check_finite(name, out)
    out.update(_versions())
    return out


def compute_case(name, cfg):
    """All arrays of one fixture (dict name -> np.ndarray)."""
    if name.startswith("empirical_"):
        return compute_empirical_case(name, cfg)
    if cfg["arch"] == "program":
        return compute_program_case(name, cfg)
    quad = uses_quadrature(cfg)
    sizes = (TANH_N1, TANH_N2) if quad else (N1, N2)
    x1, x2 = make_inputs(case_seed(name), case_variant(name), *sizes)
    per_layer = None
    if quad:  # (MLP or ResNet)
        stages = network_stages(cfg)
        nngp_12, ntk_12 = _staged_kernels(stages, x1, x2)[-1]
        per_layer = _staged_kernels(stages, x1, None)
        nngp_11, ntk_11 = per_layer[-1]
    else:
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
        if per_layer is None:
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
