r"""``LayerNorm()``: normalise every position's channels to zero mean and unit variance (no learned affine).

Finite layer (neural-tangents' ``stax.LayerNorm(axis=-1)``): ``h -> (h - mean_c h) / sqrt(var_c h + eps)``.
With infinitely many channels the channel mean of a centred Gaussian input vanishes and its channel variance
is ``q(x, x)`` at that position, so (Xiao et al. 2020; neural-tangents)

    q'(x, x') = q(x, x') / sqrt((q(x, x) + eps) (q(x', x') + eps)),    Theta' = Theta / sqrt(...)

(the Jacobian's projections onto the mean and the input direction contribute ``O(1 / width)``). The input
must be Gaussian (the output of a Dense or Conv), or the raw input, which is normalised exactly; a kernel is
invariant to rescaling an input when a LayerNorm reads it with ``eps`` negligible.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from theory.layers.base import KernelState, Layer, Shape, Stream, pytree

Array = jax.Array


@pytree()
@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalise over the channel (last) axis; ``eps`` as neural-tangents' default."""

    eps: float = 1e-12

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < float("inf")):
            raise ValueError(f"LayerNorm: eps must be a finite number >= 0, got {eps!r}")
        object.__setattr__(self, "eps", float(eps))

    def output_shape(self, shape: Shape, where: str) -> Shape:
        if not shape.hidden and shape.channels < 2:
            raise ValueError(f"{where}: LayerNorm normalises over the channel axis, but its input has "
                             f"{shape.channels} feature(s) {shape.describe()}: the result would be 0; put it after "
                             "a Dense or Conv, or drop it")
        return shape

    def output_stream(self, stream: Stream, where: str) -> Stream:
        if not (stream.gaussian or stream.deterministic):
            raise ValueError(
                f"{where}: the input of LayerNorm is not a centred Gaussian process in the infinite-width limit (it "
                "is the output of an activation, a Flatten, or a sum with one), so its channel mean and variance are "
                "not given by its kernel alone; put a Dense or Conv before it (neural-tangents rejects this too)")
        return stream

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        (a11, b11), (a12, b12), (a22, b22) = k.variance_pairs()

        def norm(a: Array, b: Array) -> Array:
            return jnp.sqrt((a + self.eps) * (b + self.eps))

        n11, n12, n22 = norm(a11, b11), norm(a12, b12), norm(a22, b22)
        out = k.replace(q11=k.q11 / n11, q12=k.q12 / n12, q22=k.q22 / n22)
        if not k.with_ntk:
            return out
        return out.replace(t11=k.t11 / n11, t12=k.t12 / n12, t22=k.t22 / n22)

    def apply(self, params: Any, h: Array) -> Array:
        mean = jnp.mean(h, axis=-1, keepdims=True)
        centred = h - mean
        var = jnp.mean(centred**2, axis=-1, keepdims=True)
        return centred / jnp.sqrt(var + self.eps)


__all__ = ["LayerNorm"]
