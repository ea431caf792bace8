"""experiments.sequence_tasks: shapes, determinism per seed, and the Bayes-optimal losses against independent
sources (power iteration and scipy's entropy for the chain; Monte Carlo within 4 standard errors; the dual form of
ridge regression)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy

from experiments import sequence_tasks as st


def test_markov_shapes_and_determinism():
    task = st.markov_language(64, 12, vocab=5, chain_seed=3, seed=7)
    assert task.x.shape == (64, 12, 6) and task.x.dtype == np.float64
    assert task.y.shape == (64,) and task.y.dtype == np.int64 and task.y.min() >= 0 and task.y.max() < 5
    assert task.bayes_prediction.shape == (64, 5)
    np.testing.assert_array_equal(task.x[:, :, :5].sum(axis=2), 1.0)  # one token per position
    np.testing.assert_array_equal(task.x[:, :, 5], np.r_[np.zeros(11), 1.0][None].repeat(64, 0))
    again = st.markov_language(64, 12, vocab=5, chain_seed=3, seed=7)
    np.testing.assert_array_equal(task.x, again.x)
    np.testing.assert_array_equal(task.y, again.y)
    other = st.markov_language(64, 12, vocab=5, chain_seed=3, seed=8)
    assert not np.array_equal(task.x, other.x)
    assert not np.array_equal(st.markov_chain(5, seed=3), st.markov_chain(5, seed=4))
    assert task.dataset.x is task.x


def test_entropy_rate_against_power_iteration_and_scipy():
    p = st.markov_chain(6, concentration=0.7, seed=11)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-14)
    pi = np.full(6, 1 / 6)
    for _ in range(2000):
        pi = pi @ p
    np.testing.assert_allclose(st.stationary_distribution(p), pi, atol=1e-12)
    assert st.entropy_rate(p) == pytest.approx(float(pi @ entropy(p, axis=1)), rel=1e-12)
    # a deterministic cycle has entropy rate 0; i.i.d. uniform tokens log(vocab)
    assert st.entropy_rate(np.roll(np.eye(4), 1, axis=1)) == pytest.approx(0.0, abs=1e-15)
    assert st.entropy_rate(np.full((4, 4), 0.25)) == pytest.approx(math.log(4), rel=1e-14)


def test_markov_bayes_loss_by_monte_carlo():
    task = st.markov_language(20000, 6, vocab=6, concentration=0.5, chain_seed=2, seed=1)
    nll = -np.log(task.bayes_prediction[np.arange(task.y.size), task.y])
    se = nll.std(ddof=1) / math.sqrt(nll.size)
    assert abs(nll.mean() - task.bayes_loss) < 4 * se
    # the last token is stationary: its frequencies match pi within 4 binomial SEs
    last = task.x[:, -1, :6].argmax(axis=1)
    pi = st.stationary_distribution(st.markov_chain(6, concentration=0.5, seed=2))
    freq = np.bincount(last, minlength=6) / last.size
    assert np.all(np.abs(freq - pi) < 4 * np.sqrt(pi * (1 - pi) / last.size) + 1e-12)
    # a predictor that ignores the last token (the marginal pi) is measurably worse
    assert -np.mean(np.log(pi[task.y])) > task.bayes_loss + 10 * se


def test_icl_regression_shapes_and_noiseless_bayes_loss():
    task = st.linear_regression(20000, 4, dim=8, seed=5)
    assert task.x.shape == (20000, 5, 10) and task.y.shape == (20000, 1)
    np.testing.assert_array_equal(task.x[:, -1, 8:], np.array([[0.0, 1.0]]).repeat(20000, 0))
    np.testing.assert_array_equal(task.x[:, :4, 9], 0.0)
    assert task.bayes_loss == 0.5
    err = (task.y - task.bayes_prediction)[:, 0] ** 2
    assert abs(err.mean() - 0.5) < 4 * err.std(ddof=1) / math.sqrt(err.size)
    assert abs(task.y.var() - 1.0) < 4 * math.sqrt(2 / task.y.size)  # Var y = 1 by the w ~ N(0, I/d) prior
    full = st.linear_regression(50, 8, dim=8, seed=5)  # n_context >= dim, no noise: the query is determined
    assert full.bayes_loss == 0.0
    np.testing.assert_allclose(full.bayes_prediction, full.y, atol=1e-9)
    again = st.linear_regression(50, 8, dim=8, seed=5)
    np.testing.assert_array_equal(full.x, again.x)
    assert not np.array_equal(full.x, st.linear_regression(50, 8, dim=8, seed=6).x)
    assert st.linear_regression(3, 0, dim=4).bayes_loss == 1.0


def test_noisy_posterior_mean_against_the_dual_ridge_and_a_wrong_prior():
    task = st.linear_regression(4000, 6, dim=5, noise=0.5, seed=9)
    assert math.isnan(task.bayes_loss)
    xc, yc, xq = task.x[:, :6, :5], task.x[:, :6, 5], task.x[:, 6, :5]
    lam = 0.25 * 5
    dual = np.einsum("bnd,bn->bd", xc, np.linalg.solve(xc @ xc.transpose(0, 2, 1) + lam * np.eye(6), yc[..., None])[
        ..., 0])  # w = X^T (X X^T + lambda I)^-1 y
    np.testing.assert_allclose(task.bayes_prediction[:, 0], np.einsum("bd,bd->b", dual, xq), atol=1e-10)
    bayes = np.mean((task.y[:, 0] - task.bayes_prediction[:, 0]) ** 2)
    for wrong in (0.05, 2.0):  # the posterior mean under another noise level is worse on average
        other = st.posterior_mean(xc, yc, xq, wrong)
        assert np.mean((task.y[:, 0] - other) ** 2) > bayes


@pytest.mark.parametrize("call, match", [
    (lambda: st.markov_language(0, 4), "n must"),
    (lambda: st.markov_language(4, 4, vocab=1), "vocab"),
    (lambda: st.markov_chain(4, concentration=0.0), "concentration"),
    (lambda: st.markov_language(4, 4, seed=-1), "seed"),
    (lambda: st.linear_regression(4, 2, noise=-1.0), "noise"),
    (lambda: st.linear_regression(4, 2, dim=0), "dim"),
    (lambda: st.entropy_rate(np.ones((3, 3))), "rows"),
    (lambda: st.stationary_distribution(np.eye(3)), "reducible"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
