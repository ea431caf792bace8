r"""``Elementwise(activation)``: ``phi`` applied to every coordinate (neural-tangents' ``stax.Relu``, ``Erf``, ...).

Kernel map (Neal 1996; Lee et al. 2018; Jacot et al. 2018): for a centred Gaussian input with kernel ``q``,

    q'(x, x')     = E[phi(u) phi(v)],                    (u, v) ~ N(0, [[q(x, x), q(x, x')], [q(x, x'), q(x', x')]]),
    Theta'(x, x') = E[phi'(u) phi'(v)] Theta(x, x'),

at every pair of positions (the variances are those of each input at its own position). The expectations
are the activation's dual (:mod:`theory.activations`). The input must be Gaussian: the output of a Dense or
Conv (possibly pooled, normalised or summed with another Gaussian); anything else is rejected, as the
duals would not describe it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from theory import gap
from theory.activations import Activation, get
from theory.hermite import series_parts
from theory.layers.base import KernelState, Layer, Stream, pytree

Array = jax.Array


@pytree()
@dataclasses.dataclass(frozen=True)
class Elementwise(Layer):
    """``h -> phi(h)`` for a registered activation name or a :class:`theory.Activation`."""

    activation: Activation | str = "relu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "activation", get(self.activation))

    @property
    def name(self) -> str:
        return f"Elementwise({self.activation.name})"

    @property
    def linear(self) -> bool:
        return self.activation.name == "identity"

    def output_stream(self, stream: Stream, where: str) -> Stream:
        if stream.deterministic or self.linear:
            return stream
        if not stream.gaussian:
            raise ValueError(
                f"{where}: the input of {self.name} is not a Gaussian process in the infinite-width limit (it is "
                "the output of an activation, a Flatten, or a sum with one), so its kernel is not given by the "
                "activation's Gaussian dual; put a Dense or Conv before it (neural-tangents rejects this too)")
        return Stream(gaussian=False, centred=False, deterministic=False)

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        act, with_ntk = self.activation, k.with_ntk
        (a11, b11), (a12, b12), (a22, b22) = k.variance_pairs()
        q12 = k.q12 if k.g12 is None else gap.pair(a12, b12, k.g12)
        g12 = None
        if act.series is not None and not (k.full and k.spatial):
            # One set of Hermite coefficients per input serves its own variance and all its pairs.
            (e11, d11), (e12, d12), (e22, d22) = series_parts(act.fn, k.q11, q12, k.q22, act.series, with_ntk)
        else:
            e11, d11 = act.expectations(a11, k.q11, b11, with_ntk)
            e22, d22 = act.expectations(a22, k.q22, b22, with_ntk)
            if k.g12 is not None and act.gap_dual is not None:  # vectors in float32 (theory.gap)
                d12, g12 = act.gap_dual(a12, k.q12, b12, k.g12)  # the NNGP follows from the gap below
            else:
                e12, d12 = act.expectations(a12, q12, b12, with_ntk)
        if k.g12 is not None:
            if act.gap_dual is None:  # a smooth dual (bounded slope at rho = 1): the gap passes through it
                g12 = gap.initial(e11[:, None], e12, e22[None])
            # q12 from the gap: rounding does not accumulate over depth, and an input with itself stays at
            # correlation 1 exactly.
            e12 = gap.pair(e11[:, None], e22[None], g12)
        if not with_ntk:
            return k.replace(q11=e11, q12=e12, q22=e22, g12=g12)
        return k.replace(q11=e11, q12=e12, q22=e22, t11=d11 * k.t11, t12=d12 * k.t12, t22=d22 * k.t22, g12=g12)

    def apply(self, params: Any, h: Array) -> Array:
        return self.activation.fn(h)


__all__ = ["Elementwise"]
