"""Infinite-width-then-infinite-depth limits of depth-scaled ResNets.

With ``depth_exponent = 1/2`` the ``L`` blocks of :class:`theory.ResNet` are ``L`` Euler steps of size ``1/L`` of an
ODE in ``t = l / L`` (Hayou & Yang 2023, "Width and Depth Limits Commute in Residual Networks"; Hayou 2023,
"Commutative Width and Depth Scaling"), with ``(u, v) ~ N(0, q)``:

    dq/dt     = a^2 (w_std^2 E[phi(u) phi(v)] + b_std^2)
    dTheta/dt = a^2 (c_K E[phi(u) phi(v)] + c_0 + w_std^2 E[phi'(u) phi'(v)] Theta)

with ``a = branch_scale``, ``c_K = w_std^2, c_0 = b_std^2`` in the NTK parameterization (``c_K = width, c_0 = 1``
with a bias in the standard one), from the stem's kernels at ``t = 0``; the readout is applied at ``t = 1``.
``depth_exponent > 1/2``: the limit is the identity (the stem's kernel passes through to the readout);
``depth_exponent < 1/2``: no finite limit (``resnet_limit`` raises, naming the regime).

Derivation and notes: docs/resnet_depth_ode.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from theory import recursion
from theory.architectures import ResNet
from theory.inputs import validate_inputs
from theory.kernels import DEFAULT_MEMORY_BUDGET, KERNEL_NAMES, Kernels, check_get, check_quadrature, with_series
from theory.layers.program import activations as program_activations
from theory.layers.program import analyse
from theory.ode import dopri5

Array = jax.Array

CRITICAL_EXPONENT = 0.5


def limit_regime(res: ResNet) -> str:
    """``"ode"`` (``depth_exponent = 1/2``), ``"identity"`` (``> 1/2``, or branches that add
    nothing) or ``"divergent"`` (``< 1/2``): what the ResNet's kernel does as ``depth -> inf``."""
    if not isinstance(res, ResNet):
        raise ValueError(
            f"depth limits are defined for a theory.ResNet (branches scaled with depth), got {res!r}; "
            "an MLP's kernel has no infinite-depth ODE limit: use theory.kernels at finite depth"
        )
    if res.branch_scale == 0 or (res.w_std == 0 and res.b_std == 0):
        return "identity"
    if res.depth_exponent > CRITICAL_EXPONENT:
        return "identity"
    if res.depth_exponent < CRITICAL_EXPONENT:
        return "divergent"
    return "ode"


def _default_tolerances(dtype: np.dtype) -> tuple[float, float]:
    return (1e-10, 1e-12) if np.dtype(dtype) == np.float64 else (1e-5, 1e-7)


def _solve_block(xr, x2, parts, coeffs, with_ntk, readout, times, rtol, atol, max_steps):
    stem, block, head = parts
    c_stem, (gain, c_branch), c_head = coeffs
    k = recursion.input_kernel(xr, x2, False, with_ntk)
    watch = recursion.new_watch(xr.shape[0], xr.dtype)
    k, _, _ = recursion.apply_plan(stem, c_stem, k, watch)
    # The ODE adds kernels linearly; the correlation gap of a sum is not additive. The identical-pair mask is no
    # state of the ODE: the branch reads it from the closure (its derivative then keeps those pairs equal).
    same = k.same
    k = k.replace(g12=None, same=None)

    def rhs(s):
        # d/dt of the blocks: the branch's kernel map with branch_scale^2 in place of scale^2, no skip.
        out, _, _ = recursion.apply_plan(block.branch, c_branch, s.replace(same=same), watch)
        return jax.tree.map(lambda a: gain * a, out.replace(same=None))

    outputs, steps, reached, t_prev = [], jnp.int32(0), jnp.bool_(True), 0.0
    for t in times:
        if t > t_prev:
            sol = dopri5(rhs, k, t - t_prev, rtol=rtol, atol=atol, max_steps=max_steps)
            k, steps, reached = sol.y, steps + sol.steps, reached & sol.reached
        t_prev = t
        outputs.append(k)
    if readout:
        outputs = [recursion.apply_plan(head, c_head, s.replace(same=same), watch)[0] for s in outputs]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *outputs)
    return (stacked.q12, stacked.t12, jnp.max(stacked.q11)), steps, reached


@jax.jit(static_argnames=("parts", "with_ntk", "readout", "times", "max_steps", "block"))
def _solve(x1, x2, coeffs, rtol, atol, *, parts, with_ntk, readout, times, max_steps, block):
    n1 = x1.shape[0]
    n_blocks = -(-n1 // block)
    pad = n_blocks * block - n1
    rows = jnp.concatenate([x1, jnp.broadcast_to(x1[:1], (pad, *x1.shape[1:]))])
    rows = rows.reshape(n_blocks, block, *x1.shape[1:])

    def one(xr):
        return _solve_block(xr, x2, parts, coeffs, with_ntk, readout, times, rtol, atol, max_steps)

    (q, t, max_var), steps, reached = jax.lax.map(one, rows)

    def unblock(a):  # (blocks, times, block, N) -> (times, N1, N)
        if a is None:
            return None
        a = jnp.moveaxis(a, 1, 0)
        return a.reshape(a.shape[0], n_blocks * block, -1)[:, :n1]

    return unblock(q), unblock(t), jnp.max(max_var), jnp.max(steps), jnp.all(reached)


def _parts(res: ResNet, shape, dtype):
    """The stem, one block and the head of ``res`` as plan pieces with their coefficient arrays (a
    one-block proxy: the ODE does not depend on the depth); the block's with ``branch_scale^2``."""
    proxy = dataclasses.replace(res, depth=1)
    plan = analyse(proxy, shape).plan
    layers = proxy.layers
    stem, blocks, head = plan[:1], plan[1], plan[2:]
    block_step = blocks.steps[0]
    rate = recursion.residual_coefficients(block_step, layers[1], res.branch_scale**2)
    coeffs = (recursion.coefficients(stem, layers[:1]), rate, recursion.coefficients(head, layers[2:]))
    arrays = (recursion.as_arrays(coeffs[0], stem, dtype),
              (jnp.asarray(rate[0], dtype), recursion.as_arrays(rate[1], block_step.branch, dtype)),
              recursion.as_arrays(coeffs[2], head, dtype))
    return (stem, block_step, head), arrays


def _check_times(times: object) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(times, dtype=float))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"times must be a non-empty 1-d sequence of finite numbers in [0, 1], got {times!r}")
    if np.any(values < 0) or np.any(values > 1) or np.any(np.diff(values) < 0):
        raise ValueError(f"times must be non-decreasing values in [0, 1] (t = l / depth), got {times!r}")
    return tuple(float(v) for v in values)


def _limit(res, x1, x2, get, times, readout, rtol, atol, max_steps, memory_budget, at_least=0.0):
    original, x1_in, x2_in, rtol_in, atol_in = res, x1, x2, rtol, atol
    regime = limit_regime(res)
    if regime == "divergent":
        raise ValueError(
            f"{res!r} has depth_exponent={res.depth_exponent} < 1/2: the L branches add variance "
            f"~ L^(1 - 2 * {res.depth_exponent}) = L^{1 - 2 * res.depth_exponent:.3g}, so the kernel diverges as "
            "depth -> inf and has no finite limit (the exploding regime); use depth_exponent = 0.5 for the ODE "
            "limit, or > 0.5 for the identity limit"
        )
    wanted = check_get(get)
    symmetric = x2 is None
    x1, x2 = validate_inputs(x1, x2)
    x2 = x1 if symmetric else x2
    dtype = np.dtype(x1.dtype)
    d_rtol, d_atol = _default_tolerances(dtype)
    rtol, atol = (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if regime == "identity":
        times = tuple(0.0 for _ in times)  # nothing moves: every time is the stem's kernel
    with_ntk = "ntk" in wanted
    if res.activation.automatic:
        # The series accurate at the variances met; a depth-64 network is a close proxy for the ODE's.
        proxy = with_series(dataclasses.replace(res, depth=64), x1, None if symmetric else x2, at_least=at_least)
        res = dataclasses.replace(res, activation=program_activations(proxy.layers)[0])
    parts, arrays = _parts(res, recursion.shape_of(x1), dtype)
    plan_for_memory = (*parts[0], *parts[2])
    block = recursion.block_rows(x1.shape[0], x2.shape[0], plan_for_memory, len(times) + 2, dtype.itemsize,
                                 with_ntk, True, memory_budget)
    q, t, max_var, steps, reached = recursion.bound_cache(_solve)(
        x1, x2, arrays, jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype), parts=parts, with_ntk=with_ntk,
        readout=readout, times=times, max_steps=max_steps, block=block,
    )
    if not bool(reached):
        raise ValueError(
            f"the ODE solver did not reach t = {times[-1]} within max_steps={max_steps} steps at rtol={rtol}, "
            f"atol={atol} ({int(steps)} steps taken): the tolerance cannot be met; loosen rtol/atol or raise "
            "max_steps"
        )
    if not (np.isfinite(np.asarray(q)).all() and (t is None or np.isfinite(np.asarray(t)).all())):
        raise ValueError(f"the depth limit of {res!r} overflows {dtype.name}: reduce branch_scale, w_std or b_std")
    act = res.activation
    if not act.has_closed_form and act.series is None:
        check_quadrature(act, float(max_var))
    if act.series is not None and float(max_var) > act.series.variance and at_least == 0.0:
        # The depth-64 proxy underestimated the ODE's variances: a series for those met, once more.
        return _limit(original, x1_in, x2_in, get, times, readout, rtol_in, atol_in, max_steps, memory_budget,
                      at_least=1.25 * float(max_var))
    if symmetric:
        q = (q + jnp.swapaxes(q, -1, -2)) / 2
        t = None if t is None else (t + jnp.swapaxes(t, -1, -2)) / 2
    return Kernels(nngp=q if "nngp" in wanted else None, ntk=t)


def resnet_limit(
    res: ResNet,
    x1: Array,
    x2: Array | None = None,
    get: str | tuple[str, ...] = KERNEL_NAMES,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 10_000,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Kernels:
    """NNGP and NTK of ``res`` at the output in the limit width -> inf, then depth -> inf.

    Solves the ODE of the module docstring on ``t in [0, 1]`` with the adaptive Dormand-Prince 5(4)
    scheme (:func:`theory.ode.dopri5`), every kernel entry held to ``|local error| <= atol + rtol |q|``
    (defaults: ``rtol = 1e-10, atol = 1e-12`` in float64; ``1e-5, 1e-7`` in float32), then applies the
    readout. Same shapes, conventions and readout as ``theory.kernels(res, x1, x2)``; ``res.depth`` is
    ignored (the cost does not grow with it). Regimes: ``depth_exponent = 1/2`` the ODE;
    ``> 1/2`` the identity (the stem's kernel through the readout); ``< 1/2`` raises ``ValueError``.

    Raises:
      ValueError: for an MLP, a divergent exponent, malformed inputs, non-positive tolerances, or a
        tolerance the solver cannot meet within ``max_steps`` (the message says so).
    """
    k = _limit(res, x1, x2, get, (1.0,), True, rtol, atol, max_steps, memory_budget)
    return Kernels(nngp=None if k.nngp is None else k.nngp[0], ntk=None if k.ntk is None else k.ntk[0])


def residual_stream_limit(
    res: ResNet,
    x1: Array,
    x2: Array | None = None,
    times: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    get: str | tuple[str, ...] = KERNEL_NAMES,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 10_000,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Kernels:
    """Kernels ``q(t)``, ``Theta(t)`` of the residual stream (before the readout) at the given
    times ``t = l / depth`` (non-decreasing, in ``[0, 1]``), stacked on axis 0: the limit of
    ``theory.kernels(res, ..., per_layer=True)`` at block ``l = t * depth``. Same solver and
    regimes as :func:`resnet_limit`."""
    return _limit(res, x1, x2, get, _check_times(times), False, rtol, atol, max_steps, memory_budget)


__all__ = ["CRITICAL_EXPONENT", "limit_regime", "residual_stream_limit", "resnet_limit"]
