"""Monte-Carlo estimators against theory, with tolerances from their standard errors (fixed seeds)."""

import jax
import numpy as np
import pytest

import theory
from experiments import dense_chains
from experiments import monte_carlo as mc
from theory import layers as nn

X = np.random.default_rng(0).normal(size=(3, 4))


@pytest.mark.parametrize(
    "arch",
    [theory.MLP(2, "relu", 2**0.5, 0.0), theory.MLP(2, "erf", 1.5, 0.2), theory.MLP(3, "tanh", 1.2, 0.1),
     pytest.param(theory.ResNet(4, "tanh", 1.0, 0.1), marks=pytest.mark.slow),
     theory.ResNet(4, "relu", 1.0, 0.0, readout="linear"),
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


# -- the closed-form path of Dense / Elementwise chains (experiments.dense_chains) against the general one -----
CHAINS = {
    "relu-mlp": theory.MLP(3, "relu", 2**0.5, 0.0),
    "erf-mlp-bias": theory.MLP(2, "erf", 1.5, 0.2),
    "tanh-standard": theory.MLP(2, "tanh", 1.2, 0.1, weight_scaling="standard", width=16),
    "mup": theory.parameterize(theory.MLP(2, "relu", 2**0.5, 0.1), "mup", width=16),
    "serial": theory.serial(nn.Elementwise("tanh"), nn.Dense(w_std=1.5, b_std=0.2), nn.Elementwise("erf"),
                            nn.Dense(w_std=1.1), nn.Dense(w_std=1.2, b_std=0.1), nn.Elementwise("relu"), nn.Dense()),
}


def _general_and_fast(arch, x1, x2=None, **kwargs):
    """Per-network kernels of the general path and of the closed-form path, ``{"nngp": ..., "ntk": ...}`` each."""
    args = {"width": 16, "n_samples": 5, "key": jax.random.key(5), "get": ("nngp", "ntk"), "weights": "gaussian",
            "n_out": 1, "nngp_from": "outputs", "memory_budget": mc.DEFAULT_MEMORY_BUDGET, "progress": None} | kwargs
    out = []
    for general in (True, False):
        order, _, chunks = mc._kernel_chunks(arch, x1, x2, general=general, **args)
        chunks = list(chunks)
        out.append({name: np.concatenate([np.asarray(c[i]) for c in chunks]) for i, name in enumerate(order)})
    return out


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("relu-mlp", {}),
        ("erf-mlp-bias", {"n_out": 3, "x2": True}),
        ("tanh-standard", {"nngp_from": "readout_kernel", "n_out": 2}),
        pytest.param("mup", {"weights": "orthogonal", "x2": True}, marks=pytest.mark.slow),
        pytest.param("serial", {"n_out": 2, "memory_budget": 1}, marks=pytest.mark.slow),
        pytest.param("serial", {"nngp_from": "readout_kernel", "x2": True}, marks=pytest.mark.slow),
    ],
    ids=["relu-mlp", "erf-n_out-cross", "tanh-standard-readout_kernel", "mup-orthogonal-cross", "serial-chunks-of-one",
         "serial-readout_kernel-cross"],
)
def test_dense_chain_path_equals_the_general_path(name, kwargs):
    """Same networks, same kernels (float64), and estimate_kernels reports the general samples' mean and SE."""
    arch = CHAINS[name]
    assert dense_chains.chain(arch, 2) is not None
    x2 = np.random.default_rng(1).normal(size=(2, 4)) if kwargs.pop("x2", False) else None
    general, fast = _general_and_fast(arch, X, x2, **kwargs)
    est = mc.estimate_kernels(arch, X, x2, width=16, n_samples=5, key=jax.random.key(5), **kwargs)
    for kernel in ("nngp", "ntk"):
        ref = general[kernel]
        assert fast[kernel].shape == ref.shape == (5, 3, 3 if x2 is None else 2)
        np.testing.assert_allclose(fast[kernel], ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
        e = getattr(est, kernel)
        np.testing.assert_allclose(e.mean, ref.mean(0), rtol=1e-10, atol=1e-12 * np.abs(ref).max())
        np.testing.assert_allclose(e.stderr, ref.std(0, ddof=1) / np.sqrt(5), rtol=1e-8, atol=1e-12 * np.abs(ref).max())


@pytest.mark.slow  # moved from the default suite for its time budget; CI's slow stage runs it
def test_dense_chain_path_equals_the_general_path_unjitted_and_in_float32():
    arch, x = CHAINS["serial"], X.astype(np.float32)
    general, fast = _general_and_fast(arch, x, n_out=2, n_samples=2)
    with jax.disable_jit():  # the closed-form path op by op (the general path's eager run takes ~30 s)
        order, _, chunks = mc._kernel_chunks(arch, x, None, general=False, width=16, n_samples=2,
                                             key=jax.random.key(5), get=("nngp", "ntk"), weights="gaussian", n_out=2,
                                             nngp_from="outputs", memory_budget=mc.DEFAULT_MEMORY_BUDGET,
                                             progress=None)
        (eager,) = list(chunks)
    for i, kernel in enumerate(order):
        ref = general[kernel]
        assert ref.dtype == fast[kernel].dtype == eager[i].dtype == np.float32
        for got in (fast[kernel], np.asarray(eager[i])):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_programs_outside_the_dense_chain_path():
    assert dense_chains.chain(theory.MLP(2), 3) is None  # Dense at every position of a sequence
    assert dense_chains.chain(theory.ResNet(2), 2) is None
    assert dense_chains.chain(theory.serial(nn.Dense(), nn.LayerNorm(), nn.Elementwise("relu"), nn.Dense()), 2) is None


def test_normal_draws_jax_random_normal():
    """The same numbers as jax.random.normal, bit for bit (typed and raw threefry keys, float32 and float64, eager
    and jitted; other generators are passed to jax.random.normal)."""
    jitted = jax.jit(dense_chains.normal, static_argnums=(1, 2))
    for key in (jax.random.key(3), jax.random.PRNGKey(4), jax.random.key(5, impl="rbg")):
        for dtype in (np.float32, np.float64):
            for shape in ((7,), (16, 33)):
                want = np.asarray(jax.random.normal(key, shape, dtype))
                np.testing.assert_array_equal(np.asarray(dense_chains.normal(key, shape, dtype)), want)
        np.testing.assert_array_equal(np.asarray(jitted(key, (3, 5), np.float32)),
                                      np.asarray(jax.random.normal(key, (3, 5), np.float32)))
    assert dense_chains.fast_rng(jax.random.key(0)) and not dense_chains.fast_rng(jax.random.key(0, impl="rbg"))
