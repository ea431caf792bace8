r"""``SelfAttention``: multi-head dot-product self-attention over positions (neural-tangents' ``GlobalSelfAttention``).

Finite layer (neural-tangents 0.6.5 ``stax.GlobalSelfAttention``, NTK parameterization). For an input
``x`` of ``P`` positions (a sequence, or an image flattened row-major) and ``C`` channels, with per-head
weights ``W_K, W_Q: (C_k, d_k)``, ``W_V: (C_v, d_v)``, ``W_O: (H d_v, C_out)``, all ``N(0, 1)``:

    G_h = rho(qk_std * Q_h K_h^T / (C_k d_k^e)),   Q_h = x_k W_Q,h,  K_h = x_k W_K,h,
    f(x) = ov_std / sqrt(H d_v C_v) * concat_h(G_h x_v W_V,h) W_O + b_std b,

``rho`` the attention mechanism ("softmax" over the key positions, "identity", "abs", "relu"). With
``linear_scaling=True`` (the default) ``e = 1`` and the query weights are tied to the key weights
(``W_Q = W_K``), so that the logits converge to the deterministic ``qk_std K_in(x)`` as the width grows
(with independent ``W_Q``, ``W_K`` they would converge to 0); with ``linear_scaling=False``, ``e = 1/2``,
``W_Q`` independent (standard attention; the kernel is known in closed form only for ``rho = identity``).
``x_k = x_v = x`` without positional information; positional embeddings ``E`` (``(P, C_pe)``, ``N(0, 1)``,
trained, times ``pos_std``; correlated over positions by ``pos_decay``) are added (``"sum"``) or
concatenated (``"concat"``) to the keys' and queries' inputs, and to the values' inputs if
``pos_values``.

Kernel map (Hron, Bahri, Sohl-Dickstein & Novak 2020, "Infinite attention", NNGP and NTK as widths
``C, d_k, d_v -> inf``), on the kernels at every pair of positions, ``K`` the input NNGP, ``Theta`` its
NTK, ``R`` the positional covariance (``delta_{st}``, or ``pos_decay(sum_i |s_i - t_i|^p)``):

    K_pe = w_in K + w_pe R,  Theta_pe = w_in Theta + w_pe R   ("sum": w_in = 1, w_pe = pos_std^2;
                                                              "concat": channel fractions, NT's weights)
    K_v, Theta_v = (K_pe, Theta_pe) if pos_values else (K, Theta)

linear scaling (``A(x) = rho(qk_std K_pe(x, x))`` row-wise: the row input's own kernel),

    K'(x, y)     = ov^2 A(x) K_v(x, y) A(y)^T + b^2,
    Theta'(x, y) = ov^2 A(x) Theta_v(x, y) A(y)^T + 2 ov^2 A(x) K_v(x, y) A(y)^T + b^2

(``W_V`` and ``W_O`` contribute one ``ov^2 A K_v A^T`` each; the keys' contribution is ``O(1 / d_k)``);
``linear_scaling=False`` with ``rho = identity`` (``s = qk^2 ov^2``, ``<a, b> = sum_{s,t} a_st b_st``),

    K'     = s <K_pe, K_v> K_pe + b^2,
    Theta' = s [(<K_pe, Theta_v> + <K_v, Theta_pe>) K_pe + <K_pe, K_v> (Theta_pe + 4 K_pe)] + b^2

(``W_V``, ``W_O``, ``W_Q``, ``W_K`` contribute ``s <K_pe, K_v> K_pe`` each). The output is a centred Gaussian
process independent of a residual skip path.

Other parameterizations (:class:`AttentionScaling`, set by ``theory.parameterize``): each matrix ``X`` enters as
``m_X x W_X`` with ``W_X ~ N(0, s_X^2)`` and learning rate ``eta lr_X``; with ``v_X = (m_X s_X)^2 fan_in`` and
``c_X = lr_X m_X^2 fan_in``, the maps above become ``ov^2 -> v_V v_O`` and the tangent ``2 ov^2 -> c_V v_O +
v_V c_O`` (linear scaling; the tied logits ``qk v_K K_pe``), ``s -> qk^2 v_Q v_K v_V v_O`` and ``4 s -> qk^2
(c_Q v_K v_V v_O + v_Q c_K v_V v_O + v_Q v_K c_V v_O + v_Q v_K v_V c_O)`` (identity at ``1/sqrt(d)``). Untied
queries (``query="gaussian"`` or ``"zero"``) at ``1/d`` give logits ``O(d^-1/2) -> 0``: ``A = rho(0)`` (uniform
softmax ``1/P``; 0 for identity, abs, relu). Derivations and checks: ``docs/attention.md``.
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

from theory.layers.base import (
    GAUSSIAN_STREAM,
    KernelState,
    Layer,
    Shape,
    Stream,
    WeightScaling,
    check_scale,
    is_concrete,
    pytree,
)

Array = jax.Array

MECHANISMS = ("softmax", "identity", "abs", "relu")
POSITIONAL = (None, "sum", "concat")
QUERIES = ("tied", "gaussian", "zero")


@pytree("query", "key", "value", "out")
@dataclasses.dataclass(frozen=True)
class AttentionScaling:
    """How a :class:`SelfAttention` layer's four weight matrices enter the network and its training, at one width:
    one :class:`~theory.layers.WeightScaling` each for the query, key, value and output weights (the output's
    ``b_*`` fields are the output bias'; the others' are unused). The fan-ins are ``C_k`` (query, key), ``C_v``
    (value) and ``n_heads * d_v`` (output). neural-tangents' parameterization (the default) is
    ``WeightScaling.ntk(1, 0)`` for the query, key and value and ``WeightScaling.ntk(ov_std, b_std)`` for the
    output; ``theory.parameterize`` resolves an abc-parameterization into these at a width."""

    query: WeightScaling
    key: WeightScaling
    value: WeightScaling
    out: WeightScaling

    def __post_init__(self) -> None:
        for name in ("query", "key", "value", "out"):
            if not isinstance(getattr(self, name), WeightScaling):
                raise ValueError(f"AttentionScaling.{name} must be a WeightScaling, got {getattr(self, name)!r}")

    @property
    def width(self) -> int | None:
        """The width the scalings were resolved at (``None``: neural-tangents' width-free parameterization)."""
        return self.key.width

    @classmethod
    def ntk(cls, ov_std: Any, b_std: Any) -> AttentionScaling:
        """neural-tangents' NTK parameterization of ``GlobalSelfAttention`` (module docstring)."""
        unit = WeightScaling.ntk(1.0, 0.0)
        return cls(unit, unit, unit, WeightScaling.ntk(ov_std, b_std))


class AttentionWeights(NamedTuple):
    """A :class:`SelfAttention` layer's trained parameters: ``key`` ``(heads, C_k, d_k)``, ``query`` (the same
    shape; ``None`` when tied to ``key``), ``value`` ``(heads, C_v, d_v)``, ``out``
    ``(d_v * heads, C_out)`` (rows: value channel major, head minor, as neural-tangents), ``b`` ``(C_out,)``
    (``None`` without a bias), ``pos`` ``(*spatial, C_pe)`` (``None`` without positional embeddings)."""

    key: Array
    query: Array | None
    value: Array
    out: Array
    b: Array | None
    pos: Array | None


def _mechanism(name: str) -> Callable[[Array], Array]:
    return {"softmax": lambda a: jax.nn.softmax(a, axis=-1), "identity": lambda a: a, "abs": jnp.abs,
            "relu": lambda a: jnp.maximum(a, 0)}[name]


@pytree("qk_std", "ov_std", "b_std", "pos_std", "scaling")
@dataclasses.dataclass(frozen=True)
class SelfAttention(Layer):
    """Multi-head self-attention over all positions of ``(batch, length, channels)`` (or image) inputs.

    Args (neural-tangents' ``GlobalSelfAttention`` names in brackets):
        n_heads: heads of the finite layer [n_heads]; each has ``width // n_heads`` key and value channels
            (``head_channels`` overrides). The kernels do not depend on it.
        qk_std: ``W_query_std * W_key_std``; ov_std: ``W_out_std * W_value_std`` (only the products enter).
        b_std: output bias std (0: no bias) [b_std, None].
        linear_scaling: logits ``/ d_k`` with tied query and key weights (deterministic attention in the limit)
            or ``/ sqrt(d_k)`` with independent ones [linear_scaling].
        attention: "softmax", "identity", "abs" or "relu" [attention_mechanism].
        positional: None, "sum" or "concat" [pos_emb_type]; pos_std [W_pos_emb_std]; pos_decay, a function of
            the distance ``sum_i |s_i - t_i|^p`` giving the embeddings' covariance (None: one-hot, ``delta``)
            [pos_emb_decay_fn]; pos_p_norm ``p`` [pos_emb_p_norm]; pos_channels (None: as many as the input;
            a number only for raw inputs, whose channel count is fixed) [n_chan_pos_emb]; pos_values: add them
            to the values' input as well [val_pos_emb].
        head_channels: per-head key and value channels of the finite layer (None: ``width // n_heads``).
        query: the query weights: "tied" to the key weights (neural-tangents' choice with linear scaling), or
            independent with "gaussian" or "zero" initialisation (muP's recommendation, TP V). None: "tied" with
            ``linear_scaling``, "gaussian" without. Untied at ``1 / d_k`` the logits tend to 0, so the limit
            attends uniformly (softmax: ``A = 1/P``; identity, abs, relu: ``A = 0``; ``docs/attention.md``).
        scaling: an :class:`AttentionScaling` (None: neural-tangents' parameterization); set by
            ``theory.parameterize``.
    """

    n_heads: int = 1
    qk_std: Any = 1.0
    ov_std: Any = 1.0
    b_std: Any = 0.0
    linear_scaling: bool = True
    attention: str = "softmax"
    positional: str | None = None
    pos_std: Any = 1.0
    pos_decay: Callable[[Any], Any] | None = None
    pos_p_norm: float = 2.0
    pos_channels: int | None = None
    pos_values: bool = False
    head_channels: int | None = None
    bias: bool = dataclasses.field(init=False, repr=False, default=True)
    query: str | None = None
    scaling: AttentionScaling | None = None

    weight_layer = True

    def __post_init__(self) -> None:
        where = "SelfAttention: "
        for name in ("n_heads",) + (("head_channels",) if self.head_channels is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{where}{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("qk_std", "ov_std", "b_std", "pos_std"):
            object.__setattr__(self, name, check_scale(name, getattr(self, name), where))
        object.__setattr__(self, "bias", not (isinstance(self.b_std, float) and self.b_std == 0))
        attention = self.attention.lower() if isinstance(self.attention, str) else self.attention
        if attention not in MECHANISMS:
            raise ValueError(f"{where}attention must be one of {MECHANISMS}, got {self.attention!r}")
        object.__setattr__(self, "attention", attention)
        positional = self.positional.lower() if isinstance(self.positional, str) else self.positional
        if positional in ("none", ""):
            positional = None
        if positional not in POSITIONAL:
            raise ValueError(f"{where}positional must be None, 'sum' or 'concat', got {self.positional!r}")
        object.__setattr__(self, "positional", positional)
        if not isinstance(self.linear_scaling, bool) or not isinstance(self.pos_values, bool):
            raise ValueError(f"{where}linear_scaling and pos_values must be True or False")
        query = self.query.lower() if isinstance(self.query, str) else self.query
        if query is None:
            query = "tied" if self.linear_scaling else "gaussian"
        if query not in QUERIES:
            raise ValueError(f"{where}query must be one of {QUERIES} or None, got {self.query!r}")
        if query == "tied" and not self.linear_scaling:
            raise ValueError(f"{where}query='tied' needs linear_scaling=True (1/d_k logits, neural-tangents' "
                             "convention); with 1/sqrt(d_k) logits use query='gaussian' or 'zero'")
        object.__setattr__(self, "query", query)
        if self.scaling is not None and not isinstance(self.scaling, AttentionScaling):
            raise ValueError(f"{where}scaling must be an AttentionScaling or None, got {self.scaling!r}")
        p = self.pos_p_norm
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (0 < p < math.inf):
            raise ValueError(f"{where}pos_p_norm must be a finite number > 0, got {p!r}")
        object.__setattr__(self, "pos_p_norm", float(p))
        if self.pos_decay is not None and not callable(self.pos_decay):
            raise ValueError(f"{where}pos_decay must be a function of the distance or None, got {self.pos_decay!r}")
        if self.pos_channels is not None:
            c = self.pos_channels
            if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1:
                raise ValueError(f"{where}pos_channels must be a positive integer or None, got {c!r}")
            if positional != "concat":
                raise ValueError(f"{where}pos_channels sets the channels of concatenated embeddings; it needs "
                                 "positional='concat' (summed embeddings have the input's channels)")

    @property
    def name(self) -> str:
        return f"SelfAttention({self.attention})"

    @property
    def needs_spatial_size(self) -> bool:
        """Whether the finite layer's parameters depend on the number of positions (positional embeddings)."""
        return self.positional is not None

    # -- shapes and kernels ----------------------------------------------------------------------------------
    def output_shape(self, shape: Shape, where: str) -> Shape:
        if not shape.spatial:
            raise ValueError(f"{where}: SelfAttention attends over positions, but its input is a vector "
                             f"{shape.describe()}; feed (batch, length, channels) or (batch, height, width, "
                             "channels)")
        if self.pos_channels is not None and shape.hidden:
            raise ValueError(f"{where}: pos_channels={self.pos_channels} is a fixed number of embedding channels, "
                             "but the layer's input has a hidden width (infinite in the kernels), so the "
                             "embeddings' share would vanish; use pos_channels=None (as many as the input) or "
                             "apply the layer to the raw inputs")
        return Shape(shape.spatial, 1, True)

    def output_stream(self, stream: Stream, where: str) -> Stream:
        return GAUSSIAN_STREAM

    def needs_full(self, full_out: bool) -> bool:
        return True

    @property
    def tied(self) -> bool:
        """Whether the query weights are the key weights."""
        return self.query == "tied"

    @property
    def weight_scalings(self) -> AttentionScaling:
        """The scalings in force (neural-tangents' NTK parameterization unless one was set)."""
        return self.scaling if self.scaling is not None else AttentionScaling.ntk(self.ov_std, self.b_std)

    @property
    def weight_scaling(self) -> WeightScaling:
        """One :class:`WeightScaling` standing for the whole layer where training needs one learning rate per
        layer (``experiments.training.learning_rates``): the output's, whose ``w_lr`` must be every matrix's."""
        s = self.weight_scalings
        rates = {"key": s.key.w_lr, "value": s.value.w_lr, "out": s.out.w_lr}
        if not self.tied:
            rates["query"] = s.query.w_lr
        if all(is_concrete(r) for r in rates.values()) and len({float(r) for r in rates.values()}) > 1:
            raise ValueError(f"SelfAttention: its weight matrices have different learning rates {rates} (the layer "
                             "reads raw inputs, so its query/key/value are 'input' weights and its output 'hidden'); "
                             "one learning rate per layer is needed here: put a Dense embedding before it")
        return s.out

    def learning_rates(self, params: AttentionWeights) -> AttentionWeights:
        """Each parameter's learning-rate factor (``None`` where ``params`` has none): the weights' ``w_lr``, the
        bias' ``b_lr``, 1 for the positional embeddings (neural-tangents')."""
        s = self.weight_scalings

        def rate(value: Any, ref: Any) -> Any:
            return None if ref is None else value

        return AttentionWeights(rate(s.key.w_lr, params.key), rate(s.query.w_lr, params.query),
                                rate(s.value.w_lr, params.value), rate(s.out.w_lr, params.out),
                                rate(s.out.b_lr, params.b), rate(1.0, params.pos))

    def coefficients(self, shape: Shape, gain: Any = 1.0) -> tuple[Any, ...]:
        """``(qk, v_Q, v_K, v_V, v_O, c_Q, c_K, c_V, c_O, v_b, c_b, w_in, w_pe)``: ``qk_std``; each weight
        matrix's forward variance ``v = (m s)^2 fan_in`` and tangent coefficient ``c = lr m^2 fan_in`` (times
        ``gain`` for the output's); the bias' ``v_b``, ``c_b`` (times ``gain``); the weights of the input and
        positional covariances in the keys' kernel (module docstring). ``v_Q = 0`` for a zero-initialised query."""
        if not self.linear_scaling and self.attention != "identity":
            raise ValueError(f"SelfAttention(attention={self.attention!r}, linear_scaling=False) has no known "
                             "closed-form kernel (the logits stay random and Gaussian in the limit); use "
                             "linear_scaling=True (deterministic logits) or attention='identity' (as "
                             "neural-tangents)")
        s = self.weight_scalings
        width = s.width

        def fans() -> tuple[int, int, int]:
            c_in = shape.fan(width)
            if c_in is None:
                raise ValueError("SelfAttention has its 1/sqrt(fan_in) in the initialisation (an abc-"
                                 "parameterization), so its NTK depends on the hidden width: give the width "
                                 "(theory.parameterize(net, ..., width=n))")
            c_k, c_v = self._input_channels(c_in)
            return c_k, c_v, self.n_heads * self.head_width(width)

        def vc(ws: WeightScaling, index: int) -> tuple[Any, Any]:
            v = (ws.w_multiplier * ws.w_init) ** 2
            c = ws.w_lr * ws.w_multiplier**2
            if ws.fan_in == "init":
                c = c * fans()[index]
            return v, c

        v_q, c_q = vc(s.query, 0)
        v_k, c_k = vc(s.key, 0)
        v_v, c_v = vc(s.value, 1)
        v_o, c_o = vc(s.out, 2)
        if self.query == "zero":
            v_q = 0.0
        if self.bias:
            v_b, c_b = (s.out.b_multiplier * s.out.b_init) ** 2, s.out.b_lr * s.out.b_multiplier**2
        else:
            v_b = c_b = 0.0
        w_in, w_pe = 1.0, 0.0
        if self.positional is not None:
            w_pe = self.pos_std**2
            if self.positional == "concat":
                c_in = 1.0 if shape.hidden else float(shape.channels)
                c_pe = c_in if self.pos_channels is None else float(self.pos_channels)
                w_in, w_pe = c_in / (c_in + c_pe), w_pe * c_pe / (c_in + c_pe)
        return (self.qk_std, v_q, v_k, v_v, gain * v_o, c_q, c_k, c_v, gain * c_o, gain * v_b, gain * c_b, w_in,
                w_pe)

    def positional_covariance(self, spatial: tuple[int, ...]) -> np.ndarray:
        """``R``, ``(P, P)`` over positions flattened row-major: ``delta_{st}`` without ``pos_decay``, else
        ``pos_decay(sum_i |s_i - t_i|^p)``."""
        grids = np.meshgrid(*(np.arange(n) for n in spatial), indexing="ij")
        coords = np.stack([g.reshape(-1) for g in grids], axis=-1).astype(np.float64)
        if self.pos_decay is None:
            return np.eye(len(coords))
        dist = np.sum(np.abs(coords[:, None, :] - coords[None, :, :]) ** self.pos_p_norm, axis=-1)
        return np.asarray(self.pos_decay(dist), dtype=np.float64)

    def kernel(self, k: KernelState, coefficients: Any) -> KernelState:
        qk, v_q, v_k, v_v, v_o, c_q, c_k, c_v, c_o, v_b, c_b, w_in, w_pe = coefficients
        spatial = k.spatial
        p = math.prod(spatial)

        def flat(a: Array | None, nb: int) -> Array | None:
            return None if a is None else a.reshape((*a.shape[:nb], p, p))

        def unflat(a: Array | None, nb: int) -> Array | None:
            return None if a is None else a.reshape((*a.shape[:nb], *spatial, *spatial))

        r = None if self.positional is None else jnp.asarray(self.positional_covariance(spatial), k.q11.dtype)

        def keyed(a: Array | None) -> Array | None:  # the keys' and queries' input kernel
            return a if (a is None or r is None) else w_in * a + w_pe * r

        def valued(a: Array | None) -> Array | None:  # the values' input kernel
            return keyed(a) if self.pos_values else a

        q = (flat(k.q11, 1), flat(k.q12, 2), flat(k.q22, 1))
        t = (flat(k.t11, 1), flat(k.t12, 2), flat(k.t22, 1)) if k.with_ntk else (None, None, None)
        if self.linear_scaling:
            mech = _mechanism(self.attention)
            if self.tied:  # logits -> qk v_K K_pe(x, x): deterministic
                a1, a2 = mech(qk * v_k * keyed(q[0])), mech(qk * v_k * keyed(q[2]))
            else:  # independent query and key: logits = O(d_k^-1/2) -> 0, uniform attention
                a1, a2 = mech(jnp.zeros_like(q[0])), mech(jnp.zeros_like(q[2]))

            def mix(a: Array | None, left: Array, right: Array, pair: bool) -> Array | None:
                if a is None:
                    return None
                if pair:
                    return jnp.einsum("isu,ijuv,jtv->ijst", left, a, right)
                return jnp.einsum("isu,iuv,itv->ist", left, a, left)

            sides = ((a1, a1, False), (a1, a2, True), (a2, a2, False))
            mq = [mix(valued(qi), left, right, pair) for qi, (left, right, pair) in zip(q, sides, strict=True)]
            v, c = v_v * v_o, c_v * v_o + v_v * c_o  # W_V and W_O's own tangents; W_Q, W_K's are O(1/d_k)
            new_q = [v * m + v_b for m in mq]
            if k.with_ntk:
                mt = [mix(valued(ti), left, right, pair) for ti, (left, right, pair) in zip(t, sides, strict=True)]
                new_t = [v * a + c * b + c_b for a, b in zip(mt, mq, strict=True)]
        else:  # identity attention, 1/sqrt(d_k) logits: random Gaussian logits, closed form
            s = qk**2 * v_q * v_k * v_v * v_o
            own = qk**2 * (c_q * v_k * v_v * v_o + v_q * c_k * v_v * v_o + v_q * v_k * c_v * v_o
                           + v_q * v_k * v_v * c_o)  # each weight matrix's own tangent (4 s in NT's)

            def dot(a: Array, b: Array) -> Array:
                return jnp.sum(a * b, axis=(-2, -1), keepdims=True)

            new_q, new_t = [], []
            for qi, ti in zip(q, t, strict=True):
                kp, kv = keyed(qi), valued(qi)
                d = dot(kp, kv)
                new_q.append(s * d * kp + v_b)
                if k.with_ntk:
                    tp, tv = keyed(ti), valued(ti)
                    new_t.append(s * ((dot(kp, tv) + dot(kv, tp)) * kp + d * tp) + own * d * kp + c_b)
        out = k.replace(q11=unflat(new_q[0], 1), q12=unflat(new_q[1], 2), q22=unflat(new_q[2], 1))
        if k.with_ntk:
            out = out.replace(t11=unflat(new_t[0], 1), t12=unflat(new_t[1], 2), t22=unflat(new_t[2], 1))
        return out

    # -- the finite layer ------------------------------------------------------------------------------------
    def _pos_channels(self, in_channels: int) -> int:
        return in_channels if self.pos_channels is None else self.pos_channels

    def _input_channels(self, in_channels: int) -> tuple[int, int]:
        """Channels of the keys' and the values' inputs (after concatenating embeddings)."""
        c_k = c_v = in_channels
        if self.positional == "concat":
            c_k += self._pos_channels(in_channels)
            if self.pos_values:
                c_v = c_k
        return c_k, c_v

    def head_width(self, width: int | None) -> int:
        """Per-head key and value channels of the finite layer at ``width``."""
        if self.head_channels is not None:
            return self.head_channels
        if width is None or width % self.n_heads:
            raise ValueError(f"SelfAttention: the finite layer gives each of its {self.n_heads} heads width // "
                             f"n_heads key and value channels, so the width ({width}) must be a multiple of "
                             "n_heads; choose another width or set head_channels")
        return width // self.n_heads

    def init(self, key: Array, shape: Shape, out_channels: int, sample: Callable, dtype: Any,
             width: int | None = None) -> AttentionWeights:
        """Weights from ``sample`` (the ensemble, per head) times each matrix's initial scale (1 in
        neural-tangents' parameterization, whose stds enter the forward pass), the bias, the embeddings; a "zero"
        query is zeros."""
        c_in = shape.fan(width)
        c_k, c_v = self._input_channels(c_in)
        d = self.head_width(width)
        s = self.weight_scalings
        k_key, k_query, k_value, k_out, k_b, k_pos = jax.random.split(key, 6)

        def heads(k: Array, fan_in: int, ws: WeightScaling) -> Array:
            std = ws.multipliers(fan_in)[1]
            return std * jnp.stack([sample(kh, (fan_in, d), dtype) for kh in jax.random.split(k, self.n_heads)])

        query = None
        if self.query == "gaussian":
            query = heads(k_query, c_k, s.query)
        elif self.query == "zero":
            query = jnp.zeros((self.n_heads, c_k, d), dtype)
        _, s_o, _, s_b = s.out.multipliers(self.n_heads * d)
        b = s_b * jax.random.normal(k_b, (out_channels,), dtype) if self.bias else None
        pos = None
        if self.positional is not None:
            pos = jax.random.normal(k_pos, (*shape.spatial, self._pos_channels(c_in)), dtype)
        return AttentionWeights(heads(k_key, c_k, s.key), query, heads(k_value, c_v, s.value),
                                s_o * sample(k_out, (self.n_heads * d, out_channels), dtype), b, pos)

    def _embeddings(self, pos: Array, spatial: tuple[int, ...]) -> Array:
        """The positional embeddings ``(P, C_pe)`` times ``pos_std``, correlated by ``pos_decay`` through the
        Cholesky factor of ``R``."""
        e = pos.reshape(math.prod(spatial), pos.shape[-1])
        if self.pos_decay is not None:
            e = jnp.asarray(np.linalg.cholesky(self.positional_covariance(spatial)), e.dtype) @ e
        return self.pos_std * e

    def apply(self, params: AttentionWeights, h: Array) -> Array:
        if not isinstance(params, AttentionWeights):
            raise ValueError(f"SelfAttention got parameters {type(params).__name__}; they were made for another "
                             "program: call networks.init with this program")
        batch, spatial, c = h.shape[0], tuple(h.shape[1:-1]), h.shape[-1]
        x = h.reshape(batch, -1, c)
        x_k = x_v = x
        if self.positional is not None:
            if params.pos is None or tuple(params.pos.shape[:-1]) != spatial:
                raise ValueError(f"SelfAttention: positional embeddings for positions "
                                 f"{None if params.pos is None else tuple(params.pos.shape[:-1])} but the input "
                                 f"has {spatial}; call networks.init with features=<the per-example input shape>")
            e = self._embeddings(params.pos, spatial)
            if self.positional == "sum":
                x_k = x + e
            else:
                x_k = jnp.concatenate([x, jnp.broadcast_to(e, (batch, *e.shape))], axis=-1)
            if self.pos_values:
                x_v = x_k
        if params.key.shape[1] != x_k.shape[-1] or params.value.shape[1] != x_v.shape[-1]:
            raise ValueError(f"SelfAttention has parameters for {params.key.shape[1]} input channels but its input "
                             f"has {x_k.shape[-1]}: call networks.init with this program and these inputs")
        if (params.query is None) != self.tied:
            raise ValueError(f"SelfAttention(query={self.query!r}) got parameters "
                             f"{'without' if params.query is None else 'with'} query weights: they were made for "
                             "another program; call networks.init with this program")
        s = self.weight_scalings
        c_k, c_v = x_k.shape[-1], x_v.shape[-1]
        d_k, d_v = params.key.shape[-1], params.value.shape[-1]
        m_k = s.key.multipliers(c_k)[0]
        keys = m_k * jnp.einsum("bpc,hcd->hbpd", x_k, params.key)
        queries = keys if self.tied else s.query.multipliers(c_k)[0] * jnp.einsum("bpc,hcd->hbpd", x_k,
                                                                                   params.query)
        norm = d_k if self.linear_scaling else math.sqrt(d_k)
        logits = (self.qk_std / norm) * jnp.einsum("hbpd,hbqd->hbpq", queries, keys)
        weights = _mechanism(self.attention)(logits)
        values = s.value.multipliers(c_v)[0] * jnp.einsum("bpc,hcd->hbpd", x_v, params.value)
        # heads concatenated channel-major, head-minor (neural-tangents' order, so its parameters apply as they are)
        heads = jnp.einsum("hbpq,hbqd->bpdh", weights, values).reshape(batch, x.shape[1], -1)
        m_o, _, m_b, _ = s.out.multipliers(d_v * self.n_heads)
        out = m_o * (heads @ params.out)
        if params.b is not None:
            out = out + m_b * params.b
        return out.reshape(batch, *spatial, out.shape[-1])


__all__ = ["MECHANISMS", "QUERIES", "AttentionScaling", "AttentionWeights", "SelfAttention"]
