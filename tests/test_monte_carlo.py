"""Monte-Carlo estimators against theory, with tolerances from their standard errors (fixed seeds)."""

import jax
import numpy as np
import pytest

import theory
from experiments import monte_carlo as mc

X = np.random.default_rng(0).normal(size=(3, 4))


@pytest.mark.parametrize(
    "arch",
    [theory.MLP(2, "relu", 2**0.5, 0.0), theory.MLP(2, "erf", 1.5, 0.2), theory.MLP(3, "tanh", 1.2, 0.1),
     theory.ResNet(4, "tanh", 1.0, 0.1), theory.ResNet(4, "relu", 1.0, 0.0, readout="linear"),
     theory.ResNet(3, "erf", 1.5, 0.2, weight_scaling="standard", width=512)],
    ids=["relu-mlp", "erf-mlp", "tanh-mlp", "tanh-resnet", "relu-resnet-linear", "erf-resnet-standard"],
)
def test_kernel_estimates_agree_with_the_limit(arch):
    width = 512
    est = mc.estimate_kernels(arch, X, width=width, n_samples=48, key=jax.random.key(0), n_out=8)
    limit = theory.kernels(arch, X)
    for name in ("nngp", "ntk"):
        e, k = getattr(est, name), np.asarray(getattr(limit, name))
        # 4 standard errors plus the O(layers / width) bias of the finite-width mean kernel.
        allowance = 2 * arch.n_layers / width * np.abs(k).max()
        assert np.all(np.abs(e.mean - k) <= 4 * e.stderr + allowance), (name, e.mean, k, e.stderr)
    assert est.dtype == np.float64 and est.width == width and est.n_samples == 48


def test_relu_excess_kurtosis_follows_the_exact_finite_width_law():
    """ReLU, one input, C_W = 2, C_b = 0. With G_l = (2/n)||relu(h_l)||^2, h_{l+1} | G_l ~ N(0, G_l) and
    E[G_{l+1}^2] = (1 + 5/n) E[G_l^2], E[G_0^2] = q^2 (G_0 = q deterministic). So the pre-activation of
    Dense layer k (1-based; k = 1 reads x) has E[h^4] / E[h^2]^2 = 3 (1 + 5/n)^(k-1): excess kurtosis
    3 (1 + 5/n)^(k-1) - 3, and the readout (k = depth + 1) grows as (1 + 5/n)^depth."""
    width, depth = 16, 4
    mom = mc.preactivation_moments(theory.MLP(depth, "relu", 2**0.5, 0.0), X[:1], width=width,
                                   n_samples=3000, key=jax.random.key(1), n_out=32)
    exact = 3 * (1 + 5 / width) ** np.arange(depth + 1) - 3
    got, se = mom.excess_kurtosis.mean[:, 0], mom.excess_kurtosis.stderr[:, 0]
    assert np.all(np.abs(got - exact) <= 4 * se), (got, exact, se)  # readout pooled over 32 units
    q = 2 * np.mean(X[0] ** 2)
    assert np.all(np.abs(mom.variance.mean[:, 0] - q) <= 4 * mom.variance.stderr[:, 0])


@pytest.mark.parametrize(
    "arch", [theory.MLP(2, "erf", 1.5, 0.3), theory.ResNet(3, "relu", readout="linear")], ids=["mlp", "resnet"]
)
def test_readout_kernel_estimator_has_the_output_covariance_as_mean(arch):
    """E[f f^T] two ways: from sampled outputs (readout noise included) and from the readout's
    conditional covariance; independent keys, so the difference is within 4 combined SEs, and the
    conditional estimator's SE is the smaller one."""
    args = {"width": 16, "n_samples": 3000, "get": "nngp", "n_out": 4}
    outputs = mc.estimate_kernels(arch, X, key=jax.random.key(11), **args).nngp
    conditional = mc.estimate_kernels(arch, X, key=jax.random.key(12), nngp_from="readout_kernel", **args).nngp
    assert np.all(np.abs(outputs.mean - conditional.mean) <= 4 * np.hypot(outputs.stderr, conditional.stderr))
    assert np.all(conditional.stderr < outputs.stderr)


def test_results_do_not_depend_on_chunking():
    arch = theory.MLP(2, "tanh", 1.2, 0.1)
    a = mc.estimate_kernels(arch, X, width=32, n_samples=10, key=jax.random.key(2))
    b = mc.estimate_kernels(arch, X, width=32, n_samples=10, key=jax.random.key(2), memory_budget=1)
    np.testing.assert_allclose(a.ntk.mean, b.ntk.mean, rtol=1e-12)
    np.testing.assert_allclose(a.nngp.stderr, b.nngp.stderr, rtol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 1}, "n_samples must be an integer >= 2"),
        ({"width": 0}, "width must be a positive integer"),
        ({"key": 3}, "key must be a JAX PRNG key"),
        ({"get": "cov"}, "get must name kernels"),
        ({"weights": "lowrank"}, "unknown weights 'lowrank'"),
        ({"nngp_from": "gradients"}, "nngp_from must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"width": 8, "n_samples": 4, "key": jax.random.key(0)} | kwargs
    with pytest.raises(ValueError, match=match):
        mc.estimate_kernels(theory.MLP(1), X, **args)


def test_bad_inputs_and_architecture():
    with pytest.raises(ValueError, match="NaN or inf"):
        mc.estimate_kernels(theory.MLP(1), X * np.nan, width=4, n_samples=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected a theory\.MLP or theory\.ResNet"):
        mc.preactivation_moments("mlp", X, width=4, n_samples=2, key=jax.random.key(0))


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch",
    [theory.MLP(6, "erf", 2.0, 0.1), theory.ResNet(8, "tanh", 1.0, 0.1, branch_scale=1.5)],
    ids=["erf-mlp", "tanh-resnet"],
)
def test_mean_kernel_bias_shrinks_as_one_over_width(arch):
    """E[K_width] - K_limit = c / width + O(1/width^2): measured at widths 8 and 64 the bias must be
    clearly nonzero at 8 and 8x smaller at 64 (up to SEs and a 50% allowance for the 1/n^2 term); a
    bias that did not shrink would sit ~6 SE(64) away from the prediction."""
    x = np.random.default_rng(0).normal(size=(2, 4))
    limit = theory.kernels(arch, x)
    small, large = 8, 64
    est = {
        w: mc.estimate_kernels(arch, x, width=w, n_samples=n, key=jax.random.key(w), n_out=8,
                               nngp_from="readout_kernel")
        for w, n in ((small, 6000), (large, 1000))
    }
    for name in ("nngp", "ntk"):
        k = np.asarray(getattr(limit, name))
        dev = {w: (getattr(e, name).mean - k) / k for w, e in est.items()}
        se = {w: getattr(e, name).stderr / np.abs(k) for w, e in est.items()}
        resolved = np.abs(dev[small]) > 6 * se[small]
        assert resolved.any(), (name, dev[small], se[small])
        predicted = dev[small] * small / large
        tolerance = 4 * np.hypot(se[large], se[small] * small / large) + 0.5 * np.abs(predicted)
        assert np.all(np.abs(dev[large] - predicted)[resolved] <= tolerance[resolved]), (name, dev, se)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_orthogonal_weights_have_the_same_kernel_limit(activation):
    """Haar-orthogonal weights scaled to unit entry variance share the Gaussian NNGP/NTK limit
    (Huang et al. 2021, "On the Neural Tangent Kernel of Deep Networks with Orthogonal Initialization";
    "Beyond IID weights")."""
    arch = theory.MLP(2, activation, 1.5, 0.1)
    width = 512
    est = mc.estimate_kernels(arch, X, width=width, n_samples=48, key=jax.random.key(7), n_out=8, weights="orthogonal")
    limit = theory.kernels(arch, X)
    for name in ("nngp", "ntk"):
        e, k = getattr(est, name), np.asarray(getattr(limit, name))
        allowance = 2 * arch.n_layers / width * np.abs(k).max()
        assert np.all(np.abs(e.mean - k) <= 4 * e.stderr + allowance), (name, e.mean, k, e.stderr)


@pytest.mark.slow
def test_orthogonal_weights_stop_tanh_fluctuations_growing_with_depth():
    """tanh at criticality (C_W = 1, C_b = 0), width 32, depth 24. Gaussian weights: the excess kurtosis
    of pre-activations grows linearly in depth/width (about 2 l/n). Orthogonal weights (Day et al.
    2021): it stays at its first-layer value, which is exact there: a square Haar-orthogonal layer maps
    x to a uniform point on a sphere, whose coordinates have excess kurtosis -6/(n+2)."""
    width, depth = 32, 24
    x = np.random.default_rng(0).normal(size=(1, width))
    arch = theory.MLP(depth, "tanh", 1.0, 0.0)
    kurt = {
        w: mc.preactivation_moments(arch, x, width=width, n_samples=1000, key=jax.random.key(3), weights=w)
        .excess_kurtosis for w in ("gaussian", "orthogonal")
    }
    growth = {w: k.mean[depth - 1, 0] - k.mean[0, 0] for w, k in kurt.items()}
    growth_se = {w: np.hypot(k.stderr[depth - 1, 0], k.stderr[0, 0]) for w, k in kurt.items()}
    assert growth["gaussian"] > 1.0 and growth["gaussian"] > 8 * growth_se["gaussian"], (growth, growth_se)
    assert abs(growth["orthogonal"]) <= 4 * growth_se["orthogonal"] + 0.1 * growth["gaussian"], (growth, growth_se)
    first = kurt["orthogonal"]
    assert abs(first.mean[0, 0] + 6 / (width + 2)) <= 4 * first.stderr[0, 0], first.mean[0, 0]


def test_network_kernels_are_the_samples_behind_the_estimate():
    arch = theory.ResNet(2, "erf", 1.2, 0.1)
    args = {"width": 16, "n_samples": 12, "key": jax.random.key(4), "nngp_from": "readout_kernel"}
    samples = mc.network_kernels(arch, X, **args, memory_budget=1)
    est = mc.estimate_kernels(arch, X, get="nngp", **args).nngp
    assert samples.shape == (12, 3, 3)
    np.testing.assert_allclose(samples.mean(0), est.mean, rtol=1e-12)
    np.testing.assert_allclose(samples.std(0, ddof=1) / np.sqrt(12), est.stderr, rtol=1e-9)
    with pytest.raises(ValueError, match="get must name one kernel"):
        mc.network_kernels(arch, X, get=("nngp", "ntk"), **args)


def test_median_standard_error_matches_the_asymptotic_formula():
    """Median of n standard normals: SE -> sqrt(pi / 2) / sqrt(n) ~ 1.2533 / sqrt(n)."""
    values = np.random.default_rng(1).normal(size=4000)
    est = mc.median(values, n_boot=1000)
    assert abs(est.mean) < 4 * est.stderr
    assert abs(est.stderr * np.sqrt(4000) / np.sqrt(np.pi / 2) - 1) < 0.15
    with pytest.raises(ValueError, match="at least 2 samples"):
        mc.median(np.ones(1))
