"""grokking (Kumar, Bordelon, Gershman & Pehlevan 2023): the time-to-grok definition on synthetic curves with known
crossings, the kernel alignment against its definition, the lazy network's losses against stepping the linear model
by hand, the activation's kernels against their closed forms, the finite mean-field network against an independent
two-layer implementation, its lazy limit (small richness) against the infinite-width kernel prediction within the
Monte-Carlo standard error, and the quick sweep's science."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import feature_learning as fl
from experiments import networks
from experiments.figures import grokking as fig
from theory import grokking as g


# -- the time-to-grok definition on synthetic curves -------------------------------------------------------------
def test_crossing_time_is_exact_for_power_laws_between_records():
    # log-log linear pieces are interpolated exactly: (t0 / t)^p crosses 1 at t0, wherever t0 falls between records
    t = np.geomspace(1.0, 1e4, 23)
    for t0 in (3.7, 41.0, 977.0):
        for p in (0.5, 2.0):
            assert g.crossing_time(t, (t0 / t) ** p, 1.0) == pytest.approx(t0, rel=1e-12)
    # a level given per record: the curve against a reference curve (their ratio is what matters)
    ref = 0.3 * t**-0.2
    assert g.crossing_time(t, ref * (41.0 / t) ** 1.5, ref) == pytest.approx(41.0, rel=1e-12)


def test_grokking_time_of_a_synthetic_grokking_curve_converges_to_its_crossing():
    # test loss on a plateau that slowly rises (lazy overfitting), then a sigmoidal drop in log t
    tg, width = 300.0, 3.0

    def lazy(t):
        return 0.25 * (1 + 0.3 * t / (t + 50))

    def test_loss(t):
        return lazy(t) / (1 + (t / tg) ** width)   # equals lazy / 2 exactly at t = tg

    errors = []
    for records in (20, 40, 80, 160):
        t = np.concatenate([[0.0], np.geomspace(1.0, 1e5, records)])
        got = g.grokking_time(t, test_loss(t), lazy(t), factor=0.5)
        errors.append(abs(got / tg - 1))
    assert errors[-1] < 1e-3
    assert all(b < a for a, b in itertools.pairwise(errors))  # converges as the records get denser
    # the lazy network itself never groks; a network that never leaves the plateau neither
    t = np.concatenate([[0.0], np.geomspace(1.0, 1e5, 40)])
    assert g.grokking_time(t, lazy(t), lazy(t)) == math.inf
    assert g.grokking_time(t, 0.6 * lazy(t), lazy(t)) == math.inf
    assert g.grokking_time(t, 0.4 * lazy(t), lazy(t)) == 0.0    # below from the first record


def test_crossing_time_counts_from_the_last_crossing_and_interpolates_from_zero():
    t = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    dip = np.array([1.0, 0.4, 1.0, 1.0, 0.4, 0.1])    # dips below 0.5 at t = 1, back above, below for good from 8
    got = g.crossing_time(t, dip, 0.5)
    assert 4.0 < got < 8.0
    assert got == pytest.approx(math.exp(math.log(4) + math.log(2) / math.log(2.5) * math.log(2)), rel=1e-12)
    # the first interval starts at t = 0: linear in t there
    assert g.crossing_time(np.array([0.0, 2.0]), np.array([2.0, 0.5]), 1.0) == pytest.approx(2 * math.log(2) /
                                                                                              math.log(4))
    assert g.crossing_time(t, np.array([1, 1, 1, 1, 1, 0.0]), 0.5) == 8.0   # a drop to exactly 0


@pytest.mark.parametrize("args, match", [
    ((np.array([0.0, 1.0]), np.array([1.0]), 0.5), "one value per recorded time"),
    ((np.array([1.0, 1.0]), np.array([1.0, 0.1]), 0.5), "strictly increasing"),
    ((np.array([0.0, 1.0]), np.array([1.0, np.nan]), 0.5), "diverged"),
    ((np.array([0.0, 1.0]), np.array([1.0, 0.1]), 0.0), "level must be finite and > 0"),
    ((np.array([0.0, 1.0]), np.array([1.0, 0.1]), np.ones(3)), "one value per recorded time"),
])
def test_crossing_time_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        g.crossing_time(*args)


def test_grokking_time_refuses_a_bad_factor():
    with pytest.raises(ValueError, match="factor"):
        g.grokking_time([0.0, 1.0], [1.0, 0.1], [1.0, 1.0], factor=1.5)


# -- kernel alignment ---------------------------------------------------------------------------------------------
def test_kernel_alignment_against_its_definition():
    rng = np.random.default_rng(0)
    p = 9
    a = rng.normal(size=(p, 4))
    k, y = a @ a.T, rng.normal(size=p)
    h = np.eye(p) - np.ones((p, p)) / p
    hk, hy = h @ k @ h, h @ y
    want = hy @ hk @ hy / (np.linalg.norm(hk) * (hy @ hy))
    assert g.kernel_alignment(k, y) == pytest.approx(want, rel=1e-12)
    assert g.kernel_alignment(3.0 * k + 2.0, y) == pytest.approx(want, rel=1e-12)    # scale, constant: invariant
    assert g.kernel_alignment(np.outer(y, y) + 5.0, y) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="constant"):
        g.kernel_alignment(np.ones((p, p)), y)
    with pytest.raises(ValueError, match=r"\(P, P\)"):
        g.kernel_alignment(k[:, :3], y)


# -- the activation, the lazy network ----------------------------------------------------------------------------
def _closed_form(eps, x1, x2, readout=True):
    d = x1.shape[1]
    q = x1 @ x2.T / d
    q11, q22 = np.sum(x1**2, 1) / d, np.sum(x2**2, 1) / d
    nngp = q + eps**2 / 4 * (q11[:, None] * q22[None] + 2 * q**2)
    return nngp, q * (1 + eps**2 * q) + (nngp if readout else 0.0)


def test_quadratic_activation_kernels_match_their_closed_form():
    eps = 0.3
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    net = theory.MLP(1, g.quadratic_activation(eps), w_std=1.0)
    nngp, ntk = _closed_form(eps, x1, x2)
    k = theory.kernels(net, x1, x2)
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-10, atol=1e-12)
    frozen = theory.kernels(g.freeze_readout(net), x1, x2)
    np.testing.assert_allclose(frozen.ntk, _closed_form(eps, x1, x2, readout=False)[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(frozen.nngp, k.nngp)
    assert g.quadratic_activation(eps) is g.quadratic_activation(0.3)
    with pytest.raises(ValueError, match="epsilon"):
        g.quadratic_activation(float("nan"))
    with pytest.raises(ValueError, match="Dense readout"):
        g.freeze_readout(theory.serial(theory.layers.Dense(), theory.layers.Elementwise("relu")))


def test_lazy_losses_against_stepping_the_linear_model_by_hand():
    task = fl.polynomial_task(6, 12, 7, seed=3)
    _, ntk = _closed_form(0.2, task.x_train, task.x_train)
    _, ntk_test = _closed_form(0.2, task.x_test, task.x_train)
    eta, p = 1.5, 12
    steps = np.array([0, 1, 2, 5, 13])
    train, test = g.lazy_losses(ntk, ntk_test, task.y_train, task.y_test, eta, steps)
    f, ft = np.zeros(p), np.zeros(7)
    want_train, want_test = [], []
    for s in range(14):
        if s in steps:
            want_train.append(0.5 * np.mean((f - task.y_train) ** 2))
            want_test.append(0.5 * np.mean((ft - task.y_test) ** 2))
        r = f - task.y_train
        f, ft = f - eta / p * ntk @ r, ft - eta / p * ntk_test @ r
    np.testing.assert_allclose(train, want_train, rtol=1e-10)
    np.testing.assert_allclose(test, want_test, rtol=1e-10)
    with pytest.raises(ValueError, match="diverges"):
        g.lazy_losses(ntk, ntk_test, task.y_train, task.y_test, 1e3, steps)
    with pytest.raises(ValueError, match="non-negative integers"):
        g.lazy_losses(ntk, ntk_test, task.y_train, task.y_test, eta, np.array([0.5]))


def test_polynomial_task_is_the_papers():
    task = fl.polynomial_task(7, 30, 11, seed=5)
    x_paper = task.x_train / math.sqrt(7)          # the paper's inputs, x ~ N(0, I / D)
    np.testing.assert_allclose(task.y_train, (x_paper @ task.beta) ** 2 / 2, rtol=1e-12)
    again = fl.polynomial_task(7, 30, 11, seed=5)
    np.testing.assert_array_equal(again.x_test, task.x_test)
    with pytest.raises(ValueError, match="n_train"):
        fl.polynomial_task(7, 0, 11)


# -- the finite mean-field network -------------------------------------------------------------------------------
def _by_hand(task, params, width, gamma, eta, steps, ones):
    """An independent two-layer network: f = 1/(gamma n) sum_i a_i phi(w_i . x / sqrt(D)), centred, GD at
    eta gamma^2 n on 1/P sum 1/2 (f - y)^2 (the readout frozen with ``ones``)."""
    w, a = (jnp.asarray(params[0].W), jnp.asarray(params[1].W[:, 0]))
    if ones:
        a = jnp.ones_like(a)
    x, y = jnp.asarray(task.x_train), jnp.asarray(task.y_train)
    d = x.shape[1]

    def out(w, a, x):
        z = x @ w / math.sqrt(d)
        return (z + 0.05 * z**2) @ a / (gamma * width)

    f0 = out(w, a, x)

    def loss(w, a):
        return 0.5 * jnp.mean((out(w, a, x) - f0 - y) ** 2)

    losses = [float(loss(w, a))]
    for _ in range(steps):
        gw, ga = jax.grad(loss, argnums=(0, 1))(w, a)
        w, a = w - eta * gamma**2 * width * gw, (a if ones else a - eta * gamma**2 * width * ga)
        losses.append(float(loss(w, a)))
    return np.array(losses)


@pytest.mark.parametrize("readout", ["trained", pytest.param("ones", marks=pytest.mark.slow)])
def test_mean_field_network_against_an_independent_implementation(readout):
    task = fl.polynomial_task(5, 9, 4, seed=0)
    arch = theory.MLP(1, g.quadratic_activation(0.1), w_std=1.0)
    width, gamma, eta, steps = 16, 0.7, 2.0, 6
    run = fl.train(arch, task, width=width, gamma=gamma, learning_rate=eta, record_steps=np.arange(steps + 1),
                   seed=4, readout=readout)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(4), 0), width)
    params = networks.init(arch, width, key, features=5)
    want = _by_hand(task, params, width, gamma, eta, steps, readout == "ones")
    np.testing.assert_allclose(run.train_loss, want, rtol=1e-10)
    assert run.train_loss[-1] < 0.9 * run.train_loss[0] and not run.diverged
    np.testing.assert_array_equal(run.time, eta * np.arange(steps + 1))
    assert run.dtype == "float64"


@pytest.mark.slow
def test_mean_field_network_kernels_at_init_are_its_empirical_ntk_and_features():
    task = fl.polynomial_task(5, 6, 3, seed=1)
    arch = theory.MLP(1, g.quadratic_activation(0.2), w_std=1.0)
    run = fl.train(arch, task, width=32, gamma=1.0, learning_rate=1.0, record_steps=[0, 3], seed=2,
                   readout="frozen", kernels=True)
    net = g.freeze_readout(arch)
    params = networks.init(net, 32, jax.random.fold_in(jax.random.fold_in(jax.random.key(2), 0), 32), features=5)
    np.testing.assert_allclose(run.ntk[0], networks.empirical_ntk(net, params, task.x_train)[0], rtol=1e-12)
    np.testing.assert_allclose(run.features[0], networks.readout_kernel(net, params, task.x_train), rtol=1e-12)
    assert run.ntk.shape == (2, 6, 6) and not np.allclose(run.ntk[1], run.ntk[0])    # the kernel moved


@pytest.mark.parametrize("kwargs, match", [
    ({"gamma": 0.0}, "gamma"),
    ({"readout": "random"}, "readout"),
    ({"record_steps": [1, 2]}, "starting at 0"),
    ({"record_steps": [0, 2, 2]}, "strictly increasing"),
    ({"width": 0}, "width"),
])
def test_train_refuses_bad_input(kwargs, match):
    task = fl.polynomial_task(3, 4, 2)
    arch = theory.MLP(1, "erf")
    args = {"width": 8, "gamma": 1.0, "learning_rate": 0.5, "record_steps": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        fl.train(arch, task, **args)


@pytest.mark.slow
def test_lazy_limit_of_the_finite_network_matches_the_kernel_prediction():
    """Small richness (gamma = 1e-3): the mean over 8 networks of width 512 of the train and test loss is the lazy
    prediction of the infinite-width NTK within 4 standard errors at every recorded time (the networks' own NTKs
    fluctuate by O(n^-1/2); the O(gamma) feature learning and the O(1/n) bias are far below the SE); a rich network
    (gamma = 2) is many SE away, and so is the prediction of a wrong kernel (the readout's term dropped)."""
    task = fl.polynomial_task(12, 40, 200, seed=0)
    arch = theory.MLP(1, g.quadratic_activation(0.1), w_std=1.0)
    steps = np.array([0, 20, 100, 400])
    eta = 2.0
    ntk = theory.kernels(arch, task.x_train, get="ntk").ntk
    ntk_test = theory.kernels(arch, task.x_test, task.x_train, get="ntk").ntk
    lazy = np.stack(g.lazy_losses(ntk, ntk_test, task.y_train, task.y_test, eta, steps))
    _, wrong_ntk = _closed_form(0.1, task.x_train, task.x_train, readout=False)
    _, wrong_test = _closed_form(0.1, task.x_test, task.x_train, readout=False)
    wrong = np.stack(g.lazy_losses(wrong_ntk, wrong_test, task.y_train, task.y_test, eta, steps))

    def runs(gamma):
        out = [fl.train(arch, task, width=512, gamma=gamma, learning_rate=eta, record_steps=steps, seed=s)
               for s in range(8)]
        return np.stack([np.stack([r.train_loss, r.test_loss]) for r in out])   # (seeds, 2, times)

    lazy_nets = runs(1e-3)
    mean, se = lazy_nets.mean(0), lazy_nets.std(0, ddof=1) / math.sqrt(8)
    z = np.abs(mean - lazy)[:, 1:] / se[:, 1:]
    assert np.all(z < 4), z
    assert np.max(np.abs(mean - wrong)[:, 1:] / se[:, 1:]) > 10
    rich = runs(2.0).mean(0)
    assert np.max(np.abs(rich - lazy)[:, 1:] / se[:, 1:]) > 10


@pytest.mark.slow
def test_dmft_particle_solver_is_the_centred_finite_network():
    """theory.dmft's weight-space solver (one hidden layer) is, sample for sample, a centred width-S network: started
    from feature_learning.train's initial weights it reproduces that network's train and test losses to 1e-12 over
    450 steps of the grokking task at alpha = 1 (independent code: experiments.networks' program against the
    solver's hand-written update)."""
    from theory.dmft import particles

    task = fl.polynomial_task(20, 60, 100, seed=0)
    arch = theory.MLP(1, g.quadratic_activation(0.05), w_std=1.0)
    width, steps = 128, np.array([0, 10, 100, 450])
    run = fl.train(arch, task, width=width, gamma=1.0, learning_rate=0.5, record_steps=steps, seed=0)
    params = networks.init(arch, width, jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), width),
                           features=20)
    x_all = jnp.asarray(np.concatenate([task.x_train, task.x_test]))
    out = particles.simulate(arch.activation.fn, 1.0, 1.0, 0.5, x_all, jnp.asarray(task.y_train), 60, steps, None,
                             width, 1, None, init=(params[0].W.T, params[1].W[:, 0]))
    f = out["f"][0]
    np.testing.assert_allclose(0.5 * np.mean((f[:, :60] - task.y_train) ** 2, axis=1), run.train_loss, rtol=1e-11)
    np.testing.assert_allclose(0.5 * np.mean((f[:, 60:] - task.y_test) ** 2, axis=1), run.test_loss, rtol=1e-11)
    assert run.test_loss[-1] < 0.8 * run.test_loss.max()  # it has started to grok: the check is not of a lazy network


@pytest.mark.slow
def test_dmft_rows_converge_on_the_plateau_but_their_grokking_time_falls_with_the_sampled_neurons():
    """The experiment's DMFT rows (alpha = 1, its task and records, 600 steps) with S = 512 and 4096 sampled neurons x
    16 replicas: on the lazy plateau (0 < t <= 65, before either groks) the two test-loss curves agree within 4
    combined jackknife SE at every record (measured |z| <= 2.4), but the grokking time has not converged: the mean
    per-replica grokking time falls from S = 512 to 4096 by more than 3 SE (measured 172 +- 4 -> 147 +- 4, 4.7 SE;
    a separate run continues to 122 +- 3 at S = 16384 and 117 +- 4 at 65536: docs/dmft.md, "Grokking: convergence
    in the sampled neurons"). The rows' grokking times are those of centred networks of S neurons, biased late, not
    the limit's. ~40 s of CPU."""
    from theory import dmft

    config = fig.EXPERIMENT.config
    lazy_point = next(p for p in fig.points(config) if p["kind"] == "lazy")
    lazy_test = np.asarray(fig.compute(lazy_point)["test_loss"])
    point = next(p for p in fig.points(config) if p["kind"] == "dmft" and p["alpha"] == 1.0)
    arch, task, steps = fig.setup(point)
    rec = steps[steps <= 600]
    curves, se, t_grok = {}, {}, {}
    for s in (512, 4096):
        sol = dmft.solve_outputs(arch, task.x_train, task.y_train, task.x_test, task.y_test, gamma=1.0,
                                 learning_rate=config.learning_rate, steps=int(rec[-1]), key=jax.random.key(s),
                                 samples=s, replicas=16, record_steps=rec)
        curves[s], se[s] = sol.test_loss, sol.test_loss_stderr
        per = 0.5 * np.mean((sol.replica_f_test - task.y_test) ** 2, axis=-1)
        t_rep = np.array([g.grokking_time(sol.time, c, lazy_test[: rec.size], config.factor) for c in per])
        assert np.all(np.isfinite(t_rep)), t_rep
        t_grok[s] = (t_rep.mean(), t_rep.std(ddof=1) / math.sqrt(t_rep.size))
    time = config.learning_rate * rec
    plateau = (time > 0) & (time <= 65)
    assert plateau.sum() >= 20 and time[plateau][-1] < 0.5 * min(t_grok[512][0], t_grok[4096][0])
    z = (curves[512] - curves[4096])[plateau] / np.hypot(se[512], se[4096])[plateau]
    assert np.all(np.abs(z) < 4), z
    assert curves[512][0] == curves[4096][0]    # both start at f = 0
    drop = t_grok[512][0] - t_grok[4096][0]
    assert drop > 3 * math.hypot(t_grok[512][1], t_grok[4096][1]), t_grok


# -- the quick sweep ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("grokking")[0]


@pytest.mark.experiments
def test_quick_sweep_groks_later_the_lazier_it_is(quick):
    config = fig.EXPERIMENT.quick_config
    table = fig.summary(quick, config.factor).sort_values("alpha")
    assert np.all(np.isfinite(table["grokking_time"])), table
    assert table["grokking_time"].is_monotonic_increasing, table
    lazy = quick[quick["kind"] == "lazy"].iloc[0]
    lazy_test = np.asarray(lazy["test_loss"])
    groks = fig.times(quick, config.factor)
    for (_, r), t_grok in zip(quick[quick["kind"] == "network"].iterrows(), groks["grokking_time"], strict=True):
        t, train, test = (np.asarray(r[k]) for k in ("time", "train_loss", "test_loss"))
        assert test[0] == pytest.approx(lazy_test[0], rel=1e-12)    # a centred network starts at f = 0
        assert test[-1] < config.factor * lazy_test[-1]
        # grokking: before it, a record where the train loss has fallen by 40% while the test loss is still on the
        # lazy plateau (within 10%) and above where it started
        before = (t < t_grok) & (train < 0.6 * train[0]) & (test > 0.9 * lazy_test) & (test > test[0])
        assert before.any(), (r["alpha"], r["seed"])


@pytest.mark.experiments
def test_quick_sweep_dmft_rows_grok_later_the_lazier_they_are(quick):
    """The DMFT rows (theory.dmft.solve_outputs) start on the lazy curve (f = 0 at t = 0), grok (leave the plateau for
    good) later the lazier they are, with finite jackknife errors, and their recorded times are the lazy row's."""
    config = fig.EXPERIMENT.quick_config
    table = fig.dmft_times(quick, config.factor)
    assert len(table) == len(config.alphas) and np.all(np.isfinite(table["grokking_time"])), table
    assert table["grokking_time"].is_monotonic_increasing and np.all(table["grokking_time_se"] > 0), table
    lazy = quick[quick["kind"] == "lazy"].iloc[0]
    for _, r in quick[quick["kind"] == "dmft"].iterrows():
        assert r["test_loss"][0] == pytest.approx(lazy["test_loss"][0], rel=1e-12)
        assert len(r["loo_test_loss"]) == config.dmft_replicas
        assert r["time"][-1] <= config.dmft_steps * config.learning_rate


@pytest.mark.experiments
def test_quick_sweep_lazy_row_is_the_theory(quick):
    lazy = quick[quick["kind"] == "lazy"].iloc[0].to_dict()
    arch, task, steps = fig.setup(lazy)
    ntk = theory.kernels(arch, task.x_train, get="ntk").ntk
    ntk_test = theory.kernels(arch, task.x_test, task.x_train, get="ntk").ntk
    train, test = g.lazy_losses(ntk, ntk_test, task.y_train, task.y_test, lazy["learning_rate"], steps)
    np.testing.assert_allclose(lazy["test_loss"], test, rtol=1e-10)
    np.testing.assert_allclose(lazy["train_loss"], train, rtol=1e-10)
    # kernel regression (t -> inf) solved independently
    alpha = np.linalg.solve(np.asarray(ntk), task.y_train)
    want = 0.5 * np.mean((np.asarray(ntk_test) @ alpha - task.y_test) ** 2)
    assert lazy["kernel_regression_test_loss"] == pytest.approx(want, rel=1e-8)
