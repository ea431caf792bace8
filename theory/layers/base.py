"""What every layer of a program shares: the layer interface, shapes, the kernel state, validation.

A layer knows three things (as neural-tangents' ``stax`` layers do): how it maps the infinite-width kernels
(:meth:`Layer.kernel`, on a :class:`KernelState`), how to initialise its finite parameters
(:meth:`Layer.init`) and how to apply them (:meth:`Layer.apply`). Layers are frozen dataclasses and JAX
pytrees: numbers (``w_std``, ``b_std``, a residual ``scale``) are leaves, so a kernel can be differentiated
with respect to them; everything that fixes shapes (filters, padding, activations) is static.

Conventions: inputs are ``(batch, features)``, ``(batch, length, channels)`` or
``(batch, height, width, channels)``, channels last. A kernel state holds, for a block of row inputs
against column inputs, the kernels either at every pair of spatial positions (``full``) or only at equal
positions (the spatial diagonal); see ``docs/layer_program.md``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def pytree(*data: str) -> Callable[[type], type]:
    """Register a frozen dataclass as a pytree with ``data`` fields as leaves, the others static.

    Unflattening does not call ``__init__``: JAX rebuilds nodes with placeholder or traced leaves, which
    validation in ``__post_init__`` must not see.
    """

    def register(cls: type) -> type:
        names = [f.name for f in dataclasses.fields(cls)]
        meta = tuple(n for n in names if n not in data)

        def flatten(obj: Any) -> tuple[tuple, tuple]:
            return tuple(getattr(obj, n) for n in data), tuple(getattr(obj, n) for n in meta)

        def unflatten(static: tuple, leaves: tuple) -> Any:
            obj = object.__new__(cls)
            for n, v in zip(meta, static, strict=True):
                object.__setattr__(obj, n, v)
            for n, v in zip(data, leaves, strict=True):
                object.__setattr__(obj, n, v)
            return obj

        jax.tree_util.register_pytree_node(cls, flatten, unflatten)
        return cls

    return register


# -- validation ----------------------------------------------------------------------------------------------
def is_concrete(value: object) -> bool:
    """True for a number that is not a JAX tracer (validation only checks what it can see)."""
    return not isinstance(value, jax.core.Tracer)


def check_scale(name: str, value: object, where: str = "") -> Any:
    """A finite real ``>= 0`` as a Python float; tracers pass through unchecked."""
    if not is_concrete(value):
        return value
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}{name} must be a real number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}{name} must be finite and >= 0, got {value}; it is a standard deviation or scale")
    return value


def check_int_tuple(name: str, value: object, where: str, minimum: int = 1) -> tuple[int, ...]:
    """A non-empty tuple of 1 or 2 integers ``>= minimum`` (filter / window shapes, strides)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{where}{name} must be a tuple of positive integers, got {value!r}") from None
    if not 1 <= len(items) <= 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum
                                       for v in items):
        raise ValueError(f"{where}{name} must be a tuple of one or two integers >= {minimum} (one per spatial "
                         f"dimension: (length,) or (height, width)), got {value!r}")
    return tuple(int(v) for v in items)


PADDINGS = ("SAME", "VALID", "CIRCULAR")


def check_padding(padding: object, where: str) -> str:
    key = str(padding).upper() if isinstance(padding, str) else padding
    if key not in PADDINGS:
        raise ValueError(f"{where}padding must be one of {PADDINGS}, got {padding!r}")
    return key  # type: ignore[return-value]


# -- shapes and streams --------------------------------------------------------------------------------------
class Shape(NamedTuple):
    """Per-example shape of a layer's input or output: ``spatial`` sizes and a channel count.

    ``hidden`` means the channel count is ``channels * width`` (the network's width; infinite in the
    kernels); otherwise ``channels`` is a fixed number (the input's channels, or the readout's outputs).
    """

    spatial: tuple[int, ...]
    channels: int
    hidden: bool = False

    def fan(self, width: int | None) -> int | None:
        """The actual channel count at ``width`` (``None`` when hidden and the width is unknown)."""
        if not self.hidden:
            return self.channels
        return None if width is None else self.channels * width

    def describe(self) -> str:
        ch = f"{self.channels} x width" if self.hidden and self.channels != 1 else (
            "width" if self.hidden else str(self.channels))
        return f"({', '.join(map(str, self.spatial))}{', ' if self.spatial else ''}{ch} channels)"


class Stream(NamedTuple):
    """What the infinite-width theory knows about a layer's output coordinates.

    ``gaussian``: a centred Gaussian process, i.i.d. over channels (the output of a Dense or Conv, and linear
    maps of it); ``centred``: zero mean; ``deterministic``: a function of the inputs only (before any weights).
    """

    gaussian: bool
    centred: bool
    deterministic: bool


INPUT_STREAM = Stream(gaussian=False, centred=False, deterministic=True)
GAUSSIAN_STREAM = Stream(gaussian=True, centred=True, deterministic=False)


# -- finite parameters ---------------------------------------------------------------------------------------
class Weights(NamedTuple):
    """One Dense or Conv layer's trained parameters: ``W`` is ``(fan_in, fan_out)`` (Dense) or
    ``(*filter_shape, in_channels, out_channels)`` (Conv); ``b`` is ``(out,)`` or ``None`` without a bias."""

    W: Array
    b: Array | None


@pytree("w_multiplier", "w_init", "w_lr", "b_multiplier", "b_init", "b_lr")
@dataclasses.dataclass(frozen=True)
class WeightScaling:
    """How a Dense / Conv layer's parameters enter the network and its training, at one width.

    Forward ``z = m_W (W * h) + m_b b`` with ``W ~ N(0, s_W^2)``, ``b ~ N(0, s_b^2)``; gradient descent moves
    ``W`` with learning rate ``eta * w_lr`` and ``b`` with ``eta * b_lr``. The layer's ``1 / sqrt(fan_in)``
    sits in the multiplier (``fan_in="multiplier"``: ``m_W = w_multiplier / sqrt(fan_in)``,
    ``s_W = w_init``) or in the initialisation (``fan_in="init"``: ``m_W = w_multiplier``,
    ``s_W = w_init / sqrt(fan_in)``). neural-tangents' "ntk" parameterization is
    ``(w_std, 1, 1, b_std, 1, 1, "multiplier")``, its "standard" one ``(1, w_std, 1, 1, b_std, 1, "init")``;
    an abc-parameterization (``theory.parameterizations.parameterize``) resolves its width exponents into these
    numbers at a ``width``. ``width`` is that width (needed by the NTK when ``fan_in="init"``: the forward
    coefficient is ``w_lr w_multiplier^2 fan_in``); ``group`` is "input", "hidden" or "output".
    """

    w_multiplier: float
    w_init: float
    w_lr: float
    b_multiplier: float
    b_init: float
    b_lr: float
    fan_in: str = "multiplier"
    width: int | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.fan_in not in ("multiplier", "init"):
            raise ValueError(f"WeightScaling.fan_in must be 'multiplier' or 'init', got {self.fan_in!r}")
        for name in ("w_multiplier", "w_init", "w_lr", "b_multiplier", "b_init", "b_lr"):
            object.__setattr__(self, name, check_scale(name, getattr(self, name), "WeightScaling."))
        if self.width is not None and (isinstance(self.width, bool) or not isinstance(self.width, numbers.Integral)
                                       or self.width < 1):
            raise ValueError(f"WeightScaling.width must be a positive integer or None, got {self.width!r}")

    @classmethod
    def ntk(cls, w_std: float, b_std: float) -> WeightScaling:
        """neural-tangents' NTK parameterization: ``h -> w_std / sqrt(fan_in) W h + b_std b``, ``W, b ~ N(0, 1)``."""
        return cls(w_std, 1.0, 1.0, b_std, 1.0, 1.0, "multiplier")

    @classmethod
    def standard(cls, w_std: float, b_std: float, width: int | None) -> WeightScaling:
        """neural-tangents' standard parameterization: ``W ~ N(0, w_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``."""
        return cls(1.0, w_std, 1.0, 1.0, b_std, 1.0, "init", width)

    def multipliers(self, fan_in: Any) -> tuple[Any, Any, Any, Any]:
        """``(m_W, s_W, m_b, s_b)`` at ``fan_in``."""
        root = fan_in**0.5
        if self.fan_in == "multiplier":
            return self.w_multiplier / root, self.w_init, self.b_multiplier, self.b_init
        return self.w_multiplier, self.w_init / root, self.b_multiplier, self.b_init


# -- the kernel state ----------------------------------------------------------------------------------------
@pytree("q11", "q12", "q22", "t11", "t12", "t22", "g12", "same")
@dataclasses.dataclass(frozen=True)
class KernelState:
    """Kernels of row inputs (``B``) against column inputs (``N``) at one layer.

    ``q12`` is the NNGP of the pairs, ``(B, N, *S)`` on the spatial diagonal or ``(B, N, *S, *S)`` with
    ``full``; ``q11`` ``(B, *S[, *S])`` and ``q22`` ``(N, *S[, *S])`` are each input with itself. ``t..`` are the
    NTKs (``None`` when not computed). ``spatial`` is ``S``; vectors have ``S = ()``.

    ``g12`` (vectors in float32 through more than ``recursion.GAP_KINKS`` kinked duals, else ``None``) is the
    gap ``sqrt(q11 q22) - q12 = sqrt(q11 q22) (1 - rho)``, carried by the layers that can update it without
    cancellation (Dense, Elementwise, Residual): near-parallel pairs at depth have ``1 - rho`` far below float32's
    resolution of ``rho``, and the kinked duals need the angle ``theta = 2 arcsin(sqrt(g12 / (2 sqrt(q11 q22))))``
    to relative accuracy. Other linear maps drop it.

    ``same`` (``(B, N)`` booleans, or ``None``) marks pairs of identical inputs, whose ``q12`` and ``t12`` the
    recursion keeps bitwise equal to ``q11`` and ``t11`` after every layer (``recursion.pin_self_pairs``).
    """

    q11: Array
    q12: Array
    q22: Array
    t11: Array | None
    t12: Array | None
    t22: Array | None
    spatial: tuple[int, ...] = ()
    full: bool = False
    g12: Array | None = None
    same: Array | None = None

    @property
    def with_ntk(self) -> bool:
        return self.t12 is not None

    def replace(self, **changes: Any) -> KernelState:
        """A copy with ``changes``; a new ``q12`` without a new ``g12`` drops the gap (it would be stale)."""
        if "q12" in changes and "g12" not in changes:
            changes["g12"] = None
        return dataclasses.replace(self, **changes)

    def map(self, fn: Callable[[Array, int], Array], spatial: tuple[int, ...] | None = None,
            full: bool | None = None) -> KernelState:
        """Apply the same linear map ``fn(array, batch_ndim)`` to every kernel (NNGP and NTK alike)."""
        def f(a: Array | None, nb: int) -> Array | None:
            return None if a is None else fn(a, nb)

        return KernelState(f(self.q11, 1), f(self.q12, 2), f(self.q22, 1), f(self.t11, 1), f(self.t12, 2),
                           f(self.t22, 1), self.spatial if spatial is None else spatial,
                           self.full if full is None else full, same=self.same)

    def position_variances(self) -> tuple[Array, Array]:
        """Each input's variance at each position: ``(B, *S)`` and ``(N, *S)``."""
        if not self.full or not self.spatial:
            return self.q11, self.q22
        return spatial_diagonal(self.q11, 1, len(self.spatial)), spatial_diagonal(self.q22, 1, len(self.spatial))

    def variance_pairs(self) -> tuple[tuple[Array, Array], tuple[Array, Array], tuple[Array, Array]]:
        """For ``q11``, ``q12``, ``q22``: the two variances of every entry, in shapes that broadcast against it."""
        v1, v2 = self.position_variances()
        nd = len(self.spatial)
        if not self.full or not nd:
            return (v1, v1), (v1[:, None], v2[None]), (v2, v2)
        ones = (1,) * nd

        def left(v: Array, extra: int) -> Array:  # (b, *S) -> (b, [1,] *S, 1...)
            return v.reshape(v.shape[:1] + (1,) * extra + v.shape[1:] + ones)

        def right(v: Array, extra: int) -> Array:  # (b, *S) -> (b, [1,] 1..., *S)
            return v.reshape(v.shape[:1] + (1,) * extra + ones + v.shape[1:])

        pair12 = (left(v1, 1), jnp.expand_dims(right(v2, 0), 0))
        return (left(v1, 0), right(v1, 0)), pair12, (left(v2, 0), right(v2, 0))

    def to_diagonal(self) -> KernelState:
        """Drop the off-diagonal spatial pairs (when no later layer needs them)."""
        if not self.full:
            return self
        nd = len(self.spatial)
        return self.map(lambda a, nb: spatial_diagonal(a, nb, nd), full=False)

    def spatial_mean(self) -> KernelState:
        """The kernel of the mean over positions of the diagonal (``Flatten`` then ``Dense`` sees this)."""
        if not self.spatial:
            return self
        state = self.to_diagonal()
        nd = len(self.spatial)
        return state.map(lambda a, nb: jnp.mean(a, axis=tuple(range(nb, nb + nd))), spatial=(), full=False)


def spatial_diagonal(a: Array, batch_ndim: int, nd: int) -> Array:
    """``a[..., s, s']`` at ``s = s'`` for a full kernel with ``nd`` spatial dimensions."""
    letters = "abcdefgh"[:nd]
    batch = "xy"[:batch_ndim]
    return jnp.einsum(f"{batch}{letters}{letters}->{batch}{letters}", a)


# -- linear maps of kernels: convolution and pooling -----------------------------------------------------------
def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """XLA's "SAME" padding ``(low, high)`` of one spatial dimension (as ``lax.padtype_to_pads``)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def output_size(size: int, window: int, stride: int, padding: str) -> int:
    """Output length of a window of ``window`` sliding with ``stride`` over ``size`` positions."""
    if padding == "VALID":
        return (size - window) // stride + 1
    return -(-size // stride)


def pad_axis(a: Array, axis: int, low: int, high: int, circular: bool) -> Array:
    if low == 0 and high == 0:
        return a
    if circular:
        n = a.shape[axis]
        idx = (np.arange(-low, n + high) % n)
        return jnp.take(a, idx, axis=axis)
    widths = [(0, 0)] * a.ndim
    widths[axis] = (low, high)
    return jnp.pad(a, widths)


def window_sum_pairs(a: Array, batch_ndim: int, nd: int, window: tuple[int, ...], strides: tuple[int, ...],
                     padding: str) -> Array:
    """``sum_f a[..., s*st + f, s'*st + f]`` over window offsets ``f``, on a full kernel (both position axes
    shifted together): the kernel map of a convolution, before dividing by the window size."""
    for i in range(nd):
        ax1, ax2 = batch_ndim + i, batch_ndim + nd + i
        size, k, st = a.shape[ax1], window[i], strides[i]
        out = output_size(size, k, st, "VALID" if padding == "VALID" else "SAME")
        low, high = (0, 0) if padding == "VALID" else same_padding(size, k, st)
        circular = padding == "CIRCULAR"
        a = pad_axis(pad_axis(a, ax1, low, high, circular), ax2, low, high, circular)
        total = None
        for f in range(k):
            index = [slice(None)] * a.ndim
            index[ax1] = slice(f, f + st * (out - 1) + 1, st)
            index[ax2] = slice(f, f + st * (out - 1) + 1, st)
            piece = a[tuple(index)]
            total = piece if total is None else total + piece
        a = total
    return a


def window_sum(a: Array, axes: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
               padding: str) -> Array:
    """``sum_f a[..., s*st + f, ...]`` over window offsets on each of ``axes`` independently (pooling of one
    position axis, or a convolution of a diagonal kernel)."""
    for ax, k, st in zip(axes, window, strides, strict=True):
        low, high = (0, 0) if padding == "VALID" else same_padding(a.shape[ax], k, st)
        a = pad_axis(a, ax, low, high, padding == "CIRCULAR")
    dims = [1] * a.ndim
    steps = [1] * a.ndim
    for ax, k, st in zip(axes, window, strides, strict=True):
        dims[ax], steps[ax] = k, st
    return jax.lax.reduce_window(a, np.zeros((), a.dtype), jax.lax.add, tuple(dims), tuple(steps), "VALID")


# -- the layer interface -------------------------------------------------------------------------------------
class Layer:
    """Base of all layers. Subclasses are frozen dataclasses registered with :func:`pytree`.

    Override what applies: ``output_shape`` (validate and infer), ``output_stream`` (what the theory may assume
    about the output coordinates), ``needs_full`` (whether the input kernel must keep every pair of positions),
    ``coefficients`` (host-side numbers of the kernel map), ``kernel``, ``init`` and ``apply``.
    ``weight_layer`` is true for layers with trained parameters (Dense, Conv).
    """

    weight_layer: bool = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def output_shape(self, shape: Shape, where: str) -> Shape:
        return shape

    def output_stream(self, stream: Stream, where: str) -> Stream:
        return stream

    def needs_full(self, full_out: bool) -> bool:
        return full_out

    def coefficients(self, shape: Shape, gain: Any = 1.0) -> Any:
        """Numbers the kernel map needs (computed on the host when concrete); ``gain`` multiplies the output
        kernel (a residual branch's ``scale^2`` folded into its last weight layer)."""
        return ()

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        raise NotImplementedError(f"{self.name} has no kernel map")

    def init(self, key: Array, shape: Shape, out_channels: int, sample: Callable, dtype: Any,
             width: int | None = None) -> Any:
        """Sample the finite parameters (``None`` for a layer without any); ``shape`` is the input's, with
        ``width`` the hidden channel count; ``out_channels`` what a weight layer outputs."""
        return None

    def apply(self, params: Any, h: Array) -> Array:
        raise NotImplementedError(f"{self.name} has no finite map")


def describe_position(index: int, layer: Layer, total: int | None = None, prefix: str = "") -> str:
    """``"layer 3 of 9 (Conv)"``-style location used in error messages."""
    of = f" of {total}" if total is not None else ""
    return f"{prefix}layer {index + 1}{of} ({layer.name})"
