r"""Feature learning at infinite width: the dynamical mean-field theory (DMFT) of a mean-field / muP MLP.

Bordelon & Pehlevan 2022 ("Self-Consistent Dynamical Field Theory of Kernel Evolution in Wide Neural Networks",
arXiv 2205.09653), in discrete time (full-batch gradient descent; gradient flow is its small-step limit). The
network, of width ``n`` and ``L`` hidden layers, ``sigma = w_std``, no biases:

    h^1 = sigma W^0 x / sqrt(d),   h^{l+1} = sigma W^l phi(h^l) / sqrt(n),   f = sigma w^L . phi(h^L) / (gamma n)

with ``W, w ~ N(0, 1)``, trained by gradient descent on ``1/P sum_mu 1/2 (f_mu - y_mu)^2`` over ``P`` training
points with learning rate ``eta gamma^2 n`` on every weight (``gamma`` is Bordelon & Pehlevan's ``gamma_0``; output
multiplier ``1 / gamma``, ``gamma -> 0`` is the NTK / lazy limit). As ``n -> inf`` each layer's coordinates become
independent copies of a single-site process on the ``M = (T + 1) N`` pairs (step ``t``, input ``mu``):

    h^k(t) = u^k(t) + sigma^2 sum_{s<t} [A^{k-1}(t, s) + eta gamma Phi^{k-1}(t, s) w Delta(s)] g^k(s)
    z^k(t) = r^k(t) + sigma^2 sum_{s<=t} B^k(t, s) phi(h^k(s))
                    + sigma^2 sum_{s<t} eta gamma G^{k+1}(t, s) w Delta(s) phi(h^k(s))
    g^k = phi'(h^k) z^k,     u^k ~ GP(0, sigma^2 Phi^{k-1}),     r^k ~ GP(0, sigma^2 G^{k+1}),

(sums over inputs implied, ``w_nu = 1/P`` on training inputs and 0 on test inputs, ``Delta = y - f``), with
``Phi^0 = x.x'/d`` (constant in time), ``G^{L+1} = 1``, ``A^0 = B^L = 0`` and the order parameters

    Phi^k = <phi(h^k) phi(h^k)>,  G^k = <g^k g^k>,  A^k = <d phi(h^k) / d r^k>,  B^{k-1} = <d g^k / d u^k>,
    f(t) = sigma^2 / gamma <d phi(h^L(t)) / d r^L> + sigma^2 eta sum_{s<t} Phi^L(t, s) w Delta(s),
    NTK(t) = sigma^2 sum_{l=0}^{L} G^{l+1}(t, t) Phi^l(t, t).

``A``, ``B`` are the response functions (Tensor Programs' ``Zdot`` terms); ``r^L`` is one Gaussian of variance
``sigma^2`` shared by all inputs and times. At ``t = 0`` the kernels are the NNGP of ``theory.MLP(L, phi, w_std=
sigma)`` and the NTK its NTK; ``gamma -> 0`` gives ``theory.training_dynamics``' linearised trajectory.

Solvers (``method``):

- ``"monte_carlo"`` (the paper's): sample ``samples`` paths of each layer's process from the current order
  parameters (fixed noise: common random numbers across iterations, fields drawn through the principal square
  root of their covariance, so the iteration converges to a sample-dependent fixed point), average them into new
  order parameters (responses by forward-mode differentiation of every path, no matrix inverse), update the
  residuals, and repeat (Gauss-Seidel over layers, damping ``damping``) until the largest relative change is below
  ``tol``; ``replicas`` independent such solves give the mean and its standard error.
- ``"exact"`` (linear activation only): the process is linear in ``(u, r)`` and every order parameter is a
  matrix expression (docs/dmft.md); the same iteration, no sampling, float round-off only.
- ``"particles"`` (one hidden layer, any activation; the default there): each neuron ``(w in R^d, a)`` sampled in
  weight space and trained with the residuals of the sample mean, one pass, no iteration (:mod:`theory.dmft.particles`).

The iteration restarts from a causal front if an iterate overflows (docs/dmft.md, "Robustness"), and
``"monte_carlo"`` estimates the responses of an activation whose ``phi`` or ``phi'`` jumps (relu) by Gaussian
integration by parts instead of differentiating each path, which would miss the jumps (``responses``; docs/dmft.md,
"Rough activations").

Derivation, the solver's accuracy and cost: docs/dmft.md.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.architectures import MLP
from theory.dmft import particles
from theory.dmft.common import (
    DMFTSolution,
    check_converged,
    check_data,
    check_smooth,
    derivative,
    fixed_point,
    positive,
    replica_stats,
    rough,
    solver_options,
    sqrt_psd,
    stein_response,
    training_weights,
)

Array = jax.Array

MAX_DEPTH = 4


def _check_net(net: object) -> MLP:
    if not isinstance(net, MLP):
        raise ValueError(f"dmft.solve takes a theory.MLP (depth 1-{MAX_DEPTH} hidden layers, b_std=0), got {net!r}")
    if not 1 <= net.depth <= MAX_DEPTH:
        raise ValueError(f"dmft.solve covers MLPs with 1 to {MAX_DEPTH} hidden layers, got depth {net.depth}")
    if not (isinstance(net.b_std, numbers.Real) and float(net.b_std) == 0.0):
        raise ValueError(f"the DMFT network has no biases: build the MLP with b_std=0 (got b_std={net.b_std!r})")
    if not (isinstance(net.w_std, numbers.Real) and float(net.w_std) > 0):
        raise ValueError(f"w_std must be a positive number, got {net.w_std!r}")
    if net.weight_scaling != "ntk":
        raise ValueError("the DMFT network scales its weights itself (mean-field / muP with multiplier 1/gamma): "
                         f"build the MLP with the default weight_scaling, got {net.weight_scaling!r}")
    return net


# -- the single-site process -------------------------------------------------------------------------------------
@partial(jax.tree_util.register_dataclass, data_fields=["sigma2", "eta", "gamma"],
         meta_fields=["depth", "steps", "n", "fn"])
@dataclass(frozen=True)
class _Setup:
    """Sizes and activation (static: one compilation per shape) and the numbers (traced: a sweep over ``gamma``,
    ``learning_rate`` or ``w_std`` reuses the compiled solver)."""

    depth: int
    steps: int
    n: int
    sigma2: float
    eta: float
    gamma: float
    fn: object

    @property
    def m(self) -> int:
        return (self.steps + 1) * self.n


def _path(u: Array, r: Array, hc: Array, zc: Array | None, wd: Array, setup: _Setup, first: bool,
          last: bool) -> tuple[Array, Array, Array]:
    """One sample path of a layer's process: ``(phi(h), g)`` ``(M,)`` and, for the last layer, the running sum
    ``sum_{s<t} w Delta(s) . phi(h(s))`` ``(T + 1,)`` (zeros otherwise).

    First layer: ``u`` ``(n,)`` (constant in time) and ``hc`` the input kernel ``(n, n)`` (its coupling is
    ``sigma^2 eta gamma Kx sum_{s<t} w Delta(s) g(s)``, a running sum); else ``u`` ``(M,)`` and ``hc``
    ``(T + 1, n, M)``, the coefficients of the past ``g`` in ``h(t)``. Last layer: ``r`` a scalar and the
    coupling ``sigma^2 eta gamma sum_{s<t} w Delta(s) . phi(h(s))``; else ``r`` ``(M,)`` and ``zc`` ``(T + 1, n,
    M)``, the coefficients of ``phi(h(s <= t))`` in ``z(t)``. ``wd`` ``(T + 1, n)``: ``w Delta``.
    """
    fn, n, steps = setup.fn, setup.n, setup.steps
    c = setup.sigma2 * setup.eta * setup.gamma
    dphi = derivative(fn)
    m = setup.m

    def step(carry, t):
        pbuf, gbuf, acc_g, acc_p = carry
        if first:
            h = u + c * (hc @ acc_g)
        else:
            h = jax.lax.dynamic_slice(u, (t * n,), (n,)) + hc[t] @ gbuf
        p = fn(h)
        pbuf = jax.lax.dynamic_update_slice(pbuf, p, (t * n,))
        if last:
            z = r + c * acc_p
        else:
            z = jax.lax.dynamic_slice(r, (t * n,), (n,)) + zc[t] @ pbuf
        g = dphi(h) * z
        gbuf = jax.lax.dynamic_update_slice(gbuf, g, (t * n,))
        acc_g = acc_g + wd[t] * g
        new_p = acc_p + wd[t] @ p
        return (pbuf, gbuf, acc_g, new_p), acc_p

    zeros = jnp.zeros((m,), wd.dtype)
    init = (zeros, zeros, jnp.zeros((n,), wd.dtype), jnp.zeros((), wd.dtype))
    (pbuf, gbuf, _, _), acc = jax.lax.scan(step, init, jnp.arange(steps + 1))
    return pbuf, gbuf, acc


class _State(NamedTuple):
    """The order parameters the iteration carries (the kernels other layers need, 1-based layer names):
    ``phi[i] = Phi^{i+1}``, ``a[i] = A^{i+1}``, ``g[i] = G^{i+2}``, ``b[i] = B^{i+1}`` (``i < L - 1``, each
    ``(M, M)``), and the outputs ``f`` ``(M,)``."""

    phi: tuple
    a: tuple
    g: tuple
    b: tuple
    f: Array


def _couplings(setup: _Setup, i: int, state: _State, wd: Array, strict: Array, kx: Array):
    """Layer ``i + 1``'s ``(cov_u, hc, cov_r, zc)`` as full ``(M, M)`` matrices (``cov`` include ``sigma^2``)."""
    s2, c = setup.sigma2, setup.sigma2 * setup.eta * setup.gamma
    m = setup.m
    first, last = i == 0, i == setup.depth - 1
    phi_prev = jnp.tile(kx, (setup.steps + 1, setup.steps + 1)) if first else state.phi[i - 1]
    g_next = jnp.ones((m, m), kx.dtype) if last else state.g[i]
    hc = c * phi_prev * wd[None, :] * strict
    if not first:
        hc = hc + s2 * state.a[i - 1]
    zc = c * g_next * wd[None, :] * strict
    if not last:
        zc = zc + s2 * state.b[i]
    return s2 * phi_prev, hc, s2 * g_next, zc


def _mc_layer(setup: _Setup, i: int, state: _State, wd: Array, strict: Array, kx: Array, xi_u: Array,
              xi_r: Array, chunk: int, measure: str | None, stein: bool = False) -> dict:
    """Monte-Carlo averages over the sample paths of layer ``i + 1`` (fixed standard normals ``xi_u``, ``xi_r``
    ``(S, M)``). ``measure=None``: what the iteration needs; ``"two_time"`` / ``"equal_time"``: the kernels
    ``Phi``, ``G`` of the layer for the output. ``stein``: the responses by Gaussian integration by parts
    (:func:`theory.dmft.common.stein_response`) instead of differentiating each path."""
    depth, steps, n, m = setup.depth, setup.steps, setup.n, setup.m
    first, last = i == 0, i == depth - 1
    s2 = setup.sigma2
    c = s2 * setup.eta * setup.gamma
    wd2 = wd.reshape(steps + 1, n)
    if first:
        u_all = xi_u[:, :n] @ sqrt_psd(s2 * kx)
        hc = kx
    else:
        u_all = xi_u @ sqrt_psd(s2 * state.phi[i - 1])
        hc = (c * state.phi[i - 1] * wd[None, :] * strict + s2 * state.a[i - 1]).reshape(steps + 1, n, m)
    if last:
        r_all = jnp.sqrt(s2) * xi_r[:, 0]
        zc = None
    else:
        r_all = xi_r @ sqrt_psd(s2 * state.g[i])
        zc = (c * state.g[i] * wd[None, :] * strict + s2 * state.b[i]).reshape(steps + 1, n, m)
    path = partial(_path, hc=hc, zc=zc, wd=wd2, setup=setup, first=first, last=last)
    want_a = measure is None and not last
    want_b = measure is None and not first
    eye = jnp.eye(m, dtype=wd.dtype)

    def one(u, r):
        p, g, acc = path(u, r)
        out = {"p": p, "g": g}
        if measure is None and stein:
            # antithetic in r: E[phi r^T] = E[odd part of phi in r . r^T], E[g u^T] = E[even part of g in r . u^T]
            # (the other parts average to 0 over r); both parts are O(gamma), not O(1): the control variate
            pm, gm, _ = path(u, -r)
            if last:
                out["dr"] = (p - pm) / 2 * r
                out["rr"] = r * r
            if want_a:
                out["p_odd"] = (p - pm) / 2
            if want_b:
                out["g_even"] = (g + gm) / 2
        elif measure is None:
            if last:
                out["dr"] = jax.jvp(lambda rr: path(u, rr)[0], (r,), (jnp.ones_like(r),))[1]
            if want_a:
                out["a"] = jax.vmap(lambda e: jax.jvp(lambda rr: path(u, rr)[0], (r,), (e,))[1], out_axes=1)(eye)
            if want_b:
                out["b"] = jax.vmap(lambda e: jax.jvp(lambda uu: path(uu, r)[1], (u,), (e,))[1], out_axes=1)(eye)
        if last and measure is None:
            out["fterm"] = p * jnp.repeat(acc, n)
        return out

    def sums(args):
        out = jax.vmap(one)(*args)
        p, g = out.pop("p"), out.pop("g")
        res = {key: jnp.sum(v, axis=0) for key, v in out.items() if key not in ("p_odd", "g_even")}
        if "p_odd" in out:
            res["ka"], res["rr"] = out["p_odd"].T @ args[1], args[1].T @ args[1]
        if "g_even" in out:
            res["kb"], res["uu"] = out["g_even"].T @ args[0], args[0].T @ args[0]
        if measure == "equal_time":
            p3, g3 = p.reshape(-1, steps + 1, n), g.reshape(-1, steps + 1, n)
            res["phi"] = jnp.einsum("sti,stj->tij", p3, p3)
            res["g"] = jnp.einsum("sti,stj->tij", g3, g3)
        else:
            if measure == "two_time" or not last:
                res["phi"] = p.T @ p
            if measure == "two_time" or not first:
                res["g"] = g.T @ g
        return res

    s = xi_u.shape[0]
    k = s // chunk
    total = jax.lax.map(sums, (u_all.reshape(k, chunk, *u_all.shape[1:]), r_all.reshape(k, chunk, *r_all.shape[1:])))
    res = {key: jnp.sum(v, axis=0) / s for key, v in total.items()}
    # Gaussian integration by parts, E[phi r^T] = A Cov(r), with the samples' own second moments for Cov: a
    # regression of phi on r, exact on these samples for whatever part of phi is linear in r
    if last and "rr" in res:
        res["dr"] = res["dr"] / res.pop("rr")
    step_of = np.repeat(np.arange(steps + 1), n)
    if "ka" in res:  # A strictly causal
        res["a"] = stein_response(res.pop("ka"), res.pop("rr"), step_of, step_of, same_step=False)
    if "kb" in res:  # B causal including the same step
        res["b"] = stein_response(res.pop("kb"), res.pop("uu"), step_of, step_of, same_step=True)
    return res


def _exact_layer(setup: _Setup, i: int, state: _State, wd: Array, strict: Array, kx: Array, measure: str | None
                 ) -> dict:
    """The same averages for the identity activation, exactly: ``h = (I - C D)^-1 (u + C r)``,
    ``z = g = r + D h`` (docs/dmft.md)."""
    depth, steps, n, m = setup.depth, setup.steps, setup.n, setup.m
    first, last = i == 0, i == depth - 1
    cov_u, cm, cov_r, dm = _couplings(setup, i, state, wd, strict, kx)
    eye = jnp.eye(m, dtype=cm.dtype)
    hq = jnp.linalg.solve(eye - cm @ dm, eye)
    h_r = hq @ cm
    z_u = dm @ hq
    z_r = eye + dm @ h_r
    phi = hq @ cov_u @ hq.T + h_r @ cov_r @ h_r.T
    g = z_u @ cov_u @ z_u.T + z_r @ cov_r @ z_r.T
    if measure == "equal_time":
        tt = jnp.arange(steps + 1)
        return {"phi": phi.reshape(steps + 1, n, steps + 1, n)[tt, :, tt],
                "g": g.reshape(steps + 1, n, steps + 1, n)[tt, :, tt]}
    out = {"phi": phi, "g": g}
    if measure is None:
        if last:
            out["dr"] = h_r @ jnp.ones((m,), cm.dtype)
            out["fterm"] = (phi * strict) @ wd
        if not last:
            out["a"] = h_r
        if not first:
            out["b"] = z_u
    return out


def _iterate(setup: _Setup, kx: Array, y_all: Array, w: Array, xi_u: Array, xi_r: Array, *, exact: bool,
             stein: bool, damping: Array, tol: Array, max_iterations: Array, chunk: int, measure: str,
             kernel_slack: Array):
    """Damped Gauss-Seidel fixed-point iteration of one replica, then the kernels of every layer from the fixed
    point; returns ``(phis, gs, f, iterations, change)``."""
    depth, m = setup.depth, setup.m
    dtype = kx.dtype
    t_idx = jnp.repeat(jnp.arange(setup.steps + 1), setup.n)
    strict = (t_idx[None, :] < t_idx[:, None]).astype(dtype)

    def layer(i, state, wd, mode):
        if exact:
            return _exact_layer(setup, i, state, wd, strict, kx, mode)
        return _mc_layer(setup, i, state, wd, strict, kx, xi_u[i], xi_r[i], chunk, mode, stein)

    def sweep(state, front):
        wd = w * (y_all - state.f) * (t_idx < front)
        phi, a, g, b = list(state.phi), list(state.a), list(state.g), list(state.b)
        f = state.f
        for i in range(depth):
            cur = _State(tuple(phi), tuple(a), state.g, state.b, state.f)  # Gauss-Seidel upwards
            out = layer(i, cur, wd, None)
            if i < depth - 1:
                phi[i], a[i] = out["phi"], out["a"]
            if i > 0:
                g[i - 1], b[i - 1] = out["g"], out["b"]
            if i == depth - 1:
                f = setup.sigma2 / setup.gamma * out["dr"] + setup.sigma2 * setup.eta * out["fterm"]
        return _State(tuple(phi), tuple(a), tuple(g), tuple(b), f)

    def rel_change(old, new):
        changes = [jnp.max(jnp.abs(o - n_)) / jnp.maximum(jnp.max(jnp.abs(n_)), 1e-30) / kernel_slack
                   for o, n_ in zip(old.phi + old.g, new.phi + new.g, strict=True)]
        scale = jnp.maximum(jnp.max(jnp.abs(y_all)), jnp.max(jnp.abs(new.f)))
        changes.append(jnp.max(jnp.abs(old.f - new.f)) / jnp.maximum(scale, 1e-30))
        return jnp.max(jnp.stack(changes))

    zero = jnp.zeros((m, m), dtype)
    k = depth - 1
    state0 = _State((zero,) * k, (zero,) * k, (zero,) * k, (zero,) * k, jnp.zeros((m,), dtype))

    state, it, change = fixed_point(sweep, rel_change, state0, damping=damping, tol=tol,
                                    max_iterations=max_iterations, steps=setup.steps)
    wd = w * (y_all - state.f)
    outs = [layer(i, state, wd, measure) for i in range(depth)]
    return jnp.stack([o["phi"] for o in outs]), jnp.stack([o["g"] for o in outs]), state.f, it, change


@partial(jax.jit, static_argnames=("exact", "stein", "chunk", "measure"))
def _solve_jit(setup, kx, y_all, w, xi_u, xi_r, damping, tol, *, exact, stein, max_iterations, chunk, measure,
               kernel_slack=1.0):
    def replica(xu, xr):
        return _iterate(setup, kx, y_all, w, xu, xr, exact=exact, stein=stein, damping=damping, tol=tol,
                        max_iterations=max_iterations, chunk=chunk, measure=measure, kernel_slack=kernel_slack)
    # replicas one after the other: an eigh batched over replicas inside the iteration deadlocked XLA's CPU runtime
    # (2 cores) at some shapes
    return jax.lax.map(lambda a: replica(*a), (xi_u, xi_r))


def solve(net: MLP, x_train: object, y_train: object, x_test: object | None = None, *, gamma: float,
          learning_rate: float, steps: int, key: Array | None = None, method: str = "auto", samples: int | None = None,
          replicas: int = 8, damping: float | None = None, tol: float | None = None, max_iterations: int = 200,
          kernels: str = "two_time", chunk: int | None = None, responses: str = "auto") -> DMFTSolution:
    r"""Infinite-width gradient-descent trajectory of the mean-field / muP MLP ``net`` (module docstring).

    Args:
      net: ``theory.MLP(L, activation, w_std=sigma, b_std=0)`` with ``1 <= L <= 4``; any activation
        (a registered name or ``theory.Activation(fn)`` of a JAX function).
      x_train: ``(P, d)`` training inputs; y_train: ``(P,)`` or ``(P, 1)`` targets; x_test: ``(Q, d)`` or None.
      gamma: the richness ``gamma_0 > 0`` (output multiplier ``1/gamma``; small ``gamma`` is the NTK regime).
      learning_rate: ``eta`` (the weights' rate is ``eta gamma^2 n``); steps: number of gradient steps ``T``.
        Gradient flow to time ``tau`` is the limit ``eta -> 0``, ``steps = tau / eta`` (error ``O(eta)``).
      key: JAX key for the Monte-Carlo fields (required by ``method="monte_carlo"``).
      method: ``"auto"`` (``"exact"`` for the identity activation, else ``"particles"`` with one hidden layer and
        ``"monte_carlo"`` with more), ``"monte_carlo"`` (fields over the inputs, any activation),
        ``"particles"`` (one hidden layer: its neurons sampled in weight space, :mod:`theory.dmft.particles`; any
        activation; ``damping``, ``tol``, ``max_iterations``, ``chunk`` and ``responses`` unused), ``"exact"``.
      samples: sample paths per layer and replica (default 2048; with ``responses="stein"`` at least 32 per field
        regressed on, ``32 M`` rounded up to a power of 2); replicas: independent solves (>= 2) for the standard
        errors.
      damping: fraction of the new iterate kept (1: plain fixed point; default 1, 0.5 for a rough activation);
        tol: largest relative change of the kernels and outputs at convergence (default 1e-10 exact,
        ``0.1 / sqrt(samples)`` Monte Carlo: below the Monte-Carlo noise; for a rough activation the kernels' changes
        are held to 10x ``tol``, its fixed-noise map jitters: :func:`theory.dmft.common.solver_options`);
        max_iterations: raise :class:`DMFTConvergenceError` beyond it.
      kernels: ``"two_time"`` (``phi``, ``g`` are ``(L, T + 1, T + 1, N, N)``) or ``"equal_time"``
        (``(L, T + 1, N, N)``: ``Phi^l(t, t)``; memory ``O(T N^2)`` instead of ``O(T^2 N^2)``).
      chunk: samples per vectorised batch (memory ``chunk * M^2`` for the responses; default ``min(samples, 64)``).
      responses: how ``"monte_carlo"`` estimates the response functions ``A``, ``B`` and the output term:
        ``"pathwise"`` (differentiate each sampled path: lowest variance, exact for smooth activations),
        ``"stein"`` (Gaussian integration by parts, ``E[phi r^T] = A Cov(r)``: exact for any activation, also where
        ``phi'`` jumps), ``"auto"`` (``"stein"`` for an activation whose ``phi`` or ``phi'`` jumps, such as relu,
        else ``"pathwise"``). docs/dmft.md, "Rough activations".

    Returns:
      :class:`DMFTSolution` (numpy arrays, float64 when ``jax_enable_x64`` is on, else float32).
    """
    net = _check_net(net)
    x_all, y, n_train = check_data(x_train, y_train, x_test)
    gamma = positive("gamma", gamma)
    eta = positive("learning_rate", learning_rate)
    steps = positive("steps", steps, integer=True, allow_zero=True)
    opt = solver_options(identity=net.activation.name == "identity", dtype=x_all.dtype, key=key, method=method,
                         samples=samples, replicas=replicas, damping=damping, tol=tol,
                         max_iterations=max_iterations, chunk=chunk, kernels=kernels, particles=net.depth == 1,
                         responses=responses, is_rough=rough(net.activation.fn),
                         regressors=(steps + 1) * x_all.shape[0])
    check_smooth(net.activation.name, steps, opt)
    dtype = x_all.dtype
    if opt.method == "particles":
        return _solve_particles(net, x_all, y, n_train, gamma, eta, steps, key, opt)
    n, depth = x_all.shape[0], net.depth
    m = (steps + 1) * n
    setup = _Setup(depth, steps, n, float(net.w_std) ** 2, eta, gamma, net.activation.fn)
    kx = x_all @ x_all.T / x_all.shape[1]
    y_all, w = training_weights(n_train, n, steps, y)
    if opt.exact:
        xi_u = xi_r = jnp.zeros((1, depth, 1, 1), dtype)
    else:
        ku, kr = jax.random.split(key)
        xi_u = jax.random.normal(ku, (opt.replicas, depth, opt.samples, m), dtype)
        xi_r = jax.random.normal(kr, (opt.replicas, depth, opt.samples, m), dtype)
    phis, gs, f, it, change = _solve_jit(setup, kx, y_all, w, xi_u, xi_r, jnp.asarray(opt.damping, dtype),
                                         jnp.asarray(opt.tol, dtype), exact=opt.exact, stein=opt.stein,
                                         max_iterations=jnp.asarray(opt.max_iterations),
                                         chunk=opt.chunk, measure=opt.kernels,
                                         kernel_slack=jnp.asarray(opt.kernel_slack, dtype))
    it, change = check_converged(it, change, opt.tol)
    return _solution(kx, y, n_train, setup, phis, gs, f, it, change, opt, dtype)


def _solve_particles(net, x_all, y, n_train, gamma, eta, steps, key, opt) -> DMFTSolution:
    """``method="particles"``: one hidden layer, its neurons sampled in weight space (:mod:`theory.dmft.particles`);
    the same :class:`DMFTSolution` (one pass, no fixed-point iteration: ``iterations=1``, ``change=0``)."""
    n, dtype = x_all.shape[0], x_all.dtype
    setup = _Setup(1, steps, n, float(net.w_std) ** 2, eta, gamma, net.activation.fn)
    recs = particles.simulate(net.activation.fn, float(net.w_std), gamma, eta, x_all, y, n_train,
                              np.arange(steps + 1), key, opt.samples, opt.replicas, opt.kernels)
    r, m = opt.replicas, (steps + 1) * n
    if opt.kernels == "two_time":
        phis, gs = recs["phi"].reshape(r, 1, m, m), recs["g"].reshape(r, 1, m, m)
    else:
        phis, gs = recs["phi"][:, None], recs["g"][:, None]
    kx = x_all @ x_all.T / x_all.shape[1]
    return _solution(kx, y, n_train, setup, jnp.asarray(phis), jnp.asarray(gs), jnp.asarray(recs["f"]).reshape(r, m),
                     1, 0.0, opt, dtype)


def _solution(kx, y, n_train, setup, phis, gs, f, it, change, opt, dtype) -> DMFTSolution:
    steps, n, depth, s2 = setup.steps, setup.n, setup.depth, setup.sigma2
    r = phis.shape[0]
    tt = jnp.arange(steps + 1)
    if phis.ndim == 4:  # two-time (R, L, M, M)
        phis = phis.reshape(r, depth, steps + 1, n, steps + 1, n).transpose(0, 1, 2, 4, 3, 5)
        gs = gs.reshape(r, depth, steps + 1, n, steps + 1, n).transpose(0, 1, 2, 4, 3, 5)
        phi_tt, g_tt = phis[:, :, tt, tt], gs[:, :, tt, tt]  # (R, L, T+1, n, n)
    else:
        phi_tt, g_tt = phis, gs
    f = f.reshape(r, steps + 1, n)
    ntk = g_tt[:, 0] * kx + phi_tt[:, -1]
    for k in range(1, depth):
        ntk = ntk + g_tt[:, k] * phi_tt[:, k - 1]
    ntk = s2 * ntk
    loss = 0.5 * jnp.mean((f[:, :, :n_train] - y) ** 2, axis=2)

    (ft, ft_se), (lo, lo_se), (ph, ph_se), (gg, gg_se), (nk, nk_se) = map(replica_stats, (f, loss, phis, gs, ntk))
    return DMFTSolution(
        f_train=ft[:, :n_train], f_test=ft[:, n_train:], loss=lo, phi=ph, g=gg, ntk=nk,
        f_train_stderr=ft_se[:, :n_train], f_test_stderr=ft_se[:, n_train:], loss_stderr=lo_se, phi_stderr=ph_se,
        g_stderr=gg_se, ntk_stderr=nk_se, iterations=it, change=change, method=opt.method, samples=opt.samples,
        replicas=opt.replicas, gamma=setup.gamma, learning_rate=setup.eta, dtype=str(jnp.dtype(dtype)))


@dataclass(frozen=True)
class DMFTOutputs:
    """The infinite-width outputs and losses of :func:`solve_outputs` at the recorded steps ``steps`` ``(R,)``.

    ``f_train`` ``(R, P)``, ``f_test`` ``(R, Q)``: the outputs (mean over replicas); ``loss``, ``test_loss`` ``(R,)``:
    ``1/P sum 1/2 (f - y)^2`` of those mean outputs (``test_loss`` NaN without ``y_test``); ``*_stderr``: standard
    errors (outputs: the replicas' spread over ``sqrt(replicas)``; losses: jackknife over the replicas).
    ``replica_f_train`` ``(replicas, R, P)``, ``replica_f_test`` ``(replicas, R, Q)``: each replica's outputs (for
    other statistics and their jackknife errors). ``samples`` neurons per replica, ``replicas``, ``method``
    (``"particles"``), ``dtype`` (the float type used).
    """

    steps: np.ndarray
    f_train: np.ndarray
    f_test: np.ndarray
    loss: np.ndarray
    test_loss: np.ndarray
    f_train_stderr: np.ndarray
    f_test_stderr: np.ndarray
    loss_stderr: np.ndarray
    test_loss_stderr: np.ndarray
    replica_f_train: np.ndarray
    replica_f_test: np.ndarray
    samples: int
    replicas: int
    gamma: float
    learning_rate: float
    method: str
    dtype: str

    @property
    def time(self) -> np.ndarray:
        """``learning_rate * steps``."""
        return self.learning_rate * self.steps.astype(float)


def _jackknife_loss(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``f`` ``(replicas, R, K)``: the loss of the replica mean ``(R,)`` and its jackknife standard error."""
    r = f.shape[0]
    mean = f.mean(axis=0)
    loss = 0.5 * np.mean((mean - y) ** 2, axis=-1)
    loo = 0.5 * np.mean(((r * mean[None] - f) / (r - 1) - y) ** 2, axis=-1)  # (replicas, R)
    se = np.sqrt((r - 1) / r * np.sum((loo - loo.mean(axis=0)) ** 2, axis=0))
    return loss, se


def solve_outputs(net: MLP, x_train: object, y_train: object, x_test: object | None = None,
                  y_test: object | None = None, *, gamma: float, learning_rate: float, steps: int, key: Array,
                  samples: int = 4096, replicas: int = 8, record_steps: object = None) -> DMFTOutputs:
    r"""Infinite-width outputs and losses of a one-hidden-layer mean-field / muP MLP over long runs (module
    docstring of :mod:`theory.dmft.particles`): the single-site law of a neuron ``(w in R^d, a)`` sampled in weight
    space, ``O(replicas samples steps P d)`` work, outputs on test inputs only at the recorded steps (no kernels:
    :func:`solve` with ``method="particles"`` gives those).

    Args:
      net: ``theory.MLP(1, activation, w_std=sigma, b_std=0)``.
      x_train: ``(P, d)``; y_train: ``(P,)`` or ``(P, 1)``; x_test: ``(Q, d)`` or None; y_test: ``(Q,)`` or None
        (for ``test_loss``).
      gamma, learning_rate, steps: as in :func:`solve`.
      key: JAX key for the sampled neurons.
      samples: neurons per replica (the ``O(1/samples)`` bias of the self-consistent output is far below the
        standard error ``O(1/sqrt(samples * replicas))`` when ``samples >> replicas``); replicas: independent
        solves (>= 2).
      record_steps: increasing step counts from 0 (default: every step ``0..steps``); the last may not exceed
        ``steps``.

    Returns:
      :class:`DMFTOutputs` (numpy; float64 with ``jax_enable_x64``, else float32).
    """
    net = _check_net(net)
    if net.depth != 1:
        raise ValueError(f"solve_outputs samples one hidden layer's neurons in weight space: it needs theory.MLP(1, "
                         f"...), got depth {net.depth}; use solve(..., kernels='equal_time') for deeper MLPs")
    x_all, y, n_train = check_data(x_train, y_train, x_test)
    gamma = positive("gamma", gamma)
    eta = positive("learning_rate", learning_rate)
    steps = positive("steps", steps, integer=True, allow_zero=True)
    samples = positive("samples", samples, integer=True)
    replicas = positive("replicas", replicas, integer=True)
    if replicas < 2:
        raise ValueError(f"replicas must be at least 2 (their spread is the standard error), got {replicas}")
    if key is None:
        raise ValueError("solve_outputs needs a JAX key: solve_outputs(..., key=jax.random.key(0))")
    rec = np.arange(steps + 1) if record_steps is None else np.asarray(record_steps)
    if (rec.ndim != 1 or rec.size < 1 or not np.issubdtype(rec.dtype, np.integer) or rec[0] != 0
            or np.any(np.diff(rec) <= 0) or rec[-1] > steps):
        raise ValueError(f"record_steps must be strictly increasing integers from 0 to at most steps={steps}, got "
                         f"{record_steps!r}")
    q = x_all.shape[0] - n_train
    yt = None
    if y_test is not None:
        if x_test is None:
            raise ValueError("y_test needs x_test")
        yt = np.asarray(y_test, dtype=float).reshape(-1)
        if yt.shape != (q,) or not np.all(np.isfinite(yt)):
            raise ValueError(f"y_test must hold one finite target per test input, shape ({q},); got "
                             f"{np.shape(y_test)}")
    recs = particles.simulate(net.activation.fn, float(net.w_std), gamma, eta, x_all, y, n_train, rec, key, samples,
                              replicas, None)
    f = recs["f"]  # (replicas, R, N)
    (ft, ft_se) = replica_stats(f)
    loss, loss_se = _jackknife_loss(f[..., :n_train], np.asarray(y))
    if yt is not None:
        test_loss, test_se = _jackknife_loss(f[..., n_train:], yt)
    else:
        test_loss = test_se = np.full(rec.shape, np.nan)
    if not np.all(np.isfinite(f)):
        raise ValueError("the sampled network diverged (non-finite outputs): lower learning_rate")
    return DMFTOutputs(rec.astype(np.int64), ft[:, :n_train], ft[:, n_train:], loss, test_loss,
                       ft_se[:, :n_train], ft_se[:, n_train:], loss_se, test_se, f[..., :n_train], f[..., n_train:],
                       samples, replicas, gamma, eta, "particles", str(np.dtype(f.dtype)))
