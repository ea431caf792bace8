"""The shared kernel recursion: a program's plan applied to a :class:`~theory.layers.KernelState`.

``theory.kernels`` and ``theory.depth_limits`` both run programs through here. A plan
(:func:`theory.layers.analyse`) is a sequence of segments; a segment of ``count`` identical units is one
``lax.scan`` over the units' coefficients (stacked on the host), so compile time does not grow with depth.
Coefficients (``w_std^2``, ``b_std^2``, a residual ``scale^2`` folded into its branch's last weight layer, ...)
are computed on the host in double precision when they are concrete, and passed as arrays: the compiled
program depends only on the plan's structure, not on its numbers.

The diagonal ``q(x, x)`` obeys the same maps as the pairs, so a block of rows needs only its own and the
columns' diagonals: the kernels of large input sets are computed in blocks of rows (``block_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory import gap
from theory.layers.base import KernelState, Layer, Shape, is_concrete
from theory.layers.program import Segment, Step

Array = jax.Array


class Watch(NamedTuple):
    """Per row input: the first recorded layer whose diagonal kernels are not finite (-1 if none), and the
    largest pre-activation variance met by a quadrature activation (which bounds the quadrature's accuracy);
    and the number of kinked duals applied in float32 without the correlation gap (:mod:`theory.gap`)."""

    first_bad: Array
    max_variance: Array
    untracked_kinks: Array


def new_watch(n_rows: int, dtype: Any) -> Watch:
    return Watch(jnp.full((n_rows,), -1, jnp.int32), jnp.zeros((n_rows,), dtype), jnp.zeros((), jnp.int32))


# -- inputs ----------------------------------------------------------------------------------------------------
GAP_KINKS = 128
"""float32 recursions through more kinked duals (relu family, sign) than this carry the correlation gap
(:mod:`theory.gap`); below, float32 is within 1e-4 of float64 without it (measured: 4e-7 at depth 10, 4e-5 at
depth 100 for a relu MLP's NTK), and the gap's extra work per pair (up to 2.6x on an erf MLP) is not spent."""


def kinked_duals(plan: Sequence[Segment]) -> int:
    """How many kinked duals (activations with a gap dual) the plan applies, branches included."""
    count = 0
    for segment in plan:
        per_unit = 0
        for step in segment.steps:
            act = getattr(skeleton(step), "activation", None)
            per_unit += getattr(act, "gap_dual", None) is not None
            if step.branch is not None:
                per_unit += kinked_duals(step.branch)
        count += per_unit * segment.count
    return count


def carries_gap(plan: Sequence[Segment], dtype: Any) -> bool:
    """Whether the recursion of ``plan`` in ``dtype`` carries the correlation gap (float32, deep and kinked)."""
    return np.dtype(dtype) == np.float32 and kinked_duals(plan) > GAP_KINKS


def input_kernel(x1: Array, x2: Array, full: bool, with_ntk: bool, gap_rows: bool = False) -> KernelState:
    """The kernels of the raw inputs: ``x.x' / channels`` at every pair of positions (``full``) or at equal
    positions, with zero NTK. Identical examples get exactly their own kernel.

    The matmul and the sums of squares round differently, so an input paired with itself would get a
    correlation a few ulps below 1; relu-type duals have infinite slope there (and sign networks are
    chaotic). Identical examples are found by two integer fingerprints of their bits (``_fingerprints``) and
    get ``q12 = q11`` here and after every layer (``pin_self_pairs``).
    """
    n1, n2 = x1.shape[0], x2.shape[0]
    spatial = tuple(x1.shape[1:-1])
    channels = x1.shape[-1]
    size = int(np.prod(x1.shape[1:]))
    f1, f2 = x1.reshape(n1, size), x2.reshape(n2, size)
    if not spatial:
        q11, q22 = jnp.sum(x1**2, axis=1) / channels, jnp.sum(x2**2, axis=1) / channels
        q12 = x1 @ x2.T / channels
    else:
        positions = int(np.prod(spatial))
        p1, p2 = x1.reshape(n1, positions, channels), x2.reshape(n2, positions, channels)
        if full:
            q11 = jnp.einsum("iac,ibc->iab", p1, p1) / channels
            q22 = jnp.einsum("iac,ibc->iab", p2, p2) / channels
            q12 = jnp.einsum("iac,jbc->ijab", p1, p2) / channels
            shape = spatial + spatial
        else:
            q11, q22 = jnp.sum(p1**2, axis=-1) / channels, jnp.sum(p2**2, axis=-1) / channels
            q12 = jnp.einsum("iac,jac->ija", p1, p2) / channels
            shape = spatial
        q11, q22 = q11.reshape(n1, *shape), q22.reshape(n2, *shape)
        q12 = q12.reshape(n1, n2, *shape)
    h1, h2 = _fingerprints(f1), _fingerprints(f2)
    same = jnp.all(h1[:, None, :] == h2[None, :, :], axis=-1)
    q12 = _exact_self_pairs(same.reshape(n1, n2, *(1,) * (q12.ndim - 2)), q11[:, None], q12)
    # The input NTK is 0. For spatial kernels a value computed from the inputs, not a constant: XLA constant-folds
    # layers applied to a constant (a Conv's window sums of zeros on every pair of a tile: 8 s of compilation for
    # 86 x 86 pairs of 8 x 8 images, 69 s for 256 x 256).
    zeros = (lambda a: (0 * a) if spatial else jnp.zeros_like(a)) if with_ntk else (lambda a: None)
    # float32 vectors of deep kinked networks carry the correlation gap (theory.gap, carries_gap); float64 resolves
    # correlations to 1e-16 without it.
    g12 = gap.initial(q11[:, None], q12, q22[None]) if gap_rows and not spatial else None
    return KernelState(q11, q12, q22, zeros(q11), zeros(q12), zeros(q22), spatial, full and bool(spatial), g12,
                       same)


def pin_self_pairs(k: KernelState) -> KernelState:
    """``k`` with the pairs of identical inputs (``k.same``) set to each input's own kernel.

    The pair path and the variance path of a layer round differently; at correlation 1 a chaotic map (slope
    above 1 there) multiplies that last-bit difference every layer (a cos ResNet of depth 16 moved its diagonal
    by 3e-4), so the pairs are pinned after every layer, not only at the input.
    """
    if k.same is None:
        return k
    same = k.same.reshape(k.same.shape + (1,) * (k.q12.ndim - 2))
    q12 = _exact_self_pairs(same, k.q11[:, None], k.q12)
    t12 = None if k.t12 is None else _exact_self_pairs(same, k.t11[:, None], k.t12)
    g12 = None if k.g12 is None else _exact_self_pairs(same, jnp.zeros_like(k.g12), k.g12)
    return k.replace(q12=q12, t12=t12, g12=g12)


def _fingerprints(f: Array) -> Array:
    """Two integer hashes of each row's bits, ``(n, 2)``, equal for equal rows whatever the batch.

    Float sums of the same row round differently in batches of different sizes (XLA vectorises them by shape:
    a row's sum of squares differed by one ulp between a batch of 7 and one of 2 under ``jit``), so equal rows
    must be recognised by integer arithmetic, which is exact modulo ``2^bits`` in any order. Each hash is
    ``sum_f mix(bits(x_f)) c_f`` with odd per-feature constants ``c_f``; ``-0.0`` counts as ``0.0``.
    """
    if jnp.dtype(f.dtype).itemsize < 4:
        f = f.astype(jnp.float32)  # exact
    wide = jnp.dtype(f.dtype).itemsize == 8
    utype, shift = (jnp.uint64, 31) if wide else (jnp.uint32, 15)
    bits = jax.lax.bitcast_convert_type(jnp.where(f == 0, jnp.zeros_like(f), f), utype)
    bits = bits ^ (bits >> shift)
    index = np.arange(1, f.shape[1] + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        c = np.stack([index * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0xD1B54A32D192ED03),
                      (index ^ np.uint64(0x5851F42D4C957F2D)) * np.uint64(0xBF58476D1CE4E5B9)])
    c = (c | np.uint64(1)) if wide else ((c >> np.uint64(32)) | np.uint64(1)).astype(np.uint32)
    return jnp.sum(bits[:, None, :] * jnp.asarray(c, utype), axis=-1, dtype=utype)


@jax.custom_jvp
def _exact_self_pairs(same: Array, own: Array, cross: Array) -> Array:
    """``own`` where ``same`` (bitwise the input's own kernel), else ``cross``; differentiated as ``cross``,
    which it equals in exact arithmetic (so gradients with respect to either input stay right)."""
    return jnp.where(same, own, cross)


@_exact_self_pairs.defjvp
def _exact_self_pairs_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    same, own, cross = primals
    return _exact_self_pairs(same, own, cross), tangents[2]


# -- coefficients ----------------------------------------------------------------------------------------------
def _as_array(value: Any, dtype: Any) -> Any:
    return np.asarray(value, dtype) if is_concrete(value) else jnp.asarray(value, dtype)


def _stack(values: Sequence[Any], dtype: Any) -> Any:
    if all(is_concrete(v) for v in values):
        return np.asarray(np.array(values, dtype=np.float64), dtype)
    return jnp.stack([jnp.asarray(v, dtype) for v in values])


def step_coefficients(step: Step, layer: Layer, gain: Any = 1.0) -> Any:
    """Host-side numbers of one step (a Residual: ``(combine gain, branch coefficients)``)."""
    if step.branch is None:
        return layer.coefficients(step.shape_in, gain)
    return residual_coefficients(step, layer, gain * layer.scale**2)


def residual_coefficients(step: Step, layer: Layer, gain: Any) -> tuple[Any, Any]:
    """``(combine gain, branch coefficients)`` of a Residual whose branch kernel is multiplied by ``gain``
    (``scale^2``; ``branch_scale^2`` for the depth-limit ODE): folded into the branch's last weight layer
    when only scale-commuting layers follow it, so that no intermediate overflows."""
    if step.fold >= 0:
        return 1.0, coefficients(step.branch, layer.branch, gains={step.fold: gain})
    return gain, coefficients(step.branch, layer.branch)


def _unit_coefficients(steps: Sequence[Step], repeat: Sequence[Layer], base: int, gains: dict[int, Any],
                       cache: dict[int, Any]) -> tuple:
    values = []
    for j, (step, layer) in enumerate(zip(steps, repeat, strict=True)):
        if base + j in gains:
            values.append(step_coefficients(step, layer, gains[base + j]))
            continue
        key = (id(layer), step.shape_in)  # MLP / ResNet repeat one layer object: its numbers once
        if key not in cache:
            cache[key] = step_coefficients(step, layer)
        values.append(cache[key])
    return tuple(values)


def coefficients(plan: Sequence[Segment], layers: Sequence[Layer], gains: dict[int, Any] | None = None) -> Any:
    """Coefficients of every step of ``plan`` as Python numbers (or tracers), a run's as lists over its
    repeats. ``layers`` are the plan's layers in order; ``gains`` multiply the kernel map of the layer at a
    given index (a residual branch's folded ``scale^2``)."""
    gains = gains or {}
    cache: dict[int, Any] = {}
    out = []
    position = 0
    for segment in plan:
        width = len(segment.steps)
        repeats = [layers[position + r * width:position + (r + 1) * width] for r in range(segment.count)]
        per_repeat = [_unit_coefficients(segment.steps, rep, position + r * width, gains, cache)
                      for r, rep in enumerate(repeats)]
        if segment.count == 1:
            out.append(per_repeat[0])
        else:
            out.append(jax.tree.map(lambda *xs: list(xs), *per_repeat))
        position += segment.count * width
    return tuple(out)


def as_arrays(coeffs: Any, plan: Sequence[Segment], dtype: Any) -> Any:
    """Coefficients as arrays of ``dtype`` (a run's as ``(count,)`` arrays)."""
    out = []
    for segment, values in zip(plan, coeffs, strict=True):
        if segment.count == 1:
            out.append(jax.tree.map(lambda v: _as_array(v, dtype), values))
        else:
            out.append(jax.tree.map(lambda v: _stack(v, dtype), values, is_leaf=lambda v: isinstance(v, list)))
    return tuple(out)


# -- the recursion -----------------------------------------------------------------------------------------------
def skeleton(step: Step) -> Layer:
    """The step's layer with its numbers stripped (the kernel maps read numbers from the coefficients)."""
    return jax.tree.unflatten(step.treedef, [None] * step.treedef.num_leaves)


def _finite_rows(k: KernelState) -> Array:
    axes = tuple(range(1, k.q11.ndim))
    ok = jnp.all(jnp.isfinite(k.q11), axis=axes) if axes else jnp.isfinite(k.q11)
    if k.t11 is not None:
        ok &= jnp.all(jnp.isfinite(k.t11), axis=axes) if axes else jnp.isfinite(k.t11)
    return ok


def _watch_record(w: Watch, k: KernelState, index: Array) -> Watch:
    bad = (w.first_bad < 0) & ~_finite_rows(k)
    return w._replace(first_bad=jnp.where(bad, index, w.first_bad))


def _watch_variance(w: Watch, k: KernelState) -> Watch:
    v, _ = k.position_variances()
    v = jnp.max(v, axis=tuple(range(1, v.ndim))) if v.ndim > 1 else v
    return w._replace(max_variance=jnp.maximum(w.max_variance, jnp.where(jnp.isfinite(v), v, 0)))


def _pairs(k: KernelState) -> tuple[Array, Array | None]:
    mean = k.spatial_mean()
    return mean.q12, mean.t12


def apply_steps(steps: Sequence[Step], coeffs: Sequence[Any], k: KernelState, watch: Watch, offset: Any,
                per_layer: bool) -> tuple[KernelState, Watch, list]:
    """Apply one unit's steps; ``offset`` is added to the recorded-layer indices (a run's iteration)."""
    records = []
    for step, c in zip(steps, coeffs, strict=True):
        if k.full and not step.full_in:
            k = k.to_diagonal()
        layer = skeleton(step)
        if step.quadrature:
            watch = _watch_variance(watch, k)
        kinked = getattr(getattr(layer, "activation", None), "gap_dual", None) is not None
        if kinked and k.g12 is None and k.q12.dtype == jnp.float32:
            watch = watch._replace(untracked_kinks=watch.untracked_kinks + 1)
        if step.branch is not None:
            gain, inner = c
            branch_k, watch, _ = apply_plan(step.branch, inner, k, watch, per_layer=False)
            k = layer.combine(k, branch_k, gain)
        else:
            k = layer.kernel(k, c)
        k = pin_self_pairs(k)
        if step.record >= 0:
            watch = _watch_record(watch, k, jnp.int32(step.record) + offset)
            if per_layer:
                records.append(_pairs(k))
    return k, watch, records


def apply_plan(plan: Sequence[Segment], coeffs: Sequence[Any], k: KernelState, watch: Watch,
               per_layer: bool = False) -> tuple[KernelState, Watch, list]:
    """Run ``plan`` on ``k``; return the final state, the watch and (``per_layer``) the recorded layers'
    pair kernels ``[(q12, t12), ...]``, each with a leading layer axis."""
    records: list = []
    for segment, c in zip(plan, coeffs, strict=True):
        per_unit = sum(1 for s in segment.steps if s.record >= 0)
        if segment.count == 1:
            k, watch, recs = apply_steps(segment.steps, c, k, watch, jnp.int32(0), per_layer)
            records += [jax.tree.map(lambda a: a[None], r) for r in recs]
            continue

        def body(carry: tuple, xs: Any, steps: tuple[Step, ...] = segment.steps, per_unit: int = per_unit):
            state, w, i = carry
            state, w, recs = apply_steps(steps, xs, state, w, i * per_unit, per_layer)
            return (state, w, i + 1), tuple(recs)

        (k, watch, _), ys = jax.lax.scan(body, (k, watch, jnp.int32(0)), c, length=segment.count)
        if per_layer and ys:
            # ys: per recorded step of the unit, (count, ...) arrays; interleave them in layer order.
            stacked = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *ys)
            records.append(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), stacked))
    return k, watch, records


def concatenate_records(records: list) -> tuple[Array, Array | None]:
    q = jnp.concatenate([r[0] for r in records], axis=0)
    t = None if records[0][1] is None else jnp.concatenate([r[1] for r in records], axis=0)
    return q, t


# -- memory ------------------------------------------------------------------------------------------------------
def pair_elements(plan: Sequence[Segment]) -> tuple[int, int]:
    """Per pair of inputs: the largest number of kernel entries a layer holds, and the largest
    ``entries * degree^2`` of a quadrature activation (its temporaries)."""
    largest, quad = 1, 0
    for segment in plan:
        for step in segment.steps:
            n = int(np.prod(step.shape_in.spatial)) if step.shape_in.spatial else 1
            n = n * n if step.full_in else n
            largest = max(largest, n)
            if step.quadrature:
                act = skeleton(step).activation
                quad = max(quad, n * (4 if act.series is not None else act.degree**2))
            if step.branch is not None:
                a, b = pair_elements(step.branch)
                largest, quad = max(largest, a), max(quad, b)
    return largest, quad


def pair_bytes(plan: Sequence[Segment], n_recorded: int, itemsize: int, with_ntk: bool, per_layer: bool) -> int:
    """Bytes of temporaries held per (row, column) pair of inputs while a block of pairs is evaluated."""
    entries, quad = pair_elements(plan)
    # The activation's temporaries (degree^2 node values for quadrature) and the state, and, per layer if
    # stacked, the output.
    per_pair = max(64 * entries, 6 * quad)
    per_pair += (n_recorded if per_layer else 1) * (2 if with_ntk else 1) * 2
    return per_pair * itemsize


def block_rows(n_rows: int, n_cols: int, plan: Sequence[Segment], n_recorded: int, itemsize: int,
               with_ntk: bool, per_layer: bool, budget: int) -> int:
    """Rows per block so that one block's temporaries stay within ``budget`` bytes (equal blocks)."""
    per_pair = pair_bytes(plan, n_recorded, itemsize, with_ntk, per_layer)
    rows = max(1, budget // max(1, n_cols * per_pair))
    n_blocks = -(-n_rows // rows)
    return -(-n_rows // n_blocks)


MAX_COMPILED = 128
"""Compiled programs an engine function keeps before its cache is dropped: each XLA CPU executable holds ~120
memory maps, and a process that exceeds the kernel's map limit (65,530 by default, ~550 executables) dies in
LLVM ("Unable to allocate section memory"). Sweeps over many depths or architectures in one session would."""


def bound_cache(fn: Any) -> Any:
    """``fn`` (a jitted function) with its compiled-program cache emptied when it holds ``MAX_COMPILED``."""
    size = getattr(fn, "_cache_size", None)
    if size is not None and size() >= MAX_COMPILED:
        fn.clear_cache()
    return fn


def shape_of(x: Array) -> Shape:
    """Per-example shape of raw inputs ``x``: ``(batch, *spatial, channels)``."""
    return Shape(tuple(int(s) for s in x.shape[1:-1]), int(x.shape[-1]), False)


__all__ = [
    "Watch",
    "apply_plan",
    "apply_steps",
    "as_arrays",
    "block_rows",
    "bound_cache",
    "carries_gap",
    "coefficients",
    "concatenate_records",
    "input_kernel",
    "kinked_duals",
    "new_watch",
    "pair_bytes",
    "pin_self_pairs",
    "residual_coefficients",
    "shape_of",
    "skeleton",
    "step_coefficients",
]
