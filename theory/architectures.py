"""``MLP``, ``ResNet`` and ``Transformer``: constructors of layer programs with the fields the theories read.

Dense convention (neural-tangents' "ntk" parameterization, Jacot et al. 2018): a Dense layer with ``w_std``,
``b_std`` maps ``h -> w_std / sqrt(fan_in) * W h + b_std * b`` with ``W, b ~ N(0, 1)``.
``weight_scaling="standard"`` puts the scale into the initialisation, ``W ~ N(0, w_std^2 / fan_in)``,
``b ~ N(0, b_std^2)``: same NNGP, an NTK that depends on the hidden ``width`` (neural-tangents' "standard").
``b_std = 0`` means no bias. (The abc-parameterizations of ``theory.parameterizations`` are a different
thing: exponents of the width that a training run follows.)
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from functools import cached_property
from typing import Any

from theory.activations import Activation, get
from theory.layers.attention import SelfAttention
from theory.layers.base import Layer, WeightScaling, check_scale
from theory.layers.elementwise import Elementwise
from theory.layers.normalization import LayerNorm
from theory.layers.pooling import GlobalAvgPool
from theory.layers.program import Program
from theory.layers.residual import Residual
from theory.layers.weighted import Dense

WEIGHT_SCALINGS = ("ntk", "standard")
PARAMETERIZATIONS = WEIGHT_SCALINGS  # the old name of the choice, kept for compatibility
READOUTS = ("activation", "linear")


def _check_depth(depth: object) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise ValueError(f"depth must be a non-negative integer, got {depth!r} ({type(depth).__name__})")
    if depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth}")
    return int(depth)


def _weight_scaling(weight_scaling: str | None, parameterization: str | None, cls: str) -> str:
    if parameterization is not None:
        warnings.warn(f"{cls}(parameterization=...) is deprecated: the neural-tangents choice of where the weight "
                      f"scale sits is now {cls}(weight_scaling=...); 'parameterization' names the "
                      "abc-parameterizations of theory.parameterizations", DeprecationWarning, stacklevel=4)
        if weight_scaling is not None and weight_scaling != parameterization:
            raise ValueError(f"weight_scaling={weight_scaling!r} and parameterization={parameterization!r} disagree")
        weight_scaling = parameterization
    keyword = "weight_scaling" if parameterization is None else "parameterization"
    weight_scaling = "ntk" if weight_scaling is None else weight_scaling
    if weight_scaling not in WEIGHT_SCALINGS:
        raise ValueError(f"unknown {keyword} {weight_scaling!r}; choose one of {WEIGHT_SCALINGS} (neural-tangents' "
                         "choice of where the weight scale sits); for muP and other abc-parameterizations use "
                         f"theory.parameterize({cls.lower()}, 'mup', width=...)")
    return weight_scaling


def _check_width(width: object, weight_scaling: str, keyword: str) -> int | None:
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise ValueError(f"width must be a positive integer or None, got {width!r}")
        return int(width)
    if weight_scaling == "standard":
        raise ValueError(f"{keyword}='standard' has a width-dependent NTK: pass width=<hidden width> "
                         "(as neural-tangents' Dense(out_dim, parameterization='standard') does)")
    return None


class _Architecture(Program):
    """What MLP and ResNet share: the deprecated ``parameterization`` name and the Dense factory."""

    weight_scaling: str
    width: int | None

    @property
    def parameterization(self) -> str:
        """Deprecated alias of ``weight_scaling``."""
        warnings.warn("'.parameterization' of an MLP / ResNet is deprecated: use '.weight_scaling'",
                      DeprecationWarning, stacklevel=2)
        return self.weight_scaling

    def _dense(self, w_std: Any, b_std: Any) -> Dense:
        if self.weight_scaling == "standard":
            return Dense(w_std, b_std, WeightScaling.standard(w_std, b_std, self.width))
        return Dense(w_std, b_std)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(layer for repeats in self.segments() for unit in repeats for layer in unit)


@dataclasses.dataclass(frozen=True, init=False)
class MLP(_Architecture):
    """A fully connected network: ``depth`` hidden layers (Dense then ``activation``), then a Dense readout.

    As a program: ``Dense, (Elementwise(activation), Dense) x depth``, every Dense with ``w_std``, ``b_std``.
    Its kernels are the readout's; ``per_layer`` kernels are those after each Dense (``depth + 1``).
    """

    depth: int
    activation: Activation
    w_std: Any
    b_std: Any
    weight_scaling: str
    width: int | None

    def __init__(self, depth: int, activation: str | Activation = "relu", w_std: Any = 1.0, b_std: Any = 0.0,
                 weight_scaling: str | None = None, width: int | None = None, *,
                 parameterization: str | None = None) -> None:
        set_ = object.__setattr__  # frozen: fields are normalised once, here
        set_(self, "depth", _check_depth(depth))
        set_(self, "activation", get(activation))
        set_(self, "w_std", check_scale("w_std", w_std))
        set_(self, "b_std", check_scale("b_std", b_std))
        scaling = _weight_scaling(weight_scaling, parameterization, "MLP")
        set_(self, "weight_scaling", scaling)
        set_(self, "width", _check_width(width, scaling, "weight_scaling" if parameterization is None
                                         else "parameterization"))

    @cached_property
    def _segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        dense = self._dense(self.w_std, self.b_std)
        if self.depth == 0:
            return (((dense,),),)
        unit = (Elementwise(self.activation), dense)
        hidden = ((unit,) * (self.depth - 1),) if self.depth > 1 else ()
        return (((dense,),), *hidden, (unit,))

    def segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        return self._segments

    @property
    def n_recorded(self) -> int:
        return self.depth + 1

    def layer_name(self, index: int) -> str:
        """Human name of Dense layer ``index`` (0-based, as on axis 0 of ``per_layer`` kernels)."""
        if index == self.depth:
            return f"the readout (Dense layer {index + 1} of {self.n_layers})"
        return f"hidden layer {index + 1} of {self.depth}"

    def recorded_names(self) -> tuple[str, ...]:
        return (*(f"layer {i + 1}" for i in range(self.depth)), "output")


def _branch_multiplier(branch_scale: Any, depth: int, depth_exponent: Any) -> Any:
    """``branch_scale / depth**depth_exponent``; ``branch_scale`` at depth 0 (no branch to scale)."""
    if depth == 0:
        return branch_scale
    return branch_scale / depth**depth_exponent


@dataclasses.dataclass(frozen=True, init=False)
class ResNet(_Architecture):
    """A residual network whose branches are scaled with depth (Hayou & Yang 2023; Depth-muP).

    ``h_0 = Dense_stem(x)``, then ``depth`` blocks ``h_l = h_{l-1} + branch_scale / depth**depth_exponent *
    Dense(phi(h_{l-1}))`` (the branch Dense has ``w_std``, ``b_std``), then the readout ``Dense(phi(h_L))``
    (``readout="activation"``) or ``Dense(h_L)`` (``"linear"``). Stem and readout have weight std
    ``stem_w_std`` / ``readout_w_std`` and no bias. As a program: ``Dense, Residual(Elementwise, Dense) x depth,
    [Elementwise], Dense``. ``per_layer`` kernels: the stem, each block's output, the readout (``depth + 2``).
    """

    depth: int
    activation: Activation
    w_std: Any
    b_std: Any
    branch_scale: Any
    depth_exponent: Any
    readout: str
    stem_w_std: Any
    readout_w_std: Any
    weight_scaling: str
    width: int | None

    def __init__(self, depth: int, activation: str | Activation = "relu", w_std: Any = 1.0, b_std: Any = 0.0,
                 branch_scale: Any = 1.0, depth_exponent: Any = 0.5, readout: str = "activation",
                 stem_w_std: Any = 1.0, readout_w_std: Any = 1.0, weight_scaling: str | None = None,
                 width: int | None = None, *, parameterization: str | None = None) -> None:
        set_ = object.__setattr__
        set_(self, "depth", _check_depth(depth))
        set_(self, "activation", get(activation))
        for name, value in (("w_std", w_std), ("b_std", b_std), ("branch_scale", branch_scale),
                            ("depth_exponent", depth_exponent), ("stem_w_std", stem_w_std),
                            ("readout_w_std", readout_w_std)):
            set_(self, name, check_scale(name, value))
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choose one of {READOUTS}")
        set_(self, "readout", readout)
        scaling = _weight_scaling(weight_scaling, parameterization, "ResNet")
        set_(self, "weight_scaling", scaling)
        set_(self, "width", _check_width(width, scaling, "weight_scaling" if parameterization is None
                                         else "parameterization"))

    @property
    def branch_multiplier(self) -> Any:
        """``branch_scale / depth**depth_exponent`` (the factor in front of every branch)."""
        return _branch_multiplier(self.branch_scale, self.depth, self.depth_exponent)

    @property
    def stem(self) -> Dense:
        return self._dense(self.stem_w_std, 0.0)

    @property
    def block(self) -> Residual:
        """One residual block, ``Residual(Elementwise(phi), Dense(w_std, b_std), scale=branch_multiplier)``."""
        return Residual(Elementwise(self.activation), self._dense(self.w_std, self.b_std),
                        scale=self.branch_multiplier)

    @property
    def head(self) -> tuple[Layer, ...]:
        """What follows the blocks: ``[Elementwise(phi)], Dense(readout_w_std)``."""
        readout = self._dense(self.readout_w_std, 0.0)
        return (Elementwise(self.activation), readout) if self.readout == "activation" else (readout,)

    @cached_property
    def _segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        segments: list[tuple[tuple[Layer, ...], ...]] = [((self.stem,),)]
        if self.depth:
            block = self.block
            segments.append(((block,),) * self.depth)
        segments += [((layer,),) for layer in self.head]
        return tuple(segments)

    def segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        return self._segments

    @property
    def n_recorded(self) -> int:
        return self.depth + 2

    def layer_name(self, index: int) -> str:
        """Human name of layer ``index`` (0-based, as on axis 0 of ``per_layer`` kernels)."""
        if index == 0:
            return f"the stem (layer 1 of {self.n_layers})"
        if index == self.depth + 1:
            return f"the readout (layer {index + 1} of {self.n_layers})"
        return f"residual block {index} of {self.depth}"

    def recorded_names(self) -> tuple[str, ...]:
        return ("stem", *(f"block {i + 1}" for i in range(self.depth)), "output")


@dataclasses.dataclass(frozen=True, init=False)
class Transformer(Program):
    """A pre-LayerNorm transformer encoder on ``(batch, length, channels)`` inputs, as a layer program.

    ``h_0 = Dense_embed(x)`` at every position (``embed_w_std``, no bias), then ``depth`` blocks

        h <- h + s * SelfAttention(LayerNorm(h)),     h <- h + s * Dense(phi(Dense(LayerNorm(h)))),

    ``s = branch_scale / depth**depth_exponent`` (as ``ResNet``), then ``LayerNorm``, the mean over positions
    (``GlobalAvgPool``) and the readout ``Dense`` (``readout_w_std``, no bias). The attention layers are
    :class:`theory.layers.SelfAttention` with ``n_heads``, ``qk_std``, ``ov_std``, bias ``b_std``, ``attention``,
    ``linear_scaling``, ``positional`` / ``pos_std`` (their kernels: neural-tangents' ``GlobalSelfAttention``) and
    ``query`` ("tied", "gaussian" or "zero"; None: tied with linear scaling, as neural-tangents); the MLP's Dense
    layers have ``w_std``, ``b_std``. ``layernorm_affine``: every LayerNorm has a learned gain and bias
    (:class:`theory.layers.LayerNorm` ``affine=True``; CompleteP's LayerNorm rules act on them). ``per_layer``
    kernels: the embedding, each residual block (two per layer: attention, MLP) and the readout (``2 depth + 2``).
    """

    depth: int
    n_heads: int
    activation: Activation
    w_std: Any
    b_std: Any
    qk_std: Any
    ov_std: Any
    branch_scale: Any
    depth_exponent: Any
    embed_w_std: Any
    readout_w_std: Any
    attention: str
    linear_scaling: bool
    positional: str | None
    pos_std: Any
    query: str
    layernorm_affine: bool

    def __init__(self, depth: int, n_heads: int = 1, activation: str | Activation = "relu", w_std: Any = 1.0,
                 b_std: Any = 0.0, qk_std: Any = 1.0, ov_std: Any = 1.0, branch_scale: Any = 1.0,
                 depth_exponent: Any = 0.5, embed_w_std: Any = 1.0, readout_w_std: Any = 1.0,
                 attention: str = "softmax", linear_scaling: bool = True, positional: str | None = None,
                 pos_std: Any = 1.0, query: str | None = None, layernorm_affine: bool = False) -> None:
        set_ = object.__setattr__
        set_(self, "depth", _check_depth(depth))
        set_(self, "activation", get(activation))
        for name, value in (("w_std", w_std), ("b_std", b_std), ("branch_scale", branch_scale),
                            ("depth_exponent", depth_exponent), ("embed_w_std", embed_w_std),
                            ("readout_w_std", readout_w_std)):
            set_(self, name, check_scale(name, value, "Transformer: "))
        attn = SelfAttention(n_heads, qk_std, ov_std, self.b_std, linear_scaling, attention, positional, pos_std,
                             query=query)
        for name in ("n_heads", "qk_std", "ov_std", "attention", "linear_scaling", "positional", "pos_std", "query"):
            set_(self, name, getattr(attn, name))
        if not isinstance(layernorm_affine, bool):
            raise ValueError(f"Transformer: layernorm_affine must be True or False, got {layernorm_affine!r}")
        set_(self, "layernorm_affine", layernorm_affine)

    @property
    def branch_multiplier(self) -> Any:
        """``branch_scale / depth**depth_exponent`` (the factor in front of every branch)."""
        return _branch_multiplier(self.branch_scale, self.depth, self.depth_exponent)

    @property
    def blocks(self) -> tuple[Residual, Residual]:
        """One layer's two residual blocks: ``Residual(LayerNorm, SelfAttention)``, ``Residual(LayerNorm, Dense,
        Elementwise, Dense)``, each scaled by :attr:`branch_multiplier`."""
        s = self.branch_multiplier
        attn = SelfAttention(self.n_heads, self.qk_std, self.ov_std, self.b_std, self.linear_scaling, self.attention,
                             self.positional, self.pos_std, query=self.query)
        dense = Dense(self.w_std, self.b_std)
        norm = LayerNorm(affine=self.layernorm_affine)
        return (Residual(norm, attn, scale=s), Residual(norm, dense, Elementwise(self.activation), dense, scale=s))

    @cached_property
    def _segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        segments: list[tuple[tuple[Layer, ...], ...]] = [((Dense(self.embed_w_std, 0.0),),)]
        if self.depth:
            segments.append((self.blocks,) * self.depth)
        segments += [((LayerNorm(affine=self.layernorm_affine),),), ((GlobalAvgPool(),),),
                     ((Dense(self.readout_w_std, 0.0),),)]
        return tuple(segments)

    def segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        return self._segments

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(layer for repeats in self.segments() for unit in repeats for layer in unit)

    @property
    def n_recorded(self) -> int:
        return 2 * self.depth + 2

    def recorded_names(self) -> tuple[str, ...]:
        names = [f"block {i + 1} {part}" for i in range(self.depth) for part in ("attention", "mlp")]
        return ("embedding", *names, "output")


Architecture = MLP | ResNet


def as_mlp(net: Program) -> MLP:
    """``net`` as a :class:`MLP` when it is one: ``Dense, (Elementwise(phi), Dense) x L`` with one activation, one
    ``w_std``, one ``b_std`` and neural-tangents' NTK scaling everywhere. For theories written for MLPs (the 1/n
    corrections); anything else raises ``ValueError`` saying which layer differs."""
    if isinstance(net, MLP):
        return net
    if not isinstance(net, Program):
        raise ValueError(f"expected a theory.MLP or a layer program with its structure, got {net!r}")
    layers = net.layers
    first = layers[0]
    if not (isinstance(first, Dense) and first.scaling is None) or len(layers) % 2 == 0:
        raise ValueError(f"{net!r} is not an MLP: it must be Dense, (Elementwise, Dense) x depth with "
                         "neural-tangents' NTK scaling")
    act = None
    for i in range(1, len(layers), 2):
        e, d = layers[i], layers[i + 1]
        ok = (isinstance(e, Elementwise) and isinstance(d, Dense) and d.scaling is None
              and (act is None or e.activation == act) and d.w_std == first.w_std and d.b_std == first.b_std)
        if not ok:
            raise ValueError(f"{net!r} is not an MLP of identical layers: layers {i + 1}-{i + 2} are "
                             f"{e.name}, {d.name}; the theory needs Dense, (Elementwise, Dense) x depth with one "
                             "activation, w_std and b_std")
        act = e.activation
    return MLP((len(layers) - 1) // 2, act or "identity", first.w_std, first.b_std)
