"""Architecture descriptions: the single source of truth handed to theory and experiments.

Dense convention (neural-tangents' "ntk" parameterization, Jacot et al. 2018): a Dense layer
with ``w_std``, ``b_std`` maps ``h -> w_std / sqrt(fan_in) * W h + b_std * b`` with
``W, b ~ N(0, 1)``. ``parameterization="standard"`` puts the scale into the initialisation,
``W ~ N(0, w_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``, ``h -> W h + b``: same NNGP, but an NTK
that depends on the layer widths (``width``), as in neural-tangents. ``b_std = 0`` means the
layer has no bias at all (in both parameterizations).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from theory.activations import Activation, get

PARAMETERIZATIONS = ("ntk", "standard")
READOUTS = ("activation", "linear")


def _check_depth(depth: object) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise ValueError(f"depth must be a non-negative integer, got {depth!r} ({type(depth).__name__})")
    if depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth}")
    return int(depth)


def _check_scale(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}; it is a standard deviation or scale")
    return value


def _check_common(arch: MLP | ResNet) -> None:
    set_ = object.__setattr__  # frozen dataclasses normalise their fields once, here
    set_(arch, "depth", _check_depth(arch.depth))
    set_(arch, "activation", get(arch.activation))
    for name in ("w_std", "b_std"):
        set_(arch, name, _check_scale(name, getattr(arch, name)))
    if arch.parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {arch.parameterization!r}; choose one of {PARAMETERIZATIONS}"
        )
    width = arch.width
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise ValueError(f"width must be a positive integer or None, got {width!r}")
        set_(arch, "width", int(width))
    elif arch.parameterization == "standard":
        raise ValueError(
            "parameterization='standard' has a width-dependent NTK: pass width=<hidden width> "
            "(as neural-tangents' Dense(out_dim, parameterization='standard') does)"
        )


@dataclass(frozen=True)
class MLP:
    """A fully connected network: ``depth`` hidden layers (Dense then ``activation``), then a
    Dense readout with one output. Every Dense (first, hidden, readout) has ``w_std``, ``b_std``.

    The kernels of an MLP are those of its readout; ``per_layer`` kernels are those of the
    pre-activations after each Dense layer (``depth + 1`` of them, the last is the readout).
    ``width`` is the hidden width; only the standard parameterization's NTK depends on it.
    """

    depth: int
    activation: str | Activation = "relu"
    w_std: float = 1.0
    b_std: float = 0.0
    parameterization: str = "ntk"
    width: int | None = None

    def __post_init__(self) -> None:
        _check_common(self)

    @property
    def n_layers(self) -> int:
        """Number of Dense layers, readout included."""
        return self.depth + 1

    def layer_name(self, index: int) -> str:
        """Human name of Dense layer ``index`` (0-based, as on axis 0 of ``per_layer`` kernels)."""
        if index == self.depth:
            return f"the readout (Dense layer {index + 1} of {self.n_layers})"
        return f"hidden layer {index + 1} of {self.depth}"


@dataclass(frozen=True)
class ResNet:
    """A residual network whose branches are scaled with depth (Hayou & Yang 2023; Depth-muP).

    ``h_0 = Dense_stem(x)``, then ``depth`` blocks
    ``h_l = h_{l-1} + branch_scale / depth**depth_exponent * Dense(phi(h_{l-1}))`` (the branch
    Dense has ``w_std``, ``b_std``), then the readout ``Dense(phi(h_L))`` (``readout="activation"``)
    or ``Dense(h_L)`` (``readout="linear"``) with one output. The stem and the readout have
    weight std ``stem_w_std`` / ``readout_w_std`` and no bias. All weights are trainable and enter
    the NTK. ``per_layer`` kernels: the stem, each block's output, the readout (``depth + 2``).
    ``depth_exponent = 1/2`` is the scaling whose large-depth limit is an ODE in ``t = l / L``.
    """

    depth: int
    activation: str | Activation = "relu"
    w_std: float = 1.0
    b_std: float = 0.0
    branch_scale: float = 1.0
    depth_exponent: float = 0.5
    readout: str = "activation"
    stem_w_std: float = 1.0
    readout_w_std: float = 1.0
    parameterization: str = "ntk"
    width: int | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        for name in ("branch_scale", "depth_exponent", "stem_w_std", "readout_w_std"):
            object.__setattr__(self, name, _check_scale(name, getattr(self, name)))
        if self.readout not in READOUTS:
            raise ValueError(f"unknown readout {self.readout!r}; choose one of {READOUTS}")

    @property
    def n_layers(self) -> int:
        """Stem, blocks and readout."""
        return self.depth + 2

    @property
    def branch_multiplier(self) -> float:
        """``branch_scale / depth**depth_exponent`` (the factor in front of every branch)."""
        if self.depth == 0:
            return self.branch_scale
        return self.branch_scale / self.depth**self.depth_exponent

    def layer_name(self, index: int) -> str:
        """Human name of layer ``index`` (0-based, as on axis 0 of ``per_layer`` kernels)."""
        if index == 0:
            return f"the stem (layer 1 of {self.n_layers})"
        if index == self.depth + 1:
            return f"the readout (layer {index + 1} of {self.n_layers})"
        return f"residual block {index} of {self.depth}"


Architecture = MLP | ResNet
