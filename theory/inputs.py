"""Validation of network inputs, shared by the theory and by finite networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _as_inputs(name: str, x: object) -> Array:
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise ValueError(f"{name} must be an array of shape (batch, features): {err}") from None
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have shape (batch, features), got shape {tuple(x.shape)}; "
            "reshape a single input with x[None, :] or flatten image inputs to one axis"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one input and one feature, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if not isinstance(x, jax.core.Tracer):
        finite = np.isfinite(np.asarray(x))
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise ValueError(f"{name} contains NaN or inf (first in row {row}); clean the inputs")
    return x


def validate_inputs(x1: object, x2: object | None = None) -> tuple[Array, Array | None]:
    """Return ``(x1, x2)`` as floating JAX arrays of one dtype, shape ``(batch, features)``.

    Raises ``ValueError`` for a wrong rank, an empty array, mismatched feature counts, or NaN/inf
    entries (checked when the values are concrete, i.e. outside ``jax.jit``). Integer inputs are
    cast to JAX's default float type; float64 needs ``jax.config.update("jax_enable_x64", True)``.
    """
    x1 = _as_inputs("x1", x1)
    if x2 is None:
        return x1, None
    x2 = _as_inputs("x2", x2)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"x1 and x2 must have the same number of features, got {x1.shape[1]} and {x2.shape[1]}"
        )
    dtype = jnp.result_type(x1, x2)
    return x1.astype(dtype), x2.astype(dtype)
