"""Signature kernels and neural signature kernels against independent sources: truncated signatures by Chen's
identity (computed here), the closed form of a straight segment, the paper's explicit recursion (written here as
loops), and Monte Carlo of finite controlled ResNets."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import theory
from experiments import controlled_resnets
from theory import signature_kernels as sk


def truncated_signature(path: np.ndarray, depth: int) -> list[np.ndarray]:
    """Levels 0..depth of the signature of a piecewise-linear path: a segment's is exp(dx) = (dx^{(x)k} / k!)_k,
    and Chen's identity multiplies them in the tensor algebra."""
    d = path.shape[1]
    sig = [np.ones(1)] + [np.zeros(d**k) for k in range(1, depth + 1)]
    for delta in np.diff(path, axis=0):
        seg = [np.ones(1)]
        for k in range(1, depth + 1):
            seg.append(np.kron(seg[-1], delta) / k)
        sig = [sum(np.kron(sig[i], seg[n - i]) for i in range(n + 1)) for n in range(depth + 1)]
    return sig


def chen_kernel(x: np.ndarray, y: np.ndarray, depth: int = 14) -> np.ndarray:
    sx = [truncated_signature(p, depth) for p in x]
    sy = [truncated_signature(p, depth) for p in y]
    return np.array([[sum(float(a @ b) for a, b in zip(u, v, strict=True)) for v in sy] for u in sx])


def explicit_recursion(x: np.ndarray, y: np.ndarray, dual, m: int, s0: float, sa: float, sb: float) -> np.ndarray:
    """The paper's recursion on the m-refined grid, by loops: K(r+1, j+1) = K(r+1, j) + K(r, j+1) - K(r, j)
    + (sa^2 E[phi phi](Kxx(r, r), K(r, j), Kyy(j, j)) + sb^2) <dx_r, dy_j>, K = s0^2 on the axes."""
    def refine(p):
        return np.repeat(np.diff(p, axis=0) / m, m, axis=0)

    def grid(a, b, qa=None, qb=None):
        da, db = refine(a), refine(b)
        k = np.full((len(da) + 1, len(db) + 1), s0**2)
        order = [(r, j) for r in range(len(da)) for j in range(len(db))]
        if qa is None:  # a path with itself: the diagonals are needed as the grid fills, in the order of the paper
            order = [(r, j) for r in range(len(da)) for j in range(r + 1)]
        for r, j in order:
            q1 = k[r, r] if qa is None else qa[r]
            q2 = k[j, j] if qb is None else qb[j]
            e = float(dual(jnp.asarray(q1), jnp.asarray(k[r, j]), jnp.asarray(q2))[0])
            k[r + 1, j + 1] = k[r + 1, j] + k[r, j + 1] - k[r, j] + (sa**2 * e + sb**2) * (da[r] @ db[j])
            if qa is None:
                k[j + 1, r + 1] = k[r + 1, j + 1]
        return k

    diag = {}
    for i, p in enumerate(list(x) + list(y)):
        diag[i] = np.diag(grid(p, p))
    out = np.zeros((len(x), len(y)))
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            out[i, j] = grid(a, b, diag[i], diag[len(x) + j])[-1, -1]
    return out


def _paths(seed: int, n: int, t: int, scale: float = 0.4, d: int = 2) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=(n, t, d)) * scale, axis=1)


def test_straight_segment_is_bessel_i0_and_the_scheme_is_second_order():
    dx, dy = np.array([0.7, -0.3, 0.5]), np.array([0.9, 0.2, 0.4])
    x, y = np.stack([np.zeros(3), dx])[None], np.stack([np.zeros(3), dy])[None] + 2.0  # the start does not matter
    exact = scipy.special.i0(2 * math.sqrt(dx @ dy))
    errors = [float(sk.trapezoid_kernel(x, y, refinement=m)[0, 0]) - exact for m in (4, 8, 16)]
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(3.95 < r < 4.15 for r in ratios), ratios  # C_2 / m^2 + O(m^-4)
    sol = sk.solve(x, y)
    assert abs(sol.kernel[0, 0] - exact) <= sol.error[0, 0] <= sk.DEFAULT_RTOL * sol.kernel[0, 0]
    assert abs(sol.kernel[0, 0] - exact) < 1e-7 * exact
    # Negative <dx, dy>: I_0(2 sqrt(c)) continues to J_0(2 sqrt(-c)).
    neg = float(theory.signature_kernel(x, -y)[0, 0])
    assert neg == pytest.approx(scipy.special.j0(2 * math.sqrt(dx @ dy)), rel=1e-6)


def test_signature_kernel_equals_truncated_signatures():
    x, y = _paths(1, 3, 5), _paths(2, 2, 4)  # different numbers of time points
    reference = chen_kernel(x, y)
    k = np.asarray(theory.signature_kernel(x, y))
    assert k.shape == (3, 2)
    np.testing.assert_allclose(k, reference, rtol=2e-7)


@pytest.mark.slow
def test_identity_neural_kernel_is_the_scaled_signature_kernel():
    x = _paths(3, 3, 5)
    s0, sa, sb = 0.7, 1.3, 0.4
    k = np.asarray(theory.neural_signature_kernel(x, activation="identity", sigma_0=s0, sigma_a=sa, sigma_b=sb))
    assert np.array_equal(k, k.T)
    shift = sb**2 / sa**2
    reference = (s0**2 + shift) * chen_kernel(sa * x, sa * x) - shift
    np.testing.assert_allclose(k, reference, rtol=1e-6)
    # sigma_a = 0: K = sigma_0^2 + sigma_b^2 <x_1 - x_0, y_1 - y_0>.
    k0 = np.asarray(theory.neural_signature_kernel(x, activation="identity", sigma_0=s0, sigma_a=0.0, sigma_b=sb))
    ends = x[:, -1] - x[:, 0]
    np.testing.assert_allclose(k0, s0**2 + sb**2 * ends @ ends.T, rtol=1e-10)


def test_controlled_resnet_kernel_is_the_papers_recursion_and_jits():
    x, y = _paths(4, 2, 3, 0.6), _paths(5, 2, 4, 0.6)
    act = theory.activations.get("relu")
    reference = explicit_recursion(x, y, act.dual, 2, 1.0, 1.0, 0.3)
    k = np.asarray(sk.controlled_resnet_kernel(x, y, "relu", sigma_b=0.3, refinement=2))
    np.testing.assert_allclose(k, reference, rtol=1e-12)
    jitted = jax.jit(lambda a, b: sk.controlled_resnet_kernel(a, b, "relu", sigma_b=0.3, refinement=2))
    np.testing.assert_allclose(np.asarray(jitted(x, y)), k, rtol=1e-13)
    plain = sk.trapezoid_kernel(x, y, "relu", sigma_b=0.3, refinement=2)
    traced = jax.jit(lambda a, b: sk.trapezoid_kernel(a, b, "relu", sigma_b=0.3, refinement=2))(x, y)
    np.testing.assert_allclose(np.asarray(traced), np.asarray(plain), rtol=1e-13)


@pytest.mark.slow
def test_tiles_over_pairs_give_the_same_kernel():
    x = _paths(6, 5, 3)
    whole = np.asarray(sk.trapezoid_kernel(x, refinement=2))
    tiled = np.asarray(sk.trapezoid_kernel(x, refinement=2, memory_budget=4 * 8 * 24 * 7))
    np.testing.assert_allclose(tiled, whole, rtol=1e-13)
    assert np.array_equal(tiled, tiled.T)


@pytest.mark.parametrize(("args", "match"), [
    ((np.zeros((2, 3, 2)), np.zeros((2, 3, 3))), "same dimension"),
    ((np.zeros((2, 1, 2)),), "at least 2"),
    ((np.zeros((3, 2)),), r"x\[None\]"),
    ((np.array([[[0.0, 0.0], [np.nan, 1.0]]]),), "NaN"),
    ((np.zeros((2, 3, 2)), np.array([[[0.0, 0.0], [1.0, np.inf]]])), "NaN or inf"),
])
def test_bad_paths_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        theory.signature_kernel(*args)
    with pytest.raises(ValueError, match=match):
        sk.controlled_resnet_kernel(*args)


def test_bad_parameters_are_refused():
    x = _paths(7, 2, 3)
    with pytest.raises(ValueError, match="sigma_a"):
        theory.neural_signature_kernel(x, sigma_a=-1.0)
    with pytest.raises(ValueError, match="refinement"):
        sk.trapezoid_kernel(x, refinement=0)
    with pytest.raises(ValueError, match="rtol"):
        theory.signature_kernel(x, rtol=1e-20)
    with pytest.raises(ValueError, match="unknown activation"):
        theory.neural_signature_kernel(x, activation="nope")
    with pytest.raises(ValueError, match=r"jax\.jit"):
        jax.jit(theory.signature_kernel)(x)
    with pytest.raises(ValueError, match="did not reach"):
        theory.signature_kernel(x * 3, max_refinement=4)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_neural_kernel_is_the_deep_limit_of_the_recursion(activation):
    """The extrapolated PDE solution against the paper's explicit recursion (first order in 1/m) at m = 32, 64, 128,
    Richardson-extrapolated twice (its remaining error ~1e-6 of the scale)."""
    x = _paths(8, 3, 4, 0.5)
    sol = sk.solve(x, activation=activation, sigma_b=0.3)
    e = [np.asarray(sk.controlled_resnet_kernel(x, activation=activation, sigma_b=0.3, refinement=m))
         for m in (32, 64, 128)]
    r1, r2 = 2 * e[1] - e[0], 2 * e[2] - e[1]
    deep = (4 * r2 - r1) / 3
    scale = np.sqrt(np.outer(np.diag(sol.kernel), np.diag(sol.kernel)))
    assert np.max(np.abs(sol.kernel - deep) / scale) < 2e-6
    assert np.max(sol.error / scale) <= sk.DEFAULT_RTOL


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["identity", "relu"])
def test_finite_controlled_resnets_converge_to_the_recursion(activation):
    """Monte Carlo of width-512 networks at depth 2 (T - 1): within 4 SE (plus an O(1/n) bias bound) of the
    infinite-width kernel at the same depth."""
    x = _paths(9, 3, 4, 0.5)
    est = controlled_resnets.estimate_kernel(x, activation, width=512, refinement=2, n_samples=256,
                                             key=jax.random.key(0), sigma_b=0.3)
    limit = np.asarray(sk.controlled_resnet_kernel(x, activation=activation, sigma_b=0.3, refinement=2))
    bias = 4.0 / 512 * np.abs(limit)
    assert np.all(np.abs(est.mean - limit) <= 4 * est.stderr + bias), (est.mean - limit) / est.stderr


@pytest.mark.experiments
def test_signature_kernels_quick_sweep(quick_run):
    df, _ = quick_run("signature-kernels")
    assert np.isfinite(df.distance).all() and (df.z_finite_depth < 4.5).all(), df.z_finite_depth
    wide = df[df.refinement == df.refinement.max()].sort_values("width")
    slope = np.polyfit(np.log(wide.width), np.log(wide.distance), 1)[0]
    assert -0.7 < slope < -0.3, slope  # one network: n^-1/2
    deep = df[df.width == df.width.max()].sort_values("refinement")
    assert np.all(np.diff(deep.depth_gap) < 0)  # the exact finite-depth kernel approaches the limit
    assert {"png", "pdf"} <= {str(p).rsplit(".", 1)[-1] for p in df.attrs["figures"]}
