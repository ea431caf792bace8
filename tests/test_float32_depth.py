"""float32 kernels against float64 over depth (issue 15): within 1e-3 of the kernel's scale up to depth 10,000
for relu, erf and tanh MLPs and ResNets, PSD up to the rounding of the entries; refused where not guaranteed.

The mechanism is the correlation gap carried in float32 (theory.gap); without it a relu MLP's normalised NTK was
0.025-0.040 instead of 0.2505 at depth 10,000.
"""

from __future__ import annotations

import jax
import mpmath
import numpy as np
import pytest

import theory
from theory import gap

X = np.random.default_rng(0).normal(size=(24, 6))


def _both(net, x=X):
    k64 = theory.kernels(net, x.astype(np.float64))
    k32 = theory.kernels(net, x.astype(np.float32))
    assert k64.dtype == np.float64 and k32.dtype == np.float32
    return k64, k32


def _check(net, x=X, tol=1e-3):
    k64, k32 = _both(net, x)
    n = x.shape[0]
    for name in ("nngp", "ntk"):
        a64, a32 = np.asarray(getattr(k64, name)), np.asarray(getattr(k32, name), np.float64)
        scale = np.sqrt(np.outer(np.diag(a64), np.diag(a64)))
        err = np.max(np.abs(a32 - a64) / scale)
        assert err <= tol, f"{name}: float32 off by {err:.2e} of the kernel's scale"
        # PSD up to the entries' accuracy: at depth the exact kernels are nearly rank one (smallest eigenvalues
        # ~1e-7 of the scale or 0), and the NTK's sum over 10^4 layers carries ~1e-6 of rounding in float32 (float64
        # itself gives -2e-6 of the scale for the leaky-relu NTK at depth 10,000): n x 2e-6 of the scale.
        assert np.linalg.eigvalsh(a32).min() >= -2e-6 * n * np.max(np.diag(a32)), name
    return k64, k32


DEEP = pytest.param(10_000, marks=pytest.mark.slow)  # ~20 s each: CI's second stage


@pytest.mark.parametrize("depth", [10, 1000, DEEP])
def test_relu_mlp_over_depth(depth):
    _, k32 = _check(theory.MLP(depth, "relu", w_std=2**0.5, b_std=0.0))
    if depth == 10_000:  # the normalised off-diagonal NTK the issue measured at 0.025-0.040 in float32
        t = np.asarray(k32.ntk, np.float64)
        off = t / np.sqrt(np.outer(np.diag(t), np.diag(t)))
        assert 0.24 < off[0, 1] < 0.26


@pytest.mark.parametrize("depth", [100, DEEP])
def test_erf_mlp_and_resnets_over_depth(depth):
    _check(theory.MLP(depth, "erf", w_std=1.5 if depth <= 100 else 1.0, b_std=0.1))  # 1.5: the NTK grows
    _check(theory.ResNet(depth, "relu", 2**0.5, 0.1))
    _check(theory.MLP(depth, "leaky_relu", w_std=1.4, b_std=0.05))


@pytest.mark.slow  # moved from the default suite for its time budget; CI's slow stage runs it
def test_tanh_over_depth():
    _check(theory.MLP(1000, "tanh", w_std=1.0, b_std=0.1))
    _check(theory.ResNet(300, "tanh", 1.0, 0.1))


@pytest.mark.slow
def test_tanh_depth_10000():
    _check(theory.MLP(10_000, "tanh", w_std=1.0, b_std=0.1))


def test_untracked_kinks_are_refused_in_float32():
    """A deep relu CNN (spatial kernels carry no gap) is refused in float32 with the remedy; float64 runs."""
    x = np.random.default_rng(1).normal(size=(3, 4, 2))
    depth = theory.kernels.FLOAT32_UNTRACKED_KINKS + 1
    unit = [theory.layers.Conv(filter_shape=(3,), padding="SAME", w_std=2**0.5), theory.layers.Elementwise("relu")]
    net = theory.serial(*unit * depth, theory.layers.Flatten(), theory.layers.Dense(1))
    with pytest.raises(ValueError, match=r"float32 cannot be trusted .*jax_enable_x64"):
        theory.kernels(net, x.astype(np.float32))
    assert np.all(np.isfinite(np.asarray(theory.kernels(net, x).nngp)))


def test_gap_rules_against_float64():
    """The gap's update rules (affine map, sum of kernels, relu dual) keep relative accuracy where the naive
    difference sqrt(q11 q22) - q12 in float32 has none."""
    rng = np.random.default_rng(2)
    q11, q22 = rng.uniform(0.5, 2.0, 50), rng.uniform(0.5, 2.0, 50)
    rho = 1 - 10.0 ** rng.uniform(-12, -2, 50)
    # float32-representable inputs, so that the comparison measures the rule, not the rounding of its inputs
    q11, q22 = (a.astype(np.float32).astype(np.float64) for a in (q11, q22))
    g = (np.sqrt(q11 * q22) * (1 - rho)).astype(np.float32).astype(np.float64)
    want = np.sqrt((1.7 * q11 + 0.3) * (1.7 * q22 + 0.3)) - (1.7 * np.sqrt(q11 * q22) * rho + 0.3)
    got = np.asarray(gap.affine(*(a.astype(np.float32) for a in (q11, q22, g)), 1.7, 0.3), np.float64)
    exact = 1.7 * g + 1.7 * 0.3 * (np.sqrt(q11) - np.sqrt(q22)) ** 2 / (
        np.sqrt((1.7 * q11 + 0.3) * (1.7 * q22 + 0.3)) + 1.7 * np.sqrt(q11 * q22) + 0.3)
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    np.testing.assert_allclose(exact, want, rtol=1e-6, atol=1e-14)  # the rule is the definition, in float64
    t = np.float32(10.0) ** np.linspace(-6, 0.4, 40, dtype=np.float32)
    with mpmath.workdps(50):  # float64 itself cancels here
        exact = [float(mpmath.sin(mpmath.mpf(float(v))) - mpmath.mpf(float(v)) * mpmath.cos(mpmath.mpf(float(v))))
                 for v in t]
    np.testing.assert_allclose(np.asarray(gap.sin_minus_t_cos(t), np.float64), exact, rtol=2e-6)
    half = np.sin(t.astype(np.float64) / 2).astype(np.float32)
    np.testing.assert_allclose(np.asarray(gap.sin_minus_half_angle(t, half), np.float64), exact, rtol=2e-6)


def test_jitted_float32_matches_eager():
    net = theory.MLP(500, "relu", w_std=2**0.5)
    x = X.astype(np.float32)
    eager = theory.kernels(net, x)
    jitted = jax.jit(lambda v: theory.kernels(net, v))(x)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(np.asarray(getattr(jitted, name)), np.asarray(getattr(eager, name)), rtol=1e-5)
