"""Finite networks built from the same architecture description that ``theory.kernels`` takes.

``init(arch, width, key)`` samples the parameters of a width-``width`` network, ``apply`` runs it,
``empirical_ntk`` computes its exact NTK. Conventions are those of :mod:`theory.architectures`:

* Dense, "ntk" parameterization: ``z = w_std / sqrt(fan_in) * h @ W + b_std * b``, ``W, b ~ N(0, 1)``;
  "standard": ``z = h @ W + b``, ``W ~ N(0, w_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``. A layer with
  ``b_std = 0`` has no bias.
* MLP: ``depth`` hidden Dense layers each followed by the activation, then a Dense readout with
  ``n_out`` outputs. ResNet: a Dense stem, ``depth`` blocks ``h + branch_multiplier * Dense(phi(h))``,
  then ``Dense(phi(h))`` or ``Dense(h)`` with ``n_out`` outputs.

Weight ensembles: ``"gaussian"`` (iid N(0, 1) entries) and ``"orthogonal"`` (Haar-distributed matrices
with orthonormal rows or columns, scaled by ``sqrt(max(fan_in, fan_out))`` so that entries have
variance 1, as in "Beyond IID weights"). Each ensemble is one function in ``WEIGHT_ENSEMBLES``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory import MLP, ResNet
from theory.architectures import Architecture

Array = jax.Array


class Dense(NamedTuple):
    """One Dense layer's trainable parameters: ``W`` is ``(fan_in, fan_out)``; ``b`` is ``None``
    when the layer has no bias (``b_std = 0``)."""

    W: Array
    b: Array | None


class LayerSpec(NamedTuple):
    """Static description of one Dense layer of a finite network."""

    fan_in: int
    fan_out: int
    w_std: float
    b_std: float
    post: str  # what feeds this layer: "input", "activation" or "identity"
    residual: bool  # a residual block: h <- h + multiplier * Dense(...)
    multiplier: float = 1.0


def gaussian_weights(key: Array, shape: tuple[int, int], dtype: jnp.dtype) -> Array:
    """iid standard normal entries."""
    return jax.random.normal(key, shape, dtype)


def orthogonal_weights(key: Array, shape: tuple[int, int], dtype: jnp.dtype) -> Array:
    """Haar-orthogonal ``(fan_in, fan_out)`` matrix (orthonormal columns if fan_in >= fan_out,
    rows otherwise) scaled by ``sqrt(max(fan_in, fan_out))``: entries of variance 1."""
    fan_in, fan_out = shape
    big, small = max(shape), min(shape)
    z = jax.random.normal(key, (big, small), dtype)
    q = _haar_qr(z)
    q = q if fan_in >= fan_out else q.T
    return q * math.sqrt(big)


def _signed_q(a: np.ndarray) -> np.ndarray:
    q, r = np.linalg.qr(a)
    # Fixing the signs of diag(R) makes Q Haar-distributed (Mezzadri 2007).
    return (q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]).astype(a.dtype)


def _haar_qr(z: Array) -> Array:
    """The Q factor of ``z`` with ``diag(R) > 0``.

    On CPU the factorisation runs in NumPy through a host callback: with jaxlib 0.10 an XLA CPU
    program holding several LAPACK QR calls (one per layer, batched over networks) intermittently
    never returns (every pool thread idle), which a host callback avoids.
    """
    if jax.default_backend() != "cpu":
        q, r = jnp.linalg.qr(z)
        return q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    shape = jax.ShapeDtypeStruct(z.shape, z.dtype)
    return jax.pure_callback(_signed_q, shape, z, vmap_method="broadcast_all")


WEIGHT_ENSEMBLES: dict[str, Callable[[Array, tuple[int, int], jnp.dtype], Array]] = {
    "gaussian": gaussian_weights,
    "orthogonal": orthogonal_weights,
}


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_width(width: object) -> int:
    return check_positive_int("width", width)


def check_weights(weights: object) -> str:
    if weights not in WEIGHT_ENSEMBLES:
        raise ValueError(f"unknown weights {weights!r}; choose one of {sorted(WEIGHT_ENSEMBLES)}")
    return weights


def check_key(key: object) -> Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
        return key
    raise ValueError(
        f"key must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got {key!r}"
    )


def layer_specs(arch: Architecture, features: int, width: int, n_out: int = 1) -> tuple[LayerSpec, ...]:
    """The Dense layers of the finite network, in order (the same list as ``per_layer`` kernels)."""
    if isinstance(arch, MLP):
        specs = [LayerSpec(features, width, arch.w_std, arch.b_std, "input", False)]
        specs += [LayerSpec(width, width, arch.w_std, arch.b_std, "activation", False)] * (arch.depth - 1)
        if arch.depth:
            specs.append(LayerSpec(width, n_out, arch.w_std, arch.b_std, "activation", False))
        else:
            specs = [LayerSpec(features, n_out, arch.w_std, arch.b_std, "input", False)]
        return tuple(specs)
    if isinstance(arch, ResNet):
        specs = [LayerSpec(features, width, arch.stem_w_std, 0.0, "input", False)]
        block = LayerSpec(width, width, arch.w_std, arch.b_std, "activation", True, arch.branch_multiplier)
        specs += [block] * arch.depth
        post = "activation" if arch.readout == "activation" else "identity"
        specs.append(LayerSpec(width, n_out, arch.readout_w_std, 0.0, post, False))
        return tuple(specs)
    raise ValueError(f"expected a theory.MLP or theory.ResNet, got {arch!r}")


def init(
    arch: Architecture,
    width: int,
    key: Array,
    weights: str = "gaussian",
    *,
    features: int,
    n_out: int = 1,
    dtype: jnp.dtype | None = None,
) -> tuple[Dense, ...]:
    """Sample the parameters of the width-``width`` network that ``arch`` describes.

    ``features`` is the input dimension. In the standard parameterization ``W`` and ``b`` carry
    their scales (``w_std / sqrt(fan_in)``, ``b_std``); in the NTK one they are standard normal.
    """
    width = check_width(width)
    key = check_key(key)
    check_weights(weights)
    n_out = check_positive_int("n_out", n_out)
    features = check_positive_int("features", features)
    if arch.parameterization == "standard" and arch.width not in (None, width):
        raise ValueError(
            f"the architecture says width={arch.width} (its standard-parameterization NTK uses it) "
            f"but the finite network has width {width}; make them equal"
        )
    dtype = dtype or jnp.result_type(float)
    sample = WEIGHT_ENSEMBLES[weights]
    specs = layer_specs(arch, features, width, n_out)
    keys = jax.random.split(key, len(specs))
    params: list[Dense] = []
    for start, stop in _runs(specs):
        spec = specs[start]

        def one(layer_key: Array, spec: LayerSpec = spec) -> Dense:
            w_key, b_key = jax.random.split(layer_key)
            w = sample(w_key, (spec.fan_in, spec.fan_out), dtype)
            b = jax.random.normal(b_key, (spec.fan_out,), dtype) if spec.b_std > 0 else None
            if arch.parameterization == "standard":
                w = w * (spec.w_std / math.sqrt(spec.fan_in))
                b = None if b is None else b * spec.b_std
            return Dense(w, b)

        if stop - start == 1:
            params.append(one(keys[start]))
            continue
        # Identical layers are sampled in one batched call (the same numbers as one call per key):
        # a program with one RNG op per layer takes minutes to compile at depth ~1000.
        stacked = jax.vmap(one)(keys[start:stop])
        params.extend(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(stop - start))
    return tuple(params)


def _runs(specs: tuple[LayerSpec, ...]) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of consecutive identical layers (the hidden layers, the blocks)."""
    runs, start = [], 0
    for i in range(1, len(specs) + 1):
        if i == len(specs) or specs[i] != specs[start]:
            runs.append((start, i))
            start = i
    return runs


def _dense(arch: Architecture, spec: LayerSpec, layer: Dense, h: Array) -> Array:
    if arch.parameterization == "ntk":
        z = (spec.w_std / math.sqrt(spec.fan_in)) * (h @ layer.W)
        return z if layer.b is None else z + spec.b_std * layer.b
    z = h @ layer.W
    return z if layer.b is None else z + layer.b


def apply(
    arch: Architecture,
    params: tuple[Dense, ...],
    x: Array,
    per_layer: bool = False,
    *,
    probes: tuple[Array, ...] | None = None,
) -> Array | tuple[Array, list[Array]]:
    """Outputs ``(batch, n_out)`` of the network; with ``per_layer`` also every Dense layer's
    pre-activations (MLP: the Dense outputs; ResNet: the stem, the residual stream after each
    block, and the readout), the quantities whose kernels ``theory.kernels(per_layer=True)`` gives.

    ``probes`` (zeros shaped like each Dense output) are added to the Dense outputs; the gradient
    with respect to them is ``dF / d(Dense output)``, used by :func:`empirical_ntk`.
    """
    specs = layer_specs(arch, x.shape[-1], params[0].W.shape[1], params[-1].W.shape[1])
    if len(specs) != len(params):
        raise ValueError(f"params have {len(params)} layers but {arch!r} has {len(specs)}")
    phi = arch.activation.fn

    def layer_map(spec: LayerSpec, layer: Dense, probe: Array | None, h: Array) -> Array:
        inputs = phi(h) if spec.post == "activation" else h
        z = _dense(arch, spec, layer, inputs)
        if probe is not None:
            z = z + probe
        return h + spec.multiplier * z if spec.residual else z

    h = x
    layers: list[Array] = []
    for start, stop in _runs(specs):
        spec = specs[start]
        if stop - start <= 2:
            for i in range(start, stop):
                h = layer_map(spec, params[i], None if probes is None else probes[i], h)
                layers.append(h)
            continue
        # A run of identical layers is one lax.scan: compile time and memory stay flat in depth
        # (unrolled, depth ~256 already exhausts LLVM's code memory).
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *params[start:stop])
        stacked_probes = None if probes is None else jnp.stack(probes[start:stop])

        def body(h: Array, xs: tuple, spec: LayerSpec = spec) -> tuple[Array, Array | None]:
            layer, probe = xs
            h = layer_map(spec, layer, probe, h)
            return h, (h if per_layer else None)

        h, hs = jax.lax.scan(body, h, (stacked, stacked_probes))
        if per_layer:
            layers.extend(hs[i] for i in range(stop - start))
    return (h, layers) if per_layer else h


def readout_kernel(arch: Architecture, params: tuple[Dense, ...], x1: Array, x2: Array | None = None) -> Array:
    """The covariance of the outputs given everything below the readout, ``(batch1, batch2)``.

    With readout ``f = c h @ W + c_b b`` (``W, b`` iid over output units, ``h`` the readout's input),
    ``E[f_k(x) f_k(x') | h] = c^2 <h(x), h(x')> + c_b^2``: the finite network's last-layer kernel
    (``c = w_std / sqrt(fan_in)``, ``c_b = b_std``; 0 without bias). Its mean over networks equals
    the output covariance ``E[f(x) f(x')]`` exactly, with the readout's own sampling noise removed.
    """
    specs = layer_specs(arch, x1.shape[-1], params[0].W.shape[1], params[-1].W.shape[1])
    phi = arch.activation.fn

    def readout_input(x: Array) -> Array:
        if len(specs) == 1:
            return x
        _, hs = apply(arch, params, x, per_layer=True)
        return phi(hs[-2]) if specs[-1].post == "activation" else hs[-2]

    spec = specs[-1]
    h1 = readout_input(x1)
    h2 = h1 if x2 is None else readout_input(x2)
    bias = spec.b_std**2 if params[-1].b is not None else 0.0
    return (spec.w_std**2 / spec.fan_in) * (h1 @ h2.T) + bias


def empirical_ntk(arch: Architecture, params: tuple[Dense, ...], x1: Array, x2: Array | None = None) -> Array:
    """Exact NTK of one finite network, ``(n_out, batch1, batch2)`` (one kernel per output unit).

    Uses the layer-wise identity: for every Dense layer with output ``z = c h @ W + c_b b``,
    ``Theta_k(x, x') += <dF_k/dz(x), dF_k/dz(x')> (c^2 <h(x), h(x')> + c_b^2)`` (``c = w_std/sqrt(fan_in)``,
    ``c_b = b_std`` in the NTK parameterization; ``c = c_b = 1`` in the standard one; ``c_b = 0``
    without bias). One forward and one backward pass per input and output unit, instead of a
    Jacobian over all parameters.
    """
    specs = layer_specs(arch, x1.shape[-1], params[0].W.shape[1], params[-1].W.shape[1])
    phi = arch.activation.fn

    def layer_inputs(x: Array) -> list[Array]:
        _, hs = apply(arch, params, x, per_layer=True)
        prev = [x, *hs[:-1]]
        return [phi(h) if s.post == "activation" else h for h, s in zip(prev, specs, strict=True)]

    def output_grads(x: Array) -> list[Array]:
        # (n_out, batch, fan_out) per layer: dF_k / dz for each output unit k.
        probes = tuple(jnp.zeros((x.shape[0], s.fan_out), x.dtype) for s in specs)

        def outputs(p):
            return apply(arch, params, x, probes=p)

        out, pullback = jax.vjp(outputs, probes)
        eye = jnp.eye(out.shape[-1], dtype=x.dtype)
        cotangents = jnp.broadcast_to(eye[:, None, :], (out.shape[-1], *out.shape))
        (grads,) = jax.vmap(pullback)(cotangents)
        return list(grads)

    x2_ = x1 if x2 is None else x2
    in1, in2 = layer_inputs(x1), (None if x2 is None else layer_inputs(x2_))
    g1, g2 = output_grads(x1), (None if x2 is None else output_grads(x2_))
    in2 = in1 if in2 is None else in2
    g2 = g1 if g2 is None else g2
    ntk = 0.0
    for spec, layer, a1, a2, d1, d2 in zip(specs, params, in1, in2, g1, g2, strict=True):
        if arch.parameterization == "ntk":
            w2, b2 = spec.w_std**2 / spec.fan_in, (spec.b_std**2 if layer.b is not None else 0.0)
        else:
            w2, b2 = 1.0, (1.0 if layer.b is not None else 0.0)
        # d1, d2 are dF/dz for the Dense output z (a block's multiplier is inside them).
        ntk = ntk + jnp.einsum("kia,kja->kij", d1, d2) * (w2 * (a1 @ a2.T) + b2)
    return ntk
