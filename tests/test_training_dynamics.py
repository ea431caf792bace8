"""theory.training_dynamics: closed forms (one example, diagonal kernels), the hand-iterated recursion, a Monte
Carlo over the Gaussian initialisation, neural-tangents' NTK through theory.kernels, and finite networks
(the empirical tangent kernel of experiments.training networks, and their gradient-descent trajectory).

Tolerances: exact identities to rounding (1e-12 relative); Monte Carlo to 4 standard errors; finite networks by
their O(n^-1/2) fluctuations, with constants read off smaller widths and a factor of 2 to spare.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import networks, training
from theory import training_dynamics as td


def test_one_example_closed_form():
    # N = 1: E L_t = 1/2 (1 - eta theta)^(2t) (k + y^2); flow: exp(-2 eta theta t).
    theta, k, y, eta = 1.7, 0.6, np.array([0.8]), 0.3
    got = td.expected_loss(np.array([[theta]]), np.array([[k]]), y, eta, 5)
    want = 0.5 * (1 - eta * theta) ** (2 * np.arange(6)) * (k + 0.64)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    flow = td.expected_loss(np.array([[theta]]), np.array([[k]]), y, eta, 5, flow=True)
    np.testing.assert_allclose(flow, 0.5 * np.exp(-2 * eta * theta * np.arange(6)) * (k + 0.64), rtol=1e-12)


def test_diagonal_kernels_closed_form():
    # Diagonal Theta and K: the examples decouple, a_i = 1 - eta theta_i / N, two outputs.
    lam, k = np.array([0.5, 2.0, 3.0]), np.array([1.0, 0.3, 2.0])
    y = np.array([[1.0, -1.0], [0.5, 0.0], [-2.0, 1.0]])
    eta, n = 0.4, 3
    got = td.expected_loss(np.diag(lam), np.diag(k), y, eta, 7)
    t = np.arange(8)[:, None]
    want = 0.5 / n * np.sum((1 - eta * lam / n) ** (2 * t) * (2 * k + np.sum(y**2, axis=1)), axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_residuals_iterate_the_gradient_step():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    ntk = a @ a.T + np.eye(6)
    r = rng.standard_normal((6, 2))
    eta, steps = 0.7, 9
    got = np.asarray(td.residuals(ntk, r, eta, steps))
    cur = r.copy()
    for step in range(steps + 1):
        np.testing.assert_allclose(got[step], cur, rtol=1e-10, atol=1e-12)
        cur = cur - eta * ntk @ cur / 6  # f <- f - eta Theta grad_f L, grad_f L = (f - y) / N
    f0 = rng.standard_normal(6)
    y = rng.standard_normal(6)
    loss = td.loss_curve(ntk, f0, y, eta, steps)
    res = td.residuals(ntk, f0 - y, eta, steps)
    np.testing.assert_allclose(loss, 0.5 * np.sum(np.asarray(res) ** 2, axis=(1, 2)) / 6, rtol=1e-12)


def test_expected_loss_is_the_mean_over_gaussian_inits():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    ntk, nngp = a @ a.T + 0.5 * np.eye(5), b @ b.T / 5 + 0.1 * np.eye(5)
    y = rng.standard_normal(5)
    eta, steps, m = 0.5, 6, 20000
    f0 = rng.multivariate_normal(np.zeros(5), nngp, size=m)
    curves = np.asarray(jax.vmap(lambda f: td.loss_curve(ntk, f, y, eta, steps))(jnp.asarray(f0)))
    mean, se = curves.mean(axis=0), curves.std(axis=0, ddof=1) / math.sqrt(m)
    want = np.asarray(td.expected_loss(ntk, nngp, y, eta, steps))
    assert np.all(np.abs(mean - want) < 4 * se), (mean, want, se)


@pytest.mark.parametrize("arch", [theory.MLP(3, "relu", math.sqrt(2), 0.3), theory.MLP(1, "erf", 1.3, 0.0),
                                  theory.MLP(2, "tanh", 1.1, 0.2)])
def test_neural_tangents_coefficients_give_theory_kernels(arch):
    # theory.kernels runs the same expectations inside its own scan: equal to rounding (quadrature sums for tanh
    # are evaluated in a different order, hence 1e-10 rather than 1e-12)
    x = 0.7 * np.random.default_rng(2).standard_normal((7, 4))
    got = td.mlp_ntk(arch, x, td.NtkCoefficients.neural_tangents(arch))
    np.testing.assert_allclose(got, theory.kernels(arch, x).ntk, rtol=1e-10, atol=1e-12)


def test_ntk_of_the_ntk_parameterization_is_width_independent():
    # TP IV's NTK parameterization trains the input weights with coefficient d (no 1/sqrt(d) multiplier), the
    # other weights and the biases with 1, at every width.
    arch = theory.MLP(2, "relu", math.sqrt(2), 0.5)
    x = np.random.default_rng(5).standard_normal((6, 5))
    want = td.mlp_ntk(arch, x, td.NtkCoefficients(5.0, 1.0, 1.0, 1.0))
    for width in (16, 256, 4096):
        got = theory.kernels(theory.parameterize(arch, "ntk", width), x, get="ntk").ntk
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.slow
def test_empirical_ntk_of_wide_networks_converges_to_mlp_ntk():
    # The finite tangent kernel fluctuates by O(n^-1/2) around the limit (Jacot et al. 2018): the relative
    # Frobenius error, averaged over seeds, falls by about (2048 / 128)^(1/2) = 4 between the two widths.
    arch = theory.MLP(2, "relu", math.sqrt(2), 0.5)
    data = training.teacher(8, 5, seed=3)
    errors = {}
    for width in (128, 2048):
        net = theory.parameterize(arch, "ntk", width)
        limit = theory.kernels(net, data.x, get="ntk").ntk
        errs = [float(jnp.linalg.norm(networks.empirical_ntk(net, networks.init(net, width, jax.random.key(seed),
                                                                                features=5), data.x)[0]
                                      - limit) / jnp.linalg.norm(limit))
                for seed in range(4)]
        errors[width] = np.mean(errs)
    # n^-1/2 predicts a ratio of 4 between the two widths; allow 2 either way for 4 seeds.
    assert 2 < errors[128] / errors[2048] < 8, errors
    assert errors[2048] < 2 * errors[128] * (128 / 2048) ** 0.5, errors


def test_wide_network_follows_the_linear_model():
    # Same f_0, infinite-width Theta: a width-2048 network's loss curve stays within O(n^-1/2) of the linear model's.
    arch = theory.MLP(1, "relu", math.sqrt(2))
    data = training.teacher(16, 4, seed=4)
    ntk = theory.kernels(theory.parameterize(arch, "ntk", 1), data.x, get="ntk").ntk
    eta = 0.5 * 16 / float(jnp.linalg.eigvalsh(ntk)[-1])
    config = training.TrainConfig(learning_rate=eta, steps=30, probe_size=16)
    deltas = {}
    for width in (64, 4096):
        out = []
        for seed in range(3):
            result = training.train(arch, "ntk", data, width, config=config, seed=seed)
            f0 = training.forward(result.network, result.init_params, jnp.asarray(data.x))[0]
            linear = np.asarray(td.loss_curve(ntk, f0, data.y, eta, 30))
            np.testing.assert_allclose(result.loss[0], linear[0], rtol=1e-10)  # same start
            out.append(np.sqrt(np.mean(np.log(result.loss / linear) ** 2)))
        deltas[width] = np.mean(out)
    assert deltas[4096] < 0.1, deltas
    assert deltas[4096] < deltas[64] / 2, deltas  # n^-1/2 predicts a factor 8


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        td.expected_loss(np.ones((2, 3)), np.ones((2, 3)), np.ones(2), 0.1, 3)
    with pytest.raises(ValueError, match="learning_rate"):
        td.residuals(np.eye(2), np.ones(2), -1.0, 3)
    with pytest.raises(ValueError, match="steps"):
        td.residuals(np.eye(2), np.ones(2), 0.1, -1)
    with pytest.raises(ValueError, match="share"):
        td.expected_loss(np.eye(2), np.eye(3), np.ones(2), 0.1, 3)
    with pytest.raises(ValueError, match=">= 0"):
        td.NtkCoefficients(1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="MLP"):
        td.mlp_ntk(theory.ResNet(2), np.ones((2, 3)), td.NtkCoefficients(1, 1, 1))


def test_linear_outputs_follow_the_discrete_steps_and_the_flow():
    rng = np.random.default_rng(3)
    x, xt = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    net = theory.MLP(2, "relu", 2**0.5, 0.1)
    k, kt = theory.kernels(net, x).ntk, theory.kernels(net, xt, x).ntk
    f0, ft0, y = rng.normal(size=(6, 2)), rng.normal(size=(4, 2)), rng.normal(size=(6, 2))
    lr, steps = 0.3, 7
    # the linear model stepped by hand: f <- f - lr/N Theta (f - y) on the train and test inputs
    f, ft = f0.copy(), ft0.copy()
    for _ in range(steps):
        r = f - y
        f, ft = f - lr / 6 * np.asarray(k) @ r, ft - lr / 6 * np.asarray(kt) @ r
    train, test = td.linear_outputs(k, f0, y, lr, steps, ntk_test_train=kt, f0_test=ft0)
    np.testing.assert_allclose(train, f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(test, ft, rtol=1e-10, atol=1e-12)
    train_flow, test_flow = td.linear_outputs(k, f0, y, lr, steps, ntk_test_train=kt, f0_test=ft0, flow=True)
    np.testing.assert_allclose(train_flow - y, td.residuals(k, f0 - y, lr, steps, flow=True)[-1], rtol=1e-10)
    np.testing.assert_allclose(test_flow, predict_flow(k, kt, f0, ft0, y, lr * 2, steps), rtol=1e-10)
    with pytest.raises(ValueError, match="both ntk_test_train and f0_test"):
        td.linear_outputs(k, f0, y, lr, steps, ntk_test_train=kt)


def predict_flow(k, kt, f0, ft0, y, lr, t):
    from theory import predict

    return predict.gradient_descent_mse(k, y, learning_rate=lr)(t, f0, ft0, kt)[1]
