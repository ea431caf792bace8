r"""The DMFT of a one-hidden-layer mean-field / muP network by sampling its single-site law in weight space.

With one hidden layer and ``d``-dimensional inputs, the network ``f(x) = sigma / (gamma n) sum_i a_i phi(sigma w_i .
x / sqrt(d))`` (``theory.dmft.solve``'s conventions) is an average over neurons, and gradient descent at rate
``eta gamma^2 n`` moves every neuron ``(w_i in R^d, a_i)`` by the same rule, driven by the training residuals
``Delta = y - f`` only. As ``n -> inf``, ``Delta(t)`` is deterministic and the neurons are independent copies of one
process (the mean-field limit of two-layer networks; docs/dmft.md, "One hidden layer in weight space"). With
``a = a_0 + gamma alpha``, ``w = w_0 + gamma v``, ``h = sigma w . x / sqrt(d)``, ``e_mu = Delta_mu / P`` on training
inputs:

    alpha(t + 1) = alpha(t) + eta sigma sum_mu e_mu(t) phi(h_mu(t))
    v(t + 1)     = v(t) + eta sigma^2 / sqrt(d) a(t) sum_mu e_mu(t) phi'(h_mu(t)) x_mu
    f_mu(t)      = sigma / gamma E[a_0 (phi(h_mu(t)) - phi(h_mu(0)))] + sigma E[alpha(t) phi(h_mu(t))],

``E`` over the law of ``(w_0, a_0) ~ N(0, I_d) x N(0, 1)`` (``E[a_0 phi(h(0))] = 0``: the limit has no initial output).
Sampling ``S`` neurons, with ``E`` the sample mean and ``Delta`` computed from it, is the self-consistent fixed point
of the Monte-Carlo DMFT with fixed noise, reached without iteration (time is causal): exactly a *centred* width-``S``
network (``f - f_0``; Chizat et al. 2019), trained by gradient descent, so it is as stable as one. ``(phi(h) -
phi(h(0))) / gamma`` is computed without cancellation as ``gamma -> 0`` (a quadrature of ``phi'`` where ``h`` moved
by less than 1e-2). The error: ``O(1/sqrt(S))`` fluctuations, measured by ``replicas`` independent solves, and an
``O(1/S)`` bias (``S >> replicas`` keeps it below the standard error for smooth functionals; a grokking time is more
sensitive: docs/figures/grokking.md). Cost ``O(replicas S T P d)``, memory
``O(S (d + N))``, against the kernel-space solver's ``O(S M^2)`` per sweep with ``M = (T + 1) N``. (A Stein-lemma
estimator of the first term, ``E[d phi(h) / d a_0]`` carried as a tangent, has no ``1 / gamma`` either, but it is not
the output of any network: its feedback through ``Delta`` is not a gradient flow, and it diverged after ~2500 steps of
the grokking run where the centred sample converges.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from theory.dmft.common import derivative

Array = jax.Array


@partial(jax.tree_util.register_dataclass, data_fields=["sigma", "eta", "gamma"], meta_fields=["fn", "kernels"])
@dataclass(frozen=True)
class _Setup:
    """Activation and which kernels to record (static), and the numbers (traced: a sweep reuses one compilation).
    ``kernels``: None, ``"equal_time"`` (``Phi(t, t)``, ``G(t, t)`` per record) or ``"two_time"`` (``Phi(t, s)``,
    ``G(t, s)`` over all records, from every sample's path: memory ``S M``)."""

    sigma: float
    eta: float
    gamma: float
    fn: object
    kernels: str | None


# 3-point Gauss-Legendre on [0, 1]: phi(h + d) - phi(h) = d int_0^1 phi'(h + s d) ds, exact for cubic phi, relative
# error O(d^6) otherwise; used where |d| < _SMALL, where the plain difference would lose digits to cancellation
_NODES = (0.5 - 0.5 * math.sqrt(0.6), 0.5, 0.5 + 0.5 * math.sqrt(0.6))
_WEIGHTS = (5 / 18, 8 / 18, 5 / 18)
_SMALL = 1e-2


def _moved(setup: _Setup, h0: Array, q: Array) -> tuple[Array, Array, Array]:
    """``(h, phi(h), (phi(h) - phi(h0)) / gamma)`` for ``h = h0 + gamma q``, the last without cancellation."""
    fn, g = setup.fn, setup.gamma
    dphi = derivative(fn)
    d = g * q
    h = h0 + d
    p = fn(h)
    quad = q * sum(w * dphi(h0 + s * d) for s, w in zip(_NODES, _WEIGHTS, strict=True))
    small = jnp.abs(d) < _SMALL
    direct = (p - fn(h0)) / jnp.where(small, 1.0, g)
    return h, p, jnp.where(small, quad, direct)


def _outputs(setup: _Setup, x: Array, h0: Array, a0: Array, alpha: Array, v: Array
             ) -> tuple[Array, Array, Array]:
    """``(f (N,), h (S, N), phi(h) (S, N))`` on inputs ``x`` (already divided by ``sqrt(d)``), ``h0 = sigma w0 . x``."""
    s = setup.sigma
    h, p, moved = _moved(setup, h0, s * v @ x.T)
    f = s * jnp.mean(a0[:, None] * moved, axis=0) + s * jnp.mean(alpha[:, None] * p, axis=0)
    return f, h, p


def _step(setup: _Setup, xs: Array, y: Array, h0: Array, a0: Array, state: tuple) -> tuple:
    """One gradient step of every sampled neuron (module docstring); ``h0`` ``(S, P)`` the initial
    pre-activations on the training inputs."""
    alpha, v = state
    s, eta, g = setup.sigma, setup.eta, setup.gamma
    f, h, p = _outputs(setup, xs, h0, a0, alpha, v)
    e = (y - f) / y.shape[0]                             # (P,)
    a = a0 + g * alpha
    alpha_new = alpha + eta * s * (p @ e)
    v_new = v + eta * s * s * a[:, None] * ((derivative(setup.fn)(h) * e) @ xs)
    return alpha_new, v_new


def _record(setup: _Setup, xa: Array, w0: Array, a0: Array, state: tuple) -> dict:
    alpha, v = state
    f, h, p = _outputs(setup, xa, setup.sigma * w0 @ xa.T, a0, alpha, v)
    out = {"f": f}
    if setup.kernels is not None:
        dphi = derivative(setup.fn)
        gk = setup.sigma * (a0 + setup.gamma * alpha)[:, None] * dphi(h)   # g = phi'(h) z, z = sigma a
        if setup.kernels == "equal_time":
            out["phi"] = p.T @ p / p.shape[0]
            out["g"] = gk.T @ gk / p.shape[0]
        else:
            out["p"], out["gk"] = p, gk
    return out


@partial(jax.jit, static_argnames=("n_train",))
def _simulate(setup: _Setup, xa: Array, y: Array, w0: Array, a0: Array, lengths: Array, *, n_train: int) -> dict:
    """One replica: the sampled neurons ``w0`` ``(S, d)``, ``a0`` ``(S,)`` trained for ``sum(lengths)`` steps on the
    first ``n_train`` rows of ``xa`` ``(N, d) / sqrt(d)``; records at step 0 and after each segment."""
    xs = xa[:n_train]
    zeros = (jnp.zeros_like(a0), jnp.zeros_like(w0))
    step = partial(_step, setup, xs, y, setup.sigma * w0 @ xs.T, a0)

    def segment(state, n):
        state = jax.lax.fori_loop(0, n, lambda _, st: step(st), state)
        return state, _record(setup, xa, w0, a0, state)

    _, recs = jax.lax.scan(segment, zeros, lengths)
    first = _record(setup, xa, w0, a0, zeros)
    out = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, recs)
    if setup.kernels == "two_time":  # (records, S, N) -> (S, M), M = records * N time-major
        s = w0.shape[0]
        p = out.pop("p").transpose(1, 0, 2).reshape(s, -1)
        gk = out.pop("gk").transpose(1, 0, 2).reshape(s, -1)
        out["phi"], out["g"] = p.T @ p / s, gk.T @ gk / s
    return out


def simulate(fn: object, sigma: float, gamma: float, learning_rate: float, x_all: Array, y: Array, n_train: int,
             record_steps: np.ndarray, key: Array | None, samples: int, replicas: int, kernels: str | None,
             init: tuple | None = None) -> dict:
    """Every replica's records (leading axes ``(replicas, records)``): ``f`` ``(N,)`` and the kernels asked for.
    Replicas run one after another (``S`` neurons each, ``S (d + N)`` memory). ``init``: the initial neurons
    ``(w_0 (S, d), a_0 (S,))`` of a single replica instead of sampling them (``key`` unused)."""
    dtype = x_all.dtype
    xa = x_all / math.sqrt(x_all.shape[1])
    setup = _Setup(jnp.asarray(sigma, dtype), jnp.asarray(learning_rate, dtype), jnp.asarray(gamma, dtype), fn,
                   kernels)
    lengths = jnp.asarray(np.diff(record_steps), jnp.int32)
    outs = []
    for r in range(replicas):
        if init is not None:
            if replicas != 1:
                raise ValueError("init gives one replica's neurons: replicas must be 1")
            w0, a0 = jnp.asarray(init[0], dtype), jnp.asarray(init[1], dtype)
        else:
            kw, ka = jax.random.split(jax.random.fold_in(key, r))
            w0 = jax.random.normal(kw, (samples, x_all.shape[1]), dtype)
            a0 = jax.random.normal(ka, (samples,), dtype)
        outs.append(jax.tree.map(np.asarray, _simulate(setup, xa, y, w0, a0, lengths, n_train=n_train)))
    return {k: np.stack([o[k] for o in outs]) for k in outs[0]}
