"""Finite networks built from the same layer program that ``theory.kernels`` takes.

``init(net, width, key, features=...)`` samples the parameters of the network whose hidden layers all have
``width`` channels (the readout has ``n_out``), ``apply`` runs it, ``empirical_ntk`` computes its exact
tangent kernel. Each layer's finite map is its own (:mod:`theory.layers`): neural-tangents' conventions, the
NTK parameterization unless a layer carries a :class:`~theory.layers.WeightScaling` (the standard one, or an
abc-parameterization from ``theory.parameterize``). Consecutive identical units of layers are stored stacked
and applied by one ``lax.scan`` (init, apply and the empirical NTK alike), so compile time does not grow with
depth.

Weight ensembles: ``"gaussian"`` (iid N(0, 1) entries) and ``"orthogonal"`` (Haar-distributed matrices with
orthonormal rows or columns, scaled by ``sqrt(max(fan_in, fan_out))`` so that entries have variance 1, as in
"Beyond IID weights"; Dense layers only). Weight layer ``i`` (in program order, residual branches where they
sit) draws from ``jax.random.split(key, n_weight_layers)[i]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.inputs import validate_inputs
from theory.layers import Program, Residual, SelfAttention, Shape, WeightLayer, Weights, analyse, weight_layers
from theory.layers.program import expected_spatial_dims
from theory.parameterizations import weight_groups

Array = jax.Array
Dense = Weights  # the old name of one weight layer's parameters


def gaussian_weights(key: Array, shape: tuple[int, ...], dtype: jnp.dtype) -> Array:
    """iid standard normal entries."""
    return jax.random.normal(key, shape, dtype)


def orthogonal_weights(key: Array, shape: tuple[int, int], dtype: jnp.dtype) -> Array:
    """Haar-orthogonal ``(fan_in, fan_out)`` matrix (orthonormal columns if fan_in >= fan_out,
    rows otherwise) scaled by ``sqrt(max(fan_in, fan_out))``: entries of variance 1."""
    if len(shape) != 2:
        raise ValueError(f"orthogonal weights are defined for Dense layers ((fan_in, fan_out) matrices), got a "
                         f"weight of shape {shape} (a Conv); use weights='gaussian'")
    fan_in, fan_out = shape
    big, small = max(shape), min(shape)
    z = jax.random.normal(key, (big, small), dtype)
    q = _haar_qr(z)
    q = q if fan_in >= fan_out else q.T
    return q * math.sqrt(big)


def _signed_q(a: np.ndarray) -> np.ndarray:
    q, r = np.linalg.qr(a)
    # Fixing the signs of diag(R) makes Q Haar-distributed (Mezzadri 2007).
    return (q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]).astype(a.dtype)


def _haar_qr(z: Array) -> Array:
    """The Q factor of ``z`` with ``diag(R) > 0``.

    On CPU the factorisation runs in NumPy through a host callback: with jaxlib 0.10 an XLA CPU
    program holding several LAPACK QR calls (one per layer, batched over networks) intermittently
    never returns (every pool thread idle), which a host callback avoids.
    """
    if jax.default_backend() != "cpu":
        q, r = jnp.linalg.qr(z)
        return q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    shape = jax.ShapeDtypeStruct(z.shape, z.dtype)
    return jax.pure_callback(_signed_q, shape, z, vmap_method="broadcast_all")


WEIGHT_ENSEMBLES: dict[str, Callable[[Array, tuple[int, ...], jnp.dtype], Array]] = {
    "gaussian": gaussian_weights,
    "orthogonal": orthogonal_weights,
}


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_width(width: object) -> int:
    return check_positive_int("width", width)


def check_weights(weights: object) -> str:
    if weights not in WEIGHT_ENSEMBLES:
        raise ValueError(f"unknown weights {weights!r}; choose one of {sorted(WEIGHT_ENSEMBLES)}")
    return weights  # type: ignore[return-value]


def check_key(key: object) -> Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
        return key
    raise ValueError(
        f"key must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got {key!r}"
    )


def check_program(net: object) -> Program:
    if not isinstance(net, Program):
        raise ValueError(f"expected a theory.MLP or theory.ResNet, or a layer program theory.serial(...), "
                         f"got {net!r}")
    return net


# -- the parameters ------------------------------------------------------------------------------------------
class _Where(NamedTuple):
    segment: int
    repeat: int | None  # index along a run's stacked axis (None: a single unit)
    path: tuple[int, ...]  # unit layer, then residual-branch layers


@jax.tree_util.register_pytree_node_class
class NetworkParams:
    """A network's parameters: per segment of the program, per unit layer, a :class:`Weights` (``None`` for a
    layer without parameters, a tuple for a residual branch), stacked on a leading axis for a run of ``count``
    identical units. ``params[i]`` is weight layer ``i``'s ``Weights`` (program order), ``len(params)`` their
    number; iterate for all of them."""

    def __init__(self, segments: tuple, counts: tuple[int, ...], index: tuple[_Where, ...]) -> None:
        self.segments = segments
        self.counts = counts
        self.index = index

    def tree_flatten(self) -> tuple[tuple, tuple]:
        return (self.segments,), (self.counts, self.index)

    @classmethod
    def tree_unflatten(cls, static: tuple, children: tuple) -> NetworkParams:
        return cls(children[0], *static)

    def __len__(self) -> int:
        return len(self.index)

    def _get(self, where: _Where) -> Weights:
        node: Any = self.segments[where.segment]
        for step in where.path:
            node = node[step]
        if where.repeat is not None:
            node = jax.tree.map(lambda a: a[where.repeat], node)
        return node

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return tuple(self._get(w) for w in self.index[i])
        return self._get(self.index[i])

    def __iter__(self):
        return (self._get(w) for w in self.index)

    def __repr__(self) -> str:
        return f"NetworkParams({len(self)} weight layers, segments of {self.counts})"


def _weight_paths(layers: Sequence[Any], prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Residual):
            out += _weight_paths(layer.branch, (*prefix, i))
        elif layer.weight_layer:
            out.append((*prefix, i))
    return out


class _Layout(NamedTuple):
    """The finite network's structure: per segment, every repeat's layers and the shape entering each layer
    of the unit (spatial sizes are symbolic unless a Flatten needs them)."""

    repeats: tuple[tuple[tuple[Any, ...], ...], ...]
    shapes: tuple[tuple[Shape, ...], ...]

    @property
    def units(self) -> tuple[tuple[Any, ...], ...]:
        return tuple(reps[0] for reps in self.repeats)


_SYMBOLIC = 2**20  # spatial size used to plan a network when the input size does not matter


def _sized_layers(layers: Sequence[Any]) -> bool:
    """Whether a layer's parameters depend on the number of positions (positional embeddings of attention)."""
    return any(_sized_layers(layer.branch) if isinstance(layer, Residual) else
               getattr(layer, "needs_spatial_size", False) for layer in layers)


def _attends(layers: Sequence[Any]) -> bool:
    """Whether a SelfAttention (which needs positions) is in the program, residual branches included."""
    return any(_attends(layer.branch) if isinstance(layer, Residual) else isinstance(layer, SelfAttention)
               for layer in layers)


def _needs_spatial_size(net: Program) -> bool:
    spatial = bool(expected_spatial_dims(net.layers)) or _attends(net.layers)
    flatten = spatial and any(type(layer).__name__ == "Flatten" for layer in net.layers)
    return flatten or _sized_layers(net.layers)


def _symbolic_dims(net: Program) -> int:
    """Spatial dimensions to plan with when only the channels are known: the windows' (Conv, AvgPool), else one
    if a GlobalAvgPool needs positions (Dense, activations and LayerNorm act the same at every position)."""
    nd = expected_spatial_dims(net.layers)
    if nd is not None:
        return nd
    pooled = any(type(layer).__name__ == "GlobalAvgPool" for layer in net.layers)
    return 1 if pooled or _attends(net.layers) else 0


def _plan_shape(net: Program, shape: Shape) -> Shape:
    """The shape the network is planned with: the real one when a Flatten makes sizes matter, else symbolic
    sizes (so that init, which may know only the channels, and apply segment the program the same way)."""
    if _needs_spatial_size(net):
        return shape
    return Shape((_SYMBOLIC,) * len(shape.spatial), shape.channels, False)


def _input_shape(net: Program, features: object) -> Shape:
    if isinstance(features, numbers.Integral) and not isinstance(features, bool):
        channels = check_positive_int("features", features)
        if _needs_spatial_size(net):
            raise ValueError("the network has a Flatten after spatial layers (the Dense after it has "
                             "prod(spatial) * channels inputs) or positional embeddings (one per position): pass "
                             "features=(height, width, channels) or (length, channels) (the per-example input "
                             "shape) instead of the channel count")
        return Shape((_SYMBOLIC,) * _symbolic_dims(net), channels, False)
    try:
        dims = tuple(check_positive_int("features", f) for f in features)  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"features must be the number of input channels or the per-example input shape "
                         f"(e.g. (8, 8, 3)), got {features!r}") from None
    if not dims:
        raise ValueError("features must not be empty")
    return Shape(dims[:-1], dims[-1], False)


def _layout(net: Program, shape: Shape, n_out: int) -> _Layout:
    if shape.spatial and _SYMBOLIC not in shape.spatial:
        analyse(net, shape, n_out)  # the program's errors, with the real input shape in the message
    try:
        analysis = analyse(net, _plan_shape(net, shape), n_out)
    except ValueError as err:  # sizes are not known (only the channels were given): do not print placeholders
        raise ValueError(str(err).replace(str(_SYMBOLIC), "?")) from None
    repeats, shapes = [], []
    if analysis.prefix:  # parameter-free leading layers, applied to the raw inputs: a segment of their own
        repeats.append((analysis.prefix,))
        shapes.append(tuple(shape for _ in analysis.prefix))
    for segment, reps in zip(analysis.plan, analysis.layers, strict=True):
        repeats.append(reps)
        shapes.append(tuple(step.shape_in for step in segment.steps))
    return _Layout(tuple(repeats), tuple(shapes))


def init(
    net: Program,
    width: int,
    key: Array,
    weights: str = "gaussian",
    *,
    features: int | tuple[int, ...],
    n_out: int = 1,
    dtype: jnp.dtype | None = None,
) -> NetworkParams:
    """Sample the parameters of the network ``net`` with ``width`` hidden channels.

    ``features`` is the number of input channels (features of vector inputs), or the per-example input shape
    (needed when a Flatten feeds a Dense). Each weight layer's ``W`` and ``b`` carry the initial scale of its
    :class:`~theory.layers.WeightScaling` (standard normal in the NTK parameterization).
    """
    net = check_program(net)
    width = check_width(width)
    key = check_key(key)
    check_weights(weights)
    n_out = check_positive_int("n_out", n_out)
    shape = _input_shape(net, features)
    for layer in _all_weight_layers(net.layers):
        scaling = layer.scaling
        if scaling is not None and scaling.width is not None and scaling.width != width:
            raise ValueError(f"the program's weights were scaled for width={scaling.width} (its 'standard' or abc "
                             f"parameterization uses it) but the finite network has width {width}; make them equal")
    dtype = dtype or jnp.result_type(float)
    sample = WEIGHT_ENSEMBLES[weights]
    layout = _layout(net, shape, n_out)
    n_weights = [len(_weight_paths(unit)) for unit in layout.units]
    keys = jax.random.split(key, sum(n * len(reps) for n, reps in zip(n_weights, layout.repeats, strict=True)))
    segments, counts, index = [], [], []
    offset = 0
    last = len(layout.repeats) - 1
    for s, (reps, shapes, n_w) in enumerate(zip(layout.repeats, layout.shapes, n_weights, strict=True)):
        count, unit = len(reps), reps[0]
        seg_keys = keys[offset:offset + count * n_w]

        def one(unit_keys: Array, unit: tuple = unit, shapes: tuple = shapes, readout: bool = s == last) -> tuple:
            return _init_unit(unit, shapes, unit_keys, width, n_out if readout else None, sample, dtype)

        if count == 1:
            segments.append(one(seg_keys))
        else:
            # Identical units are sampled in one batched call (the same numbers as one call per key): a
            # program with one RNG op per layer takes minutes to compile at depth ~1000.
            segments.append(jax.vmap(one)(seg_keys.reshape(count, n_w, *seg_keys.shape[1:])))
        counts.append(count)
        for r in range(count):
            index += [_Where(s, None if count == 1 else r, path) for path in _weight_paths(unit)]
        offset += count * n_w
    return NetworkParams(tuple(segments), tuple(counts), tuple(index))


def _all_weight_layers(layers: Sequence[Any]) -> list[WeightLayer]:
    out = []
    for layer in layers:
        if isinstance(layer, Residual):
            out += _all_weight_layers(layer.branch)
        elif layer.weight_layer:
            out.append(layer)
    return out


def _init_unit(unit: tuple, shapes: tuple[Shape, ...], keys: Array, width: int, n_out: int | None,
               sample: Callable, dtype: Any) -> tuple:
    """One unit's parameters; ``n_out`` is given for the program's last unit (its last layer is the readout)."""
    params = []
    k = 0
    for i, (layer, shape) in enumerate(zip(unit, shapes, strict=True)):
        if isinstance(layer, Residual):
            n = len(_weight_paths(layer.branch))
            params.append(_init_unit(layer.branch, _branch_shapes(layer, shape), keys[k:k + n], width, None,
                                     sample, dtype))
            k += n
        elif layer.weight_layer:
            out = n_out if (n_out is not None and i == len(unit) - 1) else width
            params.append(layer.init(keys[k], shape, out, sample, dtype, width))
            k += 1
        else:
            params.append(None)
    return tuple(params)


def _branch_shapes(layer: Residual, shape: Shape) -> tuple[Shape, ...]:
    shapes, current = [], shape
    for i, inner in enumerate(layer.branch):
        shapes.append(current)
        current = current if isinstance(inner, Residual) else inner.output_shape(current, f"branch layer {i + 1}")
    return tuple(shapes)


# -- apply ---------------------------------------------------------------------------------------------------
def _apply_unit(unit: tuple, params: tuple, probes: tuple | None, h: Array, top: bool
                ) -> tuple[Array, list, list, tuple]:
    """Apply one unit: output, recorded outputs (top level), weight-layer inputs (program order) and the
    weight layers' outputs in the structure of ``params`` (``None`` where there are no parameters)."""
    recorded, inputs, outs = [], [], []
    for i, (layer, p) in enumerate(zip(unit, params, strict=True)):
        probe = None if probes is None else probes[i]
        if isinstance(layer, Residual):
            branch, _, inner, z = _apply_unit(layer.branch, p, probe, h, False)
            inputs += inner
            outs.append(z)
            h = h + layer.scale * branch
        elif layer.weight_layer and not isinstance(layer, WeightLayer):  # own parameters (SelfAttention)
            inputs.append(h)
            h = layer.apply(p, h)
            if probe is not None:
                h = h + probe
            outs.append(h)
        elif layer.weight_layer:
            if not isinstance(p, Weights) or p.W.ndim != len(layer.window) + 2 or \
                    tuple(p.W.shape[:-2]) != tuple(layer.window) or (p.b is None) == layer.bias:
                raise ValueError(f"{layer.name} (filter {layer.window or 'none'}, bias {layer.bias}) got parameters "
                                 f"{None if not isinstance(p, Weights) else (tuple(p.W.shape), p.b is not None)}: "
                                 "they were made for another program; call networks.init with this program")
            if p.W.shape[-2] != h.shape[-1]:
                raise ValueError(f"{layer.name} has parameters for {p.W.shape[-2]} input channels but its input has "
                                 f"{h.shape[-1]} (shape {tuple(h.shape)}): the parameters were made for other "
                                 "inputs or another program; call networks.init with this program and features="
                                 "<the per-example input shape>")
            inputs.append(h)
            h = layer.apply(p, h)
            if probe is not None:
                h = h + probe
            outs.append(h)
        else:
            h = layer.apply(p, h)
            outs.append(None)
        if top and (layer.weight_layer or isinstance(layer, Residual)):
            recorded.append(h)
    return h, recorded, inputs, tuple(outs)


class _Trace(NamedTuple):
    out: Array
    recorded: list  # per recorded unit position, ``(count, batch, ...)`` (a run's in layer order)
    inputs: list  # per weight layer position, ``(count, batch, ...)``
    outputs: tuple  # weight layers' outputs in the structure of ``params.segments``


def _forward(net: Program, params: NetworkParams, x: Array, probes: tuple | None = None) -> _Trace:
    layout = _layout_for(net, params, x)
    recorded, inputs, outputs = [], [], []
    h = x
    for s, reps in enumerate(layout.repeats):
        unit, count = reps[0], params.counts[s]
        seg_probes = None if probes is None else probes[s]
        if count == 1:
            h, rec, inp, z = _apply_unit(unit, params.segments[s], seg_probes, h, True)
            recorded += [r[None] for r in rec]
            inputs += [a[None] for a in inp]
            outputs.append(z)
            continue

        def body(h: Array, xs: tuple, unit: tuple = unit) -> tuple[Array, tuple]:
            p, pr = xs
            h, rec, inp, z = _apply_unit(unit, p, pr, h, True)
            return h, (tuple(rec), tuple(inp), z)

        h, (rec, inp, z) = jax.lax.scan(body, h, (params.segments[s], seg_probes), length=count)
        recorded += _interleave(rec)
        inputs += list(inp)
        outputs.append(z)
    return _Trace(h, recorded, inputs, tuple(outputs))


def _interleave(stacks: tuple) -> list:
    """A run's recorded outputs, one ``(count, ...)`` stack per recorded layer of the unit -> one stack in
    layer order."""
    if len(stacks) <= 1:
        return list(stacks)
    stacked = jnp.stack(stacks, axis=1)
    return [stacked.reshape(-1, *stacked.shape[2:])]


def _layout_for(net: Program, params: NetworkParams, x: Array) -> _Layout:
    if not isinstance(params, NetworkParams):
        raise ValueError(f"params must be the NetworkParams returned by networks.init, got {type(params).__name__}")
    layout = _layout(net, Shape(tuple(x.shape[1:-1]), int(x.shape[-1]), False), _n_out(params))
    structure = tuple((len(r), len(r[0])) for r in layout.repeats)
    theirs = tuple((count, len(seg)) for count, seg in zip(params.counts, params.segments, strict=True))
    if structure != theirs:
        raise ValueError(f"the parameters do not belong to this program (their segments are (count, layers) "
                         f"{theirs}, the program's {structure}); call networks.init with this program")
    return layout


def _n_out(params: NetworkParams) -> int:
    return int(params[len(params) - 1].W.shape[-1])


def _check_x(net: Program, x: object) -> Array:
    check_program(net)
    x, _ = validate_inputs(x, spatial_dims=expected_spatial_dims(net.layers))
    return x


def apply(
    net: Program,
    params: NetworkParams,
    x: Array,
    per_layer: bool = False,
    *,
    probes: tuple | None = None,
) -> Array | tuple[Array, list[Array]]:
    """Outputs ``(batch, n_out)`` of the network; with ``per_layer`` also every recorded layer's outputs (the
    top-level Dense / Conv outputs and residual blocks: MLP, each Dense's pre-activations; ResNet, the stem,
    the residual stream after each block, and the readout), the quantities whose kernels
    ``theory.kernels(per_layer=True)`` gives.

    ``probes`` (zeros shaped like each weight layer's output, in the structure of ``params.segments``) are
    added to the weight layers' outputs; the gradient with respect to them is ``dF / d(output)``.
    """
    x = _check_x(net, x)
    trace = _forward(net, params, x, probes)
    if not per_layer:
        return trace.out
    return trace.out, [a[i] for a in trace.recorded for i in range(a.shape[0])]


class Block(NamedTuple):
    """One top-level layer with parameters (a residual block, a Dense / Conv, a SelfAttention) of a finite network:
    its ``name`` (``net.recorded_names()``), the ``layer`` (as laid out for the inputs), its ``params`` (a
    ``Weights``, or per branch layer for a ``Residual``; a run's stacked parameters unstacked) and its ``inputs``
    (the network's activations entering it, ``(batch, ..., channels)``)."""

    name: str
    layer: Any
    params: Any
    inputs: Array


def apply_block(layer: Any, params: Any, h: Array) -> Array:
    """The finite output of one top-level layer on its input ``h``: ``h + scale * branch(h)`` for a residual block,
    ``layer.apply(params, h)`` otherwise (``params`` as in :class:`Block`). Differentiable in ``params``."""
    return _apply_unit((layer,), (params,), None, h, False)[0]


def blocks(net: Program, params: NetworkParams, x: Array) -> list[Block]:
    """The network's top-level layers with parameters, in program order, each with its parameters and its input
    on ``x`` (the recorded layers of :func:`apply`; ``apply_block`` chained over them, with the parameter-free
    layers between, gives the network's output). Evaluated layer by layer, without ``scan``: for diagnostics."""
    x = _check_x(net, x)
    layout = _layout_for(net, params, x)
    found: list[tuple[Any, Any, Array]] = []
    h = x
    for s, reps in enumerate(layout.repeats):
        unit, count = reps[0], params.counts[s]
        for r in range(count):
            p = params.segments[s] if count == 1 else jax.tree.map(lambda a, r=r: a[r], params.segments[s])
            for layer, lp in zip(unit, p, strict=True):
                if isinstance(layer, Residual) or layer.weight_layer:
                    found.append((layer, lp, h))
                h = apply_block(layer, lp, h)
    names = net.recorded_names()
    if len(names) != len(found):
        names = tuple(f"layer {i + 1}" for i in range(len(found)))
    return [Block(name, *item) for name, item in zip(names, found, strict=True)]


def forward(net: Program, params: NetworkParams, x: Array) -> tuple[Array, list[Array]]:
    """Outputs and the recorded layers' outputs stacked per segment (``(count, batch, ...)`` arrays): what
    ``apply(..., per_layer=True)`` returns without splitting runs (for deep networks under ``jit``)."""
    x = _check_x(net, x)
    trace = _forward(net, params, x)
    return trace.out, trace.recorded


def readout_kernel(net: Program, params: NetworkParams, x1: Array, x2: Array | None = None) -> Array:
    """The covariance of the outputs given everything below the readout, ``(batch1, batch2)``.

    With readout ``f = m_W h @ W + m_b b`` (``W, b`` iid over output units with stds ``s_W``, ``s_b``; ``h``
    the readout's input), ``E[f_k(x) f_k(x') | h] = m_W^2 s_W^2 <h(x), h(x')> + m_b^2 s_b^2``: the finite
    network's last-layer kernel. Its mean over networks equals the output covariance ``E[f(x) f(x')]``
    exactly, with the readout's own sampling noise removed.
    """
    x1 = _check_x(net, x1)
    x2 = None if x2 is None else _check_x(net, x2)
    readout = net.layers[-1]
    h1 = _forward(net, params, x1).inputs[-1][0]
    h2 = h1 if x2 is None else _forward(net, params, x2).inputs[-1][0]
    m_w, s_w, m_b, s_b = readout.weight_scaling.multipliers(h1.shape[-1])
    bias = (m_b * s_b) ** 2 if readout.bias else 0.0
    return (m_w * s_w) ** 2 * (h1 @ h2.T) + bias


def empirical_ntk(net: Program, params: NetworkParams, x1: Array, x2: Array | None = None) -> Array:
    """Exact tangent kernel of one finite network, ``(n_out, batch1, batch2)`` (one kernel per output unit):
    ``sum_p lr_p <dF_k(x)/dp, dF_k(x')/dp>`` over every parameter ``p``, weighted by its learning-rate factor
    (1 unless a scaling sets one: then it is the kernel of gradient descent with those rates, the finite
    counterpart of ``theory.kernels``' NTK).

    Layer-wise identity: for a weight layer ``z = m_W W * h + m_b b`` with ``g = dF_k/dz``,
    ``<dF_k/dW(x), dF_k/dW(x')> = m_W^2 sum_{s, s'} P(s, s') <g(s), g'(s')>`` with ``P`` the inner product of
    the two inputs' patches at output positions ``s, s'`` (``<h(x), h(x')>`` for a Dense on vectors); the bias
    adds ``m_b^2 sum_{s, s'} <g(s), g'(s')>``. One forward and one backward pass per input and output unit.
    """
    x1 = _check_x(net, x1)
    x2 = None if x2 is None else _check_x(net, x2)
    layout = _layout_for(net, params, x1)
    layers = [layer for unit in layout.units for layer in _all_weight_layers(unit)]

    def trace(x: Array) -> tuple[list, list]:
        shapes = jax.eval_shape(lambda: _forward(net, params, x).outputs)
        probes = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        inputs = _forward(net, params, x, probes).inputs

        def outputs(p: tuple) -> Array:
            return _forward(net, params, x, p).out

        out, pullback = jax.vjp(outputs, probes)
        eye = jnp.eye(out.shape[-1], dtype=x.dtype)
        cotangents = jnp.broadcast_to(eye[:, None, :], (out.shape[-1], *out.shape))
        (grads,) = jax.vmap(pullback)(cotangents)
        return inputs, _weight_leaves(grads, layout, params.counts)

    in1, g1 = trace(x1)
    in2, g2 = (in1, g1) if x2 is None else trace(x2)
    own = _unit_params(params, layout)
    ntk = 0.0
    for layer, p, a1, a2, d1, d2 in zip(layers, own, in1, in2, g1, g2, strict=True):
        if isinstance(layer, WeightLayer):
            ntk = ntk + _layer_ntk(layer, a1, a2, d1, d2)
        else:
            ntk = ntk + _parameter_ntk(layer, p, a1, a2, d1, d2)
    return ntk


def _unit_params(params: NetworkParams, layout: _Layout) -> list:
    """Per weight layer of the layout's units (the order of ``_weight_leaves``), its parameters with a leading
    ``count`` axis (a run's stacked repeats; 1 for a single unit)."""
    out = []
    for s, unit in enumerate(layout.units):
        for path in _weight_paths(unit):
            node = params.segments[s]
            for step in path:
                node = node[step]
            out.append(jax.tree.map(lambda a: a[None], node) if params.counts[s] == 1 else node)
    return out


def _parameter_ntk(layer: Any, p: Any, a1: Array, a2: Array, d1: Array, d2: Array) -> Array:
    """The contribution of a layer with its own parameters (not ``z = m W h + b``: SelfAttention), summed over a
    run's ``count`` layers: ``sum_p <dF_k(x)/dp, dF_k(x')/dp>`` from per-example vector-Jacobian products of
    ``layer.apply`` with the output gradients ``d`` (``(n_out, count, batch, ...)``); ``a``: the layer's inputs."""
    def grads(p_r: Any, a_r: Array, d_r: Array) -> Any:  # -> leaves (n_out, batch, *shape)
        def one(a_i: Array, d_i: Array) -> Any:
            _, pullback = jax.vjp(lambda q: layer.apply(q, a_i[None])[0], p_r)
            return pullback(d_i)[0]

        return jax.vmap(lambda d_k: jax.vmap(one)(a_r, d_k))(d_r)

    def per_run(x: Array, d: Array) -> Any:  # -> leaves (n_out, count, batch, *shape)
        return jax.vmap(grads, in_axes=(0, 0, 1), out_axes=1)(p, x, d)

    ga = per_run(a1, d1)
    gb = ga if (a2 is a1 and d2 is d1) else per_run(a2, d2)
    # each parameter's learning-rate factor (the kernel of gradient descent with those rates)
    rates = getattr(layer, "learning_rates", None)
    factors = jax.tree.leaves(rates(p)) if rates is not None else [1.0] * len(jax.tree.leaves(ga))
    total = 0.0
    for u, v, f in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), factors, strict=True):
        total = total + f * jnp.einsum("kria,krja->kij", u.reshape(*u.shape[:3], -1), v.reshape(*v.shape[:3], -1))
    return total


def _weight_leaves(grads: tuple, layout: _Layout, counts: tuple[int, ...]) -> list:
    """Per weight layer (program order within each unit), the probe gradients ``(n_out, count, batch, ...)``."""
    out = []
    for s, unit in enumerate(layout.units):
        for path in _weight_paths(unit):
            node = grads[s]
            for step in path:
                node = node[step]
            out.append(node[:, None] if counts[s] == 1 else node)
    return out


def _layer_ntk(layer: WeightLayer, a1: Array, a2: Array, d1: Array, d2: Array) -> Array:
    """One weight layer's contribution, summed over a run's ``count`` layers; ``a``: inputs
    ``(count, batch, *S_in, C)``, ``d``: output gradients ``(n_out, count, batch, *S_out, C_out)``."""
    nd = a1.ndim - 3
    fan_in = a1.shape[-1] * math.prod(layer.window)
    m_w, _, m_b, _ = layer.weight_scaling.multipliers(fan_in)
    s = layer.weight_scaling
    c_w = s.w_lr * m_w**2
    c_b = s.b_lr * m_b**2 if layer.bias else 0.0
    if nd == 0:
        p = jnp.einsum("ria,rja->rij", a1, a2)
        gg = jnp.einsum("kria,krja->krij", d1, d2)
        return jnp.einsum("krij,rij->kij", gg, c_w * p + c_b)
    left, right = "stuv"[:nd], "wxyz"[:nd]
    p = layer.patch_gram(jnp.einsum(f"ri{left}c,rj{right}c->rij{left}{right}", a1, a2), 3)
    gg = jnp.einsum(f"kri{left}c,krj{right}c->krij{left}{right}", d1, d2)
    return jnp.sum(gg * (c_w * p + c_b), axis=(1, *range(4, 4 + 2 * nd)))


def weight_tree(net: Program, params: NetworkParams, fn: Callable[[WeightLayer, str], tuple[float, float]]
                ) -> NetworkParams:
    """A tree shaped like ``params`` whose ``W`` and ``b`` leaves are ``fn(layer, group)`` of their weight layer
    (``group``: "input", "hidden" or "output", as :func:`theory.parameterizations.weight_groups`), broadcastable
    against the parameters (a run's values stacked on its leading axis): per-parameter learning rates, masks."""
    layers = weight_layers(net.layers)
    groups = weight_groups(net)
    if len(layers) != len(params):
        raise ValueError(f"params have {len(params)} weight layers but the program has {len(layers)}")
    values: dict[tuple, list] = {}
    for (w, layer, group) in zip(params.index, layers, groups, strict=True):
        values.setdefault((w.segment, w.path), []).append(fn(layer, group))
    segments = list(params.segments)
    for (s, path), vals in values.items():
        node: Any = segments[s]
        for step in path:
            node = node[step]
        count = params.counts[s]

        def leaf(v: list, ref: Array | None, count: int = count) -> Any:
            if ref is None:
                return None
            if count == 1:
                return jnp.asarray(v[0], ref.dtype)
            return jnp.asarray(np.array(v), ref.dtype).reshape(count, *(1,) * (ref.ndim - 1))

        if isinstance(node, Weights):
            new = Weights(leaf([v[0] for v in vals], node.W), leaf([v[1] for v in vals], node.b))
        else:  # a layer with its own parameters (SelfAttention): the bias gets the b value, the rest the W value
            new = type(node)(*(leaf([v[1 if name == "b" else 0] for v in vals], ref)
                               for name, ref in zip(node._fields, node, strict=True)))
        segments[s] = _set(segments[s], path, new)
    return NetworkParams(tuple(segments), params.counts, params.index)


def _set(tree: tuple, path: tuple[int, ...], value: Any) -> tuple:
    if len(path) == 1:
        return (*tree[:path[0]], value, *tree[path[0] + 1:])
    return (*tree[:path[0]], _set(tree[path[0]], path[1:], value), *tree[path[0] + 1:])


def recorded_groups(net: Program) -> tuple[str, ...]:
    """The group of every recorded layer: a weight layer's own, "hidden" for a residual block."""
    groups = iter(weight_groups(net))
    out = []
    for layer in net.layers:
        if isinstance(layer, Residual):
            out.append("hidden")
            for _ in weight_layers(layer.branch):
                next(groups)
        elif layer.weight_layer:
            out.append(next(groups))
    return tuple(out)
