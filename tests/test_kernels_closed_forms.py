"""MLP and ResNet kernels against closed forms and independent scalar iterations in numpy."""

import math

import numpy as np
import pytest

import theory

RNG = np.random.default_rng(1)
X = RNG.normal(size=(6, 5)) * np.array([0.5, 1.0, 2.0, 0.7, 1.5, 1.1])[:, None]
X2 = RNG.normal(size=(4, 5))


def _input_kernel(x1, x2):
    return x1 @ x2.T / x1.shape[1], np.sum(x1**2, 1) / x1.shape[1], np.sum(x2**2, 1) / x2.shape[1]


def _numpy_mlp(x1, x2, depth, w, b, dual, standard_width=None):
    """A per-entry numpy iteration of the NNGP/NTK recursion written from the papers' equations
    (Lee et al. 2018; Jacot et al. 2018), independent of theory.kernels' vectorised code."""
    k12, k11, k22 = _input_kernel(x1, x2)
    fan_in = x1.shape[1]

    def dense(e12, e11, e22, d12, t12):
        new = [w**2 * e + b**2 for e in (e12, e11, e22)]
        if standard_width is None:
            t = new[0] + w**2 * d12 * t12
        else:
            t = fan_in * e12 + (1.0 if b > 0 else 0.0) + w**2 * d12 * t12
        return (*new, t)

    q12, q11, q22, t12 = dense(k12, k11, k22, 0.0, 0.0)
    fan_in = standard_width
    for _ in range(depth):
        e12, d12 = np.vectorize(dual)(q11[:, None], q12, q22[None, :])
        e11, _ = np.vectorize(dual)(q11, q11, q11)
        e22, _ = np.vectorize(dual)(q22, q22, q22)
        q12, q11, q22, t12 = dense(e12, e11, e22, d12, t12)
    return q12, t12


def relu_dual(q11, q12, q22):
    # Cho & Saul (2009) arc-cosine kernel of degree 1 and degree 0.
    norm = math.sqrt(q11 * q22)
    cos = min(1.0, max(-1.0, q12 / norm))
    theta = math.acos(cos)
    return norm * (math.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi), (math.pi - theta) / (2 * math.pi)


def erf_dual(q11, q12, q22):
    # Williams (1997).
    a, c = 1 + 2 * q11, 1 + 2 * q22
    return 2 / math.pi * math.asin(2 * q12 / math.sqrt(a * c)), 4 / math.pi / math.sqrt(a * c - 4 * q12**2)


@pytest.mark.parametrize("depth", [0, 1, 3, 10])
@pytest.mark.parametrize(("w", "b"), [(2**0.5, 0.0), (1.3, 0.4)])
def test_relu_mlp_equals_arccosine_iteration(depth, w, b):
    k = theory.kernels(theory.MLP(depth, "relu", w, b), X, X2)
    q, t = _numpy_mlp(X, X2, depth, w, b, relu_dual)
    np.testing.assert_allclose(k.nngp, q, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, t, rtol=1e-12)


@pytest.mark.parametrize("depth", [1, 4])
@pytest.mark.parametrize(("w", "b"), [(1.0, 0.0), (1.8, 0.3)])
def test_erf_mlp_equals_arcsin_iteration(depth, w, b):
    k = theory.kernels(theory.MLP(depth, "erf", w, b), X, X2)
    q, t = _numpy_mlp(X, X2, depth, w, b, erf_dual)
    np.testing.assert_allclose(k.nngp, q, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, t, rtol=1e-12)


def test_standard_parameterization_ntk_depends_on_width():
    net = theory.MLP(3, "relu", 1.2, 0.1, weight_scaling="standard", width=256)
    k = theory.kernels(net, X, X2)
    q, t = _numpy_mlp(X, X2, 3, 1.2, 0.1, relu_dual, standard_width=256)
    np.testing.assert_allclose(k.nngp, q, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, t, rtol=1e-12)
    ntk_param = theory.kernels(theory.MLP(3, "relu", 1.2, 0.1), X, X2)
    np.testing.assert_allclose(k.nngp, ntk_param.nngp, rtol=1e-14)  # NNGP is the same


@pytest.mark.parametrize(("w", "b"), [(1.0, 0.0), (0.9, 0.5)])
def test_linear_network_closed_form(w, b):
    depth = 6
    k0, _, _ = _input_kernel(X, X2)
    # q^l = w^2l K0 + b^2 sum_{j<l} w^2j ; Theta^{L+1} = sum_{k=0}^{L} w^2k q^{L+1-k}.
    q = [w ** (2 * layer) * k0 + b**2 * sum(w ** (2 * j) for j in range(layer)) for layer in range(depth + 2)]
    theta = sum(w ** (2 * j) * q[depth + 1 - j] for j in range(depth + 1))
    k = theory.kernels(theory.MLP(depth, "identity", w, b), X, X2)
    np.testing.assert_allclose(k.nngp, q[depth + 1], rtol=1e-13)
    np.testing.assert_allclose(k.ntk, theta, rtol=1e-13)


@pytest.mark.parametrize("arch", [theory.MLP(5, "relu", 1.7), theory.MLP(3, "leaky_relu", 1.1),
                                  theory.ResNet(8, "relu", 1.4, readout="linear"), theory.ResNet(8, "abs")])
def test_positive_homogeneity_without_bias(arch):
    a, c = 2.5, 0.3
    base = theory.kernels(arch, X, X2)
    scaled = theory.kernels(arch, a * X, c * X2)
    np.testing.assert_allclose(scaled.nngp, a * c * base.nngp, rtol=1e-12)
    np.testing.assert_allclose(scaled.ntk, a * c * base.ntk, rtol=1e-12)


@pytest.mark.parametrize("readout", ["activation", "linear"])
@pytest.mark.parametrize(("depth", "exponent", "scale", "w"), [(16, 0.5, 1.0, 2**0.5), (64, 1.0, 0.7, 1.3)])
def test_relu_resnet_diagonal_closed_form(readout, depth, exponent, scale, w):
    """Diagonal of a relu ResNet with b = 0: q_l = q0 a^l with a = 1 + s^2 w^2 / 2, and
    Theta_l = a Theta_{l-1} + c q_{l-1} (c = s^2 w^2 / 2, Theta_0 = q0) = q0 a^(l-1) (a + l c)."""
    stem, r = 1.3, 0.8
    res = theory.ResNet(depth, "relu", w, 0.0, scale, exponent, readout, stem_w_std=stem, readout_w_std=r)
    q0 = stem**2 * np.sum(X**2, 1) / X.shape[1]
    c = (scale / depth**exponent) ** 2 * w**2 / 2
    q_l = q0 * (1 + c) ** depth
    t_l = q0 * (1 + c) ** (depth - 1) * (1 + c + depth * c)
    if readout == "activation":
        q_out, t_out = r**2 * q_l / 2, r**2 * (q_l / 2 + t_l / 2)
    else:
        q_out, t_out = r**2 * q_l, r**2 * (q_l + t_l)
    k = theory.kernels(res, X)
    np.testing.assert_allclose(np.diag(k.nngp), q_out, rtol=1e-12)
    np.testing.assert_allclose(np.diag(k.ntk), t_out, rtol=1e-12)


def test_identity_resnet_is_exponential_in_depth():
    depth, w, b, s = 32, 1.1, 0.2, 0.9
    res = theory.ResNet(depth, "identity", w, b, s, 0.5, "linear")
    k0, _, _ = _input_kernel(X, X2)
    a = 1 + s**2 * w**2 / depth
    shift = s**2 * b**2 / depth
    # q_l = a q_{l-1} + shift  =>  q_L = a^L q_0 + shift (a^L - 1) / (a - 1)
    q_l = a**depth * k0 + shift * (a**depth - 1) / (a - 1)
    np.testing.assert_allclose(theory.kernels(res, X, X2, get="nngp").nngp, q_l, rtol=1e-12)


def test_per_layer_matches_truncated_networks():
    layers = theory.kernels(theory.MLP(4, "erf", 1.4, 0.2), X, X2, per_layer=True)
    assert layers.nngp.shape == (5, 6, 4)
    for depth in range(4):
        k = theory.kernels(theory.MLP(depth, "erf", 1.4, 0.2), X, X2)
        np.testing.assert_allclose(layers.nngp[depth], k.nngp, rtol=1e-13)
        np.testing.assert_allclose(layers.ntk[depth], k.ntk, rtol=1e-13)
