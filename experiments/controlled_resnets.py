r"""Finite controlled ResNets (Muca Cirone, Lemercier & Salvi 2023) and Monte Carlo of their kernels.

The homogeneous network of width ``n`` driven by a piecewise-linear path ``x`` (``(T, d)``), each segment cut into
``refinement`` equal Euler steps (depth ``refinement (T - 1)``), weights shared by all steps:

    Y_0 = sigma_0 z,   Y_{r+1} = Y_r + sum_k (sigma_A / sqrt(n) A_k phi(Y_r) + sigma_b b_k) dx^k_r,

``z, A_k, b_k`` with iid ``N(0, 1)`` entries. The readout ``f = <v, Y_last> / sqrt(n)``, ``v ~ N(0, I)``, has
covariance ``<Y^x, Y^y> / n`` given the network: that per-network kernel is what is sampled here (without the
readout's noise). Its mean tends to :func:`theory.signature_kernels.controlled_resnet_kernel` as ``n -> inf`` (at the
same depth) and, with the depth, to :func:`theory.neural_signature_kernel`.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from experiments.monte_carlo import Estimate
from theory import activations
from theory.activations import Activation

Array = jax.Array


def _check_int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _paths(x: object) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 3 or arr.shape[1] < 2 or arr.shape[0] < 1 or arr.shape[2] < 1:
        raise ValueError(f"paths must have shape (N, T >= 2, d), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("paths contain NaN or inf")
    return arr


def init(key: Array, width: int, d: int, *, sigma_0: float = 1.0, sigma_a: float = 1.0, sigma_b: float = 0.0,
         dtype: object = None) -> dict[str, Array]:
    """One network's parameters, scales included: ``z (n,)`` (times ``sigma_0``), ``A (d, n, n)`` (times
    ``sigma_a / sqrt(n)``), ``b (d, n)`` (times ``sigma_b``)."""
    dtype = dtype or jnp.result_type(float)
    kz, ka, kb = jax.random.split(key, 3)
    return {"z": sigma_0 * jax.random.normal(kz, (width,), dtype),
            "A": sigma_a / np.sqrt(width) * jax.random.normal(ka, (d, width, width), dtype),
            "b": sigma_b * jax.random.normal(kb, (d, width), dtype)}


def hidden_state(params: dict[str, Array], x: Array, phi: Activation, refinement: int) -> Array:
    """The last hidden state ``Y (N, n)`` for paths ``x (N, T, d)``."""
    steps = jnp.repeat(jnp.diff(x, axis=1) / refinement, refinement, axis=1)  # (N, R, d)
    a, b = params["A"], params["b"]

    def step(y, inc):  # y (N, n), inc (N, d)
        drive = jnp.einsum("kij,pj->pki", a, phi(y)) + b[None]  # (N, d, n)
        return y + jnp.einsum("pki,pk->pi", drive, inc), None

    y0 = jnp.broadcast_to(params["z"], (x.shape[0], params["z"].shape[0]))
    return jax.lax.scan(step, y0, jnp.swapaxes(steps, 0, 1))[0]


@functools.partial(jax.jit, static_argnames=("phi", "width", "refinement", "sigmas"))
def _kernels(keys: Array, x: Array, *, phi: Activation, width: int, refinement: int,
             sigmas: tuple[float, float, float]) -> Array:
    def one(key):
        params = init(key, width, x.shape[2], sigma_0=sigmas[0], sigma_a=sigmas[1], sigma_b=sigmas[2],
                      dtype=x.dtype)
        y = hidden_state(params, x, phi, refinement)
        return y @ y.T / width

    return jax.lax.map(one, keys)


def network_kernels(x: object, activation: str | Activation = "identity", *, width: int, refinement: int = 1,
                    n_samples: int, key: Array, sigma_0: float = 1.0, sigma_a: float = 1.0,
                    sigma_b: float = 0.0) -> np.ndarray:
    """Per-network kernels ``<Y^x_i, Y^x_j> / n`` of ``n_samples`` independent networks: ``(n_samples, N, N)``.
    Network ``s`` uses ``jax.random.split(key, n_samples)[s]``."""
    xa = jnp.asarray(_paths(x))
    width, refinement = _check_int("width", width), _check_int("refinement", refinement)
    n_samples = _check_int("n_samples", n_samples)
    phi = activations.get(activation)
    sigmas = tuple(float(s) for s in (sigma_0, sigma_a, sigma_b))
    return np.asarray(_kernels(jax.random.split(key, n_samples), xa, phi=phi, width=width,
                               refinement=refinement, sigmas=sigmas))


def estimate_kernel(x: object, activation: str | Activation = "identity", *, width: int, refinement: int = 1,
                    n_samples: int, key: Array, **sigmas: float) -> Estimate:
    """Mean over ``n_samples`` networks of the per-network kernel ``(N, N)`` and its standard error."""
    samples = network_kernels(x, activation, width=width, refinement=refinement, n_samples=n_samples, key=key,
                              **sigmas)
    sd = samples.std(axis=0, ddof=1) if n_samples > 1 else np.full(samples.shape[1:], np.inf)
    return Estimate(samples.mean(axis=0), sd / np.sqrt(n_samples))
