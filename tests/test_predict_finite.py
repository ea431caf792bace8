"""theory.predict's ensemble against finite networks: wide networks trained by gradient descent, averaged over
initialisations, have the ensemble's mean and covariance on test inputs (within Monte-Carlo standard errors)."""

import numpy as np
import pytest

import theory
from experiments import networks, training
from theory import predict

WIDTH, SEEDS, STEPS = 512, 64, (30, 150)


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(16, 3)), rng.normal(size=(5, 3))
    y = np.sin(x @ np.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]]))  # (16, 2)
    net = theory.MLP(2, "relu", 2**0.5, 0.1)
    trained = training.scaled_network(net, "ntk", WIDTH)
    # Steps of at most 1% of the top mode (lr lambda_max / N = 0.01): discrete steps follow the flow to ~1e-2 of
    # a mode's amplitude, well inside the Monte-Carlo errors below.
    lr = 0.005 * predict.max_learning_rate(theory.kernels(trained, x, get="ntk").ntk)
    outs = {t: [] for t in STEPS}
    for seed in range(SEEDS):
        for t in STEPS:
            res = training.train(net, "ntk", training.Dataset(x, y), WIDTH,
                                 config=training.TrainConfig(learning_rate=lr, steps=t), seed=seed)
            outs[t].append(np.asarray(networks.apply(res.network, res.params, xt)))
    # The ensemble in predict's time: its loss is 1/(2 N K) ||f - y||^2, training's 1/(2N) sum over outputs.
    ens = predict.gradient_descent_mse_ensemble(trained, x, y, learning_rate=lr * y.shape[1])
    return {t: np.stack(v) for t, v in outs.items()}, ens, xt


@pytest.mark.slow
@pytest.mark.parametrize("t", STEPS)
def test_trained_networks_have_the_ensemble_mean(runs, t):
    outs, ens, xt = runs
    want = ens(float(t), xt, "ntk", compute_cov=True)
    mean, se = outs[t].mean(axis=0), outs[t].std(axis=0, ddof=1) / np.sqrt(SEEDS)
    z = (mean - np.asarray(want.mean)) / se
    assert np.max(np.abs(z)) < 4.0, z  # 10 outputs: P(max |z| > 4) ~ 6e-4 under the null


@pytest.mark.slow
@pytest.mark.parametrize("t", STEPS)
def test_trained_networks_have_the_ensemble_variance(runs, t):
    outs, ens, xt = runs
    cov = np.asarray(ens(float(t), xt, "ntk", compute_cov=True).covariance)
    var = outs[t].var(axis=0, ddof=1)  # (5, 2): each output's variance over initialisations
    want = np.diagonal(cov)[:, None]
    # The sample variance of S Gaussian draws has relative standard error sqrt(2 / (S - 1)) ~ 0.18.
    z = (var - want) / (want * np.sqrt(2 / (SEEDS - 1)))
    assert np.max(np.abs(z)) < 4.0, z
