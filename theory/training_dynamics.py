r"""Training in the kernel regime: the infinite-width trajectory of a wide network trained by gradient descent on MSE.

Lee et al. 2019 ("Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent", arXiv
1902.06720, Sec. 2.2-2.3). On ``N`` training inputs ``X`` with ``n_out`` outputs, the loss of ``experiments.training``
``L(f) = 1/N sum_i 1/2 ||f(x_i) - y_i||^2`` and learning rate ``eta``, the residual ``r_t = f_t(X) - Y`` is

    r_t = (I - eta Theta / N)^t r_0     (discrete steps),      r(t) = exp(-eta Theta t / N) r_0     (gradient flow),

and with ``f_0 ~ GP(0, K)`` (NNGP ``K``, independent across outputs), ``A_t`` the propagator and
``Theta = V diag(lambda) V^T``: ``E L_t = 1/(2N) sum_k a_k(t)^2 [n_out (V^T K V)_kk + ||(V^T Y)_k||^2]``,
``a_k(t) = (1 - eta lambda_k / N)^t`` or ``exp(-eta lambda_k t / N)``. ``Theta`` is the NTK of the *trained*
parameterization, ``theory.kernels(theory.parameterize(net, "ntk", width=n), x).ntk``; :func:`mlp_ntk` is the older
(deprecated) interface to the same recursion.

Derivation and notes: docs/linear_model_training.md.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from theory import predict
from theory.architectures import MLP
from theory.inputs import validate_inputs
from theory.kernels import kernels
from theory.layers import Dense, Elementwise, WeightScaling, serial

Array = jax.Array


@dataclass(frozen=True)
class NtkCoefficients:
    """Per layer group, the factor ``c`` with which a layer's gradient enters the tangent kernel.

    A Dense layer ``h -> m W h`` with ``fan_in`` inputs, trained with learning rate ``eta * lr_factor``, contributes
    ``c * E[phi(u) phi(v)]`` (``c * x.x'/d`` for the input layer) with ``c = lr_factor * m^2 * fan_in``; a bias
    ``m_b b`` contributes ``lr_factor_b * m_b^2``. ``input``, ``hidden`` (layers 2..L), ``output`` (the readout)
    and ``bias`` (all biases). A frozen group has ``c = 0``.
    """

    input: float
    hidden: float
    output: float
    bias: float = 0.0

    def __post_init__(self) -> None:
        for name in ("input", "hidden", "output", "bias"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (float(value) >= 0):
                raise ValueError(f"NtkCoefficients.{name} must be a real number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def neural_tangents(cls, arch: MLP) -> NtkCoefficients:
        """neural-tangents' NTK parameterization (``theory.kernels`` with ``parameterization="ntk"``):
        ``c = w_std^2`` for every weight matrix and ``b_std^2`` for the biases."""
        w2 = arch.w_std**2
        return cls(w2, w2, w2, arch.b_std**2)


def mlp_ntk(arch: MLP, x: Array, coefficients: NtkCoefficients) -> Array:
    r"""Infinite-width NTK ``(N, N)`` on the inputs ``x`` of an MLP whose layers contribute with ``coefficients``.

    Deprecated: ``theory.kernels(theory.parameterize(arch, p, width=n), x).ntk`` gives the NTK of the network
    as trained under an abc-parameterization. This builds the MLP's program with each Dense's learning-rate
    factor set so that its forward NTK coefficient is ``coefficients``' (``w_std^2 * lr = c``) and calls
    ``theory.kernels``: ``Theta^1 = c_in x.x'/d + c_b``, ``Theta^{l+1} = c_{l+1} E_l + c_b + w_std^2 E'_l Theta^l``.
    """
    warnings.warn("training_dynamics.mlp_ntk is deprecated: use theory.kernels(theory.parameterize(arch, "
                  "parameterization, width=n), x).ntk", DeprecationWarning, stacklevel=2)
    if not isinstance(arch, MLP):
        raise ValueError(f"mlp_ntk takes a theory.MLP, got {arch!r}")
    if not isinstance(coefficients, NtkCoefficients):
        raise ValueError(f"coefficients must be an NtkCoefficients, got {coefficients!r}")
    x, _ = validate_inputs(x)
    w, b = arch.w_std, arch.b_std
    if w == 0:
        raise ValueError("mlp_ntk needs w_std > 0 (the weights' learning-rate factor is c / w_std^2)")

    def dense(c: float) -> Dense:
        b_lr = coefficients.bias / b**2 if b > 0 else 0.0
        return Dense(w, b, WeightScaling(w, 1.0, c / w**2, b, 1.0, b_lr))

    layers = [dense(coefficients.input)]
    for layer in range(arch.depth):
        c = coefficients.output if layer == arch.depth - 1 else coefficients.hidden
        layers += [Elementwise(arch.activation), dense(c)]
    return kernels(serial(*layers), x, get="ntk").ntk


def _check_dynamics(ntk: Array, learning_rate: float, steps: int) -> tuple[Array, int]:
    ntk = jnp.asarray(ntk)
    if ntk.ndim != 2 or ntk.shape[0] != ntk.shape[1] or ntk.shape[0] < 1:
        raise ValueError(f"ntk must be a square (N, N) matrix, got shape {ntk.shape}")
    if (isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real)
            or not 0 < learning_rate < float("inf")):
        raise ValueError(f"learning_rate must be a finite positive number, got {learning_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    return ntk, int(steps)


def _eigh(ntk: Array) -> tuple[Array, Array]:
    """``lambda``, ``V`` of ``Theta = V diag(lambda) V^T`` (its symmetric part: the kernels round both halves)."""
    return jnp.linalg.eigh((ntk + ntk.T) / 2)


def _propagator_eigen(ntk: Array, learning_rate: float, steps: int, flow: bool) -> tuple[Array, Array]:
    """``V`` and ``a_k(t)`` for ``t = 0 .. steps`` (rows), from ``Theta = V diag(lambda) V^T``."""
    lam, v = _eigh(ntk)
    n = ntk.shape[0]
    t = jnp.arange(steps + 1, dtype=lam.dtype)[:, None]
    if flow:
        a = jnp.exp(-learning_rate * lam[None, :] * t / n)
    else:
        a = (1 - learning_rate * lam[None, :] / n) ** t
    return v, a


def residuals(ntk: Array, r0: Array, learning_rate: float, steps: int, *, flow: bool = False) -> Array:
    r"""Residuals ``r_t = f_t(X) - Y`` of the linearised dynamics for ``t = 0 .. steps``, ``(steps + 1, N, n_out)``.

    ``r_t = (I - eta Theta / N)^t r_0`` (gradient descent with the loss ``1/N sum_i 1/2 ||f_i - y_i||^2``) or, with
    ``flow=True``, ``exp(-eta Theta t / N) r_0`` (Lee et al. 2019, Sec. 2.2); see the module docstring.
    ``r0`` is ``(N,)`` or ``(N, n_out)``. The flow is :func:`theory.predict.gradient_descent_mse`'s, whose time
    is normalised by ``y.size = N n_out`` (neural-tangents' loss ``1/(2 N n_out) ||f - Y||^2``): here the rate is
    ``n_out`` times larger, as this loss sums the outputs.
    """
    ntk, steps = _check_dynamics(ntk, learning_rate, steps)
    r0 = jnp.asarray(r0)
    r0 = r0[:, None] if r0.ndim == 1 else r0
    if r0.shape[0] != ntk.shape[0]:
        raise ValueError(f"r0 has {r0.shape[0]} rows but the NTK is {ntk.shape[0]} x {ntk.shape[0]}")
    if flow:
        zeros = jnp.zeros_like(r0)
        flow_fn = predict.gradient_descent_mse(ntk, zeros, learning_rate=learning_rate * r0.shape[1])
        return flow_fn(jnp.arange(steps + 1, dtype=zeros.dtype), r0)
    v, a = _propagator_eigen(ntk, learning_rate, steps, flow)
    return jnp.einsum("ik,tk,kj->tij", v, a, v.T @ r0)


def linear_outputs(ntk: Array, f0: Array, y: Array, learning_rate: float, steps: int, *,
                   ntk_test_train: Array | None = None, f0_test: Array | None = None,
                   flow: bool = False) -> tuple[Array, Array | None]:
    r"""Outputs of the linearised network after ``steps`` steps, on the training inputs and (given
    ``ntk_test_train`` ``(M, N)`` and ``f0_test`` ``(M, n_out)``) on test inputs: ``(f_train, f_test)``.

    ``f_train = Y + A r_0`` and ``f_test = f0_test - Theta_*X V diag((1 - a_k) / lambda_k) V^T r_0`` with
    ``r_0 = f0 - Y``, ``a_k = (1 - eta lambda_k / N)^t`` (limit ``eta t / N`` at ``lambda_k = 0``), or the flow's
    ``exp(-eta lambda_k t / N)`` (``theory.predict.gradient_descent_mse``); Lee et al. 2019, Eqs. 9-10.
    """
    ntk, steps = _check_dynamics(ntk, learning_rate, steps)
    f0, y = jnp.asarray(f0), jnp.asarray(y)
    f0, y = (f0[:, None] if f0.ndim == 1 else f0), (y[:, None] if y.ndim == 1 else y)
    if f0.shape != y.shape or f0.shape[0] != ntk.shape[0]:
        raise ValueError(f"f0 {f0.shape} and y {y.shape} must both be (N, n_out) with N = {ntk.shape[0]}")
    if (ntk_test_train is None) != (f0_test is None):
        raise ValueError("test outputs need both ntk_test_train and f0_test")
    if flow:
        fn = predict.gradient_descent_mse(ntk, y, learning_rate=learning_rate * y.shape[1])
        if f0_test is None:
            return fn(float(steps), f0), None
        return fn(float(steps), f0, jnp.asarray(f0_test), jnp.asarray(ntk_test_train))
    lam, v = _eigh(ntk)
    n = ntk.shape[0]
    a = (1 - learning_rate * lam / n) ** steps
    moved = jnp.where(lam > 0, (1 - a) / jnp.where(lam > 0, lam, 1.0), learning_rate * steps / n)
    r0 = v.T @ (f0 - y)
    train = y + v @ (a[:, None] * r0)
    if f0_test is None:
        return train, None
    test = jnp.asarray(f0_test) - jnp.asarray(ntk_test_train) @ (v @ (moved[:, None] * r0))
    return train, test


def loss_curve(ntk: Array, f0: Array, y: Array, learning_rate: float, steps: int, *, flow: bool = False) -> Array:
    """Training loss ``L_t = 1/N sum_i 1/2 ||r_t(x_i)||^2`` of the linearised network started at ``f0``,
    ``(steps + 1,)`` (the residuals of :func:`residuals` with ``r_0 = f0 - y``)."""
    f0, y = jnp.asarray(f0), jnp.asarray(y)
    r = residuals(ntk, f0 - y, learning_rate, steps, flow=flow)
    return 0.5 * jnp.sum(r**2, axis=(1, 2)) / r.shape[1]


def expected_loss(ntk: Array, nngp: Array, y: Array, learning_rate: float, steps: int, *,
                  flow: bool = False) -> Array:
    r"""Training loss averaged over the initialisation, ``E L_t`` for ``t = 0 .. steps``, ``(steps + 1,)``.

    ``f_0(X) ~ N(0, K)`` independently for each of the ``n_out`` outputs (``y`` is ``(N,)`` or ``(N, n_out)``), so
    (module docstring; Lee et al. 2019, Sec. 2.3: the outputs stay Gaussian, with mean ``(I - A_t) Y`` and
    covariance ``A_t K A_t`` on the training inputs):

        E L_t = 1/(2N) sum_k a_k(t)^2 [ n_out (V^T K V)_kk + ||(V^T Y)_k||^2 ],
        a_k(t) = (1 - eta lambda_k / N)^t  (gradient descent)  or  exp(-eta lambda_k t / N)  (flow).
    """
    ntk, steps = _check_dynamics(ntk, learning_rate, steps)
    nngp, y = jnp.asarray(nngp), jnp.asarray(y)
    y = y[:, None] if y.ndim == 1 else y
    n = ntk.shape[0]
    if nngp.shape != ntk.shape or y.shape[0] != n:
        raise ValueError(f"ntk {ntk.shape}, nngp {nngp.shape} and y {y.shape} must share the N = {n} examples")
    v, a = _propagator_eigen(ntk, learning_rate, steps, flow)
    weight = y.shape[1] * jnp.einsum("ik,ij,jk->k", v, nngp, v) + jnp.sum((v.T @ y) ** 2, axis=1)
    return 0.5 * (a**2 @ weight) / n


__all__ = ["NtkCoefficients", "expected_loss", "linear_outputs", "loss_curve", "mlp_ntk", "residuals"]
