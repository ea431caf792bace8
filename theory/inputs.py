"""Validation of network inputs, shared by the theory and by finite networks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_LAYOUTS = {0: "(batch, features)", 1: "(batch, length, channels)", 2: "(batch, height, width, channels)"}


def _layout(spatial_dims: int | None) -> str:
    if spatial_dims is None:
        return "(batch, features), (batch, length, channels) or (batch, height, width, channels)"
    return _LAYOUTS.get(spatial_dims, f"(batch, {spatial_dims} spatial dims, channels)")


def _as_inputs(name: str, x: object, spatial_dims: int | None, network: str | Callable[[], str] | None) -> Array:
    layout = _layout(spatial_dims)
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise ValueError(f"{name} must be an array of shape {layout}: {err}") from None
    if jnp.iscomplexobj(x):
        raise ValueError(f"{name} is complex ({x.dtype}); the kernels are defined for real inputs: pass the real "
                         "and imaginary parts as separate features")
    ok = x.ndim >= 2 if spatial_dims is None else x.ndim == spatial_dims + 2
    if not ok:
        hint = ("reshape a single input with x[None, :] or flatten image inputs to one axis" if spatial_dims == 0
                else "add the batch axis (x[None]) or a channel axis (x[..., None])")
        network = network() if callable(network) else network  # a callable: named only when an error needs it
        for_net = f" for {network}" if network and spatial_dims != 0 else ""
        raise ValueError(f"{name} must have shape {layout}{for_net}, got shape {tuple(x.shape)}; {hint}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} must have at least one input and one feature, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if not isinstance(x, jax.core.Tracer):
        finite = np.isfinite(np.asarray(x))
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise ValueError(f"{name} contains NaN or inf (first in row {row}); clean the inputs")
    return x


def validate_inputs(x1: object, x2: object | None = None, *, spatial_dims: int | None = 0,
                    network: str | Callable[[], str] | None = None) -> tuple[Array, Array | None]:
    """Return ``(x1, x2)`` as floating JAX arrays of one dtype.

    ``spatial_dims``: 0 for ``(batch, features)``, 1 for ``(batch, length, channels)``, 2 for
    ``(batch, height, width, channels)``, ``None`` for any of them. Raises ``ValueError`` for a wrong rank, an
    empty array, mismatched per-example shapes, complex values, or NaN/inf entries (checked when the values are
    concrete, i.e. outside ``jax.jit``). Integer inputs are cast to JAX's default float type; float64 needs
    ``jax.config.update("jax_enable_x64", True)``.
    """
    x1 = _as_inputs("x1", x1, spatial_dims, network)
    if x2 is None:
        return x1, None
    x2 = _as_inputs("x2", x2, spatial_dims, network)
    if x1.shape[1:] != x2.shape[1:]:
        if x1.ndim == 2 and x2.ndim == 2:
            raise ValueError(
                f"x1 and x2 must have the same number of features, got {x1.shape[1]} and {x2.shape[1]}")
        raise ValueError(f"x1 and x2 must have the same per-example shape, got {tuple(x1.shape[1:])} and "
                         f"{tuple(x2.shape[1:])}")
    dtype = jnp.result_type(x1, x2)
    return x1.astype(dtype), x2.astype(dtype)
