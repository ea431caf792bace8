r"""``LayerNorm()``: normalise every position's channels to zero mean and unit variance; ``affine=True`` adds a
learned per-channel gain and bias.

Finite layer (neural-tangents' ``stax.LayerNorm(axis=-1)``): ``h -> (h - mean_c h) / sqrt(var_c h + eps)``.
With infinitely many channels the channel mean of a centred Gaussian input vanishes and its channel variance
is ``q(x, x)`` at that position, so (Xiao et al. 2020; neural-tangents)

    q'(x, x') = q(x, x') / sqrt((q(x, x) + eps) (q(x', x') + eps)),    Theta' = Theta / sqrt(...)

(the Jacobian's projections onto the mean and the input direction contribute ``O(1 / width)``). The input
must be Gaussian (the output of a Dense or Conv), or the raw input, which is normalised exactly; a kernel is
invariant to rescaling an input when a LayerNorm reads it with ``eps`` negligible.

Learned affine (``affine=True``; PyTorch's ``elementwise_affine`` with bias): ``y = m_g g * hat(h) + m_b beta``
per channel, ``g`` starting at ``g_0`` and ``beta`` at 0 (deterministic), learning rates ``eta lr_g``,
``eta lr_b`` (a :class:`~theory.layers.WeightScaling` whose ``w_multiplier, w_init, w_lr`` are ``m_g, g_0, lr_g``
and ``b_multiplier, b_lr`` are ``m_b, lr_b``; neural-tangents has no such layer). At init the output is
``m_g g_0 hat(h)``, so with ``v_g = (m_g g_0)^2``, ``c_g = lr_g m_g^2``, ``c_b = lr_b m_b^2`` (derivation:
docs/layer_program.md's LayerNorm section):

    q' = v_g hat(q),    Theta' = v_g hat(Theta) + c_g hat(q) + c_b,

``hat(.)`` the maps above; the gain's own tangent at channel ``i`` is ``m_g^2 hat(h)_i(x) hat(h)_i(x')``, whose
mean over channels is ``hat(q)``, the bias' is ``m_b^2``, both per channel like a Dense bias. Default ``g_0 = m_g =
m_b = lr = 1``: the NNGP is the plain LayerNorm's, the NTK gains ``hat(q) + 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from theory.layers.base import KernelState, Layer, Shape, Stream, WeightScaling, pytree

Array = jax.Array


class NormWeights(NamedTuple):
    """An affine LayerNorm's trained parameters: ``gain`` and ``b`` (the bias), ``(channels,)`` each."""

    gain: Array
    b: Array


@pytree("scaling")
@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalise over the channel (last) axis; ``eps`` as neural-tangents' default.

    Args:
        eps: added to the variance.
        affine: a learned per-channel gain (initial value ``scaling.w_init``, 1 by default) and bias (initial 0);
            off by default (neural-tangents' LayerNorm).
        scaling: the affine parameters' :class:`~theory.layers.WeightScaling` (module docstring); None: gain and
            bias multipliers 1, gain 1, learning-rate factors 1. Set by ``theory.parameterize``.
    """

    eps: float = 1e-12
    affine: bool = False
    scaling: WeightScaling | None = None

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < float("inf")):
            raise ValueError(f"LayerNorm: eps must be a finite number >= 0, got {eps!r}")
        object.__setattr__(self, "eps", float(eps))
        if not isinstance(self.affine, bool):
            raise ValueError(f"LayerNorm: affine must be True or False, got {self.affine!r}")
        if self.scaling is not None:
            if not isinstance(self.scaling, WeightScaling):
                raise ValueError(f"LayerNorm: scaling must be a WeightScaling or None, got {self.scaling!r}")
            if not self.affine:
                raise ValueError("LayerNorm: a scaling sets the gain and bias of an affine LayerNorm; pass "
                                 "affine=True or drop the scaling")

    @property
    def weight_layer(self) -> bool:  # type: ignore[override]
        """An affine LayerNorm has trained parameters (its gain and bias)."""
        return self.affine

    @property
    def independent_branch(self) -> bool:
        """Its output is a function of its input, not a fresh Gaussian: it does not make a residual branch
        independent of the skip path (``Residual`` needs a Dense, Conv or SelfAttention for that)."""
        return False

    @property
    def weight_scaling(self) -> WeightScaling:
        """The affine parameters' scaling in force (``w_*``: gain, ``b_*``: bias)."""
        return self.scaling if self.scaling is not None else WeightScaling(1.0, 1.0, 1.0, 1.0, 0.0, 1.0)

    @property
    def name(self) -> str:
        return "LayerNorm(affine)" if self.affine else "LayerNorm"

    def coefficients(self, shape: Shape, gain: Any = 1.0) -> tuple[Any, ...]:
        """``(v_g, c_g, c_b)`` times ``gain`` (module docstring); ``()`` without the affine."""
        if not self.affine:
            return ()
        s = self.weight_scaling
        return (gain * (s.w_multiplier * s.w_init) ** 2, gain * s.w_lr * s.w_multiplier**2,
                gain * s.b_lr * s.b_multiplier**2)

    def init(self, key: Array, shape: Shape, out_channels: int, sample: Any, dtype: Any,
             width: int | None = None) -> NormWeights | None:
        """Gain ``g_0`` and bias 0 at every channel (deterministic), or ``None`` without the affine."""
        if not self.affine:
            return None
        c = shape.fan(width)
        return NormWeights(jnp.full((c,), self.weight_scaling.w_init, dtype), jnp.zeros((c,), dtype))

    def learning_rates(self, params: NormWeights) -> NormWeights:
        """The gain's and the bias' learning-rate factors."""
        s = self.weight_scaling
        return NormWeights(s.w_lr, s.b_lr)

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
        q = (k.q11 / n11, k.q12 / n12, k.q22 / n22)
        t = (k.t11 / n11, k.t12 / n12, k.t22 / n22) if k.with_ntk else None
        if self.affine:
            v_g, c_g, c_b = coefficients
            if t is not None:
                t = tuple(v_g * ti + c_g * qi + c_b for ti, qi in zip(t, q, strict=True))
            q = tuple(v_g * qi for qi in q)
        out = k.replace(q11=q[0], q12=q[1], q22=q[2])
        if t is None:
            return out
        return out.replace(t11=t[0], t12=t[1], t22=t[2])

    def apply(self, params: Any, h: Array) -> Array:
        mean = jnp.mean(h, axis=-1, keepdims=True)
        centred = h - mean
        var = jnp.mean(centred**2, axis=-1, keepdims=True)
        out = centred / jnp.sqrt(var + self.eps)
        if not self.affine:
            return out
        if not isinstance(params, NormWeights) or params.gain.shape[-1] != h.shape[-1]:
            raise ValueError(f"LayerNorm(affine) got parameters {type(params).__name__} for "
                             f"{getattr(getattr(params, 'gain', None), 'shape', None)} channels but its input has "
                             f"{h.shape[-1]}: call networks.init with this program")
        s = self.weight_scaling
        return s.w_multiplier * params.gain * out + s.b_multiplier * params.b


__all__ = ["LayerNorm", "NormWeights"]
