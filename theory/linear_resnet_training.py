r"""Infinite-width SGD dynamics of a linear ResNet under muP and a depth rule (Depth-muP): an exact recursion.

The network (the one ``experiments.training`` builds from ``theory.ResNet(L, "identity", readout="linear")`` under
``"mup"``, with the stem and the readout frozen, as in the ``coord-check-depth`` experiment):

    h^0 = U x,                     U_ak ~ N(0, s^2 / d)               (stem, frozen)
    h^l = h^{l-1} + beta W^l h^{l-1},  W^l_ab ~ N(0, w^2 / n),  beta = a / L^alpha     (l = 1..L, trained)
    f   = r v . h^L / n,           v_a ~ N(0, 1)                       (readout, frozen; muP: f = O(n^-1/2) at init)

trained by full-batch SGD on ``1/m sum_i 1/2 (f(x_i) - y_i)^2`` with block learning rate ``eta L^(alpha - gamma)``
(TP VI's SGD rule, ``theory.parameterizations.DepthParameterization.lr_scale``; Depth-muP: alpha = gamma = 1/2).

Width to infinity by the Tensor Programs rules (Yang 2020, TP II/III; Yang & Hu 2021, TP IV, Sec. 5-6): the network is
linear, so every coordinate variable ``Z`` is a linear combination of finitely many Gaussians and the limit is a
finite, deterministic recursion on coefficient vectors and covariances, which :func:`trajectory` computes exactly up
to float64 round-off (cost ``O(L^2 T^2 m^2)`` for ``L`` blocks, ``T`` steps, ``m`` inputs). ``coupling=False`` drops
the forward-backward ``Zdot`` terms (from reusing ``W^l_0`` in backpropagation): an ablation, not a limit. Our own
derivation (TP VI, Yang, Yu, Zhu & Hayou 2023, arXiv 2310.02244, was readable only up to its introduction).

Convention: muP in width for the blocks (``W^l`` entries ``w^2 / n``, learning rate ``n^0``), the stem's and
readout's constants ``s = stem_w_std``, ``r = readout_w_std``, branch ``a = branch_scale``, float64 throughout.

Derivation and notes: docs/linear_resnet_training.md (the SGD step, the TP splitting, the block NTK, measured values).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from theory.architectures import ResNet
from theory.parameterizations import DepthParameterization, block_lr_factor

MAX_BYTES = 4 * 2**30  # the forward vectors' coefficients are the largest array: refuse sizes that would not fit


@dataclass(frozen=True)
class LinearResNetTrajectory:
    """The infinite-width trajectory (module docstring). Row ``t`` of each array is after ``t`` SGD steps (row 0:
    init). ``rms`` / ``delta_rms`` ``(T + 1, L + 2)``: the RMS over inputs and units of the stem, of the stream after
    each block and of the output (``sqrt(mean_j E[Z^2])``), and of their change since init, laid out as
    ``experiments.training.TrainResult``; ``outputs`` ``(T + 1, m)``; ``loss`` ``(T + 1,)`` (the training loss
    ``1/m sum_j 1/2 (f_j - y_j)^2``). ``diverged_step``: ``None``, or the step after which an RMS or an error
    ``|f_j - y_j|`` was non-finite or above ``explode_at`` (the arrays then end with that row, as
    ``experiments.training.TrainResult`` does). ``dtype`` is the float type used."""

    rms: np.ndarray
    delta_rms: np.ndarray
    outputs: np.ndarray
    loss: np.ndarray
    depth: int
    coupling: bool
    diverged_step: int | None = None
    dtype: str = "float64"


def _check_inputs(arch: ResNet, x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(arch, ResNet):
        raise ValueError(f"expected a theory.ResNet, got {arch!r}")
    if arch.activation.name != "identity" or arch.readout != "linear" or arch.b_std != 0:
        raise ValueError(
            f"the exact recursion is for linear ResNets: build theory.ResNet(depth, 'identity', readout='linear', "
            f"b_std=0), got activation {arch.activation.name!r}, readout {arch.readout!r}, b_std {arch.b_std!r}")
    if arch.depth < 1:
        raise ValueError(f"the ResNet needs at least one block to train, got depth {arch.depth}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (m, d) with m >= 1 inputs, got {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one scalar target per input, shape ({x.shape[0]},) or ({x.shape[0]}, 1); "
                         f"got {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    return x, y


def trajectory(arch: ResNet, x: object, y: object, *, learning_rate: float, steps: int,
               depth_parameterization: DepthParameterization | None = None,
               coupling: bool = True, explode_at: float = 1e8) -> LinearResNetTrajectory:
    """Infinite-width SGD trajectory of the linear ResNet ``arch`` on inputs ``x`` ``(m, d)`` and targets ``y``.

    Full-batch SGD, ``steps`` steps at base learning rate ``learning_rate`` on the blocks only; the block learning
    rate is ``learning_rate * depth_parameterization.lr_scale(L, "sgd")`` (factor 1 when ``None``, as in
    ``experiments.training``). ``depth_parameterization.alpha`` must equal ``arch.depth_exponent``. See the module
    docstring for the equations; ``coupling=False`` drops the forward-backward ``Zdot`` terms (an ablation).
    A learning rate too large for the limit stops the recursion at the step that exploded (``diverged_step``)
    and keeps everything before it.
    """
    x, y = _check_inputs(arch, x, y)
    lr = learning_rate
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be a finite positive number, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(explode_at, bool) or not isinstance(explode_at, numbers.Real) or not explode_at > 0:
        raise ValueError(f"explode_at must be a positive number, got {explode_at!r}")
    depth, n_steps, m = arch.depth, int(steps), x.shape[0]
    lr_factor = block_lr_factor(depth_parameterization, arch.depth_exponent, depth, "sgd")
    nf = (n_steps + 1) * m  # forward Zhat slots per block: one per input and step
    nb = max(n_steps, 1)  # backward Zhat slots per block: one per step
    size = m + 1 + depth * (nf + nb)  # named Gaussians: stem (m), v (1), per block nf forward and nb backward
    need = 8 * (depth * nf * size + 2 * depth * nb * size)
    if need > MAX_BYTES:
        raise ValueError(f"depth {depth}, {n_steps} steps and {m} inputs need {need / 2**30:.1f} GiB of "
                         f"coefficients (it grows like (L T m)^2); use fewer inputs or steps (the limit is "
                         f"{MAX_BYTES / 2**30:.0f} GiB)")
    beta = arch.branch_multiplier
    w2 = arch.w_std**2
    r = arch.readout_w_std
    eta = lr * lr_factor
    k0 = arch.stem_w_std**2 * (x @ x.T) / x.shape[1]
    f0, b0 = m + 1, m + 1 + depth * nf  # first forward / backward slot

    cov_f = np.zeros((depth, nf, nf))  # covariance of each block's forward Zhat (w^2 times the inputs' Gram)
    cov_b = np.zeros((depth, nb, nb))  # ... and of its backward Zhat
    fwd = np.zeros((depth, nf, size))  # coefficients of the inputs h^{k-1}_{j,s} of block k, slot s*m + j
    grad = np.zeros((depth, nb, size))  # g^k_s
    err = np.zeros((depth, nb, size))  # H^{k-1}_s

    def cov(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """E[Z^a Z^b] for coefficient rows ``a`` (k, size), ``b`` (k', size)."""
        out = a[:, :m] @ k0 @ b[:, :m].T + np.outer(a[:, m], b[:, m])
        af = a[:, f0:b0].reshape(a.shape[0], depth, nf)
        out += np.einsum("klf,lfg->klg", af, cov_f).reshape(a.shape[0], -1) @ b[:, f0:b0].T
        ab = a[:, b0:].reshape(a.shape[0], depth, nb)
        out += np.einsum("klf,lfg->klg", ab, cov_b).reshape(a.shape[0], -1) @ b[:, b0:].T
        return out

    def sq(a: np.ndarray) -> np.ndarray:
        return np.maximum(np.diag(cov(a, a)), 0.0)  # round-off must not make a second moment negative

    rms = np.zeros((n_steps + 1, depth + 2))
    delta = np.zeros((n_steps + 1, depth + 2))
    outputs = np.zeros((n_steps + 1, m))
    stem = np.zeros((m, size))
    stem[:, :m] = np.eye(m)
    rms[:, 0] = math.sqrt(np.mean(np.diag(k0)))
    top0, diverged = None, None
    for t in range(n_steps + 1):
        h = stem.copy()
        for k in range(depth):
            slots = t * m + np.arange(m)
            fwd[k, slots] = h
            filled = (t + 1) * m
            c = w2 * cov(h, fwd[k, :filled])
            cov_f[k, slots, :filled] = c
            cov_f[k, :filled, slots] = c
            new = h.copy()
            new[np.arange(m), f0 + k * nf + slots] += beta
            if t:
                if coupling:
                    new += beta * w2 * h[:, b0 + k * nb: b0 + k * nb + t] @ grad[k, :t]
                new -= eta * beta**2 * cov(h, err[k, :t]) @ grad[k, :t]
            h = new
            base = fwd[k + 1, :m] if k + 1 < depth else top0
            rms[t, k + 1] = math.sqrt(np.mean(sq(h)))
            if t:
                delta[t, k + 1] = math.sqrt(np.mean(sq(h - base)))
        if t == 0:
            top0 = h.copy()
        outputs[t] = r * h[:, m]  # f_j = r E[Z^v Z^{h^L_j}]; Z^v is one of the named Gaussians, variance 1
        chi = outputs[t] - y
        scale = np.concatenate([rms[t, :depth + 1], np.abs(chi)])
        if not (np.all(np.isfinite(scale)) and scale.max() <= explode_at):
            diverged = t
            break
        if t == n_steps:
            break
        err[:, t] = np.einsum("j,ljn->ln", chi / m, fwd[:, t * m:(t + 1) * m])
        g = np.zeros(size)
        g[m] = r
        for k in reversed(range(depth)):
            grad[k, t] = g
            c = w2 * cov(g[None], grad[k, :t + 1])[0]
            cov_b[k, t, :t + 1] = c
            cov_b[k, :t + 1, t] = c
            new = g.copy()
            new[b0 + k * nb + t] += beta
            if coupling:
                new += beta * w2 * g[f0 + k * nf: f0 + k * nf + (t + 1) * m] @ fwd[k, :(t + 1) * m]
            if t:
                new -= eta * beta**2 * cov(g[None], grad[k, :t])[0] @ err[k, :t]
            g = new
    rows = n_steps + 1 if diverged is None else diverged + 1
    rms, delta, outputs = rms[:rows], delta[:rows], outputs[:rows]
    rms[:, depth + 1] = np.sqrt(np.mean(outputs**2, axis=1))
    delta[:, depth + 1] = np.sqrt(np.mean((outputs - outputs[0]) ** 2, axis=1))
    loss = 0.5 * np.mean((outputs - y) ** 2, axis=1)
    return LinearResNetTrajectory(rms, delta, outputs, loss, depth, bool(coupling), diverged)
