r"""abc-parameterizations across width (Yang & Hu 2021, TP IV) and depth (Yang, Yu, Zhu & Hayou 2023, TP VI).

Width (TP IV, arXiv 2011.14522, Sec. 3): ``W^l = n^{-a_l} w^l``, ``w^l_{ij} ~ N(0, sigma^2 n^{-2 b_l})``, learning
rate ``eta n^{-c_l}`` per layer group: input ``W^1`` (``n x d``), hidden ``W^2 .. W^L`` (``n x n``), output
``W^{L+1}`` (``1 x n``); ``n`` the width, ``d`` and the output dimension fixed. Biases take the input layer's
exponents (TP V, arXiv 2203.03466, Table 3). ``sigma`` is ``w_std / sqrt(d)`` (input), ``w_std`` (hidden, output),
``b_std`` (biases), so SP and NTK networks have the NNGP of ``theory.kernels``. Feature-update exponent ``r``
(features move by ``Theta(n^{-r})``), with ``s = min(a_{L+1} + b_{L+1}, 2 a_{L+1} + c_{L+1})``:

    SGD (TP IV, Thm 3.3):         r = s - 1 + min(2 a_1 + c_1 + 1,  min_{2 <= l <= L} (2 a_l + c_l))
    Adam (TP IVb, arXiv 2308.01814): r = min(a_1 + c_1,  min_{2 <= l <= L} (a_l + c_l - 1))

Stable iff ``a_1 + b_1 = 0``, ``a_l + b_l = 1/2`` (hidden), ``a_{L+1} + b_{L+1} >= 1/2``, ``r >= 0``,
``a_{L+1} + b_{L+1} + r >= 1`` and ``2 a_{L+1} + c_{L+1} >= 1`` (Adam: ``a_{L+1} + c_{L+1} >= 1``); nontrivial iff
one of the last two is an equality; feature learning iff stable and ``r = 0``; kernel regime iff stable, nontrivial
and ``r > 0``.

Depth (TP VI, arXiv 2310.02244; Bordelon et al. 2023, arXiv 2309.16620): one-layer blocks
``h_l = h_{l-1} + a L^{-alpha} W_l phi(h_{l-1})`` (``theory.ResNet``: ``branch_scale = a``,
``depth_exponent = alpha``) whose weights move by ``Theta(L^{-gamma})``: block learning rate ``eta L^{-gamma}``
(Adam), ``eta L^{alpha - gamma}`` (SGD). Depth-muP is ``alpha = gamma = 1/2``. Exponents are compared to ``1e-9``.

The depth family ``alpha in [1/2, 1]``, ``gamma = 1 - alpha`` (:func:`depth_family`; Dey et al. 2025, "Don't be
lazy: CompleteP enables compute-efficient deep transformers", arXiv 2505.01618, Table 1, and its reference code,
EleutherAI nanoGPT-mup ``completep``; Bordelon et al. 2023/2024 for SGD), with ``L`` the number of *layers*
(:func:`residual_depth`: a transformer layer's attention and MLP branches share one ``L``), for every parameter
inside a residual branch (weights, biases, and LayerNorm gains/biases where a LayerNorm has them):

    branch multiplier  L^-alpha                        (TP VI, Bordelon et al., CompleteP)
    Adam learning rate eta L^(alpha - 1)               (CompleteP Table 1; = TP VI's eta L^-gamma)
    SGD learning rate  eta L^(2 alpha - 1)             (the gradient carries L^-alpha; Bordelon et al. 2023, TP VI)
    Adam epsilon       eps L^-alpha                    (CompleteP: eps follows the gradient's size, L^-alpha)
    weight decay       lambda / (learning-rate factor) (CompleteP: eta * lambda, the decoupled decay per step, fixed)

LayerNorm gains and biases (``LayerNorm(affine=True)``; vector-like in width: the biases' abc exponents, TP V
Table 3) inside the blocks get the same factors as the weights there: learning rate ``eta L^(alpha - 1)`` (Adam),
epsilon ``eps L^-alpha``; the final LayerNorm, outside the blocks, none. Source: the CompleteP reference code
(nanoGPT-mup ``completep``, ``configure_optimizers``: ``hidden_ln_params`` and hidden biases ``lr_scale =
depth_multiplier^(alpha - 1)``, ``final_ln_params`` 1, one global ``adam_eps / (width_mult L^alpha)``). Where it
differs from this module: the reference code gives LayerNorm parameters and biases no weight decay (``lambda = 0``
for them; here the weight decay, if any, applies to every parameter with the factor above), and its hidden weights'
decay is ``lambda / width-lr-factor`` with PyTorch's AdamW step ``lr * lambda``, so its decay per step carries
``L^(alpha - 1)``, whereas this module keeps ``eta lambda`` depth-independent (our reading of CompleteP Table 1).

``complete_p()`` is ``alpha = 1``, ``depth_mup()`` ``alpha = 1/2``. Where the papers disagree: TP VI proves, for
one-layer blocks, that ``alpha = 1/2`` is the unique depth limit with maximal feature diversity and calls
``alpha + gamma = 1, alpha > 1/2`` "redundant" (``classify_depth(1, 0).phase``); CompleteP (and Bordelon et al.
2024 for multi-head transformers) argue that with two or more layers per block ``alpha = 1/2`` makes every block
lazy (its change is its linearisation as ``L -> inf``) and only ``alpha = 1`` keeps "complete" feature learning.
Both are implemented; the classification stays TP VI's.

Derivation and notes: docs/abc_parameterizations.md (the members' table, the abc-symmetry, the depth phase diagram).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from theory.layers import (
    AttentionScaling,
    LayerNorm,
    Program,
    Residual,
    SelfAttention,
    Serial,
    WeightLayer,
    WeightScaling,
    weight_layers,
)

OPTIMIZERS = ("sgd", "adam")
GROUPS = ("input", "hidden", "output")
_TOL = 1e-9


def _check_optimizer(optimizer: object) -> str:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: this module has rules for {OPTIMIZERS} only "
                         "(TP IV for SGD, TP V Table 3 / TP IVb for Adam)")
    return optimizer  # type: ignore[return-value]


def _check_exponent(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real exponent, got {value!r}")
    return float(value)


def _eq(x: float, y: float) -> bool:
    return abs(x - y) < _TOL


def _ge(x: float, y: float) -> bool:
    return x > y - _TOL


@dataclass(frozen=True)
class LayerExponents:
    """One layer's exponents: multiplier ``n^-a``, init std ``sigma n^-b``, learning rate ``eta n^-c`` (TP IV)."""

    a: float
    b: float
    c: float

    def __post_init__(self) -> None:
        for name in ("a", "b", "c"):
            object.__setattr__(self, name, _check_exponent(name, getattr(self, name)))


@dataclass(frozen=True)
class LayerScale:
    """The concrete numbers for one layer at a given width: forward ``W = multiplier * w``,
    ``w ~ N(0, init_std^2)``, and the learning rate of ``w`` is ``base_lr * lr_scale``."""

    multiplier: float
    init_std: float
    lr_scale: float


@dataclass(frozen=True)
class Classification:
    """TP IV's verdict on an abc-parameterization (see the module docstring for the conditions).

    ``r`` is the feature-update exponent (features move by ``n^-r``); ``failed`` lists, as text, every stability
    condition that does not hold (empty when stable).
    """

    stable: bool
    nontrivial: bool
    feature_learning: bool
    kernel_regime: bool
    r: float
    failed: tuple[str, ...]

    @property
    def regime(self) -> str:
        """One word: "unstable", "trivial", "feature learning" or "kernel"."""
        if not self.stable:
            return "unstable"
        if self.feature_learning:
            return "feature learning"
        return "kernel" if self.kernel_regime else "trivial"


@dataclass(frozen=True)
class AbcParameterization:
    """An abc-parameterization (TP IV): exponents of the input, hidden and output layers, for one optimizer.

    ``hidden`` is ``None`` for a member defined only for one hidden layer (TP IV's mean-field); using it on a
    network with ``n x n`` layers raises. Construct named members with :func:`get` (``"standard"``, ``"ntk"``,
    ``"mean_field"``, ``"mup"``) or give the exponents directly.
    """

    name: str
    input: LayerExponents
    hidden: LayerExponents | None
    output: LayerExponents
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        _check_optimizer(self.optimizer)
        for group in GROUPS:
            value = getattr(self, group)
            if value is None and group == "hidden":
                continue
            if not isinstance(value, LayerExponents):
                raise ValueError(f"{group} must be a LayerExponents(a, b, c), got {value!r}")

    def exponents(self, group: str, n_hidden: int = 1) -> LayerExponents:
        """The exponents of ``group`` ("input", "hidden", "output"); ``n_hidden`` is the number of ``n x n`` layers."""
        if group not in GROUPS:
            raise ValueError(f"unknown layer group {group!r}; choose one of {GROUPS}")
        value = getattr(self, group)
        if value is None:
            raise ValueError(f"the {self.name!r} parameterization is defined for one hidden layer only (no n x n "
                             f"layers), but the network has {n_hidden}; use 'mup', its feature-learning extension "
                             "to any depth (TP IV, Sec. 5)")
        return value

    def layer_scale(self, group: str, width: int, sigma: float, n_hidden: int = 1) -> LayerScale:
        """``(multiplier n^-a, init std sigma n^-b, learning-rate factor n^-c)`` of ``group`` at width ``n``.

        ``sigma`` is the architecture's O(1) constant (``w_std / sqrt(d)`` for the input layer, ``w_std`` otherwise,
        ``b_std`` for biases), put in the initialisation as TP IV does.
        """
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        e = self.exponents(group, n_hidden)
        n = float(width)
        return LayerScale(n ** -e.a, sigma * n ** -e.b, n ** -e.c)

    def classify(self, depth: int = 2) -> Classification:
        """Classify for an MLP with ``depth`` hidden layers (``depth - 1`` ``n x n`` layers); see :func:`classify`."""
        return classify(self, depth)

    def first_step_exponents(self, depth: int = 2) -> dict[str, float]:
        """Predicted width exponents of the coordinate size of each layer's change after ONE step from init.

        For an MLP with ``depth`` hidden layers: ``{"input": e_1, "hidden": e_L, "output": e_f}`` with
        ``RMS(Delta h) ~ n^e`` (``"hidden"`` is the last hidden layer, absent when ``depth = 1``). At the first step
        the output weights still have their initial size, so the backward signal reaching the features has
        coordinates ``n^-(a_{L+1} + b_{L+1})`` (later steps use ``s`` of the module docstring). SGD:
        ``e_1 = -(2 a_1 + c_1 + s_1)``, ``e_l = max(e_{l-1}, 1 - 2 a_l - c_l - s_1)``,
        ``e_f = max(1 - 2 a_{L+1} - c_{L+1}, 1 - a_{L+1} - b_{L+1} + e_L)``; Adam: ``e_1 = -(a_1 + c_1)``,
        ``e_l = max(e_{l-1}, 1 - a_l - c_l)``, ``e_f = max(1 - a_{L+1} - c_{L+1}, 1 - a_{L+1} - b_{L+1} + e_L)``
        (the last term: the output weights are correlated with the feature change they caused). Examples (SGD):
        SP gives ``(-1/2, +1/2, +1)``, NTK ``(-1/2, -1/2, 0)``, muP ``(0, 0, 0)``.
        """
        depth = _check_depth(depth)
        n_hidden = depth - 1
        i, o = self.exponents("input", n_hidden), self.exponents("output", n_hidden)
        s1 = o.a + o.b
        sgd = self.optimizer == "sgd"
        e = -(2 * i.a + i.c + s1) if sgd else -(i.a + i.c)
        out = {"input": e}
        if n_hidden:
            h = self.exponents("hidden", n_hidden)
            e = max(e, (1 - 2 * h.a - h.c - s1) if sgd else (1 - h.a - h.c))
            out["hidden"] = e
        own = (1 - 2 * o.a - o.c) if sgd else (1 - o.a - o.c)
        out["output"] = max(own, 1 - o.a - o.b + e)
        return {k: v + 0.0 for k, v in out.items()}  # + 0.0: no "-0.0" in printed tables


def _check_depth(depth: object) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ValueError(f"depth (number of hidden layers) must be a positive integer, got {depth!r}")
    return int(depth)


def classify(p: AbcParameterization, depth: int = 2) -> Classification:
    r"""Stability, nontriviality, feature learning and kernel regime of ``p`` on an MLP with ``depth`` hidden layers.

    TP IV, Theorem 3.3 (SGD; per-layer ``c_l``, equal to the paper's global ``c`` up to the abc-symmetry) and its
    Adam counterpart (TP IVb; TP V Table 3); the conditions and ``r`` are in the module docstring.
    ``failed`` names each violated stability condition with its numbers, e.g. ``"r = -1 < 0: ..."``.
    """
    if not isinstance(p, AbcParameterization):
        raise ValueError(f"expected an AbcParameterization, got {p!r}")
    depth = _check_depth(depth)
    n_hidden = depth - 1
    i, o = p.exponents("input", n_hidden), p.exponents("output", n_hidden)
    h = p.exponents("hidden", n_hidden) if n_hidden else None
    failed: list[str] = []
    if not _eq(i.a + i.b, 0):
        failed.append(f"input layer a + b = {i.a + i.b:g} != 0: the first pre-activations are not O(1) at init")
    if h is not None and not _eq(h.a + h.b, 0.5):
        failed.append(f"hidden layers a + b = {h.a + h.b:g} != 1/2: pre-activations blow up or vanish at init")
    if not _ge(o.a + o.b, 0.5):
        failed.append(f"output layer a + b = {o.a + o.b:g} < 1/2: the output blows up at init")
    if p.optimizer == "sgd":
        s = min(o.a + o.b, 2 * o.a + o.c)
        inner = 2 * i.a + i.c + 1
        if h is not None:
            inner = min(inner, 2 * h.a + h.c)
        r = s - 1 + inner
        own = 2 * o.a + o.c
        own_text = "2 a_out + c_out"
    else:
        r = i.a + i.c
        if h is not None:
            r = min(r, h.a + h.c - 1)
        own = o.a + o.c
        own_text = "a_out + c_out"
    if not _ge(r, 0):
        failed.append(f"r = {r:g} < 0: the features' updates blow up with width")
    if not _ge(own, 1):
        failed.append(f"{own_text} = {own:g} < 1: the output layer's own update blows up with width")
    if not _ge(o.a + o.b + r, 1):
        failed.append(f"a_out + b_out + r = {o.a + o.b + r:g} < 1: the output's change through the features "
                      "blows up with width")
    stable = not failed
    nontrivial = _eq(o.a + o.b + r, 1) or _eq(own, 1)
    feature_learning = stable and _eq(r, 0)
    kernel_regime = stable and nontrivial and not _eq(r, 0)
    return Classification(stable, nontrivial, feature_learning, kernel_regime, r, tuple(failed))


def _member(name: str, a: tuple, b: tuple, c: tuple, optimizer: str) -> AbcParameterization:
    layers = [None if ai is None else LayerExponents(ai, bi, ci) for ai, bi, ci in zip(a, b, c, strict=True)]
    return AbcParameterization(name, layers[0], layers[1], layers[2], optimizer)


def standard(optimizer: str = "sgd", c: float = 0.0) -> AbcParameterization:
    """SP (TP IV, Table 1): ``a = 0``; ``b = 0`` (input), ``1/2`` (hidden, output); one learning rate ``eta n^-c``.

    ``c = 0`` (a width-independent learning rate) is unstable for SGD (``r = -1``) and Adam; SGD with ``c = 1`` is
    stable and in the kernel regime (TP IV, Sec. 3).
    """
    _check_optimizer(optimizer)
    return _member("standard", (0, 0, 0), (0, 0.5, 0.5), (c, c, c), optimizer)


def ntk(optimizer: str = "sgd", c: float = 0.0) -> AbcParameterization:
    """NTK parameterization (TP IV, Table 1): ``a = 0`` (input), ``1/2`` (hidden, output); ``b = 0``; ``eta n^-c``.

    With SGD and ``c = 0``: stable, nontrivial, kernel regime (``r = 1/2``).
    """
    _check_optimizer(optimizer)
    return _member("ntk", (0, 0.5, 0.5), (0, 0, 0), (c, c, c), optimizer)


def mean_field(optimizer: str = "sgd") -> AbcParameterization:
    """Mean-field, one hidden layer (TP IV, Table 1): ``a = (0, 1)``, ``b = (0, 0)``; SGD ``c = -1``.

    For Adam, the abc-symmetry from muP (TP V Table 3) gives ``c = (0, 0)``. Both are feature learning (``r = 0``).
    """
    c = (-1, None, -1) if _check_optimizer(optimizer) == "sgd" else (0, None, 0)
    return _member("mean_field", (0, None, 1), (0, None, 0), c, optimizer)


def mup(optimizer: str = "sgd") -> AbcParameterization:
    """Maximal update parameterization. SGD: TP IV's form ``a = (-1/2, 0, 1/2)``, ``b = 1/2``, ``c = 0``.
    Adam: TP V Table 3, ``a = 0``, ``b = (0, 1/2, 1)``, ``c = (0, 1, 1)`` (hidden and output learning rates
    ``eta / fan_in``). Both: stable, nontrivial, feature learning (``r = 0``)."""
    if _check_optimizer(optimizer) == "sgd":
        return _member("mup", (-0.5, 0, 0.5), (0.5, 0.5, 0.5), (0, 0, 0), optimizer)
    return _member("mup", (0, 0, 0), (0, 0.5, 1), (0, 1, 1), optimizer)


NAMED = {"standard": standard, "ntk": ntk, "mean_field": mean_field, "mup": mup}


def get(name: str | AbcParameterization, optimizer: str = "sgd") -> AbcParameterization:
    """A named member (``"standard"``/``"sp"``, ``"ntk"``, ``"mean_field"``/``"mf"``, ``"mup"``) for ``optimizer``.

    An :class:`AbcParameterization` is returned as is (its optimizer must equal ``optimizer``).
    """
    if isinstance(name, AbcParameterization):
        if name.optimizer != optimizer:
            raise ValueError(f"parameterization {name.name!r} was built for {name.optimizer!r} but the optimizer is "
                             f"{optimizer!r}; build it with get({name.name!r}, {optimizer!r})")
        return name
    aliases = {"sp": "standard", "mf": "mean_field", "mean-field": "mean_field", "mu_p": "mup", "mu-p": "mup"}
    key = aliases.get(str(name).lower(), str(name).lower())
    if key not in NAMED:
        raise ValueError(f"unknown parameterization {name!r}; choose one of {sorted(NAMED)} or build an "
                         "AbcParameterization from LayerExponents")
    return NAMED[key](optimizer)


# -- depth ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthClassification:
    """TP VI's verdict on a depthwise parameterization ``(alpha, gamma)`` of one-layer residual blocks.

    ``phase`` is one of "unstable at init", "unstable in training", "trivial", "redundant" (``alpha + gamma = 1``,
    ``alpha > 1/2``) and "depth-mup"; ``failed`` says which stability condition fails, as text.
    """

    stable: bool
    nontrivial: bool
    maximal_diversity: bool
    phase: str
    update_exponent: float  # the blocks' feature updates scale like L ** update_exponent = L^(1 - alpha - gamma)
    failed: tuple[str, ...]


@dataclass(frozen=True)
class DepthParameterization:
    """Branch multiplier ``a / L^alpha`` and block-weight updates ``Theta(L^-gamma)`` (TP VI; see module docstring).

    ``alpha`` must equal the ResNet's ``depth_exponent`` (the architecture owns the forward pass; this object adds
    the learning-rate rule). :meth:`lr_scale` is the block learning-rate factor: ``L^-gamma`` for Adam and
    ``L^(alpha - gamma)`` for SGD (whose gradient already carries ``L^-alpha``).
    """

    alpha: float
    gamma: float
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("alpha", "gamma"):
            object.__setattr__(self, field, _check_exponent(field, getattr(self, field)))

    @classmethod
    def from_learning_rate(cls, alpha: float, lr_exponent: float, optimizer: str, name: str = "custom"
                           ) -> DepthParameterization:
        """From the exponent ``g`` of a block learning rate ``eta L^-g``: ``gamma = g`` (Adam), ``g + alpha`` (SGD)."""
        alpha, g = _check_exponent("alpha", alpha), _check_exponent("lr_exponent", lr_exponent)
        return cls(alpha, g if _check_optimizer(optimizer) == "adam" else g + alpha, name)

    def lr_scale(self, depth: int, optimizer: str) -> float:
        """Factor on the block learning rates at ``depth`` blocks: ``L^-gamma`` (Adam), ``L^(alpha - gamma)`` (SGD)."""
        depth = _check_depth(depth)
        exponent = -self.gamma if _check_optimizer(optimizer) == "adam" else self.alpha - self.gamma
        return float(depth) ** exponent

    def classify(self) -> DepthClassification:
        """See :func:`classify_depth`."""
        return classify_depth(self.alpha, self.gamma)

    def branch_multiplier(self, depth: int, branch_scale: float = 1.0) -> float:
        """``branch_scale * L^-alpha``, the factor in front of every residual branch at ``depth`` layers."""
        return float(branch_scale) * float(_check_depth(depth)) ** -self.alpha

    def eps_scale(self, depth: int) -> float:
        """Factor on Adam's epsilon for parameters inside the blocks: ``L^-alpha``, the depth scaling of their
        gradients (CompleteP, Table 1), so that epsilon neither dominates the update nor vanishes against it."""
        return float(_check_depth(depth)) ** -self.alpha

    def weight_decay_scale(self, depth: int, optimizer: str) -> float:
        """Factor on the decoupled weight decay ``lambda`` (step ``w <- w - eta_l lambda_l w``) inside the blocks:
        ``1 / lr_scale``, so that ``eta_l lambda_l`` is depth-independent (CompleteP, Table 1)."""
        return 1.0 / self.lr_scale(depth, optimizer)

    def scales(self, depth: int, optimizer: str) -> DepthScales:
        """All the factors for a parameter inside a residual branch, at ``depth`` layers."""
        depth = _check_depth(depth)
        return DepthScales(self.branch_multiplier(depth), self.lr_scale(depth, optimizer), self.eps_scale(depth),
                           self.weight_decay_scale(depth, optimizer))


@dataclass(frozen=True)
class DepthScales:
    """A depth rule's factors for one parameter: ``branch`` (the multiplier of the residual branch it sits in;
    1 outside), ``lr`` (on the base learning rate), ``eps`` (on Adam's epsilon) and ``weight_decay`` (on the
    decoupled weight decay). All 1 for a parameter outside the residual blocks (embedding / stem, readout)."""

    branch: float = 1.0
    lr: float = 1.0
    eps: float = 1.0
    weight_decay: float = 1.0


def classify_depth(alpha: float, gamma: float) -> DepthClassification:
    r"""TP VI's phase of a ResNet with one-layer blocks, multiplier ``L^-alpha`` and block updates ``L^-gamma``.

    Stable iff ``alpha >= 1/2`` (init) and ``alpha + gamma >= 1`` (training); nontrivial iff ``alpha + gamma <= 1``;
    maximal feature diversity iff ``alpha = gamma = 1/2`` (Depth-muP). ``gamma`` is in TP VI's convention (the
    size of the block weights' updates; Adam's learning-rate exponent).
    """
    alpha, gamma = _check_exponent("alpha", alpha), _check_exponent("gamma", gamma)
    failed = []
    if not _ge(alpha, 0.5):
        failed.append(f"alpha = {alpha:g} < 1/2: the residual stream's variance grows like L^{1 - 2 * alpha:g} at init")
    if not _ge(alpha + gamma, 1):
        failed.append(f"alpha + gamma = {alpha + gamma:g} < 1: the blocks' feature updates grow like "
                      f"L^{1 - alpha - gamma:g}")
    stable = not failed
    nontrivial = not (alpha + gamma > 1 + _TOL)
    diversity = stable and _eq(alpha, 0.5) and _eq(gamma, 0.5)
    if not _ge(alpha, 0.5):
        phase = "unstable at init"
    elif failed:
        phase = "unstable in training"
    elif not nontrivial:
        phase = "trivial"
    else:
        phase = "depth-mup" if diversity else "redundant"
    return DepthClassification(stable, nontrivial and stable, diversity, phase, 1 - alpha - gamma, tuple(failed))


def block_lr_factor(rule: object, depth_exponent: float, depth: int, optimizer: str) -> float:
    """The block learning-rate factor a depth rule gives a ResNet with ``depth_exponent`` and ``depth`` blocks
    (1 for ``rule=None`` or ``depth = 0``). Raises ``ValueError`` unless ``rule`` is a :class:`DepthParameterization`
    whose ``alpha`` equals ``depth_exponent`` (the architecture owns the branch multiplier)."""
    if rule is None:
        return 1.0
    if not isinstance(rule, DepthParameterization):
        raise ValueError(f"depth_parameterization must be a DepthParameterization, got {rule!r}")
    if abs(rule.alpha - depth_exponent) > 1e-12:
        raise ValueError(
            f"the depth parameterization has alpha = {rule.alpha:g} but the ResNet's depth_exponent is "
            f"{depth_exponent:g}; build the ResNet with depth_exponent={rule.alpha:g} (the architecture owns the "
            f"branch multiplier)")
    return rule.lr_scale(depth, optimizer) if depth >= 1 else 1.0


def depth_mup() -> DepthParameterization:
    """Depth-muP (TP VI; Bordelon et al. 2023): ``alpha = gamma = 1/2``: branch ``a / sqrt(L)``, SGD learning rate
    ``eta``, Adam ``eta / sqrt(L)``."""
    return DepthParameterization(0.5, 0.5, "depth-mup")


def depth_family(alpha: float, name: str | None = None) -> DepthParameterization:
    """The depth rule with branch multiplier ``L^-alpha`` and block updates ``L^-(1 - alpha)`` (``gamma = 1 -
    alpha``), for ``alpha`` in [1/2, 1]: Adam learning rate ``eta L^(alpha - 1)``, SGD ``eta L^(2 alpha - 1)``,
    Adam epsilon ``eps L^-alpha``, weight decay ``lambda L^(1 - alpha)`` (Adam) (module docstring; CompleteP
    Table 1). ``alpha = 1/2``: :func:`depth_mup`; ``alpha = 1``: :func:`complete_p`."""
    alpha = _check_exponent("alpha", alpha)
    if not (0.5 - _TOL <= alpha <= 1 + _TOL):
        raise ValueError(f"alpha must be in [1/2, 1] (alpha < 1/2: the residual stream blows up at init; alpha > 1: "
                         f"the blocks' contribution vanishes), got {alpha:g}")
    if name is None:
        name = "depth-mup" if _eq(alpha, 0.5) else "complete-p" if _eq(alpha, 1.0) else f"depth-alpha-{alpha:g}"
    return DepthParameterization(alpha, 1.0 - alpha, name)


def complete_p() -> DepthParameterization:
    """CompleteP (Dey et al. 2025, arXiv 2505.01618): ``alpha = 1``, ``gamma = 0``: branch ``a / L``, Adam learning
    rate ``eta`` (constant in ``L``), SGD ``eta L``, Adam epsilon ``eps / L``, weight decay ``lambda`` (Adam)."""
    return depth_family(1.0)


def check_stable(p: AbcParameterization, depth: int = 2) -> Classification:
    """:func:`classify`, raising ``ValueError`` that names the failing conditions when ``p`` is not stable."""
    verdict = classify(p, depth)
    if not verdict.stable:
        raise ValueError(f"the {p.name!r} parameterization with {p.optimizer} is not stable at depth {depth}: "
                         + "; ".join(verdict.failed)
                         + ". Scale the learning rate (c) or the initialisation (b) as TP IV Theorem 3.3 requires")
    return verdict


# -- parameterizations as transforms of a layer program -----------------------------------------------------------
def weight_groups(net: Any) -> list[str]:
    """The group ("input", "hidden" or "output") of every Dense / Conv of the program ``net``, in program order:
    the readout is "output", a weight layer reading the raw inputs' channels "input", every other "hidden"."""
    groups: list[str] = []

    def walk(layers: Any, hidden: bool) -> bool:
        for layer in layers:
            if isinstance(layer, Residual):
                walk(layer.branch, hidden)
            elif layer.weight_layer:
                groups.append("hidden" if hidden else "input")
                hidden = True
        return hidden

    walk(net.layers, False)
    groups[-1] = "output"
    return groups


def _blocks(net: Any) -> tuple[int, set[int]]:
    """Number of top-level residual blocks and the program-order indices of the weight layers inside them."""
    inside, index, count = set(), 0, 0
    for layer in net.layers:
        n = len(weight_layers([layer]))
        if isinstance(layer, Residual):
            count += 1
            inside.update(range(index, index + n))
        index += n
    return count, inside


def residual_depth(net: Any) -> int:
    """``L`` of a depth rule for the program ``net``: its ``depth`` attribute when it has residual blocks and
    defines one (``theory.ResNet``: its blocks; ``theory.Transformer``: its layers, each of two blocks, attention
    and MLP, sharing one ``L`` as in CompleteP and the Transformer's own branch multiplier), else the number of
    top-level ``Residual`` blocks; 0 without residual blocks."""
    if not isinstance(net, Program):
        raise ValueError(f"expected a layer program (theory.ResNet, theory.Transformer, theory.serial(...)), got "
                         f"{net!r}")
    n_blocks, _ = _blocks(net)
    depth = getattr(net, "depth", None)
    if n_blocks and isinstance(depth, numbers.Integral) and not isinstance(depth, bool) and depth >= 1:
        return int(depth)
    return n_blocks


def depth_scales(net: Any, rule: DepthParameterization, optimizer: str = "adam") -> tuple[DepthScales, ...]:
    """The depth rule's factors for every Dense / Conv / SelfAttention of ``net`` in program order
    (``theory.layers.weight_layers``): :meth:`DepthParameterization.scales` at ``L = residual_depth(net)`` for
    those inside a top-level residual block, ``DepthScales()`` (all 1) for the others. Use them with
    ``experiments.networks.weight_tree`` for per-parameter learning rates, Adam epsilons and weight decays."""
    if not isinstance(rule, DepthParameterization):
        raise ValueError(f"rule must be a DepthParameterization (depth_mup(), complete_p(), depth_family(alpha)), "
                         f"got {rule!r}")
    depth = residual_depth(net)
    if depth == 0:
        raise ValueError("a depth rule scales the residual blocks, but the program has none: pass a theory.ResNet, "
                         "theory.Transformer or a program with Residual blocks")
    _, inside = _blocks(net)
    ruled = rule.scales(depth, optimizer)
    return tuple(ruled if i in inside else DepthScales() for i in range(len(weight_layers(net.layers))))


def parameterize(net: Any, parameterization: str | AbcParameterization, width: int, *, optimizer: str = "sgd",
                 depth_rule: DepthParameterization | None = None) -> Any:
    """The program ``net`` as trained under an abc-parameterization at ``width`` (and a depth rule).

    Every Dense / Conv gets a :class:`theory.layers.WeightScaling`: ``W = n^-a w``, ``w ~ N(0, (sigma n^-b)^2)``
    with ``sigma = w_std / sqrt(fan_in)`` times ``sqrt(n)`` for the hidden and output groups (so that
    ``a + b = 0``, ``1/2``, ``1/2`` give the variance ``w_std^2 / fan_in`` of the architecture), learning rate
    ``eta n^-c``; biases take the input group's exponents (TP V, Table 3). ``depth_rule`` multiplies the
    learning rates of the weights inside the top-level residual blocks by ``L^-gamma`` (Adam) or
    ``L^(alpha - gamma)`` (SGD), ``L = residual_depth(net)`` (layers, not blocks, for a transformer); a program
    with a ``depth_exponent`` (``theory.ResNet``, ``theory.Transformer``) must have ``depth_exponent = alpha``
    (it owns its branch multipliers), any other program's top-level ``Residual`` scales are multiplied by
    ``L^-alpha``. Adam's epsilon and weight decay are not part of the program: :func:`depth_scales`.
    A ``SelfAttention`` gets an :class:`theory.layers.AttentionScaling`: its query, key and value weights are
    weights of its input's group ("hidden"; "input" on raw inputs) with ``sigma = 1`` (``qk_std`` stays the
    logits' multiplier, mup's ``attn_mult``), its output weights "hidden" with ``sigma = ov_std``, its bias the
    biases' exponents. This is muP for attention as in TP V (Yang et al. 2022, arXiv 2203.03466, Sec. 4 and
    Appendix B: q, k, v, o weights are hidden weights, logits ``q.k / d_head``): a feature-learning
    parameterization refuses ``linear_scaling=False`` (``1/sqrt(d_head)`` logits, whose updates grow like
    ``sqrt(width)``). The query's tying and initialisation are the layer's own (``SelfAttention(query=...)``):
    TP V and mup recommend an untied, zero-initialised query (``query="zero"``; logits 0 at init), whose
    infinite-width kernel is uniform attention; neural-tangents' kernel (``query="tied"``, the default) is
    another network, with attention ``softmax(qk_std K(x, x))`` at init. Where the libraries differ: mup's
    ``MuReadout`` multiplies the readout by ``1 / width_mult`` and zero-initialises it; here the readout is
    TP IV's output layer (``n^-a``, ``n^-b``), which gives the same function class and kernel regime; mup's
    ``attn_mult`` is ``qk_std``. Positional embeddings and fixed ``head_channels`` are refused (no rule yet).
    ``theory.kernels`` of the result is the NTK of the network as it is trained (its width-``n`` value);
    ``experiments.networks`` and ``experiments.training`` build and train the same network.
    Returns a ``theory.Serial`` with the same layer names.
    """
    if not isinstance(net, Program):
        raise ValueError(f"parameterize needs a layer program (theory.MLP, theory.ResNet, theory.serial(...)), got "
                         f"{net!r}")
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    p = get(parameterization, optimizer)
    groups = weight_groups(net)
    n_hidden = groups.count("hidden")
    n_blocks, inside = _blocks(net)
    depth_lr = branch = 1.0
    if depth_rule is not None:
        exponent = getattr(net, "depth_exponent", None)
        if n_blocks == 0:
            raise ValueError("a depth rule scales the learning rates of residual blocks, but the program has none: "
                             "pass a theory.ResNet (or a program with Residual blocks), or "
                             "depth_rule=None")
        depth = residual_depth(net)
        depth_lr = block_lr_factor(depth_rule, depth_rule.alpha if exponent is None else exponent, depth,
                                   optimizer)
        if exponent is None:
            branch = depth_rule.branch_multiplier(depth)
    n = float(width)
    bias = p.exponents("input", n_hidden)
    counter = iter(range(len(groups)))

    def weight(group: str, w_std: Any, b_std: Any, lr: float) -> WeightScaling:
        e = p.exponents(group, n_hidden)
        sigma = w_std * (1.0 if group == "input" else math.sqrt(n))
        return WeightScaling(n ** -e.a, sigma * n ** -e.b, lr * n ** -e.c, n ** -bias.a, b_std * n ** -bias.b,
                             lr * n ** -bias.c, "init", int(width), group)

    def scaled(layer: Any) -> Any:
        i = next(counter)
        group = groups[i]
        lr = depth_lr if i in inside else 1.0
        if isinstance(layer, SelfAttention):
            return _attention_scaled(layer, p, group, weight, lr, n_hidden)
        if isinstance(layer, LayerNorm):  # gain and bias: vector-like, the biases' exponents (TP V, Table 3)
            return dataclasses.replace(layer, scaling=WeightScaling(
                n ** -bias.a, n ** -bias.b, lr * n ** -bias.c, n ** -bias.a, 0.0, lr * n ** -bias.c, "init",
                int(width), group))
        if not isinstance(layer, WeightLayer):
            raise ValueError(f"parameterize: {layer.name} has no abc-parameterization rule yet (Dense, Conv and "
                             "SelfAttention have); kernels and finite networks of the program work in the NTK "
                             "parameterization")
        return dataclasses.replace(layer, scaling=weight(group, layer.w_std, layer.b_std, lr))

    def walk(layers: Any, top: bool = True) -> tuple:
        out = []
        for layer in layers:
            if isinstance(layer, Residual):
                out.append(Residual(*walk(layer.branch, False), scale=layer.scale * (branch if top else 1.0)))
            elif layer.weight_layer:
                out.append(scaled(layer))
            else:
                out.append(layer)
        return tuple(out)

    return Serial(walk(net.layers), names=net.recorded_names())


def _attention_scaled(layer: SelfAttention, p: AbcParameterization, group: str, weight: Any, lr: float,
                      n_hidden: int) -> SelfAttention:
    """``layer`` under ``p`` (see :func:`parameterize`): query, key and value weights in ``group`` (their input's:
    "hidden", or "input" on raw inputs), the output weights "hidden" with ``sigma = ov_std`` and the bias."""
    if group == "output":
        raise ValueError("parameterize: a SelfAttention cannot be the readout; end the program with a Dense")
    if layer.positional is not None:
        raise ValueError("parameterize: SelfAttention with positional embeddings has no abc-parameterization rule "
                         "yet (the embeddings are neither input nor hidden weights); use positional=None and put "
                         "positions into the inputs' channels, or the NTK parameterization")
    if layer.head_channels is not None:
        raise ValueError(f"parameterize: SelfAttention(head_channels={layer.head_channels}) has heads of a fixed "
                         "size, so its output weights' fan-in does not grow with the width; use head_channels=None "
                         "(width // n_heads channels per head)")
    if not layer.linear_scaling and classify(p, max(n_hidden, 1) + 1).feature_learning:
        raise ValueError(f"parameterize: the {p.name!r} parameterization learns features, which needs attention "
                         "logits scaled by 1/d_head (TP V, Sec. 4 and Appendix B): with 1/sqrt(d_head) their update "
                         "grows like sqrt(width); build the SelfAttention with linear_scaling=True (and "
                         "query='zero' or 'gaussian' for muP's untied query)")
    qkv = weight(group, 1.0, 0.0, lr)
    out = weight("hidden", layer.ov_std, layer.b_std, lr)
    return dataclasses.replace(layer, scaling=AttentionScaling(qkv, qkv, qkv, out))
