"""theory.predict against neural-tangents' nt.predict (fixtures from tests/reference/make_nt_predict_fixtures.py,
regenerated live in CI's reference stage), closed-form properties, and bad input."""

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest

import theory
from theory import predict

DATA = np.load(Path(__file__).parent / "data" / "predict_nt.npz")
CONFIG = json.loads(str(DATA["config"]))
NETS = {"erf": theory.MLP(1, "erf", 1.5, 0.1),
        "relu": theory.serial(theory.layers.Dense(2**0.5, 0.05), theory.layers.Elementwise("relu"),
                              theory.layers.Dense(2**0.5, 0.05), theory.layers.Elementwise("relu"),
                              theory.layers.Dense(1.0))}
LR = CONFIG["learning_rate"]
RTOL = 1e-6  # the bar, float64; measured agreement is ~1e-13


def close(ours, key):
    ref = DATA[key]
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, (key, ours.shape, ref.shape)
    scale = max(np.max(np.abs(ref)), 1e-300)
    assert np.max(np.abs(ours - ref)) <= RTOL * scale, (key, np.max(np.abs(ours - ref)) / scale)


def kernels(name, part):
    return theory.Kernels(DATA[f"k_{name}_{part}_nngp"], DATA[f"k_{name}_{part}_ntk"])


CASES = [(net, reg) for net in NETS for reg in CONFIG["regs"]]


def case(name, reg):
    """``(diag_reg, diag_reg_absolute_scale, tag)`` of a fixture case; ``tag`` prefixes its keys."""
    diag_reg, absolute = CONFIG["regs"][reg]
    return diag_reg, absolute, f"{name}_{reg}"


def test_our_kernels_are_the_fixture_kernels():
    for name, net in NETS.items():
        for part, args in (("train", (DATA["x_train"],)), ("test", (DATA["x_test"], DATA["x_train"])),
                           ("testtest", (DATA["x_test"],))):
            k = theory.kernels(net, *args)
            close(k.nngp, f"k_{name}_{part}_nngp")
            close(k.ntk, f"k_{name}_{part}_ntk")


@pytest.mark.parametrize("name,reg", CASES)
def test_gradient_descent_mse_equals_neural_tangents(name, reg):
    diag_reg, absolute, tag = case(name, reg)
    ktr, kte = kernels(name, "train"), kernels(name, "test")
    p = predict.gradient_descent_mse(ktr.ntk, DATA["y"], LR, diag_reg, absolute)
    for t_name, t in (("t", DATA["ts"]), ("inf", None)):
        train, test = p(t, DATA["f0"], DATA["ft0"], kte.ntk)
        close(train, f"gd_{tag}_train_{t_name}")
        close(test, f"gd_{tag}_test_{t_name}")
        close(p(t, None, DATA["ft0"], kte.ntk), f"gd_{tag}_testonly_{t_name}")
    p1 = predict.gradient_descent_mse(ktr.ntk, DATA["y1"], LR, diag_reg, absolute)
    train, test = p1(DATA["ts22"], DATA["f0_1"], DATA["ft0_1"], kte.ntk)
    close(train, f"gd_{tag}_y1_train_t")
    close(test, f"gd_{tag}_y1_test_t")


@pytest.mark.parametrize("name,reg", CASES)
def test_gp_inference_equals_neural_tangents(name, reg):
    diag_reg, absolute, tag = case(name, reg)
    ktr, kte, ktt = kernels(name, "train"), kernels(name, "test"), kernels(name, "testtest")
    gp = predict.gp_inference(ktr, DATA["y"], diag_reg, absolute)
    for g in ("nngp", "ntk", "ntkgp"):
        r = gp(g, kte, ktt.ntk if g == "ntkgp" else ktt.nngp)
        close(r.mean, f"gp_{tag}_{g}_mean")
        close(r.covariance, f"gp_{tag}_{g}_cov")
    both = gp(None, kte)
    assert both._fields == ("nngp", "ntk")
    close(both.nngp, f"gp_{tag}_both_nngp")
    close(both.ntk, f"gp_{tag}_both_ntk")


@pytest.mark.parametrize("name,reg", CASES)
def test_ensemble_equals_neural_tangents(name, reg):
    diag_reg, absolute, tag = case(name, reg)
    ens = predict.gradient_descent_mse_ensemble(NETS[name], DATA["x_train"], DATA["y"], LR, diag_reg, absolute)
    for g in ("nngp", "ntk"):
        for t_name, t in (("t", DATA["ts"]), ("inf", None)):
            for where, x in (("test", DATA["x_test"]), ("train", None)):
                r = ens(t, x, g, True)
                close(r.mean, f"ens_{tag}_{g}_{t_name}_{where}_mean")
                close(r.covariance, f"ens_{tag}_{g}_{t_name}_{where}_cov")


def test_ensemble_accepts_a_kernel_function_and_get_tuples():
    net = NETS["erf"]
    ens = predict.gradient_descent_mse_ensemble(lambda x1, x2, get: theory.kernels(net, x1, x2, get=get),
                                                DATA["x_train"], DATA["y"], LR)
    both = ens(DATA["ts"], DATA["x_test"], ("nngp", "ntk"))
    close(both.ntk, "ens_erf_r0_ntk_t_test_mean")
    close(both.nngp, "ens_erf_r0_nngp_t_test_mean")


@pytest.mark.parametrize("name", NETS)
def test_max_learning_rate_equals_neural_tangents(name):
    ntk = DATA[f"k_{name}_train_ntk"]
    assert math.isclose(predict.max_learning_rate(ntk), float(DATA[f"mlr_{name}"]), rel_tol=1e-10)
    assert math.isclose(predict.max_learning_rate(ntk, y_train_size=36, momentum=0.9),
                        float(DATA[f"mlr_{name}_momentum"]), rel_tol=1e-10)


# -- properties ------------------------------------------------------------------------------------------------
class Problem(NamedTuple):
    net: Any
    x: np.ndarray
    xt: np.ndarray
    y: np.ndarray
    ktr: theory.Kernels
    kte: theory.Kernels
    ktt: theory.Kernels


def _problem(seed=0, n=10, m=4, k=2) -> Problem:
    rng = np.random.default_rng(seed)
    x, xt = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    net = NETS["erf"]
    return Problem(net, x, xt, rng.normal(size=(n, k)), theory.kernels(net, x), theory.kernels(net, xt, x),
                   theory.kernels(net, xt))


def test_infinite_time_interpolates_and_matches_large_t():
    pr = _problem()
    p = predict.gradient_descent_mse(pr.ktr.ntk, pr.y)
    f0, ft0 = np.zeros_like(pr.y), np.zeros((len(pr.xt), pr.y.shape[1]))
    train_inf, test_inf = p(None, f0, ft0, pr.kte.ntk)
    np.testing.assert_allclose(train_inf, pr.y, atol=1e-12)
    train_big, test_big = p(np.inf, f0, ft0, pr.kte.ntk)  # through the eigenbasis
    np.testing.assert_allclose(test_big, test_inf, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(train_big, pr.y, atol=1e-8)


def test_ensemble_at_zero_time_is_the_prior_and_its_covariance_is_psd():
    pr = _problem(1)
    ens = predict.gradient_descent_mse_ensemble(pr.net, pr.x, pr.y)
    for g in ("nngp", "ntk"):
        r0 = ens(0.0, pr.xt, g, compute_cov=True)
        np.testing.assert_allclose(r0.mean, 0.0, atol=1e-14)
        np.testing.assert_allclose(r0.covariance, pr.ktt.nngp, rtol=1e-10, atol=1e-12)
        for t in (0.3, 5.0, None):
            cov = np.asarray(ens(t, pr.xt, g, compute_cov=True).covariance)
            cov = cov.reshape(cov.shape[-2:])
            np.testing.assert_allclose(cov, cov.T, atol=1e-12)
            assert np.linalg.eigvalsh(cov).min() > -1e-10 * np.abs(cov).max()


def test_gp_posterior_covariance_is_psd_and_shrinks_the_prior():
    pr = _problem(2)
    g = predict.gp_inference(pr.ktr, pr.y)("nngp", pr.kte, pr.ktt.nngp)
    cov = np.asarray(g.covariance)
    assert np.linalg.eigvalsh(cov).min() > -1e-10
    assert np.linalg.eigvalsh(np.asarray(pr.ktt.nngp) - cov).min() > -1e-10


def test_time_scaling_convention():
    """t is in units of the learning rate and normalised by y.size: (lr, t) and (1, lr * t) agree, and one
    eigen-direction decays as exp(-lambda t / y.size)."""
    pr = _problem(3)
    a = predict.gradient_descent_mse(pr.ktr.ntk, pr.y, learning_rate=0.5)(3.0, np.zeros_like(pr.y))
    b = predict.gradient_descent_mse(pr.ktr.ntk, pr.y, learning_rate=1.0)(1.5, np.zeros_like(pr.y))
    np.testing.assert_allclose(a, b, rtol=1e-12)
    lam, vec = np.linalg.eigh(np.asarray(pr.ktr.ntk))
    y1 = vec[:, -1:]  # along the top eigenvector, one output: n = N
    out = predict.gradient_descent_mse(pr.ktr.ntk, y1)(2.0, np.zeros_like(y1))
    np.testing.assert_allclose(out, y1 * (1 - np.exp(-lam[-1] * 2.0 / y1.size)), rtol=1e-10, atol=1e-13)


def test_singular_kernel_at_finite_time_and_with_diag_reg():
    pr = _problem(4)
    x2 = np.concatenate([pr.x, pr.x[:1]])  # a repeated input: singular kernel
    y2 = np.concatenate([pr.y, pr.y[:1]])
    k2 = theory.kernels(pr.net, x2)
    p = predict.gradient_descent_mse(k2.ntk, y2)
    assert np.all(np.isfinite(p(np.array([1.0, 1e6, np.inf]), np.zeros_like(y2))))
    with pytest.raises(ValueError, match=r"singular.*diag_reg"):
        p(None, np.zeros_like(y2), np.zeros((len(pr.xt), 2)), theory.kernels(pr.net, pr.xt, x2).ntk)
    reg = predict.gradient_descent_mse(k2.ntk, y2, diag_reg=1e-8)
    train, test = reg(None, np.zeros_like(y2), np.zeros((len(pr.xt), 2)), theory.kernels(pr.net, pr.xt, x2).ntk)
    assert np.all(np.isfinite(train)) and np.all(np.isfinite(test))


def test_float32_accuracy():
    pr = _problem(5)
    want = predict.gp_inference(pr.ktr, pr.y, diag_reg=1e-4)("ntk", pr.kte, pr.ktt.nngp)
    with jax.enable_x64(False):
        k32 = [theory.Kernels(*(np.asarray(a, np.float32) for a in (k.nngp, k.ntk))) for k in (pr.ktr, pr.kte, pr.ktt)]
        got = predict.gp_inference(k32[0], pr.y.astype(np.float32), diag_reg=1e-4)("ntk", k32[1], k32[2].nngp)
        assert got.mean.dtype == np.float32
    np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=1e-3 * np.abs(want.mean).max())
    np.testing.assert_allclose(got.covariance, want.covariance, rtol=0, atol=1e-3 * np.abs(want.covariance).max())


def test_jit_of_the_prediction():
    pr = _problem(6)
    p = predict.gradient_descent_mse(pr.ktr.ntk, pr.y)
    f0, ft0 = np.zeros_like(pr.y), np.zeros((len(pr.xt), 2))
    f = jax.jit(lambda t: p(t, f0, ft0, pr.kte.ntk)[1])
    np.testing.assert_allclose(f(2.0), p(2.0, f0, ft0, pr.kte.ntk)[1], rtol=1e-12)
    np.testing.assert_allclose(f(3.0), p(3.0, f0, ft0, pr.kte.ntk)[1], rtol=1e-12)  # cached eigenbasis, no tracer


# -- bad input -------------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    pr = _problem(7)
    k = np.asarray(pr.ktr.ntk)
    for lr in (float("inf"), 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="learning_rate"):
            predict.gradient_descent_mse(k, pr.y, learning_rate=lr)
    p = predict.gradient_descent_mse(k, pr.y)
    with pytest.raises(ValueError, match="t must be >= 0"):
        p(-1.0, np.zeros_like(pr.y))
    with pytest.raises(ValueError, match="k_test_train"):
        p(1.0, np.zeros_like(pr.y), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="both None"):
        p(1.0, None, None)
    with pytest.raises(ValueError, match="y_train has 10 rows"):
        predict.gradient_descent_mse(k[:5, :5], pr.y)
    with pytest.raises(ValueError, match="not symmetric"):
        predict.gradient_descent_mse(k + np.triu(np.ones_like(k)), pr.y)
    with pytest.raises(ValueError, match="NaN or inf"):
        predict.gradient_descent_mse(k * np.nan, pr.y)
    with pytest.raises(ValueError, match="N_train = 10"):
        p(1.0, np.zeros_like(pr.y), np.zeros((4, 2)), np.ones((4, 3)))
    indefinite = k - 1.5 * np.linalg.eigvalsh(k).max() * np.eye(len(k)) * (np.arange(len(k)) == 0)
    with pytest.raises(ValueError, match=r"not positive semi-definite: smallest eigenvalue .* diag_reg >= "):
        predict.gradient_descent_mse(indefinite, pr.y)(1.0, np.zeros_like(pr.y))
    with pytest.raises(ValueError, match="trace_axes"):
        predict.gradient_descent_mse(k, pr.y, trace_axes=())
    with pytest.raises(ValueError, match="get must be one of"):
        predict.gp_inference(pr.ktr, pr.y)("nngpp", pr.kte)
    with pytest.raises(ValueError, match="layer program"):
        predict.gradient_descent_mse_ensemble("mlp", pr.x, pr.y)
    with pytest.raises(ValueError, match="momentum"):
        predict.max_learning_rate(k, momentum=1.0)


# -- conjugate gradients ---------------------------------------------------------------------------------------
@pytest.mark.slow  # moved from the default suite for its time budget; CI's slow stage runs it
def test_conjugate_gradients_give_the_dense_answer():
    rng = np.random.default_rng(8)
    x, xt = rng.normal(size=(300, 5)), rng.normal(size=(7, 5))
    net = theory.MLP(3, "relu", 2**0.5, 0.1)
    ktr, kte, ktt = theory.kernels(net, x), theory.kernels(net, xt, x), theory.kernels(net, xt)
    y = rng.normal(size=(300, 2))
    for g in ("nngp", "ntk"):
        dense = predict.gp_inference(ktr, y, diag_reg=1e-3)(g, kte, ktt.nngp)
        cg = predict.gp_inference(ktr, y, diag_reg=1e-3, solver="cg")(g, kte, ktt.nngp)
        np.testing.assert_allclose(cg.mean, dense.mean, rtol=0, atol=1e-6 * np.abs(dense.mean).max())
        np.testing.assert_allclose(cg.covariance, dense.covariance, rtol=0, atol=1e-6 * np.abs(dense.covariance).max())
    p = predict.gradient_descent_mse(ktr.ntk, y, diag_reg=1e-3, solver="cg")
    d = predict.gradient_descent_mse(ktr.ntk, y, diag_reg=1e-3)
    np.testing.assert_allclose(p(None, 0.0, 0.0, kte.ntk)[1], d(None, 0.0, 0.0, kte.ntk)[1], rtol=1e-6, atol=1e-9)
    ens = predict.gradient_descent_mse_ensemble(net, x, y, diag_reg=1e-3, solver="cg")
    np.testing.assert_allclose(ens(None, xt, "ntk"), dense.mean, rtol=0, atol=1e-6 * np.abs(dense.mean).max())
    with jax.enable_x64(False):
        k32, y32 = np.asarray(ktr.ntk, np.float32), y.astype(np.float32)
        got = predict.gp_inference(k32, y32, diag_reg=1e-3, solver="cg")("ntk", np.asarray(kte.ntk, np.float32))
        assert got.dtype == np.float32
    want = predict.gp_inference(ktr.ntk, y, diag_reg=1e-3)("ntk", kte.ntk)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())


def test_conjugate_gradients_refuse_what_they_cannot_do():
    pr = _problem(9)
    with pytest.raises(ValueError, match="needs diag_reg > 0"):
        predict.gp_inference(pr.ktr, pr.y, solver="cg")
    with pytest.raises(ValueError, match="solver must be one of"):
        predict.gp_inference(pr.ktr, pr.y, solver="lu")
    with pytest.raises(ValueError, match=r"relative residual of .* after 1 iterations"):
        theory.solvers.cg_solve(np.asarray(pr.ktr.ntk), pr.y, 1e-3, max_iter=1, rank=1)
