r"""The DMFT of a mean-field / muP ResNet with depth-scaled branches (Depth-muP at ``depth_exponent = 1/2``).

Bordelon, Noci, Li, Hanin & Pehlevan 2023 ("Depthwise Hyperparameter Transfer in Residual Networks: Dynamics and
Scaling Limit", arXiv 2309.16620): with branches ``a / sqrt(L)`` and muP in width, the infinite-width training
dynamics have a limit as ``L -> inf`` too. The network (``theory.ResNet`` conventions, no biases, readout
``phi(h^L)``), width ``n``, ``beta = branch_scale / L**depth_exponent``:

    h^0 = s W^0 x / sqrt(d),    h^l = h^{l-1} + beta sigma W^l phi(h^{l-1}) / sqrt(n)  (l = 1..L),
    f = r w . phi(h^L) / (gamma n),

all weights ``N(0, 1)``, ``s = stem_w_std``, ``sigma = w_std``, ``r = readout_w_std``; gradient descent on
``1/P sum 1/2 (f - y)^2`` at rate ``eta gamma^2 n`` on every trained weight (``train`` picks which of stem, blocks
and readout move). At infinite width one neuron's stream over all blocks is a single-site process (docs/dmft.md):

    h^0(t) = u^0 + eta gamma s^2 Kx sum_{s<t} w Delta(s) g^0(s)
    h^l(t) = h^{l-1}(t)
             + beta [u^l(t) + sigma^2 sum_{s<t} (A^l(t, s) + eta gamma beta Phi^{l-1}(t, s) w Delta(s)) g^l(s)]
    g^L(t) = phi'(h^L(t)) z(t),   z(t) = r^{L+1} + eta gamma r^2 sum_{s<t} w Delta(s) . phi(h^L(s))
    g^{l-1}(t) = g^l(t) + beta phi'(h^{l-1}(t)) [r^l(t) + sigma^2 sum_{s<=t} B^l(t, s) phi(h^{l-1}(s))
                 + sigma^2 eta gamma beta sum_{s<t} G^l(t, s) w Delta(s) phi(h^{l-1}(s))]

with ``u^l ~ GP(0, sigma^2 Phi^{l-1})``, ``r^l ~ GP(0, sigma^2 G^l)``, ``u^0 ~ N(0, s^2 Kx)``, ``r^{L+1} ~ N(0, r^2)``,
``Phi^l = <phi(h^l) phi(h^l)>``, ``G^l = <g^l g^l>``, ``A^l = <d phi(h^{l-1}) / d r^l>``, ``B^l = <d g^l / d u^l>``,
``f = r^2 / gamma <d phi(h^L) / d r^{L+1}> + r^2 eta sum_{s<t} Phi^L(t, s) w Delta(s)`` and
``NTK = s^2 G^0 Kx + beta^2 sigma^2 sum_l G^l Phi^{l-1} + r^2 Phi^L`` (the trained groups only).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from theory.architectures import ResNet
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

GROUPS = ("stem", "blocks", "readout")


@partial(jax.tree_util.register_dataclass, data_fields=["s2", "sigma2", "r2", "beta", "eta", "gamma"],
         meta_fields=["depth", "steps", "n", "fn", "train"])
@dataclass(frozen=True)
class _Setup:
    """Sizes, activation and trained groups (static) and the numbers (traced)."""

    depth: int
    steps: int
    n: int
    s2: float  # stem_w_std^2
    sigma2: float  # w_std^2
    r2: float  # readout_w_std^2
    beta: float
    eta: float
    gamma: float
    fn: object
    train: tuple

    @property
    def m(self) -> int:
        return (self.steps + 1) * self.n


def _check_net(net: object) -> ResNet:
    if not isinstance(net, ResNet):
        raise ValueError(f"dmft.solve_resnet takes a theory.ResNet, got {net!r}")
    if net.depth < 1:
        raise ValueError(f"the ResNet needs at least one block, got depth {net.depth}")
    if net.readout != "activation":
        raise ValueError("dmft.solve_resnet reads out phi(h^L): build the ResNet with readout='activation'")
    for name in ("w_std", "stem_w_std", "readout_w_std", "branch_scale"):
        v = getattr(net, name)
        if not (isinstance(v, numbers.Real) and float(v) > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not (isinstance(net.b_std, numbers.Real) and float(net.b_std) == 0.0):
        raise ValueError(f"the DMFT network has no biases: build the ResNet with b_std=0 (got {net.b_std!r})")
    if net.weight_scaling != "ntk":
        raise ValueError("the DMFT network scales its weights itself: build the ResNet with the default "
                         f"weight_scaling, got {net.weight_scaling!r}")
    return net


def _path(u0, us, rs, r_out, hc, zc, kx, wd, setup: _Setup):
    """One sample path: ``phi(h^l)`` ``(L + 1, M)``, ``g^l`` ``(L + 1, M)`` and the readout's running sum
    ``sum_{s<t} w Delta(s) . phi(h^L(s))`` ``(T + 1,)``. ``us``, ``rs`` ``(L, M)``; ``hc``, ``zc`` ``(L, T + 1, n,
    M)``: block ``l``'s coefficients of the past ``g^l`` in its branch and of ``phi(h^{l-1}(s <= t))`` in its
    backward field."""
    depth, n, steps = setup.depth, setup.n, setup.steps
    fn, dphi = setup.fn, derivative(setup.fn)
    eg = setup.eta * setup.gamma
    c_stem = eg * setup.s2 if "stem" in setup.train else 0.0
    c_out = eg * setup.r2 if "readout" in setup.train else 0.0
    beta = setup.beta
    m = setup.m

    def step(carry, t):
        pbuf, gbuf, acc_g0, acc_p = carry
        h = u0 + c_stem * (kx @ acc_g0)
        hs = [h]
        for k in range(1, depth + 1):
            uk = jax.lax.dynamic_slice(us[k - 1], (t * n,), (n,))
            h = h + beta * (uk + hc[k - 1, t] @ gbuf[k])
            hs.append(h)
        ps = [fn(hh) for hh in hs]
        pbuf = jax.lax.dynamic_update_slice(pbuf, jnp.stack(ps), (0, t * n))
        g = dphi(hs[-1]) * (r_out + c_out * acc_p)
        gs = [None] * (depth + 1)
        gs[depth] = g
        for k in range(depth, 0, -1):
            rk = jax.lax.dynamic_slice(rs[k - 1], (t * n,), (n,))
            g = g + beta * dphi(hs[k - 1]) * (rk + zc[k - 1, t] @ pbuf[k - 1])
            gs[k - 1] = g
        gbuf = jax.lax.dynamic_update_slice(gbuf, jnp.stack(gs), (0, t * n))
        return (pbuf, gbuf, acc_g0 + wd[t] * gs[0], acc_p + wd[t] @ ps[-1]), acc_p

    zeros = jnp.zeros((depth + 1, m), wd.dtype)
    init = (zeros, zeros, jnp.zeros((n,), wd.dtype), jnp.zeros((), wd.dtype))
    (pbuf, gbuf, _, _), acc = jax.lax.scan(step, init, jnp.arange(steps + 1))
    return pbuf, gbuf, acc


def _couplings(setup: _Setup, state, wd, strict):
    """``hc``, ``zc`` ``(L, M, M)`` from the order parameters (``state = (phi, g, a, b, f)``: ``phi[l] = Phi^l``
    and ``g[l] = G^{l+1}`` for ``l < L``, ``a[l] = A^{l+1}``, ``b[l] = B^{l+1}``)."""
    phi, g, a, b, _ = state
    sig2, c = setup.sigma2, setup.sigma2 * setup.eta * setup.gamma * setup.beta
    if "blocks" in setup.train:
        hc = sig2 * a + c * phi * wd[None, None, :] * strict
        zc = sig2 * b + c * g * wd[None, None, :] * strict
    else:
        hc, zc = sig2 * a, sig2 * b
    return hc, zc


def _averages(setup: _Setup, state, wd, strict, kx, xi, chunk: int, exact: bool, final: bool, stein: bool = False):
    """Averages over sample paths: ``Phi^l``, ``G^l`` (all ``l``, ``(L + 1, M, M)``), and unless ``final`` the
    responses ``A``, ``B`` ``(L, M, M)``, ``d phi(h^L) / d r^{L+1}`` and ``E[phi(h^L(t)) sum_{s<t} ...]`` ``(M,)``.
    ``exact`` (identity activation): the path is linear in the standard normals, so the averages are products of
    its Jacobian at zero noise, exactly. ``stein``: the responses by Gaussian integration by parts
    (:func:`theory.dmft.common.stein_response`), for activations whose ``phi'`` jumps."""
    depth, steps, n, m = setup.depth, setup.steps, setup.n, setup.m
    phi, g, _, _, _ = state
    hc, zc = _couplings(setup, state, wd, strict)
    hc4, zc4 = hc.reshape(depth, steps + 1, n, m), zc.reshape(depth, steps + 1, n, m)
    su0 = sqrt_psd(setup.s2 * kx)
    # one eigh per layer (a batched eigh inside the iteration deadlocked XLA's CPU runtime on 2 cores at some shapes)
    sus = jnp.stack([sqrt_psd(setup.sigma2 * phi[k]) for k in range(depth)])  # u^l ~ sigma^2 Phi^{l-1}
    srs = jnp.stack([sqrt_psd(setup.sigma2 * g[k]) for k in range(depth)])  # r^l ~ sigma^2 G^l
    wd2 = wd.reshape(steps + 1, n)
    r_std = jnp.sqrt(setup.r2)

    def fields(x):  # standard normals -> fields
        x0, xu, xr, xo = x
        return x0 @ su0, jnp.einsum("lm,lkm->lk", xu, sus), jnp.einsum("lm,lkm->lk", xr, srs), r_std * xo

    def path(x):
        u0, us, rs, ro = fields(x)
        return _path(u0, us, rs, ro, hc4, zc4, kx, wd2, setup)

    def responses(x):
        u0, us, rs, ro = fields(x)
        run = partial(_path, hc=hc4, zc=zc4, kx=kx, wd=wd2, setup=setup)
        out = {}
        out["dr"] = jax.jvp(lambda o: run(u0, us, rs, o)[0][depth], (ro,), (jnp.ones_like(ro),))[1]

        basis = jnp.eye(depth * m, dtype=wd.dtype).reshape(depth * m, depth, m)
        # all blocks' directions at once (one program, whatever the depth); keep block k's own rows
        d_r = jax.vmap(lambda e: jax.jvp(lambda rr: run(u0, us, rr, ro)[0], (rs,), (e,))[1])(basis)
        d_u = jax.vmap(lambda e: jax.jvp(lambda uu: run(u0, uu, rs, ro)[1], (us,), (e,))[1])(basis)
        d_r = d_r.reshape(depth, m, depth + 1, m)  # (block k, direction j, layer, row i)
        d_u = d_u.reshape(depth, m, depth + 1, m)
        ks = jnp.arange(depth)
        out["a"] = jnp.swapaxes(d_r[ks, :, ks], 1, 2)  # A^{k+1}_{ij} = d phi(h^k)_i / d r^{k+1}_j
        out["b"] = jnp.swapaxes(d_u[ks, :, ks + 1], 1, 2)  # B^{k+1}_{ij} = d g^{k+1}_i / d u^{k+1}_j
        return out

    if exact:
        zero = (jnp.zeros((n,), wd.dtype), jnp.zeros((depth, m), wd.dtype), jnp.zeros((depth, m), wd.dtype),
                jnp.zeros((), wd.dtype))
        jac = jax.jacfwd(lambda x: path(x)[:2])(zero)  # linear in x: the Jacobian is the map
        flat = [jnp.concatenate([j.reshape(depth + 1, m, -1) for j in jac_k], axis=-1) for jac_k in jac]
        out = {"phi": jnp.einsum("lik,ljk->lij", flat[0], flat[0]), "g": jnp.einsum("lik,ljk->lij", flat[1], flat[1])}
        if not final:
            out.update(responses(zero))
            acc_map = jax.jacfwd(lambda x: path(x)[2])(zero)
            acc_flat = jnp.concatenate([j.reshape(steps + 1, -1) for j in acc_map], axis=-1)
            out["fterm"] = jnp.einsum("ik,ik->i", flat[0][depth], jnp.repeat(acc_flat, n, axis=0))
        return out

    def antithetic(x):  # the path with every backward field r negated (docs/dmft.md, "Rough activations")
        u0, us, rs, ro = fields(x)
        pm, gm, _ = _path(u0, us, -rs, -ro, hc4, zc4, kx, wd2, setup)
        return pm, gm, u0, us, rs, ro

    def sums(x):
        p, gg, acc = jax.vmap(path)(x)
        res = {"phi": jnp.einsum("sli,slj->lij", p, p), "g": jnp.einsum("sli,slj->lij", gg, gg)}
        if not final and stein:
            pm, gm, u0, us, rs, ro = jax.vmap(antithetic)(x)
            c = p.shape[0]
            # the parts of phi odd in r and of g even in r carry E[phi r^T], E[g u^T] and are O(gamma); regressed
            # on every block's fields at once (one neuron's process sees them all), exact for what is linear
            jr = jnp.concatenate([ro[:, None], rs.reshape(c, depth * m)], axis=1)
            ju = jnp.concatenate([u0, us.reshape(c, depth * m)], axis=1)
            res["ka"] = ((p - pm) / 2).reshape(c, -1).T @ jr
            res["kb"] = ((gg + gm) / 2)[:, 1:].reshape(c, -1).T @ ju
            res["rr"], res["uu"] = jr.T @ jr, ju.T @ ju
        elif not final:
            resp = jax.vmap(responses)(x)
            res.update({k: jnp.sum(v, axis=0) for k, v in resp.items()})
        if not final:
            res["fterm"] = jnp.sum(p[:, depth] * jnp.repeat(acc, n, axis=1), axis=0)
        return res

    s = xi[0].shape[0]
    k = s // chunk
    total = jax.lax.map(sums, jax.tree.map(lambda a: a.reshape(k, chunk, *a.shape[1:]), xi))
    res = {key: jnp.sum(v, axis=0) / s for key, v in total.items()}
    if "ka" in res:
        steps_of = np.tile(np.repeat(np.arange(steps + 1), n), depth + 1)  # rows / columns: (layer, step, input)
        ra = stein_response(res.pop("ka"), res.pop("rr"), steps_of, np.concatenate([[-1], steps_of[m:]]),
                            same_step=False)  # phi(h^l) against (r_out, r^1..r^L)
        rb = stein_response(res.pop("kb"), res.pop("uu"), steps_of[m:], np.concatenate([np.full(n, -1), steps_of[m:]]),
                            same_step=True)  # g^1..g^L against (u^0, u^1..u^L)
        res["dr"] = ra[depth * m:, 0]
        res["a"] = jnp.stack([ra[j * m:(j + 1) * m, 1 + j * m:1 + (j + 1) * m] for j in range(depth)])
        res["b"] = jnp.stack([rb[j * m:(j + 1) * m, n + j * m:n + (j + 1) * m] for j in range(depth)])
    return res


@partial(jax.jit, static_argnames=("exact", "stein", "chunk"))
def _solve_jit(setup, kx, y_all, w, xi, damping, tol, *, exact, stein, max_iterations, chunk, kernel_slack=1.0):
    depth, m = setup.depth, setup.m
    dtype = kx.dtype
    t_idx = jnp.repeat(jnp.arange(setup.steps + 1), setup.n)
    strict = (t_idx[None, :] < t_idx[:, None]).astype(dtype)
    train_out = "readout" in setup.train

    def replica(x):
        def sweep(state, front):
            wd = w * (y_all - state[4]) * (t_idx < front)
            out = _averages(setup, state, wd, strict, kx, x, chunk, exact, False, stein)
            f = setup.r2 / setup.gamma * out["dr"]
            if train_out:
                f = f + setup.r2 * setup.eta * out["fterm"]
            return (out["phi"][:depth], out["g"][1:], out["a"], out["b"], f)

        def change(old, new):
            ch = [jnp.max(jnp.abs(o - n_)) / jnp.maximum(jnp.max(jnp.abs(n_)), 1e-30) / kernel_slack
                  for o, n_ in zip(old[:2], new[:2], strict=True)]
            scale = jnp.maximum(jnp.max(jnp.abs(y_all)), jnp.max(jnp.abs(new[4])))
            ch.append(jnp.max(jnp.abs(old[4] - new[4])) / jnp.maximum(scale, 1e-30))
            return jnp.max(jnp.stack(ch))

        # start from the forward kernels at init (no training): Phi^0 = the stem's dual, then the rest by sweeps
        zeros = jnp.zeros((depth, m, m), dtype)
        state0 = (zeros, zeros, zeros, zeros, jnp.zeros((m,), dtype))
        state, it, ch = fixed_point(sweep, change, state0, damping=damping, tol=tol, max_iterations=max_iterations,
                                    steps=setup.steps)
        final = _averages(setup, state, w * (y_all - state[4]), strict, kx, x, chunk, exact, True)
        return final["phi"], final["g"], state[4], it, ch

    return jax.lax.map(replica, xi)  # replicas in sequence: no batched eigh (see mlp._solve_jit)


def solve_resnet(net: ResNet, x_train: object, y_train: object, x_test: object | None = None, *, gamma: float,
                 learning_rate: float, steps: int, key: Array | None = None, train: tuple = GROUPS,
                 method: str = "auto", samples: int | None = None, replicas: int = 8, damping: float | None = None,
                 tol: float | None = None, max_iterations: int = 200, chunk: int | None = None,
                 responses: str = "auto") -> DMFTSolution:
    r"""Infinite-width gradient-descent trajectory of the mean-field ResNet ``net`` (module docstring).

    Args:
      net: ``theory.ResNet(L, activation, w_std, b_std=0, branch_scale, depth_exponent, readout="activation",
        stem_w_std, readout_w_std)``; ``depth_exponent=0.5`` is Depth-muP.
      x_train, y_train, x_test, gamma, learning_rate, steps, key, method, samples, replicas, damping, tol,
        max_iterations, chunk, responses: as :func:`theory.dmft.solve` (``samples`` default 1024; with
        ``responses="stein"`` at least 32 per field regressed on, every block's at once: ``32 (L M + N)``).
      train: the weight groups trained (``"stem"``, ``"blocks"``, ``"readout"``); the others stay at init.

    Returns:
      :class:`DMFTSolution`; ``phi`` ``(L + 1, T + 1, T + 1, N, N)``: ``Phi^l`` of the stream after the stem
      (``l = 0``) and after each block; ``g`` the gradient kernels ``G^l`` at the same places; ``ntk`` over the
      trained groups. Cost grows like ``samples L^2 M^3`` (``M = (T + 1) N``): a few blocks and steps.
    """
    net = _check_net(net)
    x_all, y, n_train = check_data(x_train, y_train, x_test)
    gamma = positive("gamma", gamma)
    eta = positive("learning_rate", learning_rate)
    steps = positive("steps", steps, integer=True, allow_zero=True)
    train = tuple(train)
    if not train or any(t not in GROUPS for t in train) or len(set(train)) != len(train):
        raise ValueError(f"train must be a non-empty tuple of distinct groups from {GROUPS}, got {train!r}")
    opt = solver_options(identity=net.activation.name == "identity", dtype=x_all.dtype, key=key, method=method,
                         samples=samples, replicas=replicas, damping=damping, tol=tol,
                         max_iterations=max_iterations, chunk=chunk, kernels="two_time", responses=responses,
                         is_rough=rough(net.activation.fn), default_samples=1024,
                         regressors=net.depth * (steps + 1) * x_all.shape[0] + x_all.shape[0])
    check_smooth(net.activation.name, steps, opt)
    dtype = x_all.dtype
    n, depth = x_all.shape[0], net.depth
    m = (steps + 1) * n
    setup = _Setup(depth, steps, n, float(net.stem_w_std) ** 2, float(net.w_std) ** 2, float(net.readout_w_std) ** 2,
                   float(net.branch_multiplier), eta, gamma, net.activation.fn, tuple(g for g in GROUPS if g in train))
    kx = x_all @ x_all.T / x_all.shape[1]
    y_all, w = training_weights(n_train, n, steps, y)
    shapes = ((n,), (depth, m), (depth, m), ())
    if opt.exact:
        xi = tuple(jnp.zeros((1, 1, *s), dtype) for s in shapes)
    else:
        keys = jax.random.split(key, 4)
        xi = tuple(jax.random.normal(k, (opt.replicas, opt.samples, *s), dtype) for k, s in zip(keys, shapes,
                                                                                                strict=True))
    phis, gs, f, it, change = _solve_jit(setup, kx, y_all, w, xi, jnp.asarray(opt.damping, dtype),
                                         jnp.asarray(opt.tol, dtype), exact=opt.exact, stein=opt.stein,
                                         max_iterations=jnp.asarray(opt.max_iterations), chunk=opt.chunk,
                                         kernel_slack=jnp.asarray(opt.kernel_slack, dtype))
    it, change = check_converged(it, change, opt.tol)
    r = phis.shape[0]
    phis = phis.reshape(r, depth + 1, steps + 1, n, steps + 1, n).transpose(0, 1, 2, 4, 3, 5)
    gs = gs.reshape(r, depth + 1, steps + 1, n, steps + 1, n).transpose(0, 1, 2, 4, 3, 5)
    tt = jnp.arange(steps + 1)
    phi_tt, g_tt = phis[:, :, tt, tt], gs[:, :, tt, tt]
    ntk = jnp.zeros_like(phi_tt[:, 0])
    if "stem" in train:
        ntk = ntk + setup.s2 * g_tt[:, 0] * kx
    if "blocks" in train:
        ntk = ntk + setup.beta**2 * setup.sigma2 * jnp.sum(g_tt[:, 1:] * phi_tt[:, :-1], axis=1)
    if "readout" in train:
        ntk = ntk + setup.r2 * phi_tt[:, -1]
    f = f.reshape(r, steps + 1, n)
    loss = 0.5 * jnp.mean((f[:, :, :n_train] - y) ** 2, axis=2)
    (ft, ft_se), (lo, lo_se), (ph, ph_se), (gg, gg_se), (nk, nk_se) = map(replica_stats, (f, loss, phis, gs, ntk))
    return DMFTSolution(
        f_train=ft[:, :n_train], f_test=ft[:, n_train:], loss=lo, phi=ph, g=gg, ntk=nk,
        f_train_stderr=ft_se[:, :n_train], f_test_stderr=ft_se[:, n_train:], loss_stderr=lo_se, phi_stderr=ph_se,
        g_stderr=gg_se, ntk_stderr=nk_se, iterations=it, change=change, method=opt.method, samples=opt.samples,
        replicas=opt.replicas, gamma=gamma, learning_rate=eta, dtype=str(jnp.dtype(dtype)))
