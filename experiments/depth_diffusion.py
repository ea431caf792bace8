r"""Finite width, infinite depth: Monte Carlo of a width-``n`` ResNet's residual stream as the depth grows, and
of the diffusion it converges to (the setting of Hayou 2022; the equations, their provenance and the conventions
are in :mod:`theory.depth_diffusion`).

One input ``x`` (default ``x = (1,)``, so ``h_0 ~ N(0, stem_w_std^2 I_n)``) and ``n_paths`` independent networks
("paths") on a leading axis: :func:`simulate_network` samples the finite network of :class:`theory.ResNet` ``res`` at
``L = res.depth`` (NTK parameterization, as ``experiments.networks.init`` / ``apply``), :func:`simulate_sde` the SDE
``dX = a (w^2 ||phi(X)||^2 / n + b^2)^{1/2} dB`` on ``t in [0, 1]`` by Euler-Maruyama with ``n_steps`` steps. Both
record ``||h||``, ``||phi(h)||`` and the number of positive coordinates at ``t_k = k / checkpoints`` (and ``t = 0``)
and return the final residual stream and one readout per path (``f = r n^{-1/2} <v, phi(h_L)>`` or ``<v, h_L>``,
``v ~ N(0, I_n)``). Randomness only through the explicit JAX ``key``; float64 needs JAX's x64 mode. Summaries take
standard errors from the spread across independent paths.

Derivation and notes: docs/depth_diffusion.md (section "Monte Carlo").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from experiments.networks import check_key, check_positive_int
from theory.architectures import ResNet
from theory.depth_diffusion import check_sde_resnet, check_width, diffusion_scale
from theory.layers import Weights

Array = jax.Array

__all__ = [
    "StreamSamples",
    "binned_cdf_distance",
    "histogram",
    "ito_drift_estimate",
    "ks_statistic",
    "ks_threshold",
    "log_ratio_summary",
    "mean_and_se",
    "residual_stream",
    "simulate_network",
    "simulate_sde",
    "stem_samples",
    "two_sample_ks_threshold",
    "variance_and_se",
]


@dataclass(frozen=True)
class StreamSamples:
    """Samples of the residual stream of ``n_paths`` independent networks (or SDE paths) for one input.

    Attributes:
        times: ``(K + 1,)`` depth fractions ``t = l / L`` (SDE times) at which the norms were recorded, from 0.
        norm: ``(n_paths, K + 1)`` ``||h_t||``.
        post_norm: ``(n_paths, K + 1)`` ``||phi(h_t)||``.
        n_active: ``(n_paths, K + 1)`` number of coordinates of ``h_t`` that are ``> 0``.
        final: ``(n_paths, width)`` the residual stream at ``t = 1``.
        output: ``(n_paths,)`` one readout unit of each network at ``t = 1``.
        width: ``n``.
        steps: the network's depth ``L``, or the SDE's number of Euler-Maruyama steps.
        kind: ``"network"`` or ``"sde"``.
    """

    times: np.ndarray
    norm: np.ndarray
    post_norm: np.ndarray
    n_active: np.ndarray
    final: np.ndarray
    output: np.ndarray
    width: int
    steps: int
    kind: str

    @property
    def n_paths(self) -> int:
        return self.norm.shape[0]


# -- inputs ------------------------------------------------------------------------------------------
def _dtype(dtype: object) -> jnp.dtype:
    if dtype is None:
        return jnp.result_type(float)
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs JAX's x64 mode: jax.config.update('jax_enable_x64', True) "
                         "(or run under jax.enable_x64(True))")
    return dt


def _input(x: object, dtype: jnp.dtype) -> Array:
    if x is None:
        return jnp.ones((1,), dtype)
    arr = jnp.asarray(x, dtype)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"x must be one input, shape (features,) or (1, features), got shape {tuple(arr.shape)}")
    if not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError("x contains NaN or inf")
    return arr


def _checkpoints(steps: int, checkpoints: object, what: str) -> int:
    k = check_positive_int("checkpoints", checkpoints)
    if steps % k:
        raise ValueError(f"checkpoints={k} must divide {what}={steps} (records are taken every {what}/checkpoints)")
    return k


def stem_samples(res: ResNet, width: int, key: Array, n_paths: int, x: object = None,
                 dtype: object = None) -> Array:
    """``(n_paths, width)`` stem outputs ``h_0 = stem_w_std / sqrt(d) x @ W``, one ``W ~ N(0, 1)^{d x n}`` per path."""
    n = check_width(width)
    n_paths = check_positive_int("n_paths", n_paths)
    key = check_key(key)
    dt = _dtype(dtype)
    xv = _input(x, dt)
    w = jax.random.normal(key, (n_paths, xv.shape[0], n), dt)
    return (res.stem_w_std / math.sqrt(xv.shape[0])) * jnp.einsum("d,pdn->pn", xv, w)


def _initial(res: ResNet, width: int, key: Array, n_paths: int, x: object, h0: object,
             dt: jnp.dtype) -> tuple[Array, int]:
    if h0 is None:
        return stem_samples(res, width, key, n_paths, x, dt), check_width(width)
    arr = jnp.asarray(h0, dt)
    if arr.ndim == 1:
        arr = jnp.broadcast_to(arr, (check_positive_int("n_paths", n_paths), arr.shape[0]))
    if arr.ndim != 2 or arr.shape[0] != n_paths or arr.shape[1] != check_width(width):
        raise ValueError(f"h0 must have shape (width,) or (n_paths, width) = ({n_paths}, {width}), "
                         f"got {tuple(arr.shape)}")
    return arr, arr.shape[1]


# -- one block / one step --------------------------------------------------------------------------------
def _record(phi: Callable[[Array], Array], h: Array) -> tuple[Array, Array, Array]:
    return (jnp.linalg.norm(h, axis=-1), jnp.linalg.norm(phi(h), axis=-1),
            jnp.sum(h > 0, axis=-1).astype(jnp.int32))


def _block(res: ResNet, h: Array, w: Array, b: Array | None) -> Array:
    """One residual block of ``res``'s program (its ``Residual`` layer) with weights ``w`` ``(..., fan_in, fan_out)``
    and biases ``b`` (leading axes: independent networks)."""
    block = res.block

    def one(h: Array, w: Array, b: Array | None) -> Array:
        return block.apply((None, Weights(w, b)), h)

    for _ in range(w.ndim - 2):  # one weight matrix per network: map over the networks
        one = jax.vmap(one)
    return one(h, w, b)


def residual_stream(res: ResNet, h0: Array, weights: Array, biases: Array | None = None) -> tuple[Array, Array]:
    """The residual stream of ``res`` given its block weights: ``(h_L, stack of h_1 .. h_L)``.

    ``h0`` is ``(..., n)``; ``weights`` is ``(L, n, n)`` in ``experiments.networks``' ``(fan_in, fan_out)``
    layout (NTK parameterization: standard-normal entries; for ``weight_scaling="standard"`` pass weights
    that carry their scale divided by ``w_std / sqrt(n)``); ``biases`` ``(L, n)`` or ``None`` (needed iff
    ``b_std > 0``). ``L`` must be ``res.depth`` (the depth sets the branch multiplier ``a / L**beta``).
    """
    if not isinstance(res, ResNet):
        raise ValueError(f"residual_stream needs a theory.ResNet, got {res!r}")
    weights = jnp.asarray(weights)
    if weights.ndim != 3 or weights.shape[0] != res.depth or weights.shape[1:] != (h0.shape[-1],) * 2:
        raise ValueError(f"weights must have shape (depth, n, n) = ({res.depth}, {h0.shape[-1]}, {h0.shape[-1]}), "
                         f"got {tuple(weights.shape)}")
    if (biases is None) != (res.b_std == 0):
        raise ValueError(f"biases must be given iff b_std > 0 (b_std={res.b_std})")

    def body(h, wb):
        h = _block(res, h, wb[0], wb[1])
        return h, h

    return jax.lax.scan(body, jnp.asarray(h0), (weights, biases))


@partial(jax.jit, static_argnames=("res", "n_steps", "checkpoints", "kind"))
def _simulate(res: ResNet, h0: Array, key: Array, *, n_steps: int, checkpoints: int, kind: str):
    phi = res.activation.fn
    n_paths, n = h0.shape
    dt_ = h0.dtype
    per = n_steps // checkpoints
    step_keys = jax.random.split(jax.random.fold_in(key, 1), n_steps).reshape(checkpoints, per)
    sqrt_dt = 1.0 / math.sqrt(n_steps)

    def network_step(h, k):
        kw, kb = jax.random.split(k)
        w = jax.random.normal(kw, (n_paths, n, n), dt_)
        b = jax.random.normal(kb, (n_paths, n), dt_) if res.b_std > 0 else None
        return _block(res, h, w, b)

    def sde_step(h, k):
        scale = diffusion_scale(res, n, jnp.sum(phi(h) ** 2, axis=-1))
        return h + (scale * sqrt_dt)[:, None] * jax.random.normal(k, (n_paths, n), dt_)

    step = network_step if kind == "network" else sde_step

    def segment(h, keys):
        h, _ = jax.lax.scan(lambda c, k: (step(c, k), None), h, keys)
        return h, _record(phi, h)

    h_final, recs = jax.lax.scan(segment, h0, step_keys)
    first = _record(phi, h0)
    norms, posts, actives = (jnp.concatenate([f[None], r], axis=0).T for f, r in zip(first, recs, strict=True))
    v = jax.random.normal(jax.random.fold_in(key, 2), (n_paths, n), dt_)
    feats = phi(h_final) if res.readout == "activation" else h_final
    output = (res.readout_w_std / math.sqrt(n)) * jnp.sum(v * feats, axis=-1)
    return norms, posts, actives, h_final, output


def _samples(res: ResNet, h0: Array, key: Array, steps: int, checkpoints: int, kind: str) -> StreamSamples:
    out = _simulate(res, h0, key, n_steps=steps, checkpoints=checkpoints, kind=kind)
    norms, posts, actives, final, output = (np.asarray(a) for a in out)
    return StreamSamples(np.arange(checkpoints + 1) / checkpoints, norms, posts, actives, final, output,
                         h0.shape[1], steps, kind)


def simulate_network(res: ResNet, width: int, key: Array, n_paths: int, *, x: object = None, h0: object = None,
                     checkpoints: int = 1, dtype: object = None) -> StreamSamples:
    """``n_paths`` independent width-``width`` networks ``res`` (depth ``L = res.depth``) on one input.

    Every block draws fresh ``W ~ N(0, 1)^{n x n}`` (and ``b ~ N(0, I_n)`` if ``b_std > 0``) per network; the
    stem is sampled from ``x`` (:func:`stem_samples`) unless ``h0`` (``(width,)`` or ``(n_paths, width)``) is
    given. Norms are recorded every ``L / checkpoints`` blocks. Any ``depth_exponent`` is allowed (this is
    the finite network, not its limit).
    """
    if not isinstance(res, ResNet):
        raise ValueError(f"simulate_network needs a theory.ResNet, got {res!r}")
    check_width(width)
    key = check_key(key)
    n_paths = check_positive_int("n_paths", n_paths)
    steps = check_positive_int("res.depth (the network must have at least one block)", res.depth)
    k = _checkpoints(steps, checkpoints, "depth")
    dt = _dtype(dtype)
    k_stem, k_run = jax.random.split(key)
    start, _ = _initial(res, width, k_stem, n_paths, x, h0, dt)
    return _samples(res, start, k_run, steps, k, "network")


def simulate_sde(res: ResNet, width: int, key: Array, n_paths: int, n_steps: int, *, x: object = None,
                 h0: object = None, checkpoints: int = 1, dtype: object = None) -> StreamSamples:
    """Euler-Maruyama for ``dX_t = a (w^2 ||phi(X_t)||^2 / n + b^2)^{1/2} dB_t`` on ``[0, 1]``, ``n_steps`` steps.

    ``res`` gives ``phi``, ``a = branch_scale``, ``w = w_std``, ``b = b_std``, the stem and the readout; its
    ``depth`` is ignored and its ``depth_exponent`` must be 1/2 (``ValueError`` otherwise: no diffusion
    limit). ``X_0`` is the stem output for ``x`` unless ``h0`` is given.
    """
    res = check_sde_resnet(res)
    check_width(width)
    key = check_key(key)
    n_paths = check_positive_int("n_paths", n_paths)
    n_steps = check_positive_int("n_steps", n_steps)
    k = _checkpoints(n_steps, checkpoints, "n_steps")
    dt = _dtype(dtype)
    k_stem, k_run = jax.random.split(key)
    start, _ = _initial(res, width, k_stem, n_paths, x, h0, dt)
    return _samples(res, start, k_run, n_steps, k, "sde")


# -- summaries ----------------------------------------------------------------------------------------------
def mean_and_se(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and its standard error ``sd / sqrt(N)`` along ``axis`` (float64)."""
    v = np.asarray(values, np.float64)
    count = v.shape[axis]
    if count < 2:
        raise ValueError(f"a standard error needs at least two samples, got {count}")
    return v.mean(axis=axis), v.std(axis=axis, ddof=1) / math.sqrt(count)


def variance_and_se(values: np.ndarray) -> tuple[float, float]:
    """Unbiased sample variance and its large-sample standard error ``sqrt((m4 - s^4) / N)`` (1-d)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size < 4:
        raise ValueError(f"a variance and its standard error need at least four samples, got {v.size}")
    c = v - v.mean()
    s2 = float(np.sum(c**2) / (v.size - 1))
    m4 = float(np.mean(c**4))
    return s2, math.sqrt(max(m4 - s2**2, 0.0) / v.size)


def log_ratio_summary(samples: StreamSamples) -> dict:
    """``ln(||phi(h_t)|| / ||phi(h_0)||)`` over the paths with ``phi(h_0) != 0`` (the others never move when
    ``b_std = 0``): its mean and SE at every checkpoint, its variance and SE at ``t = 1``, the final values,
    the mean number of positive units per checkpoint with SE, and the fractions of paths that start or end
    with ``phi(h) = 0`` (a finite ReLU network can land in the negative orthant; the SDE never does)."""
    post = samples.post_norm
    alive0 = post[:, 0] > 0
    end_dead = alive0 & (post[:, -1] == 0)
    keep = alive0 & ~end_dead
    if keep.sum() < 4:
        raise ValueError(f"only {int(keep.sum())} paths have phi(h) != 0 at t = 0 and t = 1; sample more")
    ratio = np.log(post[keep] / post[keep, :1])
    mean_t, se_t = mean_and_se(ratio)
    var1, var1_se = variance_and_se(ratio[:, -1])
    active_t, active_se_t = mean_and_se(samples.n_active[alive0].astype(np.float64))
    return {
        "log_ratio": ratio[:, -1],
        "mean_t": mean_t, "mean_se_t": se_t,
        "mean": float(mean_t[-1]), "mean_se": float(se_t[-1]),
        "variance": var1, "variance_se": var1_se,
        "active_t": active_t, "active_se_t": active_se_t,
        "dead_start_fraction": float(1.0 - alive0.mean()),
        "dead_end_fraction": float(end_dead.sum() / max(alive0.sum(), 1)),
        "n_used": int(keep.sum()),
    }


def ks_statistic(values: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    """Kolmogorov-Smirnov distance ``sup |F_N - F|`` between the samples and the distribution function ``cdf``."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    if v.size < 1:
        raise ValueError("ks_statistic needs at least one sample")
    f = np.asarray(cdf(v), np.float64)
    i = np.arange(1, v.size + 1)
    return float(max(np.max(i / v.size - f), np.max(f - (i - 1) / v.size)))


def ks_threshold(n_samples: int, alpha: float = 1e-3) -> float:
    """The one-sample KS distance exceeded with probability ``alpha`` under the null (exact ``kstwo`` law)."""
    n = check_positive_int("n_samples", n_samples)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(stats.kstwo.isf(alpha, n))


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts ``(len(edges) + 1,)``: below ``edges[0]``, in each bin ``[e_i, e_{i+1})``, at or above ``edges[-1]``."""
    e = np.asarray(edges, np.float64)
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be an increasing 1-d array of at least two values, got {edges!r}")
    idx = np.searchsorted(e, np.asarray(values, np.float64).ravel(), side="right")
    return np.bincount(idx, minlength=e.size + 1)


def binned_cdf_distance(counts1: np.ndarray, counts2: np.ndarray) -> float:
    """``max |F_1 - F_2|`` over the bin edges of two :func:`histogram` count vectors on the same edges: the
    two-sample Kolmogorov-Smirnov distance restricted to the edges (a lower bound of the exact one)."""
    c1, c2 = np.asarray(counts1, np.float64), np.asarray(counts2, np.float64)
    if c1.shape != c2.shape or c1.ndim != 1 or c1.sum() <= 0 or c2.sum() <= 0:
        raise ValueError(f"need two non-empty count vectors of one shape, got {c1.shape} and {c2.shape}")
    return float(np.max(np.abs(np.cumsum(c1)[:-1] / c1.sum() - np.cumsum(c2)[:-1] / c2.sum())))


def two_sample_ks_threshold(n1: int, n2: int, alpha: float = 1e-3) -> float:
    """The two-sample KS distance exceeded with probability about ``alpha`` when both samples have one law
    (the one-sample ``kstwo`` quantile at the effective size ``n1 n2 / (n1 + n2)``)."""
    n1, n2 = check_positive_int("n1", n1), check_positive_int("n2", n2)
    return ks_threshold(max(1, round(n1 * n2 / (n1 + n2))), alpha)


def ito_drift_estimate(samples: StreamSamples) -> tuple[float, float]:
    """Mean and SE over paths of ``sum_k (N_{t_k} - 2) / (2n) * (t_{k+1} - t_k)`` (left Riemann sum over the
    checkpoints, horizon ``T = 1`` of the samples' clock): for ReLU with ``b_std = 0`` and ``branch_scale *
    w_std = 1`` the drift integral of (4) in :mod:`theory.depth_diffusion`, whose mean is that of
    ``ln(||phi(X_1)|| / ||phi(X_0)||)`` without the martingale's noise. Paths with ``phi(h_0) = 0`` are left out."""
    alive = samples.post_norm[:, 0] > 0
    active = samples.n_active[alive, :-1].astype(np.float64)
    dt = np.diff(samples.times)
    drift = ((active - 2.0) / (2.0 * samples.width)) @ dt
    mean, se = mean_and_se(drift)
    return float(mean), float(se)
