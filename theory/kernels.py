"""``theory.kernels(net, x1, x2)``: the infinite-width NNGP and NTK of any layer program.

Every layer maps the kernels of its input to those of its output (Neal 1996; Lee et al. 2018; Jacot et al.
2018; Novak et al. 2019 for convolutions and pooling); the maps are in :mod:`theory.layers`, the recursion
that chains them in :mod:`theory.recursion`. For an MLP the map of one hidden layer is

    q'     = w_std^2 E[phi(u) phi(v)] + b_std^2,
    Theta' = w_std^2 E[phi(u) phi(v)] + b_std^2 + w_std^2 E[phi'(u) phi'(v)] Theta,   (u, v) ~ N(0, q).

Costs: for images with ``P`` positions, ``O(N^2 P)`` per layer when only the spatial diagonal is needed (no
pooling or GlobalAvgPool later: a Flatten readout), ``O(N^2 P^2)`` otherwise, as in neural-tangents.

This module is callable: ``theory.kernels(net, x)`` is :func:`kernels`, while ``import theory.kernels``
still gives the module (its names ``Kernels``, ``KERNEL_NAMES``, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory import hermite, recursion, tiling
from theory.activations import Activation
from theory.gaussian import accurate_variance
from theory.inputs import validate_inputs
from theory.layers.base import is_concrete
from theory.layers.program import Analysis, Program, analyse, expected_spatial_dims, replace_activations
from theory.layers.program import activations as program_activations

Array = jax.Array

KERNEL_NAMES = ("nngp", "ntk")
DEFAULT_MEMORY_BUDGET = 2**30
"""Bytes of temporaries per block of the off-diagonal recursion (see ``memory_budget``)."""
TILE_BYTES = 2**28
"""Kernels that do not fit ``memory_budget`` in one call are computed in tiles of at most
``min(memory_budget, TILE_BYTES)`` bytes of temporaries: smaller tiles stay in cache
(measured on 2 cores: relu MLP N = 4,000 0.33 s at 2^28 against 0.36 s at 2^30; ReLU CNN with Flatten, N = 256,
0.19 s against 0.22 s); much smaller ones pay a dispatch each (0.26 s at 2^24 for the CNN)."""


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


class QuadratureAccuracyError(ValueError):
    """The pre-activation variances exceed the range where a chosen quadrature degree is accurate."""


def check_get(get: object) -> tuple[str, ...]:
    wanted = (get,) if isinstance(get, str) else tuple(get)  # type: ignore[arg-type]
    if not wanted or any(g not in KERNEL_NAMES for g in wanted):
        raise ValueError(f"get must name kernels among {KERNEL_NAMES}, got {get!r}")
    return wanted


def check_program(net: object) -> Program:
    if not isinstance(net, Program):
        raise ValueError(f"kernels() takes a layer program: a theory.MLP or theory.ResNet, or theory.serial(...) of "
                         f"theory.layers, got {net!r}")
    return net


def prepare(net: Program, x1: object, x2: object | None) -> tuple[Array, Array, Analysis, bool]:
    """Validate the inputs against the program; return ``(x1, x2, analysis, symmetric)`` with the
    parameter-free leading layers already applied to the inputs."""
    nd = expected_spatial_dims(net.layers)
    symmetric = x2 is None
    x1, x2 = validate_inputs(x1, x2, spatial_dims=nd, network=lambda: _short(net))
    x2 = x1 if symmetric else x2
    for name, x in (("x1", x1), ("x2", None if symmetric else x2)):
        if x is not None and is_concrete(x):
            _check_input_scale(name, np.asarray(x))
    analysis = analyse(net, recursion.shape_of(x1), kernels=True)
    for layer in analysis.prefix:
        x1 = layer.apply(None, x1)
        x2 = x1 if symmetric else layer.apply(None, x2)
    return x1, x2, analysis, symmetric


def _check_input_scale(name: str, x: np.ndarray) -> None:
    """The input kernel ``x.x' / channels`` must be representable: huge inputs overflow it before any layer."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    with np.errstate(over="ignore"):
        sq = np.sum(flat.astype(x.dtype) ** 2, axis=-1) / x.shape[-1]
    if not np.all(np.isfinite(sq)):
        big = float(np.max(np.abs(x)))
        raise ValueError(f"{name} is too large for {x.dtype.name}: entries up to {big:.3g} make the input kernel "
                         "x.x' / channels overflow before the first layer; rescale the inputs"
                         + (" (or enable float64)" if x.dtype != np.float64 else ""))


def _short(net: Program) -> str:
    text = repr(net)
    return text if len(text) <= 100 else text[:97] + "..."


def _first_full(analysis: Analysis) -> bool:
    return bool(analysis.plan) and analysis.plan[0].steps[0].full_in


def _pair_kernels(xr, xc, coeffs, plan, full, with_ntk, per_layer):
    """The kernels of every row input against every column input (``per_layer``: stacked over layers)."""
    k = recursion.input_kernel(xr, xc, full, with_ntk, recursion.carries_gap(plan, xr.dtype))
    k, _, records = recursion.apply_plan(plan, coeffs, k, recursion.new_watch(xr.shape[0], xr.dtype), per_layer)
    if per_layer:
        return recursion.concatenate_records(records)
    return k.q12, k.t12


@jax.jit(static_argnames=("plan", "full", "with_ntk", "per_layer", "block", "symmetric"))
def _evaluate(x1, x2, coeffs, *, plan, full, with_ntk, per_layer, block, symmetric):
    """The kernels of the row inputs ``x1`` against ``x2`` (in blocks of ``block`` rows), and the watch of the
    diagonal recursion of every input (the same code with an empty set of columns; one program, one compile)."""
    watch = _diagonal_watch(x1 if symmetric else jnp.concatenate([x1, x2]), coeffs, plan=plan, full=full,
                            with_ntk=with_ntk)
    n1 = x1.shape[0]
    n_blocks = -(-n1 // block)

    def rows(xr):
        return _pair_kernels(xr, x2, coeffs, plan, full, with_ntk, per_layer)

    if n_blocks == 1:
        q, t = rows(x1)
    else:
        # Pad with copies of the first row (a valid input) so that every block has the same shape.
        pad = n_blocks * block - n1
        padded = jnp.concatenate([x1, jnp.broadcast_to(x1[:1], (pad, *x1.shape[1:]))])
        q, t = jax.lax.map(rows, padded.reshape(n_blocks, block, *x1.shape[1:]))

        def unblock(a):
            if a is None:
                return None
            if per_layer:  # (blocks, layers, block, N) -> (layers, blocks * block, N)
                a = jnp.moveaxis(a, 1, 0)
                return a.reshape(a.shape[0], n_blocks * block, -1)[:, :n1]
            return a.reshape(n_blocks * block, -1)[:n1]

        q, t = unblock(q), unblock(t)
    return q, t, watch


@jax.jit(static_argnames=("plan", "full", "with_ntk", "per_layer", "size"))
def _tile(x1, x2, coeffs, window, *, plan, full, with_ntk, per_layer, size):
    """The kernels of the ``size = (rows, cols)`` tile of pairs whose first pair is ``window``."""
    xr = jax.lax.dynamic_slice_in_dim(x1, window[0], size[0])
    xc = jax.lax.dynamic_slice_in_dim(x2, window[1], size[1])
    return _pair_kernels(xr, xc, coeffs, plan, full, with_ntk, per_layer)


@jax.jit
def _symmetrize(q: Array, t: Array | None) -> tuple[Array, Array | None]:
    # Equal in exact arithmetic; the matmul and the duals round (i, j) and (j, i) differently. A separate program:
    # fused with the last layers' duals, XLA evaluates them twice (for each entry and its transpose).
    return (q + jnp.swapaxes(q, -1, -2)) / 2, None if t is None else (t + jnp.swapaxes(t, -1, -2)) / 2


def kernels(
    net: Program,
    x1: Array,
    x2: Array | None = None,
    get: str | tuple[str, ...] = KERNEL_NAMES,
    per_layer: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Kernels:
    """Infinite-width NNGP and NTK of the program ``net`` between inputs ``x1`` and ``x2``.

    ``x2=None`` means ``x2 = x1`` (then the kernels are exactly symmetric, and only the pairs on and above the
    diagonal are computed). Conventions: inputs are ``(batch, features)``, ``(batch, length, channels)`` or
    ``(batch, height, width, channels)``; the input kernel is ``x.x' / channels`` at each pair of positions;
    layers follow neural-tangents' ``stax`` (see :mod:`theory.layers`), so the results equal ``nt.stax`` kernels
    of the same network. The NTK is that of the network as trained under its layers' scalings
    (``theory.parameterize`` for muP and other abc-parameterizations). Works under ``jax.jit``, ``jax.vmap`` and
    ``jax.grad`` (with respect to the inputs, and to numbers such as ``w_std`` of a network built inside the
    function); the overflow and accuracy checks then do not run.

    Large input sets are computed in tiles of pairs (each within ``memory_budget`` bytes of temporaries) written
    into one output buffer, or, with ``out``, into files on disk: kernels larger than memory, and a run that
    stops resumes from the tiles already written (:mod:`theory.tiling`).

    Args:
      net: a layer program (``theory.serial(...)``, :class:`theory.MLP`, :class:`theory.ResNet`).
      x1, x2: inputs with the same per-example shape.
      get: ``"nngp"``, ``"ntk"`` or both; the NTK costs about twice the NNGP.
      per_layer: also return every recorded layer's kernels (top-level Dense, Conv and Residual outputs;
        spatial ones averaged over the positions' diagonal), stacked on axis 0 (MLP: ``depth + 1``; ResNet:
        stem, every block, readout, ``depth + 2``).
      memory_budget: bytes of temporaries per tile of pairs (at most :data:`TILE_BYTES`).
      out: a directory: each kernel is written to ``<out>/<name>.npy`` and returned as a read-only memory map;
        calling again with the same arguments resumes (or, when finished, just reads) the store. A directory
        holding another computation's kernels (or one made by other library code) is refused.
      progress: show a progress bar over the tiles on stderr; ``None``: when stderr is a terminal.

    Returns:
      :class:`Kernels` with ``(batch1, batch2)`` arrays (``(layers, batch1, batch2)`` if ``per_layer``), in
      the inputs' floating dtype (float64 needs ``jax.config.update("jax_enable_x64", True)``).

    Raises:
      ValueError: on malformed inputs (rank, shape mismatch, NaN/inf, complex), a program that does not fit the
        inputs (the message names the layer), an unknown ``get``, a kernel that overflows the dtype (the message
        names the layer), or an ``out`` store of another computation. An all-zero input with no bias has zero
        variance; its correlation with anything is defined as 0.
    """
    net = check_program(net)
    wanted = check_get(get)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    original, x1_in, x2_in = net, x1, x2
    net = with_series(net, x1, x2)
    x1, x2, analysis, symmetric = prepare(net, x1, x2)
    dtype = x1.dtype
    with_ntk = "ntk" in wanted
    plan = analysis.plan
    layers = net.layers[len(analysis.prefix):]
    arrays = recursion.as_arrays(recursion.coefficients(plan, layers), plan, dtype)
    full = _first_full(analysis)
    concrete = is_concrete(x1) and is_concrete(x2) and all(is_concrete(a) for a in jax.tree.leaves(arrays))
    static = dict(plan=plan, full=full, with_ntk=with_ntk, per_layer=per_layer)
    if not concrete:  # under jit / vmap / grad the values are not known here: no checks, no tiles on the host
        if out is not None:
            raise ValueError("out= writes kernels to disk and needs concrete inputs and network numbers; it cannot "
                             "run under jax.jit / vmap / grad")
        block = recursion.block_rows(x1.shape[0], x2.shape[0], plan, analysis.n_recorded,
                                     np.dtype(dtype).itemsize, with_ntk, per_layer, memory_budget)
        q, t, _ = recursion.bound_cache(_evaluate)(x1, x2, arrays, block=block, symmetric=symmetric, **static)
        return _result(*(_symmetrize(q, t) if symmetric else (q, t)), wanted)

    per_pair = recursion.pair_bytes(plan, analysis.n_recorded, np.dtype(dtype).itemsize, with_ntk, per_layer)
    fits = x1.shape[0] * x2.shape[0] * per_pair <= memory_budget  # then one call: no dispatch per tile
    layout = tiling.plan_tiles(x1.shape[0], x2.shape[0], (memory_budget if fits else min(memory_budget, TILE_BYTES))
                               // per_pair, symmetric)
    if layout.grid == (1, 1) and out is None:  # one call computes the kernels and checks the diagonals
        q, t, watch = recursion.bound_cache(_evaluate)(x1, x2, arrays, block=x1.shape[0], symmetric=symmetric,
                                                       **static)
    else:  # check the diagonals first: nothing is written for a network that overflows
        watch = _diagonal_watch(x1 if symmetric else jnp.concatenate([x1, x2]), arrays, plan=plan, full=full,
                                with_ntk=with_ntk)
    if _needs_longer_series(net, plan, watch, dtype):
        seen = float(np.max(watch.max_variance))
        longer = with_series(original, x1_in, x2_in, at_least=1.25 * seen)
        if series_bound(longer) <= seen:  # a series the user chose (not automatic) cannot be lengthened here
            raise QuadratureAccuracyError(
                f"the pre-activation variances of {_short(net)} reach {seen:.4g}, beyond the {series_bound(net):.4g} "
                "that its Hermite series was chosen for (Activation.with_series), so the kernels would not be "
                "accurate; leave the activation automatic (theory.kernels chooses the series from the variances "
                f"met) or pass hermite.choose_rule(fn, q_max={1.25 * seen:.3g})")
        return kernels(longer, x1_in, x2_in, get, per_layer, memory_budget, out, progress)
    if layout.grid == (1, 1) and out is None:
        return _result(*(_symmetrize(q, t) if symmetric else (q, t)), wanted)
    names = tuple(n for n in KERNEL_NAMES if n in wanted)
    shape = ((analysis.n_recorded,) if per_layer else ()) + (x1.shape[0], x2.shape[0])
    compute = functools.partial(recursion.bound_cache(_tile), x1, x2, arrays, size=(layout.size_r, layout.size_c),
                                **static)

    def tile(i: int, j: int) -> tuple[Array, ...]:
        window = np.array([layout.span(i, 0)[1], layout.span(j, 1)[1]], np.int32)
        q, t = compute(window)
        return tuple(a for n, a in zip(KERNEL_NAMES, (q, t), strict=True) if n in wanted)

    if out is not None:
        key = tiling.fingerprint(
            [repr(net), _functions(net), names, per_layer, np.dtype(dtype).name, layout, tiling.source_version()],
            [np.asarray(x1), np.asarray(x2), *map(np.asarray, jax.tree.leaves(arrays))])
        store = tiling.KernelStore(out, key, names, shape, dtype, layout.grid)
        pending = store.pending(layout.tiles())
        with tiling.progress_bar(len(layout.tiles()), progress, "kernels") as bar:
            bar.update(len(layout.tiles()) - len(pending))
            for i, j in pending:
                store.write(layout, i, j, [np.asarray(a) for a in tile(i, j)])
                bar.update(1)
        return Kernels(**dict(zip(names, store.read(), strict=True)))
    buffers = tuple(jnp.zeros(shape, dtype) for _ in names)
    with tiling.progress_bar(len(layout.tiles()), progress, "kernels") as bar:
        for i, j in layout.tiles():
            (r0, wr, _), (c0, wc, _) = layout.span(i, 0), layout.span(j, 1)
            buffers = tiling.place(buffers, tile(i, j), np.array([wr, wc], np.int32), np.array([r0, c0], np.int32),
                                   mirror=symmetric)
            bar.update(1)
    return Kernels(**dict(zip(names, buffers, strict=True)))


def _result(q: Array, t: Array | None, wanted: tuple[str, ...]) -> Kernels:
    return Kernels(nngp=q if "nngp" in wanted else None, ntk=t if "ntk" in wanted else None)


def _needs_longer_series(net: Program, plan: Any, watch: recursion.Watch, dtype: Any) -> bool:
    """Raise on overflow; True when the recursion met variances beyond the Hermite series' bound (the 2-D rule
    of the pre-pass underestimated them); raise when a chosen quadrature degree is outside its accurate range."""
    bad = np.asarray(watch.first_bad)
    if (bad >= 0).any():
        _raise_overflow(net, int(bad[bad >= 0].min()), dtype)
    kinks = int(watch.untracked_kinks)
    if kinks > FLOAT32_UNTRACKED_KINKS:
        raise ValueError(
            f"float32 cannot be trusted for {_short(net)}: {kinks} kinked activations (relu-type) act on kernels whose "
            "correlation gap is not carried (spatial kernels or layers other than Dense / activation / Residual), "
            "and their correlations near 1 lose the angle in float32 rounding (errors grow to ~1e-2 by depth 1,000); "
            "enable float64 with jax.config.update('jax_enable_x64', True) and pass float64 inputs")
    seen = float(np.max(watch.max_variance))
    if seen > series_bound(net):
        return True
    _check_quadrature_accuracy(plan, seen)
    return False


def _functions(net: Program) -> list[str]:
    """What identifies each activation's function beyond its name (a user lambda's code and constants)."""
    found = []
    for act in program_activations(net.layers):
        code = getattr(act.fn, "__code__", None)
        found.append(f"{getattr(act.fn, '__module__', '')}.{getattr(act.fn, '__qualname__', act.name)}"
                     + ("" if code is None else f":{code.co_code.hex()}:{code.co_consts!r}"))
    return found


FLOAT32_UNTRACKED_KINKS = 256
"""Most kinked duals a float32 recursion applies without the correlation gap before it is refused: measured on
ReLU MLPs without the gap, float32's error is 4e-5 at depth 100 and 3e-2 at depth 1,000 (growing ~depth^2)."""

SERIES_TOLERANCE = 1e-7
"""Truncation bound of the automatic Hermite series, relative to each kernel's scale (its diagonal)."""


def with_series(net: Program, x1: Any, x2: Any = None, at_least: float = 0.0) -> Program:
    """``net`` with every automatic activation (no closed form, no chosen method) given the Hermite series that
    is accurate to :data:`SERIES_TOLERANCE` at the pre-activation variances these inputs meet (at least
    ``at_least``).

    The variances are estimated by the diagonal recursion (``N`` inputs, cheap) with the 2-D rule, and the series
    chosen for 1.25 times their maximum (rounded up to a power of ``sqrt(2)``, so that nearby calls share a series
    and a compiled program); :func:`kernels` checks the variances its recursion meets against that bound.
    Activations too rough for a series (kinks) get the 2-D Gauss-Hermite rule, and so do all automatic
    activations when the inputs are traced (under ``jax.jit``); the quadrature accuracy check then applies.
    """
    autos = list(dict.fromkeys(a for a in program_activations(net.layers) if a.automatic))
    if not autos:
        return net
    fallback = _replaced(net, tuple((a, _two_d_rule(a)) for a in autos))
    if not all(is_concrete(x) for x in (x1, x2) if x is not None):
        return fallback
    try:
        seen = _diagonal_max_variance(fallback, x1, x2)
    except jax.errors.JAXTypeError:  # the network or an activation closes over traced values (inside jax.jit)
        return fallback
    bound = _bucket(max(1.25 * seen, at_least, 1.0))
    mapping = {}
    for a in autos:
        try:
            mapping[a] = _series_for(a, bound)
        except ValueError:  # beyond the longest series with the margin: try without it before refusing
            mapping[a] = _series_for(a, max(1.02 * seen, at_least))
    return _replaced(net, tuple(mapping.items()))


def _replaced(net: Program, mapping: tuple[tuple[Activation, Activation], ...]) -> Program:
    """``replace_activations``, the same object for the same arguments where they hash: a program caches its
    analysis, so a repeated call does not redo the O(depth) Python work (~30 ms at depth 1,000)."""
    try:
        return _replaced_cached(net, mapping)
    except TypeError:  # numbers held as arrays are not hashable
        return replace_activations(net, dict(mapping))


@functools.lru_cache(maxsize=32)
def _replaced_cached(net: Program, mapping: tuple[tuple[Activation, Activation], ...]) -> Program:
    return replace_activations(net, dict(mapping))


def series_bound(net: Program) -> float:
    """The largest variance the Hermite series of ``net``'s activations were chosen for (inf if none)."""
    bounds = [a.series.variance for a in program_activations(net.layers) if a.series is not None]
    return min(bounds) if bounds else float("inf")


def series_activation(act: Activation, variance: float) -> Activation:
    """``act`` with the automatic Hermite series accurate to :data:`SERIES_TOLERANCE` for pre-activation variances
    up to ``variance`` (rounded up to a power of ``sqrt(2)``; cached), or its 2-D rule where it is too rough."""
    return _series_for(act, _bucket(variance))


def _bucket(q: float) -> float:
    """Round a variance bound up to a power of sqrt(2), so that nearby calls share one cached series."""
    return float(2.0 ** (np.ceil(2 * np.log2(max(q, 1e-12))) / 2))


@functools.lru_cache(maxsize=256)
def _series_for(act: Activation, bound: float) -> Activation:
    try:
        return act.with_series(hermite.choose_rule(act.fn, bound, tol=SERIES_TOLERANCE, name=act.name))
    except hermite.RoughActivationError:
        return _two_d_rule(act)


@functools.lru_cache(maxsize=256)
def _two_d_rule(act: Activation) -> Activation:
    """``act`` with its default 2-D Gauss-Hermite degree made explicit (name and parameters kept)."""
    return dataclasses.replace(act, quadrature_degree=act.degree)


def _diagonal_max_variance(net: Program, x1: Any, x2: Any = None) -> float:
    """The largest pre-activation variance the diagonal recursion of every input meets (one program for both)."""
    x1, x2, analysis, symmetric = prepare(net, x1, x2)
    x = x1 if symmetric else jnp.concatenate([x1, x2])
    plan = analysis.plan
    arrays = recursion.as_arrays(recursion.coefficients(plan, net.layers[len(analysis.prefix):]), plan, x.dtype)
    watch = _diagonal_watch(x, arrays, plan=plan, full=_first_full(analysis))
    if (np.asarray(watch.first_bad) >= 0).any():
        return float("inf")  # overflow: let the full evaluation name the layer
    return float(np.max(watch.max_variance))


@jax.jit(static_argnames=("plan", "full", "with_ntk"))
def _diagonal_watch(x, coeffs, *, plan, full, with_ntk=False):
    _, watch, _ = recursion.apply_plan(plan, coeffs, recursion.input_kernel(x, x[:0], full, with_ntk,
                                                                          recursion.carries_gap(plan, x.dtype)),
                                       recursion.new_watch(x.shape[0], x.dtype))
    return watch


def _quadrature_activations(plan: Any) -> list[Activation]:
    found = []
    for segment in plan:
        for step in segment.steps:
            if step.quadrature and recursion.skeleton(step).activation.series is None:
                found.append(recursion.skeleton(step).activation)
            if step.branch is not None:
                found += _quadrature_activations(step.branch)
    return found


def _check_quadrature_accuracy(plan: Any, max_variance: float) -> None:
    acts = _quadrature_activations(plan)
    if acts:
        check_quadrature(min(acts, key=lambda a: a.degree), max_variance)


def check_quadrature(act: Activation, max_variance: float) -> None:
    """Raise :class:`QuadratureAccuracyError` (a ``ValueError``) when ``max_variance`` exceeds the range where
    ``act``'s chosen Gauss-Hermite degree is accurate (:func:`theory.gaussian.accurate_variance`)."""
    limit = accurate_variance(act.degree)
    if max_variance > limit:
        needed = int(np.ceil(max_variance / accurate_variance(1)))
        raise QuadratureAccuracyError(
            f"pre-activation variances reach {max_variance:.3g}, beyond {limit:.3g} where the {act.degree}-point "
            f"Gauss-Hermite rule of {act!r} is accurate to ~1e-4: leave quadrature_degree unset (the automatic "
            f"Hermite series is accurate to {SERIES_TOLERANCE:g} of the kernel's scale), or choose a degree of at "
            f"least {needed} (cost grows as its square), or reduce w_std / the input scale")


def _raise_overflow(net: Program, layer: int, dtype: np.dtype) -> None:
    hint = "switch to float64 (jax.config.update('jax_enable_x64', True))"
    if np.dtype(dtype) == np.float64:
        hint = "reduce w_std, b_std or the depth"
    else:
        hint += " or reduce w_std, b_std or the depth"
    raise ValueError(
        f"the kernel of {_short(net)} overflows {np.dtype(dtype).name}: the variance or NTK is not finite "
        f"after {net.layer_name(layer)} (this happens in the chaotic / exploding phase, where the "
        f"variance grows geometrically with depth); {hint}"
    )


class _CallableModule(types.ModuleType):
    """``theory.kernels(...)`` calls :func:`kernels`; the module stays importable as ``theory.kernels``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Kernels:
        return kernels(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["KERNEL_NAMES", "SERIES_TOLERANCE", "Kernels", "QuadratureAccuracyError", "check_quadrature", "kernels",
           "series_activation", "with_series"]
