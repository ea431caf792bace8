r"""Spatial reductions: ``AvgPool``, ``GlobalAvgPool`` and ``Flatten`` (neural-tangents' conventions).

All three are linear, so NNGP and NTK follow the same map:

* ``AvgPool(window, strides, padding)``: ``q'(s, s') = |P|^-2 sum_{p, p'} q(s st + p, s' st + p')``, pooling
  each position axis of the full kernel; divided by the window size also at padded edges (neural-tangents'
  ``normalize_edges=False``). Needs every pair of positions of its input kernel.
* ``GlobalAvgPool()``: ``q' = mean_{s, s'} q(s, s')``. Needs every pair of positions.
* ``Flatten()``: the inputs' coordinates side by side; a following Dense sees ``mean_s q(s, s)``, the spatial
  diagonal's mean, which is all it needs (``O(N^2 HW)`` rather than ``O(N^2 (HW)^2)``). Its output coordinates
  have position-dependent variances, so only a Dense may read it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from theory.layers.base import (
    KernelState,
    Layer,
    Shape,
    Stream,
    check_int_tuple,
    check_padding,
    output_size,
    pytree,
    window_sum,
)

Array = jax.Array


def _check_spatial(layer: Layer, shape: Shape, nd: int | None, where: str) -> None:
    if not shape.spatial:
        raise ValueError(f"{where}: {layer.name} pools over spatial positions, but its input is a vector "
                         f"{shape.describe()}; feed (batch, length, channels) or (batch, height, width, channels)")
    if nd is not None and len(shape.spatial) != nd:
        raise ValueError(f"{where}: {layer.name} has a {nd}-d window but its input has {len(shape.spatial)} "
                         f"spatial dimension(s) {shape.describe()}")


@pytree()
@dataclasses.dataclass(frozen=True)
class AvgPool(Layer):
    """Average over windows of ``window_shape`` positions, moved by ``strides`` (default 1, as in
    neural-tangents), with "VALID", "SAME" (zeros, counted in the average) or "CIRCULAR" padding."""

    window_shape: tuple[int, ...] = (2, 2)
    strides: tuple[int, ...] | None = None
    padding: str = "VALID"

    def __post_init__(self) -> None:
        where = "AvgPool: "
        object.__setattr__(self, "window_shape", check_int_tuple("window_shape", self.window_shape, where))
        strides = (1,) * len(self.window_shape) if self.strides is None else self.strides
        object.__setattr__(self, "strides", check_int_tuple("strides", strides, where))
        if len(self.strides) != len(self.window_shape):
            raise ValueError(f"AvgPool: strides {self.strides} and window_shape {self.window_shape} must have one "
                             "entry per spatial dimension each")
        object.__setattr__(self, "padding", check_padding(self.padding, where))

    def output_shape(self, shape: Shape, where: str) -> Shape:
        _check_spatial(self, shape, len(self.window_shape), where)
        if self.padding == "VALID" and any(w > s for w, s in zip(self.window_shape, shape.spatial, strict=True)):
            raise ValueError(f"{where}: the pooling window {self.window_shape} does not fit its input's spatial "
                             f"shape {shape.spatial} with padding 'VALID'; use a smaller window or padding='SAME'")
        out = tuple(output_size(s, w, st, self.padding)
                    for s, w, st in zip(shape.spatial, self.window_shape, self.strides, strict=True))
        return Shape(out, shape.channels, shape.hidden)

    def needs_full(self, full_out: bool) -> bool:
        return True

    def _pool(self, a: Array, axes: tuple[int, ...]) -> Array:
        return window_sum(a, axes, self.window_shape, self.strides, self.padding) / math.prod(self.window_shape)

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        nd = len(self.window_shape)

        def pool(a: Array, nb: int) -> Array:
            a = self._pool(a, tuple(range(nb, nb + nd)))
            return self._pool(a, tuple(range(nb + nd, nb + 2 * nd)))

        spatial = tuple(output_size(s, w, st, self.padding)
                        for s, w, st in zip(k.spatial, self.window_shape, self.strides, strict=True))
        return k.map(pool, spatial=spatial)

    def apply(self, params: Any, h: Array) -> Array:
        return self._pool(h, tuple(range(1, 1 + len(self.window_shape))))


@pytree()
@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Average over all positions: ``(batch, *spatial, channels) -> (batch, channels)``."""

    def output_shape(self, shape: Shape, where: str) -> Shape:
        _check_spatial(self, shape, None, where)
        return Shape((), shape.channels, shape.hidden)

    def needs_full(self, full_out: bool) -> bool:
        return True

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        nd = len(k.spatial)
        return k.map(lambda a, nb: jnp.mean(a, axis=tuple(range(nb, nb + 2 * nd))), spatial=(), full=False)

    def apply(self, params: Any, h: Array) -> Array:
        return jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))


@pytree()
@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``(batch, *spatial, channels) -> (batch, prod(spatial) * channels)``, row-major as neural-tangents."""

    def output_shape(self, shape: Shape, where: str) -> Shape:
        return Shape((), math.prod(shape.spatial) * shape.channels, shape.hidden)

    def output_stream(self, stream: Stream, where: str) -> Stream:
        if stream.deterministic:
            return stream
        return Stream(gaussian=False, centred=stream.centred, deterministic=False)

    def needs_full(self, full_out: bool) -> bool:
        return False

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        return k.spatial_mean()

    def apply(self, params: Any, h: Array) -> Array:
        return h.reshape(h.shape[0], -1)


__all__ = ["AvgPool", "Flatten", "GlobalAvgPool"]
