r"""``Residual(*branch, scale)``: ``h -> h + scale * branch(h)``; and ``Identity()``.

When the branch contains a Dense or Conv on its own path, its output is independent of the skip path at
infinite width (fresh weights; their cross-covariance is ``O(1/sqrt(width))``), and so are the two paths'
parameter gradients, so the kernels add (neural-tangents' ``FanOut``/``FanInSum``; Hayou & Yang 2023):

    q' = q + scale^2 q_branch,     Theta' = Theta + scale^2 Theta_branch,

provided one of the two sums is centred (zero mean), so that the cross term ``E[h] E[branch]`` vanishes.
A branch without a weight layer, or two non-centred paths, is rejected. A ResNet block of
``theory.ResNet`` is ``Residual(Elementwise(phi), Dense(w_std, b_std), scale=branch_scale / L**alpha)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from theory import gap
from theory.layers.base import KernelState, Layer, Stream, check_scale, pytree

Array = jax.Array


@pytree()
@dataclasses.dataclass(frozen=True)
class Identity(Layer):
    """``h -> h``."""

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        return k

    def apply(self, params: Any, h: Array) -> Array:
        return h


@pytree("branch", "scale")
@dataclasses.dataclass(frozen=True, init=False)
class Residual(Layer):
    """``h + scale * branch(h)``; the branch is a sequence of layers that keeps the shape of ``h``."""

    branch: tuple[Layer, ...]
    scale: Any = 1.0

    def __init__(self, *branch: Layer, scale: Any = 1.0) -> None:
        if not branch:
            raise ValueError("Residual needs at least one layer in its branch, e.g. Residual(Elementwise('relu'), "
                             "Dense()); the identity branch h + scale * h is not a residual block")
        flat: list[Layer] = []
        for layer in branch:
            inner = getattr(layer, "layers", None)
            if inner is not None and not isinstance(layer, Layer):
                flat.extend(inner)  # a program given as a branch: its layers
            elif isinstance(layer, Layer):
                flat.append(layer)
            else:
                raise ValueError(f"Residual: the branch must consist of layers (theory.layers.*), got {layer!r}")
        object.__setattr__(self, "branch", tuple(flat))
        object.__setattr__(self, "scale", check_scale("scale", scale, "Residual: "))

    @property
    def name(self) -> str:
        return f"Residual({', '.join(layer.name for layer in self.branch)})"

    def apply(self, params: Any, h: Array) -> Array:
        """``params``: one entry per branch layer (``None`` for layers without parameters)."""
        out = h
        for layer, p in zip(self.branch, params, strict=True):
            out = layer.apply(p, out)
        return h + self.scale * out

    def combine(self, skip: KernelState, branch: KernelState, gain: Any) -> KernelState:
        """``skip + gain * branch`` for every kernel (``gain = scale^2``, or 1 when it was folded into the
        branch's last weight layer)."""
        def add(a: Array | None, b: Array | None) -> Array | None:
            return None if a is None else a + gain * b

        g12 = None
        if skip.g12 is not None and branch.g12 is not None:
            g12 = gap.total(skip.q11[:, None], skip.q22[None], skip.g12, gain * branch.q11[:, None],
                            gain * branch.q22[None], gain * branch.g12)
        return skip.replace(q11=add(skip.q11, branch.q11), q12=add(skip.q12, branch.q12),
                            q22=add(skip.q22, branch.q22), t11=add(skip.t11, branch.t11),
                            t12=add(skip.t12, branch.t12), t22=add(skip.t22, branch.t22), g12=g12)

    def sum_stream(self, skip: Stream, branch: Stream, has_weights: bool, where: str) -> Stream:
        if not has_weights:
            raise ValueError(f"{where}: the branch of {self.name} has no Dense or Conv on its path, so it is not "
                             "independent of the skip path and the kernels do not add; put a weight layer in it")
        if not (skip.centred or branch.centred):
            raise ValueError(f"{where}: neither the skip path nor the branch of {self.name} is centred (both end in "
                             "an activation, or the skip is the raw input and the branch ends in an activation), so "
                             "the sum's kernel has a cross term of their means; end the branch with a Dense or Conv")
        return Stream(gaussian=skip.gaussian and branch.gaussian, centred=skip.centred and branch.centred,
                      deterministic=False)


__all__ = ["Identity", "Residual"]
