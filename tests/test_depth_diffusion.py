"""Finite width, infinite depth (the setting of Hayou 2022): the SDE against its closed forms, the finite network
against the SDE, the ReLU post-activation norm's change between widths 3 and 4 (and that it is transient), and bad
input.

Tolerances are standard errors over independent paths (fixed seeds): ``|measured - theory| <= 4 SE`` (plus the
Euler bias where the comparison is with the L -> inf law, which is ``O(1/L)`` and stated where used).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from experiments import depth_diffusion as dd
from experiments import networks
from theory import depth_diffusion as th

KEY = jax.random.key


def _z(a, b, se):
    return abs(a - b) / se


# -- the finite network ------------------------------------------------------------------------------------
@pytest.mark.parametrize("res", [
    theory.ResNet(6, "relu", w_std=1.3, b_std=0.2, branch_scale=0.7),
    theory.ResNet(5, "abs", w_std=0.9, branch_scale=1.4, depth_exponent=1.0, readout="linear"),
])
def test_residual_stream_is_networks_apply_on_the_same_weights(res):
    params = networks.init(res, 5, KEY(0), features=3)
    x = jnp.array([[0.3, -1.0, 2.0]])
    _, layers = networks.apply(res, params, x, per_layer=True)
    w = jnp.stack([p.W for p in params[1:-1]])
    b = None if res.b_std == 0 else jnp.stack([p.b for p in params[1:-1]])
    h_last, hs = dd.residual_stream(res, layers[0], w, b)
    np.testing.assert_allclose(hs, jnp.stack(layers[1:-1]), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(h_last, layers[-2], rtol=1e-13, atol=1e-13)


def test_network_and_euler_maruyama_with_depth_many_steps_have_one_law():
    """A block with fresh Gaussian weights adds N(0, a^2/L (w^2 ||phi(h)||^2/n + b^2) I): the width-n network of
    depth L and L Euler-Maruyama steps of the SDE are the same Markov chain in law (biases included)."""
    res = theory.ResNet(4, "relu", w_std=1.2, b_std=0.3, branch_scale=0.8)
    net = dd.simulate_network(res, 3, KEY(1), 20000, x=jnp.array([0.5, -1.0]))
    sde = dd.simulate_sde(res, 3, KEY(2), 20000, 4, x=jnp.array([0.5, -1.0]))
    for a, b in ((np.log(net.norm[:, -1]), np.log(sde.norm[:, -1])), (net.n_active[:, -1], sde.n_active[:, -1]),
                 (net.output, sde.output)):
        (ma, sa), (mb, sb) = dd.mean_and_se(a), dd.mean_and_se(b)
        assert _z(ma, mb, math.hypot(sa, sb)) <= 4
    edges = np.linspace(-3, 3, 241)
    ks = dd.binned_cdf_distance(dd.histogram(np.log(net.norm[:, -1]), edges),
                                dd.histogram(np.log(sde.norm[:, -1]), edges))
    assert ks <= dd.two_sample_ks_threshold(20000, 20000)


def test_finite_depth_law_is_exact_and_differs_from_the_limit():
    """abs, L = 2: the network's log-norm moments match the exact noncentral-chi-square law, which is many SE
    away from the L -> inf law (so the comparison resolves depth); E||h||^4 / (E||h||^2)^2 matches too."""
    res = theory.ResNet(2, "abs", w_std=1.1)
    s = dd.simulate_network(res, 3, KEY(3), 40000)
    summ = dd.log_ratio_summary(s)
    mean, var = th.finite_depth_log_norm_moments(res, 3)
    law = th.resnet_log_norm_law(res, 3)
    assert _z(summ["mean"], mean, summ["mean_se"]) <= 4
    assert _z(summ["variance"], var, summ["variance_se"]) <= 4
    assert _z(summ["variance"], law.variance, summ["variance_se"]) > 10
    q2, q4 = s.norm[:, -1] ** 2, s.norm[:, -1] ** 4
    ratio = q4.mean() / q2.mean() ** 2
    # delta method for mean(q4) / mean(q2)^2
    grad = np.stack([np.full_like(q4, 1 / q2.mean() ** 2), np.full_like(q2, -2 * q4.mean() / q2.mean() ** 3)])
    se = math.sqrt(np.var(grad[0] * q4 + grad[1] * q2, ddof=1) / q2.size)
    exact = (th.output_excess_kurtosis(res, 3, finite_depth=True) + 3) / 3
    assert _z(ratio, exact, se) <= 4


# -- the SDE against the closed forms ------------------------------------------------------------------------
@pytest.mark.parametrize("activation,width,a,w",
                         [("abs", 2, 1.0, 1.0), ("identity", 3, 0.8, 1.5), ("abs", 8, 1.2, 1.0)])
def test_sde_log_norm_is_the_closed_form_normal_law(activation, width, a, w):
    """Norm-preserving phi: ln||X_1|| - ln||X_0|| ~ N((1/2 - 1/n) T, T/n), T = a^2 w^2. Euler-Maruyama with 256
    steps is exactly the depth-256 network, whose moments (exact) differ from the limit by < 0.002."""
    res = theory.ResNet(256, activation, w_std=w, branch_scale=a)
    s = dd.simulate_sde(res, width, KEY(10 + width), 20000, 256)
    summ = dd.log_ratio_summary(s)
    law = th.resnet_log_norm_law(res, width)
    exact_mean, exact_var = th.finite_depth_log_norm_moments(res, width)
    assert abs(exact_mean - law.mean) < 2e-3 and abs(exact_var - law.variance) < 2e-3
    assert _z(summ["mean"], law.mean, summ["mean_se"]) <= 4
    assert _z(summ["variance"], law.variance, summ["variance_se"]) <= 4
    assert dd.ks_statistic(summ["log_ratio"], lambda y: law.cdf(y + 0.0)) <= dd.ks_threshold(summ["n_used"])
    assert summ["dead_start_fraction"] == 0 and summ["dead_end_fraction"] == 0


def test_relu_width_one_is_geometric_brownian_motion():
    """n = 1, X_0 = 1: dX = X^+ dB is a geometric Brownian motion, ln X_T ~ N(-T/2, T)."""
    res = theory.ResNet(256, "relu", branch_scale=0.9)
    s = dd.simulate_sde(res, 1, KEY(20), 20000, 256, h0=jnp.ones(1))
    summ = dd.log_ratio_summary(s)
    law = th.resnet_log_norm_law(res, 1)
    assert law.mean == pytest.approx(-0.81 / 2) and law.variance == pytest.approx(0.81)
    assert summ["dead_end_fraction"] == 0  # P(one step below -1) = Phi(-sqrt(256)/0.9) ~ 1e-70
    exact_mean, exact_var = th.finite_depth_log_norm_moments(theory.ResNet(256, "identity", branch_scale=0.9), 1)
    assert _z(summ["mean"], exact_mean, summ["mean_se"]) <= 4
    assert _z(summ["variance"], exact_var, summ["variance_se"]) <= 4
    assert abs(summ["mean"] - law.mean) <= 4 * summ["mean_se"] + abs(exact_mean - law.mean)
    assert dd.ks_statistic(summ["log_ratio"], law.cdf) <= dd.ks_threshold(summ["n_used"])


def test_closed_forms_agree_with_the_infinite_width_ode_and_converge_in_depth():
    """E||X_T||^2 = ||X_0||^2 e^T, the ODE's value at every width (theory.resnet_limit, identity, linear
    readout); the exact finite-depth moments and kurtosis approach the limit at the Euler rate O(1/L)."""
    res = theory.ResNet(64, "identity", w_std=1.2, branch_scale=0.9, readout="linear")
    x = np.array([[0.6, -1.2, 0.4]])
    q0 = float(np.sum(x**2) / x.shape[1])
    ode = float(theory.resnet_limit(res, x).nngp[0, 0])
    for n in (1, 2, 5):
        law = th.resnet_log_norm_law(res, n, initial_norm=1.0)
        assert law.exp_moment(2) == pytest.approx(ode / q0, rel=1e-9)
    hz = th.horizon(res)
    for n in (2, 3, 8):
        limit = th.log_norm_law(n, hz)
        gaps = []
        for depth in (100, 1000, 10000):
            _, var = th.finite_depth_log_norm_moments(theory.ResNet(depth, "abs", w_std=1.2, branch_scale=0.9), n)
            gaps.append(abs(var - limit.variance) * depth)
        assert gaps[2] == pytest.approx(gaps[1], rel=0.02)  # L * gap -> const: O(1/L)
        k_inf = th.output_excess_kurtosis(res, n)
        assert k_inf == pytest.approx(3 * (1 + 2 / n) * math.exp(4 * hz / n) - 3)
        k_fin = [th.output_excess_kurtosis(theory.ResNet(d, "abs", w_std=1.2, branch_scale=0.9), n, finite_depth=True)
                 for d in (100, 1000)]
        assert abs(k_fin[1] - k_inf) < abs(k_fin[0] - k_inf) / 5


# -- finite L approaches the SDE ----------------------------------------------------------------------------
def test_relu_network_approaches_the_sde_law_as_depth_grows():
    """ReLU, width 2: the variance of ln(||phi(h_L)|| / ||phi(h_0)||) of the network (real weight matrices) is far
    from the SDE's at L = 4, closer at L = 16, and within 4 SE at L = 128; only shallow networks die
    (phi(h_L) = 0, impossible for the SDE)."""
    res = theory.ResNet(1, "relu")
    ref = dd.log_ratio_summary(dd.simulate_sde(res, 2, KEY(30), 30000, 256))
    gaps, dead = [], []
    for depth in (4, 16, 128):
        summ = dd.log_ratio_summary(dd.simulate_network(theory.ResNet(depth, "relu"), 2, KEY(31 + depth), 20000))
        se = math.hypot(summ["variance_se"], ref["variance_se"])
        gaps.append((abs(summ["variance"] - ref["variance"]), se))
        dead.append(summ["dead_end_fraction"])
    (g4, s4), (g16, s16), (g128, s128) = gaps
    assert g4 > 10 * s4
    assert g16 < g4 / 2 - 2 * math.hypot(s4, s16)
    assert g128 <= 4 * s128
    assert dead[0] > 1e-3 and dead[2] == 0


# -- the regime change ---------------------------------------------------------------------------------------
def test_relu_post_activation_norm_changes_regime_between_widths_3_and_4():
    """d ln||phi(X)|| = n^{-1/2} dW + (N_t - 2)/(2n) dt: the expected log post-activation norm falls at width 3
    (fewer than two active units on average, E[N_0 | N_0 >= 1] = 12/7) and grows at width 4 (32/15 > 2), here
    on the horizon T = 2 (the growth does not last: next test).
    Measured directly (ln ratio at T = 2) and through the pathwise drift integral; both resolve the sign."""
    assert th.relu_first_growing_width() == 4
    assert th.relu_initial_log_growth_rate(3) == pytest.approx(-1 / 21)
    assert th.relu_initial_log_growth_rate(4) == pytest.approx(1 / 60)
    res = theory.ResNet(1, "relu", branch_scale=math.sqrt(2.0))
    signs = {}
    for n in (3, 4):
        s = dd.simulate_sde(res, n, KEY(40 + n), 40000, 128, checkpoints=64)
        summ = dd.log_ratio_summary(s)
        # the drift integral on the SDE's own clock: T = 2, so scale the unit-clock estimate by T
        drift, drift_se = (2.0 * v for v in dd.ito_drift_estimate(s))
        assert _z(summ["mean"], drift, math.hypot(summ["mean_se"], drift_se)) <= 4
        assert _z(summ["active_t"][0], th.relu_active_mean_at_init(n), summ["active_se_t"][0]) <= 4
        lo, hi = th.relu_log_growth_bounds(n, 2.0)
        assert lo < summ["mean"] < hi
        signs[n] = (summ["mean"] / summ["mean_se"], drift / drift_se, float(np.mean(summ["active_t"])) - 2)
    assert signs[3][0] < -4 and signs[3][1] < -10 and signs[3][2] < 0  # measured: -23 SE and -106 SE
    assert signs[4][0] > 3 and signs[4][1] > 10 and signs[4][2] > 0  # measured: +4.8 SE and +22 SE


def test_relu_growth_from_width_four_is_transient():
    """The sign change is a small-depth effect: X is a time-changed Brownian motion that ends up next to the
    negative orthant, so N_t -> 1 and E ln||phi(X_T)|| eventually falls like -T/(2n) at every width. Width 4 on
    the horizon T = 16 (SDE, dT = 1/64): E R_T > 0 at T = 2, < 0 at T = 16, and the mean number of active units
    falls from 32/15 towards 1; width 3 shrinks at every checkpoint."""
    res = theory.ResNet(1, "relu", branch_scale=4.0)  # horizon T = 16, checkpoints at T = 1, 2, .., 16
    for n in (3, 4):
        summ = dd.log_ratio_summary(dd.simulate_sde(res, n, KEY(50 + n), 20000, 1024, checkpoints=16))
        z = summ["mean_t"][1:] / summ["mean_se_t"][1:]
        late = summ["mean_t"][16] - summ["mean_t"][8]
        assert -8 / (2 * n) < late < 0  # falling, no faster than the bound of (4)
        assert summ["active_t"][16] < summ["active_t"][0] - 0.4  # measured at n = 4: 2.13 -> 1.58
        if n == 3:
            assert np.all(z < -4)  # measured: -11 SE at T = 1, -71 SE at T = 16
        else:
            assert z[1] > 3 and z[15] < -10  # measured: +6.5 SE at T = 2 and -21 SE at T = 16


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [0, -3, 2.5, True, "4"])
def test_bad_width(width):
    res = theory.ResNet(8, "abs")
    with pytest.raises(ValueError, match="width must be a positive integer"):
        th.resnet_log_norm_law(res, width)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        dd.simulate_sde(res, width, KEY(0), 10, 8)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        th.relu_initial_log_growth_rate(width)


def test_bad_architecture_and_exponent():
    mlp = theory.MLP(3, "relu")
    for call in (lambda: th.horizon(mlp), lambda: dd.simulate_sde(mlp, 3, KEY(0), 10, 8),
                 lambda: dd.simulate_network(mlp, 3, KEY(0), 10), lambda: th.resnet_log_norm_law(mlp, 3)):
        with pytest.raises(ValueError, match=r"theory\.ResNet"):
            call()
    with pytest.raises(ValueError, match=r"depth_exponent=1.0.*identity map"):
        dd.simulate_sde(theory.ResNet(8, "relu", depth_exponent=1.0), 3, KEY(0), 10, 8)
    with pytest.raises(ValueError, match=r"depth_exponent=0.25.*no finite limit"):
        th.horizon(theory.ResNet(8, "relu", depth_exponent=0.25))
    # the finite network itself exists for any exponent
    assert dd.simulate_network(theory.ResNet(4, "relu", depth_exponent=1.0), 3, KEY(0), 10).norm.shape == (10, 2)


def test_bad_closed_form_requests_and_arguments():
    with pytest.raises(ValueError, match=r"no closed-form law for .*relu.* at width 2"):
        th.resnet_log_norm_law(theory.ResNet(8, "relu"), 2)
    with pytest.raises(ValueError, match="b_std = 0"):
        th.resnet_log_norm_law(theory.ResNet(8, "abs", b_std=0.1), 2)
    with pytest.raises(ValueError, match="norm-preserving"):
        th.finite_depth_log_norm_moments(theory.ResNet(8, "tanh"), 2)
    with pytest.raises(ValueError, match="n_active must be between 0 and width=3"):
        th.relu_log_drift(3, 4)
    with pytest.raises(ValueError, match="initial_norm must be a finite number > 0"):
        th.log_norm_law(3, 1.0, initial_norm=0.0)
    res = theory.ResNet(8, "relu")
    with pytest.raises(ValueError, match="checkpoints=3 must divide n_steps=8"):
        dd.simulate_sde(res, 3, KEY(0), 10, 8, checkpoints=3)
    with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
        dd.simulate_sde(res, 3, 0, 10, 8)
    with pytest.raises(ValueError, match=r"h0 must have shape .* \(10, 3\)"):
        dd.simulate_sde(res, 3, KEY(0), 10, 8, h0=jnp.ones((10, 4)))
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        dd.simulate_sde(res, 3, KEY(0), 10, 0)
    with jax.enable_x64(False), pytest.raises(ValueError, match="x64"):
        dd.simulate_sde(res, 3, KEY(0), 10, 8, dtype=np.float64)
