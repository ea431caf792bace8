"""Bad inputs fail early with a ValueError that names the offending value or parameter.

Also: overflow in the chaotic phase is reported at the right layer (derived independently
below with exact decimal arithmetic), and an all-zero input with ``b_std = 0`` is not an error.
"""

import math
import re
from decimal import Decimal, localcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory import activations, hermite

X = np.linspace(-1.0, 1.0, 12).reshape(4, 3)


# ---------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize(
    ("x1", "x2", "pattern"),
    [
        (np.ones(3), None, r"x1 must have shape \(batch, features\), got shape \(3,\)"),
        (np.ones((2, 3, 4)), None, r"x1 .*got shape \(2, 3, 4\)"),
        (X, np.ones(3), r"x2 .*got shape \(3,\)"),
        (X, np.ones((2, 4)), r"same number of features, got 3 and 4"),
        (np.ones((0, 3)), None, r"x1 must have at least one input.*got shape \(0, 3\)"),
        (np.ones((2, 0)), None, r"x1 must have at least one input.*got shape \(2, 0\)"),
        (X, np.ones((0, 3)), r"x2 must have at least one input.*got shape \(0, 3\)"),
    ],
    ids=["x1-1d", "x1-3d", "x2-1d", "x2-features", "x1-empty", "x1-no-features", "x2-empty"],
)
def test_bad_input_shapes(x1, x2, pattern):
    with pytest.raises(ValueError, match=pattern):
        theory.kernels(theory.MLP(2), x1, x2)


def test_nan_in_x1():
    x = X.copy()
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"x1 contains NaN or inf \(first in row 2\)"):
        theory.kernels(theory.MLP(2), x)
    with pytest.raises(ValueError, match=r"x1 contains NaN or inf"):
        theory.kernels(theory.MLP(2), x, X)


def test_inf_in_x2():
    x2 = X.copy()
    x2[3, 0] = -np.inf
    with pytest.raises(ValueError, match=r"x2 contains NaN or inf \(first in row 3\)"):
        theory.kernels(theory.MLP(2), X, x2)


def test_nan_in_float32_input():
    x = X.astype(np.float32)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"x1 contains NaN or inf \(first in row 0\)"):
        theory.kernels(theory.ResNet(2), x)


def test_not_an_architecture():
    with pytest.raises(ValueError, match=r"theory\.MLP or theory\.ResNet.*'mlp'"):
        theory.kernels("mlp", X)


@pytest.mark.parametrize("budget", [0, -5, 1.5, None])
def test_bad_memory_budget(budget):
    with pytest.raises(ValueError, match=rf"memory_budget .*got {re.escape(repr(budget))}"):
        theory.kernels(theory.MLP(2), X, memory_budget=budget)


# ---------------------------------------------------------------------------------------
# Architecture fields

ARCHS = [theory.MLP, theory.ResNet]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    ("depth", "pattern"),
    [
        (-1, r"depth must be a non-negative integer, got -1"),
        (2.5, r"depth .*got 2\.5 \(float\)"),
        (True, r"depth .*got True \(bool\)"),
        ("3", r"depth .*got '3' \(str\)"),
        (None, r"depth .*got None"),
    ],
)
def test_bad_depth(arch, depth, pattern):
    with pytest.raises(ValueError, match=pattern):
        arch(depth)


@pytest.mark.parametrize("arch", ARCHS)
def test_integer_like_depth_is_normalised(arch):
    net = arch(np.int64(3))
    assert net.depth == 3 and type(net.depth) is int


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["w_std", "b_std"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [(-0.5, r"-0\.5"), (float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")],
)
def test_bad_scales(arch, name, value, shown):
    with pytest.raises(ValueError, match=rf"{name} must be finite and >= 0, got {shown}"):
        arch(2, **{name: value})


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("value", ["1.0", True, None, 1j])
def test_non_real_scales(arch, value):
    with pytest.raises(ValueError, match=rf"w_std must be a real number >= 0, got {re.escape(repr(value))}"):
        arch(2, w_std=value)


@pytest.mark.parametrize("name", ["depth_exponent", "branch_scale", "stem_w_std", "readout_w_std"])
@pytest.mark.parametrize(("value", "shown"), [(-1.0, r"-1\.0"), (float("nan"), "nan"), (float("inf"), "inf")])
def test_bad_resnet_scales(name, value, shown):
    with pytest.raises(ValueError, match=rf"{name} must be finite and >= 0, got {shown}"):
        theory.ResNet(2, **{name: value})


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_activation_lists_registered_names(arch):
    with pytest.raises(ValueError, match=r"unknown activation 'relu6'") as info:
        arch(2, activation="relu6")
    message = str(info.value)
    for name in ("relu", "tanh", "erf", "gelu", "leaky_relu", "softplus"):
        assert re.search(rf"\b{name}\b", message), (name, message)
    assert "theory.Activation" in message


@pytest.mark.parametrize("activation", [3, None, 1.5])
def test_activation_of_wrong_type(activation):
    with pytest.raises(ValueError, match=rf"activation must be .*got {re.escape(repr(activation))}"):
        theory.MLP(2, activation=activation)


def test_activation_names_are_case_insensitive():
    assert theory.MLP(2, activation="ReLU").activation == theory.MLP(2, activation="relu").activation


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_parameterization(arch):
    with pytest.raises(ValueError, match=r"unknown parameterization 'mup'.*'ntk'.*'standard'"):
        arch(2, parameterization="mup")


@pytest.mark.parametrize("arch", ARCHS)
def test_standard_parameterization_needs_width(arch):
    with pytest.raises(ValueError, match=r"parameterization='standard'.*width"):
        arch(2, parameterization="standard")
    arch(2, parameterization="standard", width=64)  # fine with a width


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("width", [0, -3, 2.5, True, "64"])
def test_bad_width(arch, parameterization, width):
    with pytest.raises(ValueError, match=rf"width must be a positive integer or None, got {re.escape(repr(width))}"):
        arch(2, parameterization=parameterization, width=width)


def test_unknown_readout():
    with pytest.raises(ValueError, match=r"unknown readout 'softmax'.*'activation'.*'linear'"):
        theory.ResNet(2, readout="softmax")


@pytest.mark.parametrize(
    ("get", "shown"),
    [(("foo",), r"\('foo',\)"), ((), r"\(\)"), ("nnpg", "'nnpg'"), (("nngp", "ntk", "cntk"), "'cntk'")],
)
def test_bad_get(get, shown):
    with pytest.raises(ValueError, match=rf"get must name kernels among \('nngp', 'ntk'\), got .*{shown}"):
        theory.kernels(theory.MLP(2), X, get=get)


# ---------------------------------------------------------------------------------------
# Activations


@pytest.mark.parametrize("degree", [0, -2, 2.0, True])
def test_bad_quadrature_degree(degree):
    with pytest.raises(ValueError, match=rf"quadrature_degree must be a positive integer, got {degree!r}"):
        theory.Activation(jnp.tanh, quadrature_degree=degree)


def test_bad_quadrature_degree_through_factory():
    with pytest.raises(ValueError, match=r"quadrature_degree .*got 0"):
        activations.tanh(quadrature_degree=0)


def test_activation_needs_callable():
    with pytest.raises(ValueError, match=r"callable elementwise function, got 3"):
        theory.Activation(3)


@pytest.mark.parametrize(("slope", "shown"), [(float("nan"), "nan"), (float("inf"), "inf")])
def test_leaky_relu_bad_slope(slope, shown):
    with pytest.raises(ValueError, match=rf"leaky_relu slope must be finite, got {shown}"):
        activations.leaky_relu(slope=slope)
    with pytest.raises(ValueError, match=rf"slope must be finite, got {shown}"):
        activations.get("leaky_relu", slope=slope)


@pytest.mark.parametrize(("bound", "shown"), [(-1, r"-1\.0"), (0, r"0\.0"), (float("nan"), "nan")])
def test_clipped_bad_bound(bound, shown):
    with pytest.raises(ValueError, match=rf"clipped\(\) needs a positive bound, got {shown}"):
        activations.clipped("relu", bound=bound)


def test_bad_factory_parameters():
    with pytest.raises(ValueError, match=r"bad parameters \{'slop': 0\.1\} for activation 'leaky_relu'"):
        activations.get("leaky_relu", slop=0.1)
    with pytest.raises(ValueError, match=r"parameters .*'slope'.*Activation object"):
        activations.get(activations.relu(), slope=0.1)


# ---------------------------------------------------------------------------------------
# Overflow in the chaotic phase: the reported layer is the first whose diagonal is not finite.
#
# For relu with b_std = 0 the diagonal recursion is exact in closed form: E[relu(u)^2] = q / 2 and
# E[relu'(u)^2] = 1/2. Dense layer: q' = w^2 q / 2 + b^2, Theta' = w^2 q / 2 + b^2 + w^2 / 2 Theta
# (NTK parameterization); the first Dense reads q_in = |x|^2 / d and Theta_in = 0 without an
# activation. Residual block: q' = q + s^2 (w^2 q / 2 + b^2), Theta' = Theta + s^2 (w^2 q / 2 + b^2
# + w^2 / 2 Theta). Decimal has an unbounded exponent, so it finds the true crossing.


def _relu_layer(q, t, w, b, post="activation", gamma=0, s=1):
    w2, b2, s2 = Decimal(w) ** 2, Decimal(b) ** 2, Decimal(s) ** 2
    e = q / 2 if post == "activation" else q
    d = Decimal(1) / 2 if post == "activation" else Decimal(1)
    return gamma * q + s2 * (w2 * e + b2), gamma * t + s2 * (w2 * e + b2 + w2 * d * t)


def _first_overflow(x, arch, dtype):
    """0-based index of the first layer whose variance or NTK exceeds ``dtype``'s max (None if none).

    Also asserts that no value lands within 5% of the max, so that float rounding in the library
    cannot move the crossing by a layer.
    """
    assert arch.activation.name == "relu" and arch.parameterization == "ntk"
    fmax = Decimal(float(np.finfo(dtype).max))
    x = np.asarray(x, np.float64)
    with localcontext() as ctx:
        ctx.prec = 40
        first = None
        for row in x:
            q = sum(Decimal(float(v)) ** 2 for v in row) / len(row)
            t = Decimal(0)
            if isinstance(arch, theory.MLP):
                layers = [(arch.w_std, arch.b_std, "input", 0, 1)]
                layers += [(arch.w_std, arch.b_std, "activation", 0, 1)] * arch.depth
            else:
                layers = [(arch.stem_w_std, 0.0, "input", 0, 1)]
                layers += [(arch.w_std, arch.b_std, "activation", 1, arch.branch_multiplier)] * arch.depth
                layers += [(arch.readout_w_std, 0.0, arch.readout.replace("linear", "identity"), 0, 1)]
            for index, (w, b, post, gamma, s) in enumerate(layers):
                q, t = _relu_layer(q, t, w, b, post, gamma, s)
                for value in (q, t):
                    assert not (Decimal("0.95") * fmax < value < Decimal("1.05") * fmax), "too close to call"
                if q > fmax or t > fmax:
                    first = index if first is None else min(first, index)
                    break
        return first


def _overflow_message(arch, x):
    with pytest.raises(ValueError, match=r"overflows") as info:
        theory.kernels(arch, x)
    return str(info.value)


def test_overflow_mlp_float32_names_layer_and_suggests_float64():
    x = np.array([[1.0, -1.0, 1.0], [0.5, 0.2, 0.1]], np.float32)
    net = theory.MLP(depth=200, activation="relu", w_std=4.0)
    layer = _first_overflow(x, net, np.float32)
    # By hand: q_k = 16 * 8^(k-1) = 2^(3k+1) for |x|^2/d = 1, Theta_k = k q_k; float32 max ~ 2^128.
    assert layer + 1 == 41
    message = _overflow_message(net, x)
    assert re.search(rf"not finite after hidden layer {layer + 1} of 200\b", message), message
    assert "overflows float32" in message and "float64" in message and "jax_enable_x64" in message


@pytest.mark.parametrize(
    ("w_std", "b_std", "scale"), [(4.0, 0.0, 1.0), (3.0, 0.0, 0.01), (6.0, 2.0, 7.0), (2.5, 1.0, 30.0)]
)
def test_overflow_mlp_float32_layer_index(w_std, b_std, scale):
    rng = np.random.default_rng(0)
    x = (scale * rng.uniform(-1, 1, (5, 4))).astype(np.float32)
    net = theory.MLP(depth=300, activation="relu", w_std=w_std, b_std=b_std)
    layer = _first_overflow(x, net, np.float32)
    assert layer is not None and layer < 300
    message = _overflow_message(net, x)
    assert re.search(rf"after hidden layer {layer + 1} of 300\b", message), (layer, message)


def test_overflow_mlp_float64_deep():
    x = np.array([[1.0, -1.0, 1.0], [2.0, 0.0, 0.0]])
    net = theory.MLP(depth=5000, activation="relu", w_std=4.0)
    layer = _first_overflow(x, net, np.float64)
    assert layer is not None
    message = _overflow_message(net, x)
    assert re.search(rf"overflows float64: .* after hidden layer {layer + 1} of 5000\b", message), message
    assert "reduce w_std" in message


def test_overflow_at_the_readout():
    # depth 40 in float32: the NTK first exceeds the max in Dense layer 41, the readout.
    x = np.ones((2, 3), np.float32)
    net = theory.MLP(depth=40, activation="relu", w_std=4.0)
    assert _first_overflow(x, net, np.float32) == 40
    message = _overflow_message(net, x)
    assert "after the readout (Dense layer 41 of 41)" in message, message
    # Only the NTK overflows there, so the NNGP alone is fine: 2^124 (up to float32 rounding).
    nngp = theory.kernels(net, x, get="nngp").nngp
    assert nngp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(nngp), 2.0**124, rtol=1e-5)


def test_overflow_resnet_float32_names_block():
    x = np.array([[1.0, 1.0, -1.0], [0.3, 0.3, 0.3]], np.float32)
    net = theory.ResNet(depth=50, activation="relu", w_std=8.0, depth_exponent=0.0)
    layer = _first_overflow(x, net, np.float32)
    assert 1 <= layer <= 50
    message = _overflow_message(net, x)
    assert re.search(rf"overflows float32: .* after residual block {layer} of 50\b", message), (layer, message)
    assert "float64" in message


@pytest.mark.parametrize("readout", ["activation", "linear"])
def test_overflow_resnet_at_stem_and_readout(readout):
    # The readout alone overflows: block variance ~1e37, readout_w_std 1e2 multiplies it by 1e4 (/2).
    x = np.ones((1, 2), np.float32)
    net = theory.ResNet(depth=2, w_std=1.0, stem_w_std=1e18, readout_w_std=1e2, readout=readout)
    assert _first_overflow(x, net, np.float32) == 3
    assert "after the readout (layer 4 of 4)" in _overflow_message(net, x)
    # A huge stem overflows at once: 1e38 * |x|^2 / d = 4e38.
    x = np.full((1, 2), 2.0, np.float32)
    net = theory.ResNet(depth=2, stem_w_std=1e19, readout=readout)
    assert _first_overflow(x, net, np.float32) == 0
    assert "after the stem (layer 1 of 4)" in _overflow_message(net, x)


def test_no_spurious_overflow_with_small_branch_multiplier():
    # True block variance: 1e36 + (1e-3)^2 * (1e3)^2 * 1e36 / 2 = 1.5e36, finite in float32; but
    # w_std^2 * E = 5e41 is not (forming it before the multiplier used to report a spurious
    # overflow in residual block 1). The readout is 1e-6 * 1.5e36 / 2 = 7.5e29.
    x = np.ones((1, 3), np.float32)
    net = theory.ResNet(
        1, "relu", w_std=1e3, branch_scale=1e-3, depth_exponent=0.0, stem_w_std=1e18, readout_w_std=1e-3
    )
    assert _first_overflow(x, net, np.float32) is None
    k = theory.kernels(net, x)
    np.testing.assert_allclose(np.asarray(k.nngp), 7.5e29, rtol=1e-5)


def test_no_overflow_just_below_the_threshold():
    x = np.ones((2, 3), np.float32)
    net = theory.MLP(depth=39, activation="relu", w_std=4.0)
    assert _first_overflow(x, net, np.float32) is None
    k = theory.kernels(net, x)
    assert np.isfinite(np.asarray(k.nngp)).all() and np.isfinite(np.asarray(k.ntk)).all()
    # q_40 = 2^121 exactly, Theta_40 = 40 q_40
    np.testing.assert_allclose(np.asarray(k.nngp), 2.0**121, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(k.ntk), 40 * 2.0**121, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# An all-zero input with b_std = 0 has zero variance: not an error, exact zeros, no NaN.

ZERO_NETS = [
    theory.MLP(3, "relu", w_std=1.5),
    theory.MLP(3, "erf", w_std=1.5),
    theory.MLP(3, "tanh", w_std=1.5),
    theory.MLP(2, "relu", w_std=1.2, parameterization="standard", width=64),
    theory.ResNet(4, "relu", w_std=1.3),
    theory.ResNet(4, "erf", w_std=1.3, readout="linear"),
]


@pytest.mark.parametrize("net", ZERO_NETS, ids=lambda n: f"{type(n).__name__}-{n.activation.name}")
def test_zero_input_gives_zero_row(net):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3))
    x[2] = 0.0
    full = theory.kernels(net, x)
    rest = theory.kernels(net, np.delete(x, 2, axis=0))
    for name in ("nngp", "ntk"):
        k = np.asarray(getattr(full, name))
        assert np.isfinite(k).all(), name
        assert (k[2, :] == 0).all() and (k[:, 2] == 0).all(), (name, k)
        keep = np.delete(np.delete(k, 2, axis=0), 2, axis=1)
        np.testing.assert_allclose(keep, np.asarray(getattr(rest, name)), rtol=1e-12, atol=0, err_msg=name)


@pytest.mark.parametrize("net", ZERO_NETS[:3], ids=lambda n: n.activation.name)
def test_zero_input_off_diagonal_and_per_layer(net):
    x = np.array([[0.0, 0.0], [1.0, -2.0], [0.0, 0.0]])
    k = theory.kernels(net, x[:1], x[1:], per_layer=True)
    assert np.isfinite(np.asarray(k.nngp)).all() and np.isfinite(np.asarray(k.ntk)).all()
    assert (np.asarray(k.nngp) == 0).all() and (np.asarray(k.ntk) == 0).all()
    # float32 as well
    k32 = theory.kernels(net, x.astype(np.float32))
    assert k32.dtype == np.float32
    assert (np.asarray(k32.nngp)[[0, 2]] == 0).all() and (np.asarray(k32.ntk)[:, [0, 2]] == 0).all()
    assert np.isfinite(np.asarray(k32.nngp)).all()


def test_all_inputs_zero():
    k = theory.kernels(theory.MLP(3, "relu"), np.zeros((3, 2)))
    assert (np.asarray(k.nngp) == 0).all() and (np.asarray(k.ntk) == 0).all()


def test_zero_input_with_bias_is_not_degenerate():
    # With b_std > 0 the zero input has the bias variance; the kernel is then an ordinary PSD matrix.
    x = np.array([[0.0, 0.0], [1.0, -2.0]])
    k = theory.kernels(theory.MLP(2, "relu", w_std=1.0, b_std=0.5), x)
    nngp = np.asarray(k.nngp)
    assert nngp[0, 0] > 0 and np.isfinite(nngp).all()
    # q = b^2 = 0.25 after the first Dense, then q' = q / 2 + 0.25 twice: 0.375, 0.4375.
    assert math.isclose(nngp[0, 0], 0.4375, rel_tol=1e-15)


# -- bad inputs and activations name their real cause (issue 15) ------------------------------------------------
def test_inputs_too_large_for_the_dtype_are_not_called_chaotic():
    x = np.ones((2, 3), np.float32) * 1e30
    with pytest.raises(ValueError, match=r"x1 is too large for float32.*rescale the inputs.*float64"):
        theory.kernels(theory.MLP(2, "tanh", 1.4, 0.1), x)
    with pytest.raises(ValueError, match=r"x2 is too large"):
        theory.kernels(theory.MLP(2, "relu", 1.4, 0.1), np.ones((2, 3)), np.ones((2, 3)) * 1e200)


def test_activation_undefined_on_part_of_the_line():
    with pytest.raises(ValueError, match=r"Activation\(log\) returns nan at x = -20.*finite on all of R"):
        theory.Activation(jnp.log)
    with pytest.raises(ValueError, match=r"returns inf"):
        theory.Activation(lambda z: 1 / (z - 0.5))


def test_activation_that_is_not_elementwise():
    with pytest.raises(ValueError, match=r"not elementwise: it maps shape \(48,\) to \(\)"):
        theory.Activation(lambda z: jnp.sum(z))
    with pytest.raises(ValueError, match=r"depends on the other entries"):
        theory.Activation(lambda z: z - jnp.mean(z))
    with pytest.raises(ValueError, match=r"fails on a 1-D array"):
        theory.Activation(lambda z: z @ z.T[:3])


def test_activation_built_inside_jit_is_not_probed():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)

    def k(a):
        return theory.kernels(theory.MLP(1, theory.Activation(lambda z: jnp.tanh(a * z)), 1.4, 0.1), x).nngp

    # Under jit the automatic activation falls back to the 2-D rule (degree 40): ~1e-5 from the series here.
    np.testing.assert_allclose(jax.jit(k)(1.0), k(1.0), rtol=1e-4)


def test_quadrature_degree_too_small_is_refused():
    """tanh(quadrature_degree=1) used to return all-zero kernels with a warning; now a ValueError names the cause
    and the remedies (the automatic default, or a degree large enough for the variances met)."""
    net = theory.MLP(depth=1, activation=activations.tanh(quadrature_degree=1), w_std=1.5, b_std=0.1)
    with pytest.raises(ValueError, match=r"1-point Gauss-Hermite rule .* leave quadrature_degree unset .* at least"):
        theory.kernels(net, X)
    auto = theory.kernels(theory.MLP(depth=1, activation="tanh", w_std=1.5, b_std=0.1), X)
    assert np.all(np.isfinite(auto.nngp)) and np.all(np.diag(auto.nngp) > 0)


def test_chosen_series_beyond_its_variance_is_refused():
    """A series the user chose for small variances is not silently used beyond them (nor lengthened)."""
    rule = hermite.choose_rule(jnp.tanh, 0.05)
    net = theory.MLP(depth=2, activation=activations.get("tanh").with_series(rule), w_std=1.0, b_std=0.1)
    x = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(theory.kernels.QuadratureAccuracyError, match=r"reach .*beyond the 0.05 .*with_series"):
        theory.kernels(net, x)
    ok = theory.MLP(depth=2, activation=activations.get("tanh").with_series(hermite.choose_rule(jnp.tanh, 2.0)),
                    w_std=1.0, b_std=0.1)
    np.testing.assert_allclose(theory.kernels(ok, x).ntk, theory.kernels(theory.MLP(
        depth=2, activation="tanh", w_std=1.0, b_std=0.1), x).ntk, rtol=1e-6)
