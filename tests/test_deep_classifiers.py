"""theory.deep_classifiers: the infinite-depth NTK and its classifiers (Radhakrishnan, Belkin & Uhler)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory import deep_classifiers as dc
from theory import predict

RHO = jnp.asarray([-0.9, -0.3, 0.0, 0.3, 0.7, 0.95, 0.999])


def _circle(n, seed, imbalance=0.0):
    rng = np.random.default_rng(seed)
    ang = rng.uniform(0, 2 * np.pi, n)
    labels = (np.sin(3 * ang) > imbalance).astype(int)
    return np.stack([np.cos(ang), np.sin(ang)], 1), labels


def _ntk_regression(act, x, y, xt, depth, recursion=False):
    """The NTK predictor at finite depth, with the kernels of theory.kernels (or of dc.ntk: variances exactly 1)
    and theory.predict."""
    if recursion:
        k_train = dc.ntk(act, dc.correlations(x), depth).ntk
        k_test = dc.ntk(act, dc.correlations(xt, x), depth).ntk
    else:
        net = dc.network(act, depth)
        k_train = theory.kernels(net, dc.sphere(x), get="ntk").ntk
        k_test = theory.kernels(net, dc.sphere(xt), dc.sphere(x), get="ntk").ntk
    scale = float(k_train[0, 0])
    return np.asarray(predict.gradient_descent_mse(k_train / scale, y)(None, 0.0, 0.0, k_test / scale)[1])


# -- duals and taxonomy ---------------------------------------------------------------------------------------
@pytest.mark.slow  # moved from the default suite for its time budget; CI's slow stage runs it
def test_hermite_activation_dual_matches_quadrature_at_any_variance():
    act = dc.hermite_activation([0.2, -0.5, 0.7, 0.3])
    q11, q22 = jnp.asarray([[0.5], [1.3]]), jnp.asarray([[0.8, 1.1]])
    q12 = jnp.asarray([[0.3, -0.2], [0.9, 0.1]])
    closed = act.expectations(q11, q12, q22)
    quad = act.with_quadrature(24).expectations(q11, q12, q22)
    np.testing.assert_allclose(closed[0], quad[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(closed[1], quad[1], rtol=1e-12, atol=1e-13)
    # normalised at unit variance: xi(rho) = sum c_i^2 rho^i / sum c_i^2
    xi, dxi = dc.dual(act, RHO)
    c2 = np.array([0.2, -0.5, 0.7, 0.3]) ** 2
    np.testing.assert_allclose(xi, np.polyval(c2[::-1], RHO) / c2.sum(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dxi, np.polyval(np.polyder(c2[::-1]), RHO) / c2.sum(), rtol=1e-13)


def test_taxonomy_of_relu_erf_and_the_constructed_activations():
    relu = dc.taxonomy("relu")  # sqrt(2) relu: a_0^2 = 1/pi, a_1^2 = 1/2, critical with a kink
    assert relu.classifier == "majority vote" and relu.critical_power == 0.5
    assert relu.a0_sq == pytest.approx(1 / math.pi, rel=1e-12) and relu.a1_sq == pytest.approx(0.5, rel=1e-12)
    assert relu.slope == pytest.approx(1.0, abs=1e-12)
    erf = dc.taxonomy("erf")  # xi = arcsin(2 rho / 3) / arcsin(2 / 3)
    s = math.asin(2 / 3)
    assert erf.classifier == "singular kernel" and erf.a0_sq == 0
    assert erf.a1_sq == pytest.approx(2 / 3 / s, rel=1e-12)
    assert erf.slope == pytest.approx(2 / math.sqrt(5) / s, rel=1e-12)
    assert erf.exponent == pytest.approx(math.log(s * 1.5) / math.log(2 / math.sqrt(5) / s), rel=1e-12)
    for dim in (1, 2, 3, 63):
        opt = dc.taxonomy(dc.optimal_activation(dim))
        assert opt.classifier == "singular kernel" and 2 * opt.exponent == pytest.approx(dim, rel=1e-10)
    assert dc.taxonomy(dc.optimal_activation(63)).a1_sq < 1e-9
    near = dc.taxonomy(dc.nearest_neighbour_activation())
    assert near.classifier == "nearest neighbour" and near.order == 2 and near.slope == pytest.approx(2.5)
    assert dc.taxonomy(dc.hermite_activation([0.3, 0.5, 0.8])).classifier == "majority vote"
    assert dc.taxonomy(dc.hermite_activation([0.6, 0.79, 0.1])).classifier == "ordered"
    assert dc.taxonomy("identity").classifier == "linear"


# -- finite depth: the scalar recursion against theory.kernels ---------------------------------------------------
@pytest.mark.parametrize("act, depth, rtol", [("relu", 1000, 1e-9), ("erf", 500, 1e-12),
                                             pytest.param("tanh", 20, 1e-5, marks=pytest.mark.slow)])
def test_ntk_recursion_is_the_kernel_of_the_normalised_network(act, depth, rtol):
    x = np.random.default_rng(0).normal(size=(5, 4))
    k = theory.kernels(dc.network(act, depth), dc.sphere(x))
    mine = dc.ntk(act, dc.correlations(x), [1, depth])
    np.testing.assert_allclose(mine.ntk[-1], k.ntk, rtol=rtol)
    np.testing.assert_allclose(mine.nngp[-1], k.nngp, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(dc.ntk(act, dc.correlations(x), 1).ntk, mine.ntk[0], rtol=1e-14)


@pytest.mark.slow
def test_relu_depth_10000_against_theory_kernels_and_the_quarter():
    x = np.random.default_rng(1).normal(size=(4, 3))
    k = theory.kernels(dc.network("relu", 10_000), dc.sphere(x))
    mine = dc.ntk("relu", dc.correlations(x), 10_000)
    np.testing.assert_allclose(mine.ntk, k.ntk, rtol=3e-7)  # measured 9e-8: arccos near rho = 1
    off = np.asarray(k.ntk)[~np.eye(4, dtype=bool)] / 10_001
    # Theta_L / (L + 1) = 1/4 + (a log L + c(rho)) / L, measured a ~ 0.38, |c| < 20 for rho < 0.999
    assert np.all(np.abs(off - 0.25) < (0.5 * math.log(1e4) + 20) / 1e4), off


# -- the limits against the recursion at depth -----------------------------------------------------------------
@pytest.mark.parametrize("act", ["erf", dc.optimal_activation(1), dc.optimal_activation(3)])
def test_singular_kernel_is_the_depth_limit_with_its_1_over_L_correction(act):
    tax = dc.taxonomy(act)
    sk = dc.singular_kernel(act, RHO)
    depth = math.ceil(40 / math.log(1 / tax.a1_sq)) + 60  # a_1^{2L} < e^{-40}
    theta = np.asarray(dc.ntk(act, RHO, depth).ntk)
    scale = tax.a1_sq**depth
    np.testing.assert_allclose(theta, scale * ((depth + 1) * sk.kernel + sk.correction), rtol=1e-11, atol=1e-300)
    # without the correction the relative error is E / ((L + 1) C): the 1 / L rate
    lead = scale * (depth + 1) * np.asarray(sk.kernel)
    nz = np.asarray(RHO) != 0
    np.testing.assert_allclose((theta / lead - 1)[nz], (np.asarray(sk.correction / sk.kernel) / (depth + 1))[nz],
                               rtol=1e-8)
    # Koenigs' functional equation C(xi(rho)) = a_1^2 C(rho), and exp(log_abs) sign = C
    xi = dc.dual(act, RHO)[0]
    np.testing.assert_allclose(dc.singular_kernel(act, xi).kernel, tax.a1_sq * sk.kernel, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(sk.sign * np.exp(sk.log_abs), sk.kernel, rtol=1e-13)
    one = dc.singular_kernel(act, jnp.asarray([1.0]))
    assert np.isinf(one.kernel[0]) and one.kernel[0] > 0


@pytest.mark.slow
@pytest.mark.parametrize("act", ["erf", dc.optimal_activation(3)])
def test_singular_kernel_blows_up_with_the_exponent(act):
    alpha = dc.taxonomy(act).exponent
    delta = jnp.asarray([1e-5, 1e-6, 1e-7])
    log_c = np.asarray(dc.singular_kernel(act, 1 - delta).log_abs)
    slopes = np.diff(log_c) / np.diff(-np.log(np.asarray(delta)))
    # log C = alpha log(1 / (1 - rho)) + a bounded log-periodic part (xi's multiplier at 1 is not an integer power)
    assert np.all(np.abs(slopes - alpha) < 0.1 * alpha + 0.05), (slopes, alpha)
    far = np.asarray(dc.singular_kernel(act, 1 - jnp.asarray([1e-3, 1e-9])).log_abs)
    assert (far[1] - far[0]) / math.log(1e6) == pytest.approx(alpha, rel=0.05, abs=0.02)


def test_nearest_neighbour_log_similarity_is_the_doubly_exponential_rate():
    act = dc.nearest_neighbour_activation()
    rho = jnp.asarray([-0.9, -0.3, 0.3, 0.7, 0.95, 0.999])
    beta = np.asarray(dc.log_similarity(act, rho))
    depths = [4, 6, 8]
    theta = np.asarray(dc.ntk(act, rho, depths).ntk)
    errors = []
    for i, depth in enumerate(depths):
        # log |Theta_L| = 2^L beta + O(L) (Theta_L ~ c_L rho_L with c_L <= 2^L-ish): error within (2L + 2) / 2^L
        err = np.abs(np.log(np.abs(theta[i])) / 2**depth - beta)
        assert np.all(err <= (2 * depth + 2) / 2**depth), (depth, err)
        errors.append(err.max())
    assert errors[0] > errors[1] > errors[2]
    assert np.all(np.diff(beta[2:]) > 0) and beta[-1] < 0 and float(dc.log_similarity(act, 1.0)) == 0


def test_majority_vote_kernels():
    chaotic = dc.hermite_activation([0.3, 0.5, 0.8])
    theta = dc.ntk(chaotic, RHO, 200).ntk
    np.testing.assert_allclose(theta, dc.majority_vote_kernel(chaotic, RHO), rtol=1e-12)
    # fixed point rho* = xi(rho*) of xi = (0.09 + 0.25 r + 0.64 r^2) / 0.98, and Theta = rho* / (1 - xi'(rho*))
    c = np.array([0.09, 0.25, 0.64]) / 0.98
    star = min(r.real for r in np.roots([c[2], c[1] - 1, c[0]]) if 0 <= r.real < 1)
    np.testing.assert_allclose(theta[0], star / (1 - c[1] - 2 * c[2] * star), rtol=1e-12)
    np.testing.assert_allclose(dc.majority_vote_kernel("relu", RHO), 0.25)
    assert float(dc.majority_vote_kernel("relu", 1.0)) == 1.0


# -- the limit classifiers against independent implementations and finite depth --------------------------------
@pytest.mark.slow
def test_nearest_neighbour_limit_is_1nn_and_finite_depth_reaches_it():
    x, labels = _circle(40, 0)
    xt, _ = _circle(150, 1)
    y = np.eye(2)[labels] - 0.5
    act = dc.nearest_neighbour_activation()
    scores = dc.limit_classifier(act, x, y, xt)
    nearest = np.argmin(((xt[:, None, :] - x[None]) ** 2).sum(-1), axis=1)  # 1-NN by Euclidean distance
    np.testing.assert_array_equal(np.argmax(scores, 1), labels[nearest])
    # near-ties separate as exp(2^L (beta_1 - beta_2)): depth 9 reaches 1-NN on all 150 (depth 8: 149)
    np.testing.assert_array_equal(np.argmax(_ntk_regression(act, x, y, xt, 9), 1), labels[nearest])


@pytest.mark.slow
def test_majority_vote_limit_and_finite_depth():
    x, labels = _circle(40, 2, imbalance=0.5)  # about 2:1
    xt, _ = _circle(100, 3)
    y = np.eye(2)[labels] - 0.5
    majority = np.bincount(labels, minlength=2).argmax()
    # relu approaches it as log L / L: 97% of test inputs at depth 2,000, all at 10,000
    assert np.all(np.argmax(dc.limit_classifier("relu", x, y, xt), 1) == majority)
    assert np.all(np.argmax(_ntk_regression("relu", x, y, xt, 10_000), 1) == majority)
    # the chaotic polynomial: a pair at 1 - rho = delta stays correlated for log(1/delta) / log(1.56) layers, so
    # depth 100; it sits at an unstable variance fixed point (V'(1) = xi'(1)), so theory.kernels' rounding grows
    # as 1.56^L: the recursion at variance exactly 1 (docs/deep_classifiers.md)
    act = dc.hermite_activation([0.3, 0.5, 0.8])
    assert np.all(np.argmax(dc.limit_classifier(act, x, y, xt), 1) == majority)
    assert np.all(np.argmax(_ntk_regression(act, x, y, xt, 100, recursion=True), 1) == majority)


@pytest.mark.slow
def test_singular_limit_classifier_against_kernel_regression_at_depth():
    x, labels = _circle(50, 4)
    xt, _ = _circle(200, 5)
    y = np.eye(2)[labels] - 0.5
    act = "erf"
    limit = np.argmax(dc.limit_classifier(act, x, y, xt), 1)
    # independent: the Nadaraya-Watson sum of C(rho_i) y_i, with C from the recursion itself (Theta_L / a_1^2L / L)
    depth = 400
    rho = dc.correlations(xt, x)
    c_direct = np.asarray(dc.ntk(act, rho, [depth, depth + 1]).nngp) / dc.taxonomy(act).a1_sq ** np.array(
        [depth, depth + 1])[:, None, None]
    np.testing.assert_allclose(c_direct[0], c_direct[1], rtol=1e-10)
    np.testing.assert_array_equal(np.argmax(c_direct[0] @ y, 1), limit)
    finite = np.argmax(_ntk_regression(act, x, y, xt, depth), 1)
    sk = dc.singular_kernel(act, rho)
    c, e = np.asarray(sk.kernel), np.asarray(sk.correction)
    np.testing.assert_array_equal(finite, np.argmax(((depth + 1) * c + e) @ y, 1))
    # the asymptotic form (exact at depth 400 above) approaches the limit classifier as E / (L C) -> 0
    agree = [np.mean(np.argmax(((d + 1) * c + e) @ y, 1) == limit) for d in (400, 10**4, 10**6, 10**9)]
    assert agree[0] < agree[1] <= agree[2] <= agree[3] and agree[3] > 0.99, agree
    # a test input equal to a training input takes its label
    assert np.argmax(dc.limit_classifier(act, x, y, x[:3]), 1).tolist() == labels[:3].tolist()


# -- jit, errors -------------------------------------------------------------------------------------------------
def test_jitted_and_eager_agree():
    opt = dc.optimal_activation(3)
    near = dc.nearest_neighbour_activation()
    np.testing.assert_allclose(jax.jit(lambda r: dc.singular_kernel(opt, r).kernel)(RHO),
                               dc.singular_kernel(opt, RHO).kernel, rtol=1e-14)
    np.testing.assert_allclose(jax.jit(lambda r: dc.log_similarity(near, r))(RHO), dc.log_similarity(near, RHO))
    np.testing.assert_allclose(jax.jit(lambda r: dc.ntk("erf", r, [3, 7]).ntk)(RHO), dc.ntk("erf", RHO, [3, 7]).ntk,
                               rtol=1e-14)
    np.testing.assert_allclose(jax.jit(lambda r: dc.majority_vote_kernel("relu", r))(RHO), 0.25)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        dc.singular_kernel("erf", [1.5])
    with pytest.raises(ValueError, match="not 'singular kernel'"):
        dc.singular_kernel("relu", [0.5])
    with pytest.raises(ValueError, match="not 'nearest neighbour'"):
        dc.log_similarity("erf", [0.5])
    with pytest.raises(ValueError, match="dimension"):
        dc.optimal_activation(0)
    with pytest.raises(ValueError, match="reaches exponents"):
        dc.optimal_activation(1, order=2)
    with pytest.raises(ValueError, match="increasing"):
        dc.ntk("erf", RHO, [4, 2])
    with pytest.raises(ValueError, match="non-zero"):
        dc.sphere(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not all zero"):
        dc.hermite_activation([0.0, 0.0])
    with pytest.raises(ValueError, match="three limit classifiers"):
        dc.limit_classifier(dc.hermite_activation([0.6, 0.79, 0.1]), np.eye(2), np.eye(2), np.eye(2))
    with pytest.raises(ValueError, match="depth"):
        dc.network("erf", -1)


# -- the experiment (quick sweep) ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame(quick_run):
    return quick_run("deep-classifiers")[0]


@pytest.mark.experiments
def test_deep_classifiers_quick_sweep(frame):
    circle = frame[frame.dataset == "circle"].set_index("activation")
    digits = frame[frame.dataset == "digits"].set_index("activation")
    for rows in (circle, digits):
        assert rows.loc["relu", "classifier"] == "majority vote"
        assert rows.loc["erf", "classifier"] == "singular kernel"
        assert rows.loc["nearest", "classifier"] == "nearest neighbour"
        # the limits are the classifiers they name: majority vote's and 1-NN's errors, computed independently
        # (digits' 100 training labels tie for the most frequent class: rounding in sum_i y_i breaks the tie)
        assert rows.loc["relu", "limit_error"] == pytest.approx(rows.loc["relu", "majority_error"], abs=0.05)
        assert rows.loc["nearest", "limit_error"] == rows.loc["nearest", "one_nn_error"]
        assert all(len(e) == 4 for e in rows.errors)
    assert circle.loc["relu", "limit_error"] == circle.loc["relu", "majority_error"]
    assert circle.loc["optimal", "exponent"] == pytest.approx(1.0) and digits.loc["optimal", "exponent"] == (
        pytest.approx(63.0))
    # the optimal (Hilbert-kernel) classifier: far better than majority vote, near 1-NN on both data sets
    for rows in (circle, digits):
        assert rows.loc["optimal", "limit_error"] < rows.loc["optimal", "majority_error"] / 3
        assert rows.loc["optimal", "limit_error"] <= rows.loc["optimal", "one_nn_error"] + 0.05
    # the nearest-neighbour network is 1-NN at depth 1 on the circle's dense training set, within a few inputs
    assert circle.loc["nearest", "errors"][0] <= circle.loc["nearest", "one_nn_error"] + 0.02
