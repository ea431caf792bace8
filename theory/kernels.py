"""Infinite-width NNGP and NTK of MLPs and depth-scaled ResNets: one recursion for both.

Every layer of both architectures is an instance of one map on the pre-activation kernel
``q`` and NTK ``Theta`` of a pair of inputs (Neal 1996; Lee et al. 2018; Jacot et al. 2018):

    E      = E[phi(u) phi(v)],   E' = E[phi'(u) phi'(v)],   (u, v) ~ N(0, q restricted to the pair)
    q'     = gamma q     + s^2 (w_std^2 E + b_std^2)
    Theta' = gamma Theta + s^2 (c_K E + c_0 + w_std^2 E' Theta)

with ``gamma = 0, s = 1`` for a plain Dense layer (MLP hidden layers and readouts) and
``gamma = 1, s = branch_scale / L**depth_exponent`` for a residual block; the branch is
independent of the skip path at initialisation, so their kernels add. The NTK coefficients are
``c_K = w_std^2, c_0 = b_std^2`` in the NTK parameterization and ``c_K = fan_in`` (the layer's
input width), ``c_0 = 1`` if the layer has a bias, in the standard one (neural-tangents'
``Dense``). The first layer reads the input kernel ``x.x' / d`` with ``Theta = 0`` and no
activation; a linear readout has no activation either.

The diagonal ``q(x, x)`` obeys the same map at correlation 1, so a pair's recursion only needs its
own two diagonals: the off-diagonal kernel is computed in blocks of rows, each block one jitted
``lax.scan`` over depth, which bounds memory for large input sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.activations import Activation
from theory.architectures import MLP, Architecture, ResNet
from theory.gaussian import accurate_variance
from theory.inputs import validate_inputs

Array = jax.Array

KERNEL_NAMES = ("nngp", "ntk")
DEFAULT_MEMORY_BUDGET = 2**30
"""Bytes of temporaries per block of the off-diagonal recursion (see ``memory_budget``)."""


@dataclass(frozen=True)
class Kernels:
    """NNGP and NTK of a network's output, ``(batch1, batch2)`` arrays (or ``(layers, ...)``
    stacked when ``per_layer=True``); a kernel that was not requested is ``None``.

    ``dtype`` is the floating-point type the recursion ran in.
    """

    nngp: Array | None = None
    ntk: Array | None = None

    @property
    def dtype(self) -> np.dtype:
        present = self.nngp if self.nngp is not None else self.ntk
        return np.dtype(present.dtype)


jax.tree_util.register_dataclass(Kernels, data_fields=["nngp", "ntk"], meta_fields=[])


class _Dense(NamedTuple):
    """Coefficients of one layer in the map above, with the multiplier folded in on the host in
    Python floats (``s^2 w^2`` rather than ``s^2 (w^2 E)``) so that no intermediate overflows:

    ``q' = gamma q + nngp_e E + nngp_0``, ``Theta' = gamma Theta + ntk_e E + ntk_0 + ntk_d E' Theta``.
    """

    gamma: float
    nngp_e: float
    nngp_0: float
    ntk_e: float
    ntk_0: float
    ntk_d: float


class _Plan(NamedTuple):
    """Static structure: first layer, ``n_repeat`` identical layers, an optional last one."""

    n_repeat: int
    last_post: str | None  # "activation", "identity" or None (no separate last layer)


def _dense(arch: Architecture, w_std: float, b_std: float, fan_in: int | None,
           gamma: float = 0.0, scale: float = 1.0) -> _Dense:
    if arch.parameterization == "ntk":
        c_k, c_0 = w_std**2, b_std**2
    else:
        c_k, c_0 = float(fan_in), (1.0 if b_std > 0 else 0.0)
    s2 = scale**2
    return _Dense(gamma, s2 * w_std**2, s2 * b_std**2, s2 * c_k, s2 * c_0, s2 * w_std**2)


def _layers(arch: Architecture, features: int) -> tuple[_Plan, tuple[_Dense, _Dense, _Dense]]:
    width = arch.width
    if isinstance(arch, MLP):
        first = _dense(arch, arch.w_std, arch.b_std, features)
        hidden = _dense(arch, arch.w_std, arch.b_std, width)
        # Hidden layers 2..L and the readout are the same map: depth repeats, no extra last layer.
        return _Plan(arch.depth, None), (first, hidden, hidden)
    if isinstance(arch, ResNet):
        stem = _dense(arch, arch.stem_w_std, 0.0, features)
        block = _dense(arch, arch.w_std, arch.b_std, width, gamma=1.0, scale=arch.branch_multiplier)
        readout = _dense(arch, arch.readout_w_std, 0.0, width)
        last_post = "activation" if arch.readout == "activation" else "identity"
        return _Plan(arch.depth, last_post), (stem, block, readout)
    raise ValueError(f"kernels() takes a theory.MLP or theory.ResNet, got {type(arch).__name__}")


class _State(NamedTuple):
    q11: Array  # (B,)   variances of the row inputs
    q12: Array  # (B, N) covariances rows x columns
    q22: Array  # (N,)   variances of the column inputs
    t11: Array | None
    t12: Array | None
    t22: Array | None


def _layer(act: Activation, dense: _Dense, post: str, state: _State, with_ntk: bool) -> _State:
    """One application of the layer map to the row diagonals, the pairs and the column diagonals."""
    q11, q12, q22 = state.q11, state.q12, state.q22
    if post == "activation":
        e11, d11 = act.expectations(q11, q11, q11, with_ntk)
        e12, d12 = act.expectations(q11[:, None], q12, q22[None, :], with_ntk)
        e22, d22 = act.expectations(q22, q22, q22, with_ntk)
    else:
        (e11, e12, e22), (d11, d12, d22) = (q11, q12, q22), (1.0, 1.0, 1.0)

    def nngp(q: Array, e: Array) -> Array:
        return dense.gamma * q + dense.nngp_e * e + dense.nngp_0

    def ntk(t: Array, e: Array, d: Array) -> Array:
        return dense.gamma * t + dense.ntk_e * e + dense.ntk_0 + dense.ntk_d * (d * t)

    if not with_ntk:
        return _State(nngp(q11, e11), nngp(q12, e12), nngp(q22, e22), None, None, None)
    return _State(
        nngp(q11, e11), nngp(q12, e12), nngp(q22, e22),
        ntk(state.t11, e11, d11), ntk(state.t12, e12, d12), ntk(state.t22, e22, d22),
    )


class _Watch(NamedTuple):
    """Per row: the first layer whose diagonal is not finite (-1 if none), and the largest
    diagonal variance met (which bounds the quadrature's accuracy)."""

    first_bad: Array
    max_variance: Array


def _watch(w: _Watch, state: _State, index: Array) -> _Watch:
    finite = jnp.isfinite(state.q11)
    if state.t11 is not None:
        finite &= jnp.isfinite(state.t11)
    first_bad = jnp.where((w.first_bad < 0) & ~finite, index, w.first_bad)
    return _Watch(first_bad, jnp.maximum(w.max_variance, jnp.where(finite, state.q11, 0)))


def _input_kernel(x1: Array, x2: Array) -> tuple[Array, Array, Array]:
    """``(|x1|^2 / d, x1.x2' / d, |x2|^2 / d)``, with identical inputs given exactly their own variance.

    The matmul and the row sums of squares round differently, so an input paired with itself
    would get a correlation a few ulps below 1; relu-type duals have infinite slope there (and sign
    networks are chaotic), which would cost half the digits of the diagonal. Identical rows are
    found by comparing their squared norms and two fixed projections (the same reduction for both
    sets, so equal rows give bitwise equal values) and get ``q12 = q11`` exactly. Computed once for
    all rows, so that blocking over rows cannot change a single bit of the result.
    """
    features = x1.shape[1]
    sq1, sq2 = jnp.sum(x1**2, axis=1) / features, jnp.sum(x2**2, axis=1) / features
    cross = x1 @ x2.T / features
    probes = jnp.stack([jnp.sin(jnp.arange(1.0, features + 1)), jnp.cos(jnp.arange(features) * 0.7)])
    probes = probes.astype(x1.dtype)
    proj1 = jnp.sum(x1[:, None, :] * probes, axis=-1)
    proj2 = jnp.sum(x2[:, None, :] * probes, axis=-1)
    same = (sq1[:, None] == sq2[None, :]) & jnp.all(proj1[:, None, :] == proj2[None, :, :], axis=-1)
    return sq1, jnp.where(same, sq1[:, None], cross), sq2


def _recursion(
    sq_rows: Array,
    cross: Array,
    sq_cols: Array,
    coeffs: tuple[_Dense, _Dense, _Dense],
    act: Activation,
    plan: _Plan,
    with_ntk: bool,
    per_layer: bool,
) -> tuple[_State | tuple[Array, Array | None], Array]:
    """Run all layers for one block of rows; return the last layer's pairs (or every layer's) and,
    per row, a :class:`_Watch` of the diagonal."""
    first, middle, last = coeffs
    zeros = (lambda a: jnp.zeros_like(a)) if with_ntk else (lambda a: None)
    state = _State(sq_rows, cross, sq_cols, zeros(sq_rows), zeros(cross), zeros(sq_cols))
    state = _layer(act, first, "input", state, with_ntk)
    bad = _watch(_Watch(jnp.full(sq_rows.shape, -1, jnp.int32), sq_rows), state, jnp.int32(0))

    def pairs(s: _State) -> tuple[Array, Array | None]:
        return s.q12, s.t12

    def step(carry: tuple[_State, Array], index: Array):
        s, b = carry
        s = _layer(act, middle, "activation", s, with_ntk)
        return (s, _watch(b, s, index)), (pairs(s) if per_layer else None)

    stacked = [jax.tree.map(lambda a: a[None], pairs(state))] if per_layer else []
    if plan.n_repeat:
        indices = jnp.arange(1, plan.n_repeat + 1, dtype=jnp.int32)
        (state, bad), ys = jax.lax.scan(step, (state, bad), indices)
        if per_layer:
            stacked.append(ys)
    if plan.last_post is not None:
        state = _layer(act, last, plan.last_post, state, with_ntk)
        bad = _watch(bad, state, jnp.int32(plan.n_repeat + 1))
        if per_layer:
            stacked.append(jax.tree.map(lambda a: a[None], pairs(state)))
    if per_layer:
        out = jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=0), *stacked)
        return out, bad
    return pairs(state), bad


def _block_rows(n_rows: int, n_cols: int, act: Activation, n_layers: int, itemsize: int,
                with_ntk: bool, per_layer: bool, budget: int) -> int:
    # Bytes held per (row, column) pair while one block is processed: the activation's
    # temporaries (degree^2 node values for quadrature) and, per layer if stacked, the output.
    per_pair = 64 if act.has_closed_form else 6 * act.quadrature_degree**2
    per_pair += (n_layers if per_layer else 1) * (2 if with_ntk else 1) * 2
    rows = max(1, budget // max(1, n_cols * per_pair * itemsize))
    # Equal blocks: the last one is padded, so spread the rows evenly over the blocks needed.
    n_blocks = -(-n_rows // rows)
    return -(-n_rows // n_blocks)


@jax.jit(static_argnames=("act", "plan", "with_ntk", "per_layer", "block", "symmetric"))
def _kernels_blocked(x1, x2, coeffs, *, act, plan, with_ntk, per_layer, block, symmetric):
    q, t = _kernels_rows(x1, x2, coeffs, act, plan, with_ntk, per_layer, block)
    if symmetric:
        # Equal in exact arithmetic; the matmul and quadrature round (i, j) and (j, i) differently.
        q = (q + jnp.swapaxes(q, -1, -2)) / 2
        t = None if t is None else (t + jnp.swapaxes(t, -1, -2)) / 2
    return q, t


def _kernels_rows(x1, x2, coeffs, act, plan, with_ntk, per_layer, block):
    sq1, cross, sq2 = _input_kernel(x1, x2)
    n1 = x1.shape[0]
    n_blocks = -(-n1 // block)
    if n_blocks == 1:
        (q, t), _ = _recursion(sq1, cross, sq2, coeffs, act, plan, with_ntk, per_layer)
        return q, t
    # Pad with copies of the first row (a valid input) so that every block has the same shape.
    pad = n_blocks * block - n1
    sq1 = jnp.concatenate([sq1, jnp.broadcast_to(sq1[:1], (pad,))]).reshape(n_blocks, block)
    cross = jnp.concatenate([cross, jnp.broadcast_to(cross[:1], (pad, cross.shape[1]))])

    def one_block(rows):
        out, _ = _recursion(rows[0], rows[1], sq2, coeffs, act, plan, with_ntk, per_layer)
        return out

    q, t = jax.lax.map(one_block, (sq1, cross.reshape(n_blocks, block, -1)))

    def unblock(a):
        if a is None:
            return None
        if per_layer:  # (blocks, layers, block, N) -> (layers, blocks * block, N)
            a = jnp.moveaxis(a, 1, 0)
            return a.reshape(a.shape[0], n_blocks * block, -1)[:, :n1]
        return a.reshape(n_blocks * block, -1)[:n1]

    return unblock(q), unblock(t)


@jax.jit(static_argnames=("act", "plan", "with_ntk"))
def _watch_diagonal(x, coeffs, *, act, plan, with_ntk):
    # The diagonal recursion alone: the same code with an empty set of columns.
    sq = jnp.sum(x**2, axis=1) / x.shape[1]
    _, bad = _recursion(sq, jnp.zeros((x.shape[0], 0), x.dtype), sq[:0], coeffs, act, plan, with_ntk, False)
    return bad


def kernels(
    arch: Architecture,
    x1: Array,
    x2: Array | None = None,
    get: str | tuple[str, ...] = KERNEL_NAMES,
    per_layer: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Kernels:
    """Infinite-width NNGP and NTK of ``arch`` between inputs ``x1`` and ``x2``.

    Computes the recursion in the module docstring for every pair (``x1[i]``, ``x2[j]``);
    ``x2=None`` means ``x2 = x1`` (then the kernels are exactly symmetric). Conventions: inputs
    have shape ``(batch, features)``; the first layer's input kernel is ``x.x' / features``; Dense
    layers follow neural-tangents' ``Dense`` in the chosen ``parameterization`` (see
    :mod:`theory.architectures`), so the results equal ``nt.stax`` kernels of the same network.

    Args:
      arch: a :class:`theory.MLP` or :class:`theory.ResNet`.
      x1, x2: inputs, ``(batch1, features)`` and ``(batch2, features)``.
      get: ``"nngp"``, ``"ntk"`` or both; the NTK costs about twice the NNGP.
      per_layer: also return every layer's kernels, stacked on axis 0 (MLP: each Dense layer's
        pre-activations, ``depth + 1``; ResNet: stem, every block, readout, ``depth + 2``).
      memory_budget: bytes of temporaries per block of rows; large input sets are processed in
        blocks of rows so that ``N = 20,000`` fits in a few GiB.

    Returns:
      :class:`Kernels` with ``(batch1, batch2)`` arrays (``(layers, batch1, batch2)`` if
      ``per_layer``), in the inputs' floating dtype. Enable float64 with
      ``jax.config.update("jax_enable_x64", True)`` before creating arrays; without it JAX
      computes in float32.

    Raises:
      ValueError: on malformed inputs (rank, feature mismatch, NaN/inf), an unknown ``get``, or a
        kernel that overflows the dtype (the message names the layer). An all-zero input with
        ``b_std = 0`` has zero variance; its correlation with anything is defined as 0.
    """
    if not isinstance(arch, (MLP, ResNet)):
        raise ValueError(f"kernels() takes a theory.MLP or theory.ResNet, got {arch!r}")
    wanted = (get,) if isinstance(get, str) else tuple(get)
    unknown = [g for g in wanted if g not in KERNEL_NAMES]
    if unknown or not wanted:
        raise ValueError(f"get must name kernels among {KERNEL_NAMES}, got {get!r}")
    symmetric = x2 is None
    x1, x2 = validate_inputs(x1, x2)
    x2 = x1 if symmetric else x2
    dtype = x1.dtype
    if not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")

    plan, layer_coeffs = _layers(arch, x1.shape[1])
    coeffs = tuple(_Dense(*(jnp.asarray(c, dtype) for c in layer)) for layer in layer_coeffs)
    with_ntk = "ntk" in wanted
    act = arch.activation

    if not isinstance(x1, jax.core.Tracer) and not isinstance(x2, jax.core.Tracer):
        everything = x1 if symmetric else jnp.concatenate([x1, x2])
        watch = _watch_diagonal(everything, coeffs, act=act, plan=plan, with_ntk=with_ntk)
        bad = np.asarray(watch.first_bad)
        if (bad >= 0).any():
            _raise_overflow(arch, int(bad[bad >= 0].min()), dtype)
        if not act.has_closed_form:
            _warn_quadrature_accuracy(act, float(np.max(watch.max_variance)))

    block = _block_rows(x1.shape[0], x2.shape[0], act, arch.n_layers, np.dtype(dtype).itemsize,
                        with_ntk, per_layer, memory_budget)
    q, t = _kernels_blocked(x1, x2, coeffs, act=act, plan=plan, with_ntk=with_ntk,
                            per_layer=per_layer, block=block, symmetric=symmetric)
    return Kernels(nngp=q if "nngp" in wanted else None, ntk=t)


class QuadratureAccuracyWarning(UserWarning):
    """The pre-activation variances exceed the range where the quadrature degree is accurate."""


def _warn_quadrature_accuracy(act: Activation, max_variance: float) -> None:
    limit = accurate_variance(act.quadrature_degree)
    if max_variance > limit:
        warnings.warn(
            f"pre-activation variances reach {max_variance:.3g}, beyond {limit:.3g} where the "
            f"{act.quadrature_degree}-point Gauss-Hermite rule of {act!r} is accurate to ~1e-4; "
            "the kernels may be off by more (see theory.gaussian). Raise quadrature_degree "
            "(cost grows as its square) or reduce w_std / the input scale.",
            QuadratureAccuracyWarning,
            stacklevel=3,
        )


def _raise_overflow(arch: Architecture, layer: int, dtype: np.dtype) -> None:
    hint = "switch to float64 (jax.config.update('jax_enable_x64', True))"
    if np.dtype(dtype) == np.float64:
        hint = "reduce w_std, b_std or the depth"
    else:
        hint += " or reduce w_std, b_std or the depth"
    raise ValueError(
        f"the kernel of {arch!r} overflows {np.dtype(dtype).name}: the variance or NTK is not finite "
        f"after {arch.layer_name(layer)} (this happens in the chaotic / exploding phase, where the "
        f"variance grows geometrically with depth); {hint}"
    )


__all__ = ["KERNEL_NAMES", "Kernels", "QuadratureAccuracyWarning", "kernels"]
