"""Infinite-depth limits of depth-scaled ResNets against closed forms and the finite-depth recursion."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory.depth_limits import limit_regime, residual_stream_limit, resnet_limit
from theory.ode import dopri5

X = np.random.default_rng(0).normal(size=(4, 5))


def test_relu_diagonal_solves_the_exponential_law():
    """relu, b_std = 0: dq/dt = a^2 w^2 E[relu(u)^2] = a^2 w^2 q / 2, so q(1) = q(0) exp(a^2 w^2 / 2)."""
    a, w = 0.8, 1.3
    k = resnet_limit(theory.ResNet(8, "relu", w_std=w, branch_scale=a, readout="linear", readout_w_std=0.7), X)
    q0 = np.sum(X**2, axis=1) / X.shape[1]
    np.testing.assert_allclose(np.diag(k.nngp), 0.7**2 * q0 * np.exp(a**2 * w**2 / 2), rtol=1e-9)


def test_identity_activation_whole_kernel_is_exponential():
    """phi = id: dq/dt = k q + a^2 b^2 (k = a^2 w^2) and dTheta/dt = k Theta + dq/dt, so
    q(t) = (q0 + b^2/w^2) e^{kt} - b^2/w^2 and Theta(t) = e^{kt} (Theta0 + k (q0 + b^2/w^2) t), Theta0 = q0
    (the stem's NTK); a linear readout adds q(1) to the NTK."""
    a, w, b = 0.9, 1.1, 0.3
    k = resnet_limit(theory.ResNet(8, "identity", w_std=w, b_std=b, branch_scale=a, readout="linear"), X)
    kappa, beta = a**2 * w**2, b**2 / w**2
    q0 = X @ X.T / X.shape[1]
    q1 = (q0 + beta) * np.exp(kappa) - beta
    theta1 = np.exp(kappa) * (q0 + kappa * (q0 + beta))
    np.testing.assert_allclose(k.nngp, q1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(k.ntk, q1 + theta1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "arch",
    [theory.ResNet(1, "relu", 1.3, 0.1, branch_scale=0.8),
     theory.ResNet(1, "erf", 1.5, 0.2, branch_scale=1.2, readout="linear"),
     pytest.param(theory.ResNet(1, "tanh", 1.0, 0.1, branch_scale=1.0), marks=pytest.mark.slow)],
    ids=["relu", "erf", "tanh"],
)
def test_finite_depth_recursion_converges_at_the_euler_rate(arch):
    """The L blocks are Euler steps of size 1/L: the gap to the ODE is c/L + O(1/L^2), so doubling L
    halves it (ratio 0.5 up to O(1/L))."""
    limit = resnet_limit(arch, X)
    gaps = []
    for depth in (64, 128, 256):
        finite = theory.kernels(theory.ResNet(**{**arch.__dict__, "depth": depth}), X)
        gaps.append([np.max(np.abs(finite.nngp - limit.nngp)), np.max(np.abs(finite.ntk - limit.ntk))])
    gaps = np.array(gaps)
    assert np.all(gaps[-1] < 1e-2 * np.max(np.abs(limit.ntk)))
    ratios = gaps[1:] / gaps[:-1]
    assert np.all((ratios > 0.47) & (ratios < 0.53)), ratios


def test_residual_stream_follows_the_finite_network_block_by_block():
    res = theory.ResNet(512, "erf", 1.5, 0.2, branch_scale=1.2)
    times = (0.0, 0.25, 0.5, 1.0)
    stream = residual_stream_limit(res, X, times=times)
    layers = theory.kernels(res, X, per_layer=True)  # stem, blocks 1..L, readout
    for i, t in enumerate(times):
        block = int(t * res.depth)
        for name in ("nngp", "ntk"):
            want, got = np.asarray(getattr(layers, name)[block]), np.asarray(getattr(stream, name)[i])
            assert np.max(np.abs(got - want)) < 5e-3 * np.max(np.abs(want)), (name, t)


def test_cost_and_result_do_not_depend_on_depth():
    a = resnet_limit(theory.ResNet(3, "tanh", 1.2, 0.1), X)
    b = resnet_limit(theory.ResNet(10**6, "tanh", 1.2, 0.1), X)
    np.testing.assert_array_equal(a.ntk, b.ntk)


def test_standard_parameterization_limit():
    arch = theory.ResNet(1, "relu", 1.2, 0.3, weight_scaling="standard", width=64)
    limit = resnet_limit(arch, X)
    finite = [theory.kernels(theory.ResNet(**{**arch.__dict__, "depth": d}), X).ntk for d in (128, 256)]
    gaps = [np.max(np.abs(f - limit.ntk)) for f in finite]
    assert 0.45 < gaps[1] / gaps[0] < 0.55


def test_exponent_above_one_half_is_the_identity_limit():
    res = theory.ResNet(4, "relu", 1.3, 0.2, depth_exponent=0.75, branch_scale=1.0)
    assert limit_regime(res) == "identity"
    limit = resnet_limit(res, X)
    stem_only = theory.kernels(theory.ResNet(0, "relu", 1.3, 0.2), X)
    np.testing.assert_allclose(limit.nngp, stem_only.nngp, rtol=1e-12)
    np.testing.assert_allclose(limit.ntk, stem_only.ntk, rtol=1e-12)
    # The finite network approaches it like L^(1 - 2 * 0.75) = L^-0.5.
    gaps = [np.max(np.abs(theory.kernels(theory.ResNet(d, "relu", 1.3, 0.2, depth_exponent=0.75), X).nngp
                          - limit.nngp)) for d in (256, 1024)]
    assert 0.4 < gaps[1] / gaps[0] < 0.6


def test_bad_input_names_the_regime():
    with pytest.raises(ValueError, match=r"depth_exponent=0\.25 < 1/2.*diverges.*exploding regime"):
        resnet_limit(theory.ResNet(4, "relu", depth_exponent=0.25), X)
    with pytest.raises(ValueError, match="an MLP's kernel has no infinite-depth ODE limit"):
        resnet_limit(theory.MLP(4), X)
    with pytest.raises(ValueError, match=r"did not reach t = 1\.0 within max_steps=2"):
        resnet_limit(theory.ResNet(4, "tanh", 1.5, 0.1, branch_scale=2.0), X, max_steps=2)
    with pytest.raises(ValueError, match="rtol must be a positive number"):
        resnet_limit(theory.ResNet(4), X, rtol=-1.0)
    with pytest.raises(ValueError, match=r"times must be non-decreasing values in \[0, 1\]"):
        residual_stream_limit(theory.ResNet(4), X, times=(0.5, 0.2))
    with pytest.raises(ValueError, match="get must name kernels"):
        resnet_limit(theory.ResNet(4), X, get="cov")


def test_float32_follows_the_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        k = resnet_limit(theory.ResNet(4, "relu", branch_scale=0.8), jnp.asarray(X, jnp.float32))
    k64 = resnet_limit(theory.ResNet(4, "relu", branch_scale=0.8), X)
    assert k.dtype == np.float32
    np.testing.assert_allclose(k.ntk, k64.ntk, rtol=1e-4)


def test_dopri5_meets_its_tolerance_on_a_known_solution():
    """dy/dt = -y^2, y(0) = 1: y(t) = 1 / (1 + t)."""
    sol = dopri5(lambda y: -(y**2), jnp.array([1.0, 2.0]), 3.0, rtol=1e-10, atol=1e-12)
    assert bool(sol.reached)
    np.testing.assert_allclose(sol.y, [1 / 4, 2 / 7], rtol=1e-8)
