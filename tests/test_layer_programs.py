"""Layer programs (``theory.serial`` of ``theory.layers``): exact properties of ``theory.kernels`` and the errors.

Properties use closed-form activations in float64, so they hold to rounding: 1x1 images are the MLP, CIRCULAR
padding makes a GlobalAvgPool CNN invariant to cyclic shifts, LayerNorm after a bias-free first layer makes the
kernels invariant to rescaling an input, the kernels are symmetric PSD, cross kernels are blocks of the full one,
blocking and scanning change nothing, and the kernels compose with ``jax.jit`` / ``vmap`` / ``grad``.
Errors are ``ValueError`` naming the offending layer (position and kind).
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import networks
from theory import layers as nn
from theory import recursion, tiling

RNG = np.random.default_rng(20240611)
# Generic inputs: no two examples identical or parallel.
IMAGES = RNG.normal(size=(4, 5, 4, 2))  # (N, H, W, C), non-square on purpose
IMAGES2 = RNG.normal(size=(3, 5, 4, 2))
SQUARE = RNG.normal(size=(4, 6, 6, 2))  # for cyclic shifts by multiples of a stride of 2
SQUARE2 = RNG.normal(size=(3, 6, 6, 2))
VECTORS = RNG.normal(size=(5, 3))
VECTORS2 = RNG.normal(size=(3, 3))


def _np(k):
    return np.asarray(k.nngp), np.asarray(k.ntk)


def assert_same(got, want, rtol, err_msg=""):
    """``|got - want| <= rtol (|want| + max |want|)``: relative, with entries near 0 measured against the
    kernel's scale (an exact identity up to rounding)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(), err_msg=err_msg)


def assert_kernels_same(got, want, rtol):
    for name in ("nngp", "ntk"):
        assert_same(getattr(got, name), getattr(want, name), rtol, err_msg=name)


def relu():
    return nn.Elementwise("relu")


def erf():
    return nn.Elementwise("erf")


# -- programs shared by several tests -------------------------------------------------------------------------------
# Compile time dominates (each new program structure, input shape or option compiles ~1 s of XLA on 2 cores; the
# numbers w_std, b_std, ... are arguments, not constants), so tests share structures and input shapes where they can.
PROGRAMS = {
    "gap": theory.serial(nn.Conv((3, 3), w_std=1.4, b_std=0.1), relu(), nn.Conv((3, 3), w_std=1.4), erf(),
                         nn.GlobalAvgPool(), nn.Dense(b_std=0.1)),
    "flatten": theory.serial(nn.Conv((3, 3), w_std=1.4, b_std=0.1), relu(),
                             nn.Conv((2, 2), strides=(2, 1), padding="VALID", w_std=1.4), relu(), nn.Flatten(),
                             nn.Dense()),
    "residual": theory.serial(nn.Conv((3, 3), w_std=1.4, b_std=0.1),
                              nn.Residual(relu(), nn.Conv((3, 3), w_std=1.4), scale=0.5),
                              nn.Residual(relu(), nn.Conv((3, 3), w_std=1.4, b_std=0.2), scale=0.5),
                              relu(), nn.GlobalAvgPool(), nn.Dense()),
    # The example of the layer-program docs: pooling, a residual block, LayerNorm.
    "layernorm": theory.serial(nn.Conv((3, 3), padding="SAME", w_std=2**0.5, b_std=0.1), relu(),
                               nn.Conv((3, 3), w_std=2**0.5), nn.AvgPool((2, 2), strides=(2, 2)),
                               nn.Residual(relu(), nn.Conv((3, 3), w_std=2**0.5), scale=0.5),
                               nn.LayerNorm(), relu(), nn.GlobalAvgPool(), nn.Dense(w_std=1.0)),
}


# -- 1. 1x1 images are the MLP ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("activation", "w_std", "b_std", "depth", "readout"),
    [("relu", 2**0.5, 0.1, 3, "flatten-2d"), ("relu", 2**0.5, 0.1, 3, "gap-1d"), ("erf", 1.5, 0.2, 2, "gap-2d"),
     ("erf", 1.5, 0.2, 2, "flatten-1d")],
    ids=["relu-flatten-2d", "relu-gap-1d", "erf-gap-2d", "erf-flatten-1d"],
)
def test_one_by_one_images_are_the_mlp(activation, w_std, b_std, depth, readout):
    """Conv((1, 1)) layers on (N, 1, 1, C) images (or Conv((1,)) on (N, 1, C) sequences) are Dense layers on the
    (N, C) vectors: same input kernel x.x'/C, same fan-in C, one position; Flatten / GlobalAvgPool of one position
    is the identity. So the program equals theory.MLP(depth) exactly."""
    nd = 2 if readout.endswith("2d") else 1

    def conv():
        return nn.Conv((1,) * nd, w_std=w_std, b_std=b_std)

    body = [conv()]
    for _ in range(depth - 1):
        body += [nn.Elementwise(activation), conv()]
    pool = nn.Flatten() if readout.startswith("flatten") else nn.GlobalAvgPool()
    net = theory.serial(*body, nn.Elementwise(activation), pool, nn.Dense(w_std=w_std, b_std=b_std))
    assert net.n_recorded == depth + 1
    spatial = (1,) * nd
    x1 = VECTORS.reshape(VECTORS.shape[0], *spatial, -1)
    x2 = VECTORS2.reshape(VECTORS2.shape[0], *spatial, -1)
    mlp = theory.MLP(depth, activation, w_std, b_std)
    assert_kernels_same(theory.kernels(net, x1, x2), theory.kernels(mlp, VECTORS, VECTORS2), rtol=1e-12)


# -- 2. CIRCULAR padding: invariance to a common cyclic shift -------------------------------------------------------
def _roll(x, shift):
    for axis, s in enumerate(shift, start=1):
        x = np.roll(x, s, axis=axis)
    return x


CIRCULAR = theory.serial(nn.Conv((3, 2), padding="CIRCULAR", w_std=1.4, b_std=0.1), relu(),
                         nn.Conv((3, 3), strides=(1, 1), padding="CIRCULAR", w_std=1.3),
                         nn.AvgPool((2, 2), padding="CIRCULAR"), erf(), nn.GlobalAvgPool(), nn.Dense(b_std=0.1))
# A stride of 2 commutes with shifts by multiples of 2 only (it samples positions 0, 2, 4).
CIRCULAR_STRIDE2 = theory.serial(nn.Conv((3, 3), strides=(2, 2), padding="CIRCULAR", w_std=1.4, b_std=0.1), relu(),
                                 nn.Conv((3, 3), padding="CIRCULAR", w_std=1.4), relu(), nn.GlobalAvgPool(),
                                 nn.Dense())


@pytest.mark.parametrize(("name", "shifts"), [("stride1", [(1, 0), (0, 5), (2, 3), (5, 4)]),
                                              ("stride2", [(2, 0), (0, 4), (4, 2)])], ids=["stride1", "stride2"])
def test_circular_padding_is_invariant_to_cyclic_shifts(name, shifts):
    """Convolutions and pooling with periodic padding commute with cyclic shifts, activations act per position,
    and GlobalAvgPool averages over all (position, position') pairs: shifting both inputs leaves the kernels
    unchanged (the cross kernel, and the kernel of one set)."""
    net = CIRCULAR if name == "stride1" else CIRCULAR_STRIDE2
    cross, same = theory.kernels(net, SQUARE, SQUARE2), theory.kernels(net, SQUARE)
    for shift in shifts:
        assert_kernels_same(theory.kernels(net, _roll(SQUARE, shift), _roll(SQUARE2, shift)), cross, rtol=1e-12)
        assert_kernels_same(theory.kernels(net, _roll(SQUARE, shift)), same, rtol=1e-12)


def test_same_padding_and_odd_shifts_of_strides_are_not_invariant():
    """Negative control: zero padding breaks the invariance (the edges see zeros), and so does a shift that is not
    a multiple of the stride."""
    cases = [(PROGRAMS["gap"], IMAGES, IMAGES2, (1, 0)), (PROGRAMS["gap"], IMAGES, IMAGES2, (2, 3)),
             (CIRCULAR_STRIDE2, SQUARE, SQUARE2, (1, 0))]
    for net, x1, x2, shift in cases:
        for a, b in zip(_np(theory.kernels(net, _roll(x1, shift), _roll(x2, shift))), _np(theory.kernels(net, x1, x2)),
                        strict=True):
            assert np.abs(a - b).max() > 1e-3 * np.abs(b).max(), (shift, a, b)


# -- 3. LayerNorm: scale invariance --------------------------------------------------------------------------------
@pytest.mark.parametrize(("program", "eps"), [("mlp", 1e-12), ("mlp", 0.0), ("cnn", 0.0)])
def test_layernorm_after_a_bias_free_layer_is_scale_invariant(program, eps):
    """A bias-free first Dense / Conv is linear in x, so x -> c x multiplies its kernel's rows by c (c^2 on the
    diagonal); LayerNorm divides by sqrt(q(x, x) q(x', x')) at every position, so everything after it is
    unchanged. eps = 1e-12 perturbs this by ~eps / q ~ 1e-11 relative (the default eps)."""
    if program == "mlp":
        net = theory.serial(nn.Dense(w_std=1.3), nn.LayerNorm(eps), relu(), nn.Dense(w_std=1.4, b_std=0.2),
                            nn.LayerNorm(eps), erf(), nn.Dense(b_std=0.1))
        x1, x2 = VECTORS, VECTORS2
    else:
        net = theory.serial(nn.Conv((3, 3), w_std=1.3), nn.LayerNorm(eps), relu(),
                            nn.Conv((3, 3), strides=(2, 1), w_std=1.4, b_std=0.2), nn.LayerNorm(eps), relu(),
                            nn.Flatten(), nn.Dense(b_std=0.1))
        x1, x2 = IMAGES, IMAGES2
    rtol = 1e-12 if eps == 0 else 1e-10
    same, cross = theory.kernels(net, x1), theory.kernels(net, x1, x2)
    for c, i in ((0.3, 0), (7.0, 2), (0.3, 3)):
        y1, y2 = x1.copy(), x2.copy()
        y1[i] *= c
        y2[1] /= c
        assert_kernels_same(theory.kernels(net, y1), same, rtol)
        assert_kernels_same(theory.kernels(net, y1, y2), cross, rtol)


# -- 4. symmetric and PSD -------------------------------------------------------------------------------------------
BOTH = np.concatenate([IMAGES, IMAGES2])  # 7 rows


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_kernels_are_symmetric_and_psd(name):
    """Also with an identical pair (rows 1 and 4) and a parallel pair (row 5 = 2 x row 0), where the correlation
    is exactly 1 and the Gram matrix of the relu-type parts is singular."""
    x = np.concatenate([IMAGES, IMAGES[1:2], 2 * IMAGES[:1], IMAGES2[:1]])  # shaped like BOTH: shared compiles
    for k in _np(theory.kernels(PROGRAMS[name], x)):
        assert np.array_equal(k, k.T)
        eig = np.linalg.eigvalsh(k)
        assert eig.min() >= -1e-10 * eig.max(), eig
        assert np.all(np.diag(k) > 0)
        assert np.array_equal(k[1], k[4])  # identical inputs have identical kernels, bit for bit


# -- 5. consistency: blocks of the full kernel, memory blocking ---------------------------------------------------
@pytest.mark.parametrize("name", ["gap", "flatten"])
def test_cross_kernels_are_blocks_of_the_full_kernel(name):
    net = PROGRAMS[name]
    full, cross = _np(theory.kernels(net, BOTH)), _np(theory.kernels(net, IMAGES, IMAGES2))
    for f, c in zip(full, cross, strict=True):
        assert_same(c, f[:4, 4:], rtol=1e-10)


def test_memory_tiling_changes_nothing(monkeypatch):
    """memory_budget=1 forces one pair per tile; a budget for 4 or 9 pairs makes 2x2 or 3x3 tiles of 7 rows, the
    last one shifted back to overlap its neighbour. Per-layer kernels are tiled the same way; the symmetric
    kernel stays exactly symmetric."""
    net = PROGRAMS["flatten"]
    layouts = []
    original = tiling.plan_tiles

    def spy(*args, **kwargs):
        layouts.append(original(*args, **kwargs))
        return layouts[-1]

    monkeypatch.setattr(tiling, "plan_tiles", spy)
    reference, cross = theory.kernels(net, BOTH), theory.kernels(net, IMAGES, IMAGES2)
    assert [t.grid for t in layouts] == [(1, 1), (1, 1)]
    analysis = nn.analyse(net, recursion.shape_of(jnp.asarray(BOTH)))
    per_pair = recursion.pair_bytes(analysis.plan, analysis.n_recorded, 8, True, False)
    for pairs in (4, 9):
        tiled = theory.kernels(net, BOTH, memory_budget=pairs * per_pair)
        assert layouts[-1].size_r == layouts[-1].size_c == math.isqrt(pairs)
        assert_kernels_same(tiled, reference, rtol=1e-12)
        assert np.array_equal(np.asarray(tiled.nngp), np.asarray(tiled.nngp).T)
    assert_kernels_same(theory.kernels(net, IMAGES, IMAGES2, memory_budget=1), cross, rtol=1e-12)
    assert layouts[-1].grid == (4, 3)
    per_layer = theory.kernels(net, BOTH, per_layer=True, memory_budget=1)
    assert per_layer.nngp.shape == (3, 7, 7)
    assert_same(per_layer.nngp[-1], reference.nngp, rtol=1e-12)
    assert_same(per_layer.ntk[-1], reference.ntk, rtol=1e-12)


# -- 6. scanned runs ------------------------------------------------------------------------------------------------
def test_scanned_runs_change_nothing():
    """Six repeats of one [Elementwise, Conv] unit are one lax.scan; the same layers as distinct objects with
    single Identity layers at irregular places are six unscanned units. Same kernels, per layer too."""
    act, conv = relu(), nn.Conv((3, 3), w_std=1.4, b_std=0.1)
    stem, head = nn.Conv((3, 3), w_std=1.2), [erf(), nn.Flatten(), nn.Dense()]
    scanned = theory.serial(stem, *[layer for _ in range(6) for layer in (act, conv)], *head)
    layers = [stem]
    for i in range(6):
        unit = [relu(), nn.Conv((3, 3), w_std=1.4, b_std=0.1)]
        unit.insert((0, 1, 2, 1, 0, 1)[i], nn.Identity())  # no repeats, no two Identity layers in a row
        layers += unit
    unrolled = theory.serial(*layers, *head)
    for net, want in ((scanned, [1, 6, 1, 1, 1]), (unrolled, [1] * 22)):
        assert [s.count for s in nn.analyse(net, recursion.shape_of(jnp.asarray(IMAGES))).plan] == want
    per_scanned = theory.kernels(scanned, IMAGES, per_layer=True)
    per_unrolled = theory.kernels(unrolled, IMAGES, per_layer=True)
    assert per_scanned.nngp.shape == (8, 4, 4)
    assert_kernels_same(per_unrolled, per_scanned, 1e-12)


@pytest.mark.parametrize("repeated", ["identity", "layernorm"])
def test_runs_of_parameter_free_layers(repeated):
    """Identity twice is Identity; LayerNorm twice is LayerNorm (its output already has unit variance, eps = 0)."""
    layer = {"identity": nn.Identity(), "layernorm": nn.LayerNorm(0.0)}[repeated]
    once = theory.serial(nn.Dense(w_std=1.3, b_std=0.1), layer, relu(), nn.Dense())
    twice = theory.serial(nn.Dense(w_std=1.3, b_std=0.1), layer, layer, relu(), nn.Dense())
    assert_kernels_same(theory.kernels(twice, VECTORS), theory.kernels(once, VECTORS), 1e-12)


# -- 7. jit / vmap / grad -------------------------------------------------------------------------------------------
RELU_MLP = theory.MLP(3, "relu", 2**0.5, 0.1)


def _erf_cnn(w_std=1.5, b_std=0.1):
    return theory.serial(nn.Conv((3, 3), w_std=w_std, b_std=b_std), erf(), nn.Conv((2, 2), padding="VALID", w_std=1.3),
                         erf(), nn.Flatten(), nn.Dense(b_std=0.1))


@pytest.mark.parametrize("name", ["erf-cnn", "relu-mlp"])
def test_jit_and_vmap_equal_eager(name):
    net, x = (_erf_cnn(), IMAGES) if name == "erf-cnn" else (RELU_MLP, VECTORS)
    eager = theory.kernels(net, x)
    jitted = jax.jit(lambda x: theory.kernels(net, x))(x)
    assert isinstance(jitted, theory.Kernels)
    assert_kernels_same(jitted, eager, 1e-13)
    sets = np.stack([x, 1.3 * x[::-1], x + 0.1])
    batched = jax.vmap(lambda x: theory.kernels(net, x))(sets)
    loop = [theory.kernels(net, s) for s in sets]
    assert_same(batched.nngp, np.stack([k.nngp for k in loop]), 1e-13)
    assert_same(batched.ntk, np.stack([k.ntk for k in loop]), 1e-13)


def _directional_check(f, x, seed, n_directions=3, h=1e-6, rtol=1e-5):
    """The Jacobian of f (a scalar or a few numbers) at x, applied to random directions v, against central
    differences of f along v."""
    rng = np.random.default_rng(seed)
    jac = np.asarray(jax.jacrev(f)(x))  # (*f.shape, *x.shape)
    assert np.all(np.isfinite(jac))
    for _ in range(n_directions):
        v = rng.normal(size=np.shape(x))
        fd = (np.asarray(f(x + h * v)) - np.asarray(f(x - h * v))) / (2 * h)
        np.testing.assert_allclose(np.tensordot(jac, v, axes=np.ndim(x)), fd, rtol=rtol)


def _sums(k):
    return jnp.stack([k.nngp.sum(), k.ntk.sum()])


@pytest.mark.parametrize("name", ["erf-cnn", "relu-mlp"])
def test_grad_wrt_inputs_matches_finite_differences(name):
    """d/dx of the NNGP's and the NTK's sums over all pairs (generic inputs: no correlation is 1 off the
    diagonal)."""
    net, x = (_erf_cnn(), IMAGES) if name == "erf-cnn" else (RELU_MLP, VECTORS)
    _directional_check(lambda x: _sums(theory.kernels(net, x)), x, seed=1)


def _scalar_check(f, values, h=1e-6, rtol=1e-5):
    """Gradients of f (two numbers) wrt each of its scalar arguments, against central differences."""
    jac = np.asarray(jax.jacrev(f, argnums=tuple(range(len(values))))(*values))  # (n_args, 2)
    for i in range(len(values)):
        up, down = list(values), list(values)
        up[i] += h
        down[i] -= h
        fd = (np.asarray(f(*up)) - np.asarray(f(*down))) / (2 * h)
        np.testing.assert_allclose(jac[i], fd, rtol=rtol, err_msg=f"argument {i}")


def test_grad_wrt_mlp_hyperparameters_matches_finite_differences():
    """jax.grad(lambda w: theory.kernels(theory.MLP(3, "erf", w_std=w), x).nngp.sum())(1.3), and for b_std and
    the NTK (the numbers are pytree leaves of the layers, so a network built inside the function is traced)."""
    _scalar_check(lambda w, b: _sums(theory.kernels(theory.MLP(3, "erf", w_std=w, b_std=b), VECTORS)), [1.3, 0.2])


def test_grad_wrt_conv_hyperparameters_matches_finite_differences():
    """w_std and b_std of a Conv (both convolutions share them) and a residual branch's scale."""
    def sums(w, b, s):
        net = theory.serial(nn.Conv((3, 3), w_std=w, b_std=b), nn.Residual(erf(), nn.Conv((3, 3), w_std=w), scale=s),
                            erf(), nn.Flatten(), nn.Dense())
        return _sums(theory.kernels(net, IMAGES))

    _scalar_check(sums, [1.3, 0.2, 0.7])


def test_vmap_over_w_std_equals_a_loop():
    ws = np.array([0.8, 1.3, 2.0])

    def ntk(w):
        return theory.kernels(theory.MLP(2, "relu", w_std=w, b_std=0.1), VECTORS).ntk

    assert_same(jax.vmap(ntk)(ws), np.stack([ntk(w) for w in ws]), 1e-13)


@pytest.mark.parametrize("name", ["relu-mlp", "relu-cnn"])
def test_grad_is_finite_at_identical_rows(name):
    """The diagonal (and an identical pair) have correlation exactly 1, where relu's duals have infinite slope in
    the correlation: the gradients must still be finite, wrt the inputs and wrt w_std, for the NNGP and the NTK."""
    if name == "relu-mlp":
        x, make = VECTORS.copy(), lambda w: theory.MLP(3, "relu", w_std=w, b_std=0.1)
    else:
        x = IMAGES.copy()

        def make(w):
            return theory.serial(nn.Conv((3, 3), w_std=w, b_std=0.1), relu(), nn.Conv((3, 3), w_std=w), relu(),
                                 nn.Flatten(), nn.Dense())
    x[3] = x[0]

    def total(x, w):
        k = theory.kernels(make(w), x)
        return k.nngp.sum() + k.ntk.sum()

    gx, gw = jax.grad(total, argnums=(0, 1))(x, 1.4)
    assert np.all(np.isfinite(np.asarray(gx))) and np.isfinite(float(gw))


def test_grad_of_an_identical_pair_in_the_symmetric_kernel_matches_finite_differences():
    """With x[1] = x[0], K(x)[0, 1] is the symmetric kernel at a correlation-1 pair; erf's kernel is smooth, so
    the gradient is the derivative of the kernel function there (rows moved apart by h: central difference)."""
    net = theory.MLP(2, "erf", 1.5, 0.1)
    x = VECTORS.copy()
    x[1] = x[0]
    _directional_check(lambda x: (lambda k: jnp.stack([k.nngp[0, 1], k.ntk[0, 1]]))(theory.kernels(net, x)), x,
                       seed=2)


def test_grad_of_an_identical_pair_in_the_cross_kernel_matches_finite_differences():
    """K(x1, x2)[0, 0] with x2[0] = x1[0]: the derivative wrt x2 (and x1) is that of a smooth function of x2;
    autodiff gives another number (e.g. d/dx2 = [-0.0707, 0.0743, -0.360] vs central differences [0.106, -0.112,
    0.541] for this erf MLP(1), x1 = default_rng(0).normal(size=(2, 3))), while at x2 + 1e-9 it gives the FD
    value: the gradient jumps at the identical pair."""
    net = theory.MLP(1, "erf", 1.5, 0.0)
    x1 = np.random.default_rng(0).normal(size=(2, 3))
    x2 = x1[:1].copy()
    _directional_check(lambda y: theory.kernels(net, x1, y).nngp[0, 0], x2, seed=3)
    _directional_check(lambda y: theory.kernels(net, y, x2).nngp[0, 0], x1, seed=4)


def test_activation_on_the_raw_input_is_applied_exactly():
    """An activation before the first weight layer reads a deterministic input (no Gaussian needed): the program
    equals the rest of it on phi(x)."""
    rest = [nn.Dense(w_std=1.3, b_std=0.1), relu(), nn.Dense()]
    k = theory.kernels(theory.serial(erf(), *rest), VECTORS, VECTORS2)
    assert_kernels_same(k, theory.kernels(theory.serial(*rest), jax.scipy.special.erf(VECTORS),
                                          jax.scipy.special.erf(VECTORS2)), 1e-13)


# -- 8. errors --------------------------------------------------------------------------------------------------------
def _where(position, total, name):
    return re.escape(f"layer {position} of {total} ({name})")


def _conv_gap(*middle):
    return theory.serial(nn.Conv((3, 3), w_std=1.4), *middle, nn.GlobalAvgPool(), nn.Dense())


ERRORS = {
    "conv-fed-vectors": (lambda: theory.kernels(_conv_gap(relu()), VECTORS),
                         r"x1 must have shape \(batch, height, width, channels\) for Serial\(layers=\(Conv\("),
    "1d-conv-after-2d": (lambda: theory.kernels(_conv_gap(relu(), nn.Conv((3,)), relu()), IMAGES),
                         _where(3, 6, "Conv") + r": a Conv with filter_shape \(3,\) needs inputs of shape "
                         r"\(batch, length, channels\), but its input has 2 spatial dimension"),
    "mlp-fed-images": (lambda: theory.kernels(theory.MLP(2), IMAGES),
                       r"x1 must have shape \(batch, features\), got shape \(4, 5, 4, 2\)"),
    "dense-program-fed-images": (lambda: theory.kernels(theory.serial(nn.Dense(), relu(), nn.Dense()), IMAGES),
                                 r"x1 must have shape \(batch, features\), got shape \(4, 5, 4, 2\)"),
    "valid-filter-too-large": (lambda: theory.kernels(theory.serial(nn.Conv((3, 5), padding="VALID"), relu(),
                                                                    nn.GlobalAvgPool(), nn.Dense()), IMAGES),
                               _where(1, 4, "Conv") + r": the filter \(3, 5\) is larger than its input's spatial "
                               r"shape \(5, 4\) with padding 'VALID'"),
    "valid-filter-too-large-later": (lambda: theory.kernels(_conv_gap(relu(), nn.AvgPool((2, 2)),
                                                                      nn.Conv((5, 1), padding="VALID")), IMAGES),
                                     _where(4, 6, "Conv") + r": the filter \(5, 1\) is larger than its input's "
                                     r"spatial shape \(4, 3\)"),
    "avgpool-does-not-fit": (lambda: theory.kernels(_conv_gap(nn.AvgPool((2, 5))), IMAGES),
                             _where(2, 4, "AvgPool") + r": the pooling window \(2, 5\) does not fit its input's "
                             r"spatial shape \(5, 4\) with padding 'VALID'"),
    "last-not-dense": (lambda: theory.kernels(theory.serial(nn.Conv((3, 3)), relu(), nn.GlobalAvgPool()), IMAGES),
                       r"the last layer must be a Dense readout, got " + _where(3, 3, "GlobalAvgPool")),
    "last-not-dense-vectors": (lambda: theory.kernels(theory.serial(nn.Dense(), relu()), VECTORS),
                               r"the last layer must be a Dense readout, got " + _where(2, 2, "Elementwise(relu)")),
    "dense-readout-on-images": (lambda: theory.kernels(theory.serial(nn.Conv((3, 3)), relu(), nn.Dense()), IMAGES),
                                r"the readout " + _where(3, 3, "Dense") + r" gets inputs with spatial shape "
                                r"\(5, 4\): add Flatten\(\) or GlobalAvgPool\(\)"),
    "global-avg-pool-on-vectors": (lambda: theory.kernels(theory.serial(nn.Dense(), relu(), nn.GlobalAvgPool(),
                                                                        nn.Dense()), VECTORS),
                                   _where(3, 4, "GlobalAvgPool") + r": GlobalAvgPool pools over spatial positions, "
                                   r"but its input is a vector"),
    "layernorm-on-one-feature": (lambda: theory.kernels(theory.serial(nn.LayerNorm(), nn.Dense()), VECTORS[:, :1]),
                                 _where(1, 2, "LayerNorm") + r": LayerNorm normalises over the channel axis, but its "
                                 r"input has 1 feature"),
    "layernorm-after-relu": (lambda: theory.kernels(theory.serial(nn.Dense(), relu(), nn.LayerNorm(), nn.Dense()),
                                                    VECTORS),
                             _where(3, 4, "LayerNorm") + r": the input of LayerNorm is not a centred Gaussian"),
    "relu-relu": (lambda: theory.kernels(theory.serial(nn.Dense(), relu(), relu(), nn.Dense()), VECTORS),
                  _where(3, 4, "Elementwise(relu)") + r": the input of Elementwise\(relu\) is not a Gaussian"),
    "relu-avgpool-relu": (lambda: theory.kernels(_conv_gap(relu(), nn.AvgPool((2, 2)), relu()), IMAGES),
                          _where(4, 6, "Elementwise(relu)") + r": the input of Elementwise\(relu\) is not a Gaussian"),
    "flatten-relu": (lambda: theory.kernels(theory.serial(nn.Conv((3, 3)), nn.Flatten(), relu(), nn.Dense()), IMAGES),
                     _where(3, 4, "Elementwise(relu)") + r": the input of Elementwise\(relu\) is not a Gaussian"),
    "residual-on-activation": (lambda: theory.kernels(_conv_gap(relu(), nn.Residual(relu(), nn.Conv((3, 3)))),
                                                      IMAGES),
                               _where(3, 5, "Residual(Elementwise(relu), Conv)") + r", branch "
                               + _where(1, 2, "Elementwise(relu)") + r": the input of Elementwise\(relu\) is not"),
    "residual-without-weights": (lambda: theory.kernels(_conv_gap(nn.Residual(relu()), relu()), IMAGES),
                                 _where(2, 5, "Residual(Elementwise(relu))") + r": the branch of "
                                 r"Residual\(Elementwise\(relu\)\) has no Dense or Conv on its path"),
    "residual-changes-shape": (lambda: theory.kernels(_conv_gap(nn.Residual(relu(), nn.Conv((3, 3), padding="VALID"))),
                                                      IMAGES),
                               _where(2, 4, "Residual(Elementwise(relu), Conv)") + r": the branch maps an input of "
                               r"shape \(5, 4, width channels\) to \(3, 2, width channels\); a residual branch must "
                               r"keep the shape"),
    "serial-non-layer": (lambda: theory.serial(nn.Dense(), "relu", nn.Dense()),
                         r"serial: argument 2 is not a layer .* got 'relu'"),
    "serial-empty": (lambda: theory.serial(), r"serial needs at least one layer"),
    "residual-non-layer": (lambda: nn.Residual(nn.Dense(), np.tanh), r"Residual: the branch must consist of layers"),
    "residual-empty": (lambda: nn.Residual(), r"Residual needs at least one layer in its branch"),
    "kernels-non-program": (lambda: theory.kernels([nn.Dense()], VECTORS), r"kernels\(\) takes a layer program"),
    "conv-filter-zero": (lambda: nn.Conv((0, 3)), r"Conv: filter_shape must be a tuple of one or two integers >= 1"),
    "conv-filter-3d": (lambda: nn.Conv((3, 3, 3)), r"Conv: filter_shape must be a tuple of one or two integers"),
    "conv-filter-string": (lambda: nn.Conv("3x3"), r"Conv: filter_shape must be a tuple .* got '3x3'"),
    "conv-filter-float": (lambda: nn.Conv((3.0, 3)), r"Conv: filter_shape must be a tuple .* got \(3\.0, 3\)"),
    "conv-padding": (lambda: nn.Conv((3, 3), padding="FULL"),
                     r"Conv: padding must be one of \('SAME', 'VALID', 'CIRCULAR'\), got 'FULL'"),
    "conv-padding-none": (lambda: nn.Conv((3, 3), padding=None), r"Conv: padding must be one of .* got None"),
    "conv-strides-length": (lambda: nn.Conv((3, 3), strides=(1,)),
                            r"Conv: strides \(1,\) and filter_shape \(3, 3\) must have one entry per spatial"),
    "conv-strides-zero": (lambda: nn.Conv((3, 3), strides=(0, 1)),
                          r"Conv: strides must be a tuple of one or two integers >= 1 .* got \(0, 1\)"),
    "conv-strides-bool": (lambda: nn.Conv((3,), strides=(True,)), r"Conv: strides must be a tuple"),
    "conv-w_std": (lambda: nn.Conv((3, 3), w_std=-1.0), r"Conv: w_std must be finite and >= 0, got -1\.0"),
    "avgpool-padding": (lambda: nn.AvgPool((2, 2), padding="REFLECT"), r"AvgPool: padding must be one of"),
    "avgpool-strides-length": (lambda: nn.AvgPool((2, 2), strides=(2,)),
                               r"AvgPool: strides \(2,\) and window_shape \(2, 2\) must have one entry"),
    "layernorm-eps": (lambda: nn.LayerNorm(eps=-1.0), r"LayerNorm: eps must be a finite number >= 0"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_say_what_and_where(case):
    build, match = ERRORS[case]
    with pytest.raises(ValueError, match=match):
        build()


def test_errors_are_raised_for_finite_networks_too():
    """networks.init runs the same analysis: the same message, naming the same layer."""
    net = theory.serial(nn.Dense(), relu(), relu(), nn.Dense())
    with pytest.raises(ValueError, match=_where(3, 4, "Elementwise(relu)") + ": the input of"):
        networks.init(net, 8, jax.random.key(0), features=3)
    with pytest.raises(ValueError, match=r"the readout " + _where(3, 3, "Dense") + r" gets inputs with spatial"):
        networks.init(theory.serial(nn.Conv((3, 3)), relu(), nn.Dense()), 8, jax.random.key(0), features=(5, 4, 2))


def test_finite_network_errors_show_the_real_spatial_shape():
    with pytest.raises(ValueError, match=r"spatial shape \(5, 4\)"):
        networks.init(theory.serial(nn.Conv((3, 3)), relu(), nn.Dense()), 8, jax.random.key(0), features=(5, 4, 2))


def _init(net, features):
    """networks.init at width 8 under jit (one compilation rather than many eager primitives)."""
    return jax.jit(lambda key: networks.init(net, 8, key, features=features))(jax.random.key(0))


def _finite_cnn(filter_shape=(3, 3)):
    return theory.serial(nn.Conv(filter_shape, w_std=1.4, b_std=0.1), relu(), nn.GlobalAvgPool(), nn.Dense())


def test_apply_with_parameters_for_another_feature_count():
    net = _finite_cnn()
    params = _init(net, 3)
    for fn in (networks.apply, networks.empirical_ntk):
        with pytest.raises(ValueError, match=r"Conv has parameters for 3 input channels but its input has 2 "
                                             r"\(shape \(4, 5, 4, 2\)\): the parameters were made for other inputs"):
            fn(net, params, IMAGES)
    flat = theory.serial(nn.Conv((3, 3)), relu(), nn.Flatten(), nn.Dense())
    with pytest.raises(ValueError, match=r"Dense has parameters for 160 input channels but its input has 128"):
        networks.apply(flat, _init(flat, (5, 4, 2)), IMAGES[:, :4])


def test_apply_with_parameters_for_another_program():
    net = _finite_cnn()
    deeper = theory.serial(nn.Conv((3, 3)), relu(), nn.Conv((3, 3)), relu(), nn.Conv((3, 3)), relu(),
                           nn.GlobalAvgPool(), nn.Dense())  # segments (1, 2, 1, 1, 1) against (1, 1, 1, 1)
    for other in (deeper, theory.MLP(2)):
        params = _init(other, 2)
        with pytest.raises(ValueError, match=r"the parameters do not belong to this program"):
            networks.apply(net, params, IMAGES)
    with pytest.raises(ValueError, match=r"params must be the NetworkParams returned by networks.init"):
        networks.apply(net, {}, IMAGES)


@pytest.mark.parametrize("other", ["other-filter", "dense-weights", "same-segment-counts"])
def test_apply_with_parameters_of_the_same_layout_for_another_program(other):
    net = _finite_cnn()
    if other == "other-filter":
        params = _init(_finite_cnn((5, 5)), 2)
    elif other == "dense-weights":
        params = _init(theory.serial(nn.Dense(w_std=1.4, b_std=0.1), relu(), nn.GlobalAvgPool(), nn.Dense()), (5, 4, 2))
    else:  # segments (1, 1, 1, 1) like the program's, but other layers in them
        params = _init(theory.serial(nn.Conv((3, 3)), relu(), nn.Conv((3, 3)), relu(), nn.GlobalAvgPool(),
                                     nn.Dense()), 2)
        assert params.counts == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"parameters"):
        networks.apply(net, params, IMAGES)


def test_theory_kernels_is_the_function_and_the_module():
    # `theory.kernels(net, x)` is the public call; `import theory.kernels` still gives the module (not shadowed).
    import importlib

    module = importlib.import_module("theory.kernels")
    assert module is theory.kernels and callable(module)
    assert module.Kernels is theory.Kernels and module.KERNEL_NAMES == ("nngp", "ntk")
    x = np.eye(3)
    np.testing.assert_array_equal(module(theory.MLP(2), x).nngp, module.kernels(theory.MLP(2), x).nngp)
