"""The Monte-Carlo kernels of Dense / Elementwise chains (MLPs) in closed form: matmuls only.

:mod:`experiments.monte_carlo` uses this fast path for programs made of ``Dense`` and ``Elementwise`` layers
only, on vector inputs; every other program goes through :mod:`experiments.networks` (the general path, which
the tests compare this one with). Same networks, same estimator: the same keys give the same weights, bit for
bit, and the kernels agree to float rounding.

Weights. ``networks.init`` draws weight layer ``i`` (program order) from ``split(key, n_weight_layers)[i]``,
then ``W ~ normal(split(k_i)[0], (fan_in, fan_out))`` and ``b ~ normal(split(k_i)[1], (fan_out,))``.
:func:`normal` computes ``jax.random.normal``'s numbers itself: XLA:CPU lowers JAX's threefry2x32 as a rolled
loop of five steps over the whole array (each step reads and writes it: memory-bound, ~40M numbers/s on 2 cores
here), while the same rounds written out (the lowering JAX uses on other backends) fuse into one loop, ~4x
faster. Used only for JAX's default generator (threefry2x32, partitionable layout; other generators or layouts
fall back to ``jax.random.normal``).

Kernels. With ``A_l`` the inputs of Dense ``l`` (``z_l = m_W A_l W_l + m_b b_l``) and ``G_l^k = dF_k / dz_l``
(``k`` over output units), the empirical NTK averaged over output units is

    Theta = sum_l (c_W A_l A_l'^T + c_b) * (1 / n_out) sum_k G_l^k G_l^k'^T,      c_W = lr_W m_W^2, c_b = lr_b m_b^2,

``*`` elementwise (Jacot et al. 2018's layer-wise identity: ``networks.empirical_ntk``'s). The readout has
``G^k = e_k``, so its factor is 1; below it ``G_{l-1}^k = m_W (G_l^k W_l^T) * phi'(z_{l-1})``, one
backward matmul per layer, with all ``n_out`` units stacked along the channels (so ``sum_k G^k G^k'^T`` is one
Gram of ``(batch, n_out * width)`` matrices). ``phi'`` is the derivative of the Elementwise layers between two
Dense layers (forward-mode, so any elementwise function works).
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from experiments import networks
from theory.layers import Dense, Elementwise, Program

Array = jax.Array

# -- the weights: jax.random.normal, computed with an unrolled threefry2x32 ------------------------------------
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), exactly as ``jax.random``: five groups of four
    rounds, the key schedule injected after each group."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def fast_rng(key: Array) -> bool:
    """Whether :func:`normal` reproduces ``jax.random.normal`` for ``key``'s generator: threefry2x32 keys (typed
    or raw) with ``jax_threefry_partitionable`` on (JAX's default)."""
    if not jax.config.jax_threefry_partitionable:
        return False
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)) == "threefry2x32"
    return str(jax.config.jax_default_prng_impl) == "threefry2x32"


def _bits(key: Array, shape: tuple[int, ...], width: int) -> Array:
    """``jax.random.bits(key, shape, uint<width>)`` for a threefry2x32 key in the partitionable layout: entry
    ``i`` (row-major) hashes the 64-bit counter ``i`` as the pair ``(i >> 32, i mod 2^32)``."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    size = int(np.prod(shape))
    if size >= 2**32:
        raise NotImplementedError("more than 2^32 numbers from one key")
    lo = jax.lax.iota(jnp.uint32, size).reshape(shape)
    b1, b2 = _threefry2x32(data[0], data[1], jnp.zeros_like(lo), lo)
    if width == 32:
        return b1 ^ b2
    return (b1.astype(jnp.uint64) << np.uint64(32)) | b2.astype(jnp.uint64)


def normal(key: Array, shape: tuple[int, ...], dtype) -> Array:
    """``jax.random.normal(key, shape, dtype)``, the same numbers (float32 and float64 with a threefry2x32 key;
    otherwise it calls ``jax.random.normal``)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64) or not fast_rng(key):
        return jax.random.normal(key, shape, dtype)
    # jax.random.uniform on [nextafter(-1, 0), 1): mantissa bits under the exponent of 1.0, minus 1, scaled.
    nbits, nmant = 8 * dtype.itemsize, np.finfo(dtype).nmant
    uint = np.dtype(f"uint{nbits}")
    bits = _bits(key, shape, nbits)
    one = np.array(1.0, dtype).view(uint)
    floats = jax.lax.bitcast_convert_type((bits >> uint.type(nbits - nmant)) | one, dtype) - dtype.type(1)
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
    hi = np.array(1.0, dtype)
    u = jnp.maximum(lo, floats * (hi - lo) + lo)
    return np.array(np.sqrt(2), dtype) * jax.lax.erf_inv(u)


# -- the program ---------------------------------------------------------------------------------------------
def chain(arch: Program, x_ndim: int) -> tuple[tuple, tuple] | None:
    """``(leading, blocks)`` when ``arch`` is a chain of Dense and Elementwise layers on vector inputs (else
    ``None``): ``leading`` the Elementwise layers before the first Dense, ``blocks`` per Dense ``(dense,
    activations after it)``."""
    if x_ndim != 2 or not all(type(layer) in (Dense, Elementwise) for layer in arch.layers):
        return None
    leading: list = []
    blocks: list = []
    for layer in arch.layers:
        if isinstance(layer, Dense):
            blocks.append((layer, []))
        elif blocks:
            blocks[-1][1].append(layer)
        else:
            leading.append(layer)
    if not blocks or blocks[-1][1]:
        return None  # the program's own checks (readout last) report it
    return tuple(leading), tuple((d, tuple(acts)) for d, acts in blocks)


@lru_cache(maxsize=64)
def weight_shapes(arch: Program, width: int, features: int, n_out: int, dtype: str, weights: str) -> tuple:
    """``(W shape, has bias)`` per Dense, as ``networks.init`` makes them (whose checks run here once)."""
    def leaves(key: Array) -> tuple:
        params = networks.init(arch, width, key, weights, features=features, n_out=n_out, dtype=np.dtype(dtype))
        return tuple((p.W, p.b) for p in params)

    return tuple((tuple(w.shape), b is not None) for w, b in jax.eval_shape(leaves, jax.random.key(0)))


def layer_keys(key: Array, n_dense: int) -> Array:
    """``(n_dense, 2)`` keys: per Dense, those of its ``W`` and ``b`` (as ``networks.init`` splits them)."""
    return jax.vmap(jax.random.split)(jax.random.split(key, n_dense))


def sample(arch: Program, keys: Array, shapes: tuple, dtype) -> list[tuple[Array, Array | None]]:
    """One network's ``(W, b)`` per Dense from its :func:`layer_keys`: ``networks.init(arch, width, key,
    "gaussian", ...)``'s numbers."""
    _, blocks = chain(arch, 2)
    out = []
    for i, ((dense, _), (w_shape, bias)) in enumerate(zip(blocks, shapes, strict=True)):
        _, s_w, _, s_b = dense.weight_scaling.multipliers(w_shape[0])
        w = normal(keys[i, 0], w_shape, dtype) * s_w
        b = normal(keys[i, 1], (w_shape[1],), dtype) * s_b if bias else None
        out.append((w, b))
    return out


def _activations(acts: tuple, z: Array) -> Array:
    for act in acts:
        z = act.apply(None, z)
    return z


def _trace(leading: tuple, blocks: tuple, params: list, x: Array) -> tuple[Array, list, list]:
    """Forward and backward pass of one network: outputs ``(batch, n_out)``, every Dense's input ``A_l`` and the
    output-unit gradients ``G_l`` at its output, ``(batch, n_out * fan_out)`` (``None`` for the readout)."""
    h = _activations(leading, x)
    inputs, slopes = [], []
    for (dense, acts), (w, b) in zip(blocks, params, strict=True):
        inputs.append(h)
        m_w, _, m_b, _ = dense.weight_scaling.multipliers(h.shape[-1])
        z = m_w * (h @ w)
        z = z if b is None else z + m_b * b
        if acts:
            h, slope = jax.jvp(lambda z, acts=acts: _activations(acts, z), (z,), (jnp.ones_like(z),))
        else:
            h, slope = z, None
        slopes.append(slope)
    out = h
    grads: list = [None]
    g = None  # (batch, n_out, fan_out) below the readout
    for layer in range(len(blocks) - 1, 0, -1):
        (dense, _), (w, _) = blocks[layer], params[layer]
        m_w, _, _, _ = dense.weight_scaling.multipliers(w.shape[0])
        if g is None:
            g = jnp.broadcast_to(m_w * w.T, (x.shape[0], *w.T.shape))  # dF_k / d(input of the readout)
        else:
            g = m_w * (g @ w.T)
        if slopes[layer - 1] is not None:
            g = g * slopes[layer - 1][:, None, :]
        grads.insert(0, g.reshape(g.shape[0], -1))
    return out, inputs, grads


def kernels(arch: Program, params: list, x1: Array, x2: Array | None, get: tuple[str, ...], nngp_from: str
            ) -> list[Array]:
    """One network's kernels in ``get``'s order: what ``monte_carlo``'s general path computes per network."""
    leading, blocks = chain(arch, x1.ndim)
    out1, in1, g1 = _trace(leading, blocks, params, x1)
    out2, in2, g2 = (out1, in1, g1) if x2 is None else _trace(leading, blocks, params, x2)
    n_out = out1.shape[-1]
    grams = [a1 @ a2.T for a1, a2 in zip(in1, in2, strict=True)]
    result = []
    if "nngp" in get and nngp_from == "readout_kernel":
        readout = blocks[-1][0]
        m_w, s_w, m_b, s_b = readout.weight_scaling.multipliers(in1[-1].shape[-1])
        bias = (m_b * s_b) ** 2 if readout.bias else 0.0
        result.append((m_w * s_w) ** 2 * grams[-1] + bias)
    elif "nngp" in get:
        result.append(out1 @ out2.T / n_out)
    if "ntk" in get:
        ntk = 0.0
        for (dense, _), (w, _), p, d1, d2 in zip(blocks, params, grams, g1, g2, strict=True):
            m_w, _, m_b, _ = dense.weight_scaling.multipliers(w.shape[0])
            s = dense.weight_scaling
            factor = s.w_lr * m_w**2 * p + (s.b_lr * m_b**2 if dense.bias else 0.0)
            ntk = ntk + (factor if d1 is None else factor * ((d1 @ d2.T) / n_out))
        result.append(ntk)
    return result
