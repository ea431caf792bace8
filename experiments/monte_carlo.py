"""Monte-Carlo estimators over independently sampled finite networks, with standard errors.

Each estimator draws ``n_samples`` networks of width ``width`` from the architecture description
(``experiments.networks.init``), computes a per-network statistic, and reports its mean over
networks and the standard error of that mean, ``sd / sqrt(n_samples)``, from the spread across
*independent networks* (units inside one network are correlated and are only averaged, never
counted as samples). Networks are evaluated with ``jax.vmap`` in chunks sized to a memory budget;
network ``i`` always uses ``jax.random.split(key, n_samples)[i]``, so results do not depend on the
chunking. Accumulation is in float64 on the host whatever the network dtype.

The kernels of Dense / Elementwise chains on vectors (MLPs) take a closed-form path
(:mod:`experiments.dense_chains`: the same weights, bit for bit, and the same kernels to float rounding, from
the forward activations and backward signals, one network after another in one compiled program); every other
program takes the general one (``networks.empirical_ntk``), which the tests compare it with.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import dense_chains, networks
from theory.inputs import validate_inputs
from theory.layers import Conv, Program, weight_layers
from theory.layers.program import expected_spatial_dims

Array = jax.Array
Progress = Callable[[int, int], None]

DEFAULT_MEMORY_BUDGET = 2**30


@dataclass(frozen=True)
class Estimate:
    """Mean over sampled networks and the standard error of that mean (same shapes)."""

    mean: np.ndarray
    stderr: np.ndarray


@dataclass(frozen=True)
class KernelEstimate:
    """Empirical NNGP / NTK of width-``width`` networks (``None`` where not requested)."""

    nngp: Estimate | None
    ntk: Estimate | None
    width: int
    n_samples: int
    dtype: np.dtype


@dataclass(frozen=True)
class PreactivationMoments:
    """Per layer and input (``(layers, batch)``): second moment and excess kurtosis of the
    pre-activations, pooled over the neurons of the layer (moments about zero, the ensemble mean
    being zero by the symmetry of the weights)."""

    variance: Estimate
    excess_kurtosis: Estimate
    width: int
    n_samples: int
    dtype: np.dtype


class _Running:
    """Streaming mean and covariance of vector samples (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk)
        n = chunk.shape[0]
        mean = chunk.mean(axis=0, dtype=np.float64)
        if mean.size >= 4096:  # large samples (kernels): one at a time, no float64 copy of the chunk
            m2 = np.zeros_like(mean)
            for sample in chunk:
                d = sample - mean
                m2 += d * d
        else:
            m2 = ((chunk - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    def estimate(self) -> Estimate:
        variance = self.m2 / (self.count - 1)
        return Estimate(self.mean, np.sqrt(variance / self.count))


def _check_samples(n_samples: object) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 2:
        raise ValueError(
            f"n_samples must be an integer >= 2 (a standard error needs two networks), got {n_samples!r}"
        )
    return int(n_samples)


def _check_arch(arch: object) -> Program:
    return networks.check_program(arch)


def _ensemble(arch: object, width: object, n_samples: object, key: object, weights: object,
              n_out: object = 1) -> tuple[Program, int, int, Array, int]:
    """Validate what every estimator takes (the ensemble of networks); return ``(arch, width, n_samples,
    keys, n_out)`` with network ``i`` drawn from ``keys[i] = split(key, n_samples)[i]``."""
    arch = _check_arch(arch)
    width = networks.check_width(width)
    n_samples = _check_samples(n_samples)
    key = networks.check_key(key)
    networks.check_weights(weights)
    n_out = networks.check_positive_int("n_out", n_out)
    return arch, width, n_samples, jax.random.split(key, n_samples), n_out


def _activation_bytes(arch: Program, width: int, x: Array) -> int:
    """Memory of one network's parameters and per-layer activations on ``x`` (for the chunk size): per layer a
    ``width x width`` weight (times a filter of up to 9 taps for spatial inputs) and ``4 N positions width``
    activations."""
    positions = int(np.prod(x.shape[1:-1])) if x.ndim > 2 else 1
    taps = 9 if x.ndim > 2 else 1
    return np.dtype(x.dtype).itemsize * len(arch.layers) * (taps * width * (width + 2)
                                                            + 4 * x.shape[0] * positions * width)


def _chunk_size(n_samples: int, bytes_per_network: int, budget: int) -> int:
    return max(1, min(n_samples, budget // max(1, bytes_per_network)))


def _chunks(keys: Array, size: int):
    for start in range(0, keys.shape[0], size):
        yield start, keys[start:start + size]


def _over_networks(one: Callable, keys: Array, arch: Program) -> Any:
    """``one(key)`` for every key, stacked: vectorised over networks, except for programs with convolutions,
    whose vectorised form (a grouped convolution with one filter bank per network) is ~20x slower on CPU than
    one network after another."""
    if any(isinstance(layer, Conv) for layer in weight_layers(arch.layers)):
        return jax.lax.map(one, keys)
    return jax.vmap(one)(keys)


NNGP_ESTIMATORS = ("outputs", "readout_kernel")


@partial(jax.jit, static_argnames=("arch", "width", "shapes", "weights", "n_out", "get", "nngp_from"))
def _chain_kernel_samples(keys, x1, x2, *, arch, width, shapes, weights, n_out, get, nngp_from):
    """:func:`_kernel_samples` for Dense / Elementwise chains on vectors (:mod:`experiments.dense_chains`): the
    same networks and kernels, in closed form, one network after another (``lax.map``: on CPU a loop of
    single-network matmuls, whose operands stay in cache, is ~2x faster than the vmapped batched matmuls)."""

    def one(key):
        if weights == "gaussian":
            params = dense_chains.sample(arch, key, shapes, x1.dtype)
        else:
            p = networks.init(arch, width, key, weights, features=x1.shape[1:], n_out=n_out, dtype=x1.dtype)
            params = [(w.W, w.b) for w in p]
        return dense_chains.kernels(arch, params, x1, x2, get, nngp_from)

    if weights == "gaussian":  # every network's keys at once (a few tiny hashes each, not one loop per key)
        keys = jax.vmap(partial(dense_chains.layer_keys, n_dense=len(shapes)))(keys)
    return jax.lax.map(one, keys)


@partial(jax.jit, static_argnames=("arch", "width", "weights", "n_out", "get", "nngp_from"))
def _kernel_samples(keys, x1, x2, *, arch, width, weights, n_out, get, nngp_from):
    def one(key):
        params = networks.init(arch, width, key, weights, features=x1.shape[1:], n_out=n_out, dtype=x1.dtype)
        out = []
        if "nngp" in get and nngp_from == "readout_kernel":
            out.append(networks.readout_kernel(arch, params, x1, x2))
        elif "nngp" in get:
            f1 = networks.apply(arch, params, x1)
            f2 = f1 if x2 is None else networks.apply(arch, params, x2)
            out.append(f1 @ f2.T / n_out)  # average over the exchangeable output units
        if "ntk" in get:
            out.append(jnp.mean(networks.empirical_ntk(arch, params, x1, x2), axis=0))
        return out

    return _over_networks(one, keys, arch)


def estimate_kernels(
    arch: Program,
    x1: Array,
    x2: Array | None = None,
    *,
    width: int,
    n_samples: int,
    key: Array,
    get: str | tuple[str, ...] = ("nngp", "ntk"),
    weights: str = "gaussian",
    n_out: int = 1,
    nngp_from: str = "outputs",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: Progress | None = None,
) -> KernelEstimate:
    """Empirical NNGP and NTK of ``arch`` at width ``width``, with standard errors.

    Per network: NNGP sample ``f(x1) f(x2)^T / n_out`` (outputs ``f`` of the readout, averaged over
    its exchangeable units), NTK sample the network's exact NTK (:func:`networks.empirical_ntk`)
    averaged over output units. Their means estimate the finite-width ``E[f(x) f(x')]`` and
    ``E[Theta(x, x')]``, which tend to ``theory.kernels(arch, x1, x2)`` as ``width -> inf`` with a
    bias of order ``1 / width``. ``progress(done, total)`` is called after every chunk.

    ``nngp_from="readout_kernel"`` replaces the NNGP sample by the output covariance given the
    readout's input (:func:`networks.readout_kernel`): the same expectation (so the same bias), but
    without the readout's O(1) sampling noise; the per-network spread is then O(1 / sqrt(width)).
    """
    order, dtype, chunks = _kernel_chunks(arch, x1, x2, width=width, n_samples=n_samples, key=key, get=get,
                                          weights=weights, n_out=n_out, nngp_from=nngp_from,
                                          memory_budget=memory_budget, progress=progress)
    sums = {g: _Running() for g in order}
    for samples in chunks:
        for name, values in zip(order, samples, strict=True):
            sums[name].add(values)
    result = {g: sums[g].estimate() for g in order}
    return KernelEstimate(result.get("nngp"), result.get("ntk"), int(width), int(n_samples), dtype)


def _kernel_chunks(arch, x1, x2, *, width, n_samples, key, get, weights, n_out, nngp_from, memory_budget, progress,
                   general=False):
    """Validate the arguments; return the kernel names in order, the dtype, and a generator of per-chunk samples.
    Dense / Elementwise chains on vectors take the closed-form path unless ``general`` (the tests compare them)."""
    arch, width, n_samples, keys, n_out = _ensemble(arch, width, n_samples, key, weights, n_out)
    wanted = (get,) if isinstance(get, str) else tuple(get)
    if not wanted or any(g not in ("nngp", "ntk") for g in wanted):
        raise ValueError(f"get must name kernels among ('nngp', 'ntk'), got {get!r}")
    if nngp_from not in NNGP_ESTIMATORS:
        raise ValueError(f"nngp_from must be one of {NNGP_ESTIMATORS}, got {nngp_from!r}")
    x1, x2 = validate_inputs(x1, x2, spatial_dims=expected_spatial_dims(arch.layers))
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    itemsize = np.dtype(x1.dtype).itemsize
    n_layers = len(arch.layers)
    positions = int(np.prod(x1.shape[1:-1])) if x1.ndim > 2 else 1
    pairs = positions**2 if "ntk" in wanted else 1  # the layer-wise NTK holds every pair of positions
    per_network = itemsize * (
        n_layers * (9 if x1.ndim > 2 else 1) * width * (width + 2)  # parameters
        + 4 * (n1 + n2) * positions * width * n_layers * n_out  # activations, gradients (NTK)
        + 3 * n1 * n2 * n_out * pairs  # per-network kernels and temporaries
    )
    order = tuple(g for g in ("nngp", "ntk") if g in wanted)
    if not general and dense_chains.chain(arch, x1.ndim) is not None:
        # One network at a time: a chunk holds its networks' kernels, plus one network's parameters and passes.
        shapes = dense_chains.weight_shapes(arch, width, x1.shape[-1], n_out, str(x1.dtype), weights)
        one = itemsize * (sum(math.prod(w) for w, _ in shapes) + 4 * (n1 + n2) * (width + x1.shape[-1]) * len(shapes)
                          * (n_out + 2) + 4 * n1 * n2)
        size = _chunk_size(n_samples, itemsize * n1 * n2 * len(order), max(0, memory_budget - one))

        def samples(chunk):
            return _chain_kernel_samples(chunk, x1, x2, arch=arch, width=width, shapes=shapes, weights=weights,
                                         n_out=n_out, get=order, nngp_from=nngp_from)
    else:
        size = _chunk_size(n_samples, per_network, memory_budget)

        def samples(chunk):
            return _kernel_samples(chunk, x1, x2, arch=arch, width=width, weights=weights, n_out=n_out, get=order,
                                   nngp_from=nngp_from)

    def chunks():
        for start, chunk in _chunks(keys, size):
            yield samples(chunk)
            if progress is not None:
                progress(start + chunk.shape[0], n_samples)

    return order, np.dtype(x1.dtype), chunks()


def network_kernels(
    arch: Program,
    x1: Array,
    x2: Array | None = None,
    *,
    width: int,
    n_samples: int,
    key: Array,
    get: str = "nngp",
    weights: str = "gaussian",
    n_out: int = 1,
    nngp_from: str = "outputs",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: Progress | None = None,
) -> np.ndarray:
    """Every sampled network's own kernel, ``(n_samples, batch1, batch2)``: the samples whose mean
    and SE :func:`estimate_kernels` reports (same keys, so the same networks), for statistics the mean
    does not capture (medians, quantiles, heavy tails). ``get`` names one kernel."""
    if get not in ("nngp", "ntk"):
        raise ValueError(f"get must name one kernel, 'nngp' or 'ntk', got {get!r}")
    _, _, chunks = _kernel_chunks(arch, x1, x2, width=width, n_samples=n_samples, key=key, get=get, weights=weights,
                               n_out=n_out, nngp_from=nngp_from, memory_budget=memory_budget, progress=progress)
    return np.concatenate([np.asarray(samples[0]) for samples in chunks])


def median(values: np.ndarray, *, n_boot: int = 400, seed: int = 0) -> Estimate:
    """Median of independent samples (along axis 0) with a bootstrap standard error (``n_boot``
    resamples, seeded: the same values give the same SE)."""
    values = np.asarray(values, np.float64)
    if values.shape[0] < 2:
        raise ValueError(f"a median with a standard error needs at least 2 samples, got {values.shape[0]}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    boot = np.median(values[idx], axis=1)
    return Estimate(np.median(values, axis=0), np.std(boot, axis=0, ddof=1))


@partial(jax.jit, static_argnames=("arch", "width", "weights", "n_out"))
def _moment_samples(keys, x, *, arch, width, weights, n_out):
    def one(key):
        params = networks.init(arch, width, key, weights, features=x.shape[1:], n_out=n_out, dtype=x.dtype)
        _, layers = networks.forward(arch, params, x)  # stacked per segment: compile time flat in depth

        def pooled(h, power):  # over a layer's neurons (positions and channels)
            return jnp.mean(h**power, axis=tuple(range(2, h.ndim)))

        second = jnp.concatenate([pooled(h, 2) for h in layers])
        fourth = jnp.concatenate([pooled(h, 4) for h in layers])
        return jnp.stack([second, fourth, second * fourth], axis=-1)  # (layers, batch, 3)

    return _over_networks(one, keys, arch)


def preactivation_moments(
    arch: Program,
    x: Array,
    *,
    width: int,
    n_samples: int,
    key: Array,
    weights: str = "gaussian",
    n_out: int = 1,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: Progress | None = None,
) -> PreactivationMoments:
    """Second moment and excess kurtosis of every layer's pre-activations, per input.

    Per network and layer, ``m2 = mean_i h_i^2`` and ``m4 = mean_i h_i^4`` over the layer's neurons
    (the layers of ``per_layer`` kernels; the readout has ``n_out`` neurons: pooling over more of
    them makes the output's moments far less noisy, the output units being exchangeable). Estimates:
    ``variance = E[m2]`` and ``excess_kurtosis = E[m4] / E[m2]^2 - 3``, the kurtosis of one
    pre-activation under the ensemble (a ratio estimator, bias O(1/n_samples)); its standard error
    comes from the delta method with the covariance of ``(m2, m4)`` across networks.
    """
    arch, width, n_samples, keys, n_out = _ensemble(arch, width, n_samples, key, weights, n_out)
    x, _ = validate_inputs(x, spatial_dims=expected_spatial_dims(arch.layers))
    size = _chunk_size(n_samples, _activation_bytes(arch, width, x), memory_budget)
    # Samples are (m2, m4, m2 m4): streamed means and variances give the (m2, m4) covariance too.
    first = _Running()
    for start, chunk in _chunks(keys, size):
        first.add(_moment_samples(chunk, x, arch=arch, width=width, weights=weights, n_out=n_out))
        if progress is not None:
            progress(start + chunk.shape[0], n_samples)
    n = first.count
    mean2, mean4 = first.mean[..., 0], first.mean[..., 1]
    var2, var4 = first.m2[..., 0] / (n - 1), first.m2[..., 1] / (n - 1)
    cov24 = (first.mean[..., 2] - mean2 * mean4) * n / (n - 1)
    kurtosis = mean4 / mean2**2 - 3
    # Delta method for g(m2, m4) = m4 / m2^2: grad = (-2 m4 / m2^3, 1 / m2^2).
    d2, d4 = -2 * mean4 / mean2**3, 1 / mean2**2
    var_k = (d2**2 * var2 + d4**2 * var4 + 2 * d2 * d4 * cov24) / n
    variance = Estimate(mean2, np.sqrt(var2 / n))
    return PreactivationMoments(
        variance, Estimate(kurtosis, np.sqrt(np.maximum(var_k, 0))), width, n_samples, np.dtype(x.dtype)
    )


@partial(jax.jit, static_argnames=("arch", "width", "weights"))
def _correlation_samples(keys, x, *, arch, width, weights):
    def one(key):
        params = networks.init(arch, width, key, weights, features=x.shape[1:], n_out=1, dtype=x.dtype)
        _, layers = networks.forward(arch, params, x)  # stacked per segment: compile time flat in depth
        out = []
        for h in layers:
            h = h.reshape(h.shape[0], h.shape[1], -1)
            k = jnp.einsum("rai,rbi->rab", h, h) / h.shape[-1]
            d = jnp.sqrt(jnp.diagonal(k, axis1=1, axis2=2))
            out.append(k / (d[:, :, None] * d[:, None, :]))
        return jnp.concatenate(out)[:-1]  # hidden layers (the readout has one unit)

    return _over_networks(one, keys, arch)


def layer_correlations(
    arch: Program,
    x: Array,
    *,
    width: int,
    n_samples: int,
    key: Array,
    weights: str = "gaussian",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """Every sampled network's correlation matrix per hidden layer, ``(n_samples, layers, batch, batch)``.

    Per network and hidden layer ``l``: ``c_l(x, x') = h_l(x).h_l(x') / (|h_l(x)| |h_l(x')|)`` over the
    layer's ``width`` pre-activations, the finite-width counterpart of the correlation map's iterates
    (``theory.signal_propagation``). Network ``i`` uses ``jax.random.split(key, n_samples)[i]``; the
    samples are returned (not averaged) so that callers can resample networks for standard errors.
    """
    arch, width, n_samples, keys, _ = _ensemble(arch, width, n_samples, key, weights)
    x, _ = validate_inputs(x, spatial_dims=expected_spatial_dims(arch.layers))
    size = _chunk_size(n_samples, _activation_bytes(arch, width, x), memory_budget)
    return np.concatenate([np.asarray(_correlation_samples(chunk, x, arch=arch, width=width, weights=weights))
                           for _, chunk in _chunks(keys, size)])


__all__ = [
    "Estimate",
    "KernelEstimate",
    "PreactivationMoments",
    "estimate_kernels",
    "layer_correlations",
    "median",
    "network_kernels",
    "preactivation_moments",
]
