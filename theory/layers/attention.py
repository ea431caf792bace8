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
process independent of a residual skip path. Derivations and checks: ``docs/attention.md``.
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

from theory.layers.base import GAUSSIAN_STREAM, KernelState, Layer, Shape, Stream, check_scale, pytree

Array = jax.Array

MECHANISMS = ("softmax", "identity", "abs", "relu")
POSITIONAL = (None, "sum", "concat")


class AttentionWeights(NamedTuple):
    """A :class:`SelfAttention` layer's trained parameters: ``key`` ``(heads, C_k, d_k)``, ``query`` (the same
    shape; ``None`` with linear scaling: tied to ``key``), ``value`` ``(heads, C_v, d_v)``, ``out``
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


@pytree("qk_std", "ov_std", "b_std", "pos_std")
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

    weight_layer = True
    scaling = None  # abc-parameterizations of attention: not yet (theory.parameterize refuses it)

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

    def coefficients(self, shape: Shape, gain: Any = 1.0) -> tuple[Any, Any, Any, Any, Any]:
        """``(qk, v, v_b, w_in, w_pe)``: ``qk_std``, ``gain ov_std^2``, ``gain b_std^2`` and the weights of the
        input and positional covariances in the keys' kernel (module docstring)."""
        if not self.linear_scaling and self.attention != "identity":
            raise ValueError(f"SelfAttention(attention={self.attention!r}, linear_scaling=False) has no known "
                             "closed-form kernel (the logits stay random and Gaussian in the limit); use "
                             "linear_scaling=True (deterministic logits) or attention='identity' (as "
                             "neural-tangents)")
        w_in, w_pe = 1.0, 0.0
        if self.positional is not None:
            w_pe = self.pos_std**2
            if self.positional == "concat":
                c_in = 1.0 if shape.hidden else float(shape.channels)
                c_pe = c_in if self.pos_channels is None else float(self.pos_channels)
                w_in, w_pe = c_in / (c_in + c_pe), w_pe * c_pe / (c_in + c_pe)
        v_b = self.b_std**2 if self.bias else 0.0
        return self.qk_std, gain * self.ov_std**2, gain * v_b, w_in, w_pe

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
        qk, v, v_b, w_in, w_pe = coefficients
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
            a1, a2 = mech(qk * keyed(q[0])), mech(qk * keyed(q[2]))

            def mix(a: Array | None, left: Array, right: Array, pair: bool) -> Array | None:
                if a is None:
                    return None
                if pair:
                    return jnp.einsum("isu,ijuv,jtv->ijst", left, a, right)
                return jnp.einsum("isu,iuv,itv->ist", left, a, left)

            sides = ((a1, a1, False), (a1, a2, True), (a2, a2, False))
            mq = [mix(valued(qi), left, right, pair) for qi, (left, right, pair) in zip(q, sides, strict=True)]
            new_q = [v * m + v_b for m in mq]
            if k.with_ntk:
                mt = [mix(valued(ti), left, right, pair) for ti, (left, right, pair) in zip(t, sides, strict=True)]
                new_t = [v * (a + 2 * b) + v_b for a, b in zip(mt, mq, strict=True)]
        else:  # identity attention, 1/sqrt(d_k) logits: random Gaussian logits, closed form
            s = qk**2 * v

            def dot(a: Array, b: Array) -> Array:
                return jnp.sum(a * b, axis=(-2, -1), keepdims=True)

            new_q, new_t = [], []
            for qi, ti in zip(q, t, strict=True):
                kp, kv = keyed(qi), valued(qi)
                d = dot(kp, kv)
                new_q.append(s * d * kp + v_b)
                if k.with_ntk:
                    tp, tv = keyed(ti), valued(ti)
                    new_t.append(s * ((dot(kp, tv) + dot(kv, tp)) * kp + d * (tp + 4 * kp)) + v_b)
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
        """``N(0, 1)`` weights (``sample``: the ensemble, per head), the bias and the embeddings, as in
        neural-tangents (the stds enter the forward pass)."""
        c_in = shape.fan(width)
        c_k, c_v = self._input_channels(c_in)
        d = self.head_width(width)
        k_key, k_query, k_value, k_out, k_b, k_pos = jax.random.split(key, 6)

        def heads(k: Array, fan_in: int) -> Array:
            return jnp.stack([sample(kh, (fan_in, d), dtype) for kh in jax.random.split(k, self.n_heads)])

        query = None if self.linear_scaling else heads(k_query, c_k)
        b = jax.random.normal(k_b, (out_channels,), dtype) if self.bias else None
        pos = None
        if self.positional is not None:
            pos = jax.random.normal(k_pos, (*shape.spatial, self._pos_channels(c_in)), dtype)
        return AttentionWeights(heads(k_key, c_k), query, heads(k_value, c_v), sample(k_out, (self.n_heads * d,
                                                                                             out_channels), dtype),
                                b, pos)

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
        keys = jnp.einsum("bpc,hcd->hbpd", x_k, params.key)
        queries = keys if params.query is None else jnp.einsum("bpc,hcd->hbpd", x_k, params.query)
        d_k = params.key.shape[-1]
        norm = x_k.shape[-1] * (d_k if self.linear_scaling else math.sqrt(d_k))
        logits = (self.qk_std / norm) * jnp.einsum("hbpd,hbqd->hbpq", queries, keys)
        weights = _mechanism(self.attention)(logits)
        values = jnp.einsum("bpc,hcd->hbpd", x_v, params.value)
        # heads concatenated channel-major, head-minor (neural-tangents' order, so its parameters apply as they are)
        heads = jnp.einsum("hbpq,hbqd->bpdh", weights, values).reshape(batch, x.shape[1], -1)
        d_v = params.value.shape[-1]
        out = (self.ov_std / math.sqrt(d_v * self.n_heads * x_v.shape[-1])) * (heads @ params.out)
        if params.b is not None:
            out = out + self.b_std * params.b
        return out.reshape(batch, *spatial, out.shape[-1])


__all__ = ["MECHANISMS", "AttentionWeights", "SelfAttention"]
