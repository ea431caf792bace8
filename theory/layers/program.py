"""The layer program: a frozen sequence of layers, and its static analysis.

``serial(*layers)`` builds a :class:`Serial` program; ``theory.MLP`` and ``theory.ResNet`` are programs too.
Every consumer (``theory.kernels``, the depth limits, ``experiments.networks``, training) reads a program the
same way: :func:`analyse` checks it against an input shape (shapes, which layers may read which, the
readout), says which kernels must keep every pair of spatial positions, and groups consecutive identical
units of layers into runs that are applied by one ``lax.scan`` (so that compile time does not grow with
depth). "Recorded" layers are the top-level weight layers and residual blocks: the layers whose outputs
``per_layer`` kernels, ``networks.apply(..., per_layer=True)`` and training report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax

from theory.layers.base import INPUT_STREAM, Layer, Shape, Stream, WeightScaling, pytree
from theory.layers.elementwise import Elementwise
from theory.layers.pooling import AvgPool
from theory.layers.residual import Identity, Residual
from theory.layers.weighted import Dense, WeightLayer

PyTreeDef = Any


class Program:
    """A network as a sequence of layers (subclasses: :class:`Serial`, ``theory.MLP``, ``theory.ResNet``).

    Subclasses provide ``layers``, the tuple of layers (a field or a property).
    """

    layers: tuple[Layer, ...]

    def segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        """The layers grouped into runs: each segment is a tuple of repeats of one unit (a tuple of layers).
        Default: consecutive structurally identical units of up to 4 layers, found greedily."""
        return find_runs(self.layers)

    @property
    def n_recorded(self) -> int:
        """Number of recorded layers (top-level Dense / Conv / Residual)."""
        return sum(1 for layer in self.layers if _recorded(layer))

    @property
    def n_layers(self) -> int:
        """Alias of :attr:`n_recorded` (the layers of ``per_layer`` kernels)."""
        return self.n_recorded

    def layer_name(self, index: int) -> str:
        """Human name of recorded layer ``index`` (0-based, as on axis 0 of ``per_layer`` kernels)."""
        total = self.n_recorded
        if index == total - 1:
            return f"the readout (layer {index + 1} of {total})"
        return f"layer {index + 1} of {total} ({_recorded_layers(self.layers)[index].name})"

    def recorded_names(self) -> tuple[str, ...]:
        """Short names of the recorded layers (table columns): ``"layer 1"``, ..., ``"output"``."""
        total = self.n_recorded
        return tuple("output" if i == total - 1 else f"layer {i + 1}" for i in range(total))

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def _recorded(layer: Layer) -> bool:
    return layer.weight_layer or isinstance(layer, Residual)


def _recorded_layers(layers: Sequence[Layer]) -> list[Layer]:
    return [layer for layer in layers if _recorded(layer)]


@pytree("layers")
@dataclasses.dataclass(frozen=True)
class Serial(Program):
    """A program given by its layers. ``names`` optionally overrides :meth:`recorded_names` (a transformed
    MLP or ResNet keeps its names)."""

    layers: tuple[Layer, ...]
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        flat = flatten_layers(self.layers)
        object.__setattr__(self, "layers", flat)
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))

    def recorded_names(self) -> tuple[str, ...]:
        return self.names if self.names is not None else super().recorded_names()

    def segments(self) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
        return _cached_runs(self)


def flatten_layers(layers: Sequence[Any]) -> tuple[Layer, ...]:
    """Layers, with nested programs spliced in; anything else is an error naming its position."""
    out: list[Layer] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Layer):
            out.append(layer)
        elif isinstance(layer, Program):
            out.extend(layer.layers)
        else:
            raise ValueError(f"serial: argument {i + 1} is not a layer (theory.layers.Dense, Conv, Elementwise, ...) "
                             f"or a program, got {layer!r}")
    if not out:
        raise ValueError("serial needs at least one layer (the last must be a Dense readout)")
    return tuple(out)


def serial(*layers: Layer | Program) -> Serial:
    """The program applying ``layers`` in order (nested programs are spliced in)."""
    return Serial(tuple(layers))


# -- runs ----------------------------------------------------------------------------------------------------
MAX_UNIT = 4


def find_runs(layers: Sequence[Layer]) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
    """Greedy grouping of consecutive repeats of a unit of 1..4 structurally identical layers (same type and
    static fields; numbers may differ). Each segment is a tuple of repeats."""
    keys = [jax.tree.structure(layer) for layer in layers]
    n = len(layers)
    segments: list[tuple[tuple[Layer, ...], ...]] = []
    i = 0
    while i < n:
        best_p, best_r = 1, 1
        for p in range(1, MAX_UNIT + 1):
            r = 1
            while i + (r + 1) * p <= n and keys[i + r * p:i + (r + 1) * p] == keys[i:i + p]:
                r += 1
            if r >= 2 and p * r > best_p * best_r:
                best_p, best_r = p, r
        segments.append(tuple(tuple(layers[i + j * best_p:i + (j + 1) * best_p]) for j in range(best_r)))
        i += best_p * best_r
    return tuple(segments)


def _cached_runs(program: Serial) -> tuple[tuple[tuple[Layer, ...], ...], ...]:
    cached = program.__dict__.get("_runs")
    if cached is None:
        cached = find_runs(program.layers)
        object.__setattr__(program, "_runs", cached)
    return cached


# -- analysis ------------------------------------------------------------------------------------------------
class Step(NamedTuple):
    """One layer in a plan (static): where it is, its shapes, what its input kernel must keep."""

    treedef: PyTreeDef
    position: int
    shape_in: Shape
    shape_out: Shape
    full_in: bool
    record: int  # index among recorded layers (-1 if not recorded); in a run: the first repeat's
    branch: tuple[Segment, ...] | None
    fold: int  # Residual: branch step whose weights carry scale^2 (-1: the branch output is scaled)
    quadrature: bool


class Segment(NamedTuple):
    steps: tuple[Step, ...]
    count: int


class Analysis(NamedTuple):
    """A program checked against an input shape.

    ``prefix``: leading layers without parameters, applied to the raw inputs (their output is still a
    function of the inputs alone); ``plan``: the rest, as segments; ``layers``: per segment, the repeats'
    layer objects (aligned with ``plan``); ``n_recorded``; ``shape_out``: ``((), n_out)``.
    """

    prefix: tuple[Layer, ...]
    plan: tuple[Segment, ...]
    layers: tuple[tuple[tuple[Layer, ...], ...], ...]
    n_recorded: int
    shape_in: Shape
    shape_out: Shape


def _where(position: int, layer: Layer, total: int, context: str) -> str:
    return f"{context}layer {position + 1} of {total} ({layer.name})"


def _has_weights(layers: Sequence[Layer]) -> bool:
    """Whether a weight layer whose output is a fresh Gaussian (Dense, Conv, SelfAttention; not an affine
    LayerNorm, a function of its input) sits on the path."""
    return any(layer.weight_layer and getattr(layer, "independent_branch", True) for layer in layers)


class _Walker:
    """Forward pass of shapes and streams over segments, with error messages that name the layer."""

    def __init__(self, total: int, context: str) -> None:
        self.total = total
        self.context = context
        self.position = 0
        self.record = 0

    def unit(self, layers: tuple[Layer, ...], shape: Shape, stream: Stream, top: bool
             ) -> tuple[list[dict], Shape, Stream]:
        steps = []
        for layer in layers:
            where = _where(self.position, layer, self.total, self.context)
            branch = None
            fold = -1
            if isinstance(layer, Residual):
                inner = _Walker(len(layer.branch), f"{where}, branch ")
                branch_segments, b_shape, b_stream = inner.segments(
                    find_runs(layer.branch), shape, stream, top=False)
                branch_segments = list(branch_segments)
                if b_shape != shape:
                    raise ValueError(f"{where}: the branch maps an input of shape {shape.describe()} to "
                                     f"{b_shape.describe()}; a residual branch must keep the shape (same spatial "
                                     "size and channels: put a Dense or Conv before the Residual if the input has "
                                     "a different number of channels)")
                out_stream = layer.sum_stream(stream, b_stream, _has_weights(layer.branch), where)
                out_shape = shape
                branch = branch_segments
                fold = _fold_index(layer.branch)
            else:
                out_shape = layer.output_shape(shape, where)
                out_stream = layer.output_stream(stream, where)
            quadrature = getattr(getattr(layer, "activation", None), "has_closed_form", True) is False
            record = -1
            if top and (layer.weight_layer or isinstance(layer, Residual)):
                record = self.record
                self.record += 1
            steps.append(dict(treedef=kernel_structure(layer), position=self.position, shape_in=shape,
                              shape_out=out_shape, full_in=False, record=record, branch=branch, fold=fold,
                              quadrature=quadrature))
            self.position += 1
            shape, stream = out_shape, out_stream
        return steps, shape, stream

    def segments(self, segments: Sequence[tuple[tuple[Layer, ...], ...]], shape: Shape, stream: Stream, top: bool,
                 objects: list | None = None) -> tuple[list[tuple[list[dict], int]], Shape, Stream]:
        out: list[tuple[list[dict], int]] = []
        for repeats in segments:
            remaining = list(repeats)
            while remaining:
                position, record = self.position, self.record
                steps, new_shape, new_stream = self.unit(remaining[0], shape, stream, top)
                per_unit_records = self.record - record
                if len(remaining) > 1 and new_shape == shape and new_stream == stream:
                    count = len(remaining)
                    self.position = position + count * len(remaining[0])
                    self.record = record + count * per_unit_records
                    out.append((steps, count))
                    if objects is not None:
                        objects.append(tuple(remaining))
                    shape, stream = new_shape, new_stream
                    break
                out.append((steps, 1))
                if objects is not None:
                    objects.append((remaining[0],))
                remaining = remaining[1:]
                shape, stream = new_shape, new_stream
        return out, shape, stream


def _fold_index(branch: tuple[Layer, ...]) -> int:
    """The last weight layer of the branch, if only layers that commute with scaling the kernel follow it."""
    for i in range(len(branch) - 1, -1, -1):
        if branch[i].weight_layer:
            return i
        if not isinstance(branch[i], (Identity, AvgPool)):
            return -1
    return -1


def _requirements(segments: list[tuple[list[dict], int]], full_out: bool) -> tuple[Segment, ...]:
    """Backward pass: which steps' inputs must keep every pair of positions."""
    need = full_out
    result: list[Segment] = []
    for steps, count in reversed(segments):
        passes = 2 if count > 1 else 1  # a run's unit feeds itself: iterate to the fixed point
        unit_need = need
        for _ in range(passes):
            n = unit_need
            for step in reversed(steps):
                if step["branch"] is not None:
                    raw = step.setdefault("raw_branch", step["branch"])
                    inner = _requirements(raw, n)
                    step["branch"] = inner
                    n = n or inner[0].steps[0].full_in
                else:
                    n = _needs_full(step, n)
                step["full_in"] = n and bool(step["shape_in"].spatial)
            unit_need = need or steps[0]["full_in"]
        need = steps[0]["full_in"]
        result.append(Segment(tuple(Step(**{k: v for k, v in s.items() if k != "raw_branch"}) for s in steps),
                              count))
    return tuple(reversed(result))


def kernel_structure(layer: Layer) -> PyTreeDef:
    """The layer's structure as the kernel maps see it: the weight scalings (width, group, where the fan-in
    sits) only enter the coefficients, which are numbers, so two layers that differ there share one compiled
    recursion (an abc-parameterization at another width does not recompile)."""
    return jax.tree.structure(jax.tree.map(lambda node: None if isinstance(node, WeightScaling) else node, layer,
                                           is_leaf=lambda node: isinstance(node, WeightScaling)))


def _needs_full(step: dict, full_out: bool) -> bool:
    layer = jax.tree.unflatten(step["treedef"], [None] * step["treedef"].num_leaves)
    return layer.needs_full(full_out)


def expected_spatial_dims(layers: Sequence[Layer]) -> int | None:
    """Spatial dimensions the inputs must have: fixed by the first Conv / pooling window; 0 for a network of
    Dense layers only; ``None`` when only a Flatten or GlobalAvgPool says the inputs may be spatial."""
    def walk(seq: Sequence[Layer]) -> tuple[int | None, bool]:
        spatial_ok = False
        for layer in seq:
            if isinstance(layer, Residual):
                nd, ok = walk(layer.branch)
                if nd is not None:
                    return nd, True
                spatial_ok |= ok
                continue
            window = getattr(layer, "filter_shape", None) or getattr(layer, "window_shape", None)
            if window is not None:
                return len(window), True
            if type(layer).__name__ in ("Flatten", "GlobalAvgPool"):
                spatial_ok = True
        return None, spatial_ok

    nd, spatial_ok = walk(layers)
    if nd is not None:
        return nd
    return None if spatial_ok else 0


def analyse(program: Program, shape_in: Shape, n_out: int = 1, *, kernels: bool = False) -> Analysis:
    """Check ``program`` for inputs of per-example shape ``shape_in`` and plan its evaluation.

    ``kernels=True`` lets a unit that repeats the run before it with the same input shapes join it even when its
    output channels differ (the kernels do not depend on channels; finite networks' parameters do).

    Raises ``ValueError`` naming the layer (position and kind) for: a shape that does not fit (a Conv or
    pooling window on vectors, a VALID filter larger than its input, a residual branch that changes the
    shape), an activation or LayerNorm reading a non-Gaussian input, a residual branch that is not
    independent of its skip path, and a last layer that is not a Dense reading vectors.
    """
    if not isinstance(program, Program):
        raise ValueError(f"expected a layer program (theory.serial(...), theory.MLP, theory.ResNet), got {program!r}")
    analysis = _analyse(program, shape_in)
    if kernels:
        analysis = _merge_runs(analysis)
    return analysis._replace(shape_out=analysis.shape_out._replace(channels=n_out))


def _analyse(program: Program, shape_in: Shape) -> Analysis:
    layers = program.layers
    total = len(layers)
    last = layers[-1]
    if not isinstance(last, Dense):
        raise ValueError(f"the last layer must be a Dense readout, got {_where(total - 1, last, total, '')}; "
                         "end the program with theory.layers.Dense(...)")
    prefix: list[Layer] = []
    for layer in layers[:-1]:
        if layer.weight_layer or isinstance(layer, Residual):
            break
        prefix.append(layer)
    walker = _Walker(total, "")
    shape, stream = shape_in, INPUT_STREAM
    for layer in prefix:  # applied to the raw inputs: shapes checked, streams stay deterministic
        where = _where(walker.position, layer, total, "")
        shape = layer.output_shape(shape, where)
        stream = layer.output_stream(stream, where)
        walker.position += 1
    segments = program.segments() if not prefix else find_runs(layers[len(prefix):])
    objects: list = []
    raw, shape, stream = walker.segments(segments, shape, stream, top=True, objects=objects)
    plan = _requirements(raw, False)
    if shape.spatial:
        raise ValueError(f"the readout {_where(total - 1, last, total, '')} gets inputs with spatial shape "
                         f"{shape.spatial}: add Flatten() or GlobalAvgPool() before it")
    return Analysis(tuple(prefix), plan, tuple(objects), walker.record, shape_in, Shape((), 1, False))


def _merge_runs(analysis: Analysis) -> Analysis:
    """For the kernel recursion: a unit that repeats the run before it, layer for layer with the same input
    shapes, joins the run even if its output has another channel count (the kernels do not see channels; an
    MLP's readout unit joins its hidden layers' run, as one compiled copy of the layer maps)."""
    plan, objects = list(analysis.plan), list(analysis.layers)
    out_plan, out_objects = [plan[0]], [objects[0]]
    for segment, reps in zip(plan[1:], objects[1:], strict=True):
        last = out_plan[-1]
        per_unit = sum(1 for s in last.steps if s.record >= 0)
        same = (len(segment.steps) == len(last.steps) and all(
            a.treedef == b.treedef and a.shape_in == b.shape_in and a.full_in == b.full_in and a.branch == b.branch
            and a.fold == b.fold and a.quadrature == b.quadrature
            and ((a.record < 0 and b.record < 0) or (a.record >= 0 and b.record == a.record + last.count * per_unit))
            for a, b in zip(last.steps, segment.steps, strict=False)))
        if same:
            out_plan[-1] = last._replace(count=last.count + segment.count)
            out_objects[-1] = (*out_objects[-1], *reps)
        else:
            out_plan.append(segment)
            out_objects.append(reps)
    return analysis._replace(plan=tuple(out_plan), layers=tuple(out_objects))


def weight_layers(layers: Sequence[Layer]) -> list[WeightLayer]:
    """Every layer with trained parameters (Dense, Conv, SelfAttention) in program order, residual branches
    included where they sit."""
    out: list[WeightLayer] = []
    for layer in layers:
        if isinstance(layer, Residual):
            out.extend(weight_layers(layer.branch))
        elif layer.weight_layer:
            out.append(layer)  # type: ignore[arg-type]
    return out


def activations(layers: Sequence[Layer]) -> list[Any]:
    """Every Elementwise layer's activation in program order, residual branches included."""
    out: list[Any] = []
    for layer in layers:
        if isinstance(layer, Residual):
            out.extend(activations(layer.branch))
        elif isinstance(layer, Elementwise):
            out.append(layer.activation)
    return out


def replace_activations(program: Program, mapping: dict[Any, Any]) -> Program:
    """``program`` with each Elementwise activation found in ``mapping`` replaced by its value (a Serial that keeps
    the program's recorded names), or ``program`` itself when nothing changes."""

    def walk(layers: Sequence[Layer]) -> tuple[Layer, ...]:
        out = []
        for layer in layers:
            if isinstance(layer, Residual):
                layer = Residual(*walk(layer.branch), scale=layer.scale) if activations(layer.branch) else layer
            elif isinstance(layer, Elementwise) and layer.activation in mapping:
                layer = dataclasses.replace(layer, activation=mapping[layer.activation])
            out.append(layer)
        return tuple(out)

    if not any(a in mapping for a in activations(program.layers)):
        return program
    return Serial(walk(program.layers), names=program.recorded_names())


__all__ = [
    "Analysis",
    "Program",
    "Segment",
    "Serial",
    "Step",
    "activations",
    "analyse",
    "expected_spatial_dims",
    "find_runs",
    "flatten_layers",
    "replace_activations",
    "serial",
    "weight_layers",
]
