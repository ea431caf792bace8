r"""Layers with trained weights: ``Dense`` and ``Conv`` (neural-tangents' ``stax.Dense`` / ``stax.Conv``).

Forward (NTK parameterization, the default): ``z = w_std / sqrt(fan_in) * W * h + b_std * b`` with
``W, b ~ N(0, 1)``; ``fan_in = in_channels`` (Dense, acting on the channel axis at every position) or
``in_channels * prod(filter_shape)`` (Conv); ``b_std = 0`` means no bias. A :class:`WeightScaling` replaces
this with any placement of the scales and per-parameter learning-rate factors (neural-tangents' standard
parameterization, or an abc-parameterization at a width).

Kernel map (Jacot et al. 2018; Novak et al. 2019 for convolutions), with ``A`` the identity for Dense and,
for Conv, the average over the filter's offsets ``f`` of the input kernel at ``(s + f, s' + f)``:

    q'     = v_W A(q) + v_b,
    Theta' = c_W A(q) + c_b + v_W A(Theta),

``v_W = (m_W s_W)^2 fan_in``, ``v_b = (m_b s_b)^2``, ``c_W = lr_W m_W^2 fan_in``, ``c_b = lr_b m_b^2`` (so
``v_W = c_W = w_std^2``, ``v_b = c_b = b_std^2`` in the NTK parameterization). Out-of-range positions of
"SAME" padding contribute zero; "CIRCULAR" wraps around.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax

from theory import gap
from theory.layers.base import (
    GAUSSIAN_STREAM,
    KernelState,
    Layer,
    Shape,
    Stream,
    Weights,
    WeightScaling,
    check_int_tuple,
    check_padding,
    check_scale,
    is_concrete,
    output_size,
    pad_axis,
    pytree,
    same_padding,
    window_sum,
    window_sum_pairs,
)

Array = jax.Array


class WeightLayer(Layer):
    """Shared by Dense and Conv: the scaling of the weights, the kernel coefficients, the initialisation."""

    weight_layer = True
    w_std: Any
    b_std: Any
    scaling: WeightScaling | None
    bias: bool

    def _resolve_bias(self) -> None:
        object.__setattr__(self, "w_std", check_scale("w_std", self.w_std, f"{self.name}: "))
        object.__setattr__(self, "b_std", check_scale("b_std", self.b_std, f"{self.name}: "))
        # b_std = 0 means no bias at all (as neural-tangents' b_std=None); a traced b_std keeps its bias.
        object.__setattr__(self, "bias", (not is_concrete(self.b_std)) or self.b_std != 0)
        if self.scaling is not None and not isinstance(self.scaling, WeightScaling):
            raise ValueError(f"{self.name}: scaling must be a WeightScaling or None, got {self.scaling!r}")

    @property
    def window(self) -> tuple[int, ...]:
        return ()

    @property
    def weight_scaling(self) -> WeightScaling:
        """The scaling in force (neural-tangents' NTK parameterization unless one was set)."""
        return self.scaling if self.scaling is not None else WeightScaling.ntk(self.w_std, self.b_std)

    def fan_in(self, shape: Shape, width: int | None, where: str = "") -> int:
        channels = shape.fan(width)
        if channels is None:
            raise ValueError(f"{where}{self.name} has its 1/sqrt(fan_in) in the initialisation ('standard' or an "
                             "abc-parameterization), so its NTK depends on the hidden width: give the width "
                             "(MLP(..., width=n) or theory.parameterize(net, ..., width=n))")
        return channels * math.prod(self.window)

    def coefficients(self, shape: Shape, gain: Any = 1.0) -> tuple[Any, Any, Any, Any]:
        """``(v_W, v_b, c_W, c_b)`` of the module docstring, times ``gain``."""
        s = self.weight_scaling
        v_w = (s.w_multiplier * s.w_init) ** 2
        c_w = s.w_lr * s.w_multiplier**2
        if s.fan_in == "init":
            c_w = c_w * self.fan_in(shape, s.width)
        v_b = (s.b_multiplier * s.b_init) ** 2 if self.bias else 0.0
        c_b = s.b_lr * s.b_multiplier**2 if self.bias else 0.0
        return gain * v_w, gain * v_b, gain * c_w, gain * c_b

    def output_stream(self, stream: Stream, where: str) -> Stream:
        return GAUSSIAN_STREAM

    def _average(self, a: Array, batch_ndim: int, full: bool) -> Array:
        return a

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        v_w, v_b, c_w, c_b = coefficients
        out = k.map(lambda a, nb: self._average(a, nb, k.full))
        q11, q12, q22 = out.q11, out.q12, out.q22
        g12 = None if k.g12 is None or k.spatial else gap.affine(q11[:, None], q22[None], k.g12, v_w, v_b)
        if not k.with_ntk:
            return out.replace(q11=v_w * q11 + v_b, q12=v_w * q12 + v_b, q22=v_w * q22 + v_b, g12=g12)
        return out.replace(
            q11=v_w * q11 + v_b, q12=v_w * q12 + v_b, q22=v_w * q22 + v_b, g12=g12,
            t11=c_w * q11 + c_b + v_w * out.t11, t12=c_w * q12 + c_b + v_w * out.t12,
            t22=c_w * q22 + c_b + v_w * out.t22,
        )

    def _weight_shape(self, in_channels: int, out_channels: int) -> tuple[int, ...]:
        return (*self.window, in_channels, out_channels)

    def init(self, key: Array, shape: Shape, out_channels: int, sample: Callable, dtype: Any,
             width: int | None = None) -> Weights:
        in_channels = shape.fan(width)
        fan_in = in_channels * math.prod(self.window)
        _, s_w, _, s_b = self.weight_scaling.multipliers(fan_in)
        w_key, b_key = jax.random.split(key)
        w = sample(w_key, self._weight_shape(in_channels, out_channels), dtype)
        b = jax.random.normal(b_key, (out_channels,), dtype) if self.bias else None
        return Weights(w * s_w, None if b is None else b * s_b)

    def _product(self, h: Array, w: Array) -> Array:
        raise NotImplementedError

    def apply(self, params: Weights, h: Array) -> Array:
        fan_in = h.shape[-1] * math.prod(self.window)
        m_w, _, m_b, _ = self.weight_scaling.multipliers(fan_in)
        z = m_w * self._product(h, params.W)
        return z if params.b is None else z + m_b * params.b

    def patch_gram(self, g: Array, batch_ndim: int) -> Array:
        """``sum_f <h(s + f), h'(s' + f)>`` from the Gram ``g`` of the inputs at every pair of positions (the
        inner product of two inputs' patches; what the layer-wise empirical NTK needs)."""
        return g


@pytree("w_std", "b_std", "scaling")
@dataclasses.dataclass(frozen=True)
class Dense(WeightLayer):
    """``h -> w_std / sqrt(fan_in) * h @ W + b_std * b`` on the channel (last) axis; at every position of an
    image or sequence (as neural-tangents' Dense). The last layer of a program must be a Dense: the readout."""

    w_std: Any = 1.0
    b_std: Any = 0.0
    scaling: WeightScaling | None = None
    bias: bool = dataclasses.field(init=False, repr=False, default=True)

    def __post_init__(self) -> None:
        self._resolve_bias()

    def output_shape(self, shape: Shape, where: str) -> Shape:
        return Shape(shape.spatial, 1, True)

    def _product(self, h: Array, w: Array) -> Array:
        return h @ w


@pytree("w_std", "b_std", "scaling")
@dataclasses.dataclass(frozen=True)
class Conv(WeightLayer):
    """A convolution over one or two spatial dimensions, channels last, ``fan_in = in_channels *
    prod(filter_shape)``, one bias per channel. ``padding``: "SAME", "VALID" or "CIRCULAR" (periodic);
    ``strides`` default to 1 (neural-tangents' ``stax.Conv``)."""

    filter_shape: tuple[int, ...] = (3, 3)
    strides: tuple[int, ...] | None = None
    padding: str = "SAME"
    w_std: Any = 1.0
    b_std: Any = 0.0
    scaling: WeightScaling | None = None
    bias: bool = dataclasses.field(init=False, repr=False, default=True)

    def __post_init__(self) -> None:
        where = "Conv: "
        object.__setattr__(self, "filter_shape", check_int_tuple("filter_shape", self.filter_shape, where))
        strides = (1,) * len(self.filter_shape) if self.strides is None else self.strides
        object.__setattr__(self, "strides", check_int_tuple("strides", strides, where))
        if len(self.strides) != len(self.filter_shape):
            raise ValueError(f"Conv: strides {self.strides} and filter_shape {self.filter_shape} must have one entry "
                             "per spatial dimension each")
        object.__setattr__(self, "padding", check_padding(self.padding, where))
        self._resolve_bias()

    @property
    def window(self) -> tuple[int, ...]:
        return self.filter_shape

    def output_shape(self, shape: Shape, where: str) -> Shape:
        nd = len(self.filter_shape)
        if len(shape.spatial) != nd:
            kind = "(batch, length, channels)" if nd == 1 else "(batch, height, width, channels)"
            raise ValueError(f"{where}: a Conv with filter_shape {self.filter_shape} needs inputs of shape {kind}, "
                             f"but its input has {len(shape.spatial)} spatial dimension(s) {shape.describe()}")
        if self.padding == "VALID" and any(f > s for f, s in zip(self.filter_shape, shape.spatial, strict=True)):
            raise ValueError(f"{where}: the filter {self.filter_shape} is larger than its input's spatial shape "
                             f"{shape.spatial} with padding 'VALID'; use padding='SAME' or a smaller filter")
        out = tuple(output_size(s, f, st, self.padding)
                    for s, f, st in zip(shape.spatial, self.filter_shape, self.strides, strict=True))
        return Shape(out, 1, True)

    def _average(self, a: Array, batch_ndim: int, full: bool) -> Array:
        nd = len(self.filter_shape)
        size = math.prod(self.filter_shape)
        if full:
            return window_sum_pairs(a, batch_ndim, nd, self.filter_shape, self.strides, self.padding) / size
        axes = tuple(range(batch_ndim, batch_ndim + nd))
        return window_sum(a, axes, self.filter_shape, self.strides, self.padding) / size

    def _product(self, h: Array, w: Array) -> Array:
        nd = len(self.filter_shape)
        if self.padding == "CIRCULAR":
            for i in range(nd):
                low, high = same_padding(h.shape[1 + i], self.filter_shape[i], self.strides[i])
                h = pad_axis(h, 1 + i, low, high, True)
        spec = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
        padding = "VALID" if self.padding == "CIRCULAR" else self.padding
        return jax.lax.conv_general_dilated(h, w, self.strides, padding, dimension_numbers=spec)

    def patch_gram(self, g: Array, batch_ndim: int) -> Array:
        nd = len(self.filter_shape)
        return window_sum_pairs(g, batch_ndim, nd, self.filter_shape, self.strides, self.padding)


__all__ = ["Conv", "Dense", "WeightLayer"]
