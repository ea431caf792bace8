r"""Finite width, infinite depth: a depth-scaled ResNet of fixed width ``n`` becomes a diffusion as ``L -> inf``.

The setting of Hayou 2022 ("On the infinite-depth limit of finite-width neural networks", TMLR 2023, arXiv
2210.00688, https://openreview.net/forum?id=RbLsYz1Az9).

Only the paper's abstract and the opening of its introduction could be read; the equations here are our own
derivation (Itô calculus), checked by Monte Carlo. Convention (:class:`theory.ResNet`, ``a = branch_scale``,
``w = w_std``, ``b = b_std``, ``depth_exponent = 1/2``; other exponents have no diffusion limit): given ``h_{l-1}`` a
block's branch is exactly ``N(0, a^2/L (w^2 ||phi(h_{l-1})||^2 / n + b^2) I_n)``, so the ``L`` blocks are ``L``
Euler-Maruyama steps of size ``1/L`` of

    dX_t = a (w^2 ||phi(X_t)||^2 / n + b^2)^{1/2} dB_t,    t in [0, 1],

and with ``b = 0`` the law of ``h_L`` as ``L -> inf`` is that of ``dX = n^{-1/2} ||phi(X)|| dB`` at the horizon
``T = branch_scale^2 w_std^2`` (:func:`horizon`). Closed forms (``b_std = 0``): norm-preserving ``phi``,
``ln ||X_T|| ~ N(ln ||X_0|| + (1/2 - 1/n) T, T / n)``; ReLU, ``d ln ||phi(X_t)|| = n^{-1/2} dW_t + (N_t - 2) / (2n)
dt`` with ``N_t`` the number of positive coordinates, so ``E R_T = E ln(||phi(X_T)|| / ||phi(X_0)||) = g(n) T + o(T)``
with ``g(n) = ((n/2) / (1 - 2^{-n}) - 2) / (2n)``, negative up to width 3 and positive from width 4; the growth is
transient (``E R_T ~ -T/(2n)`` as ``T -> inf`` at every width; at ``n = 4`` negative from ``T`` of about 7).

Pure functions of their arguments; nothing here samples (the simulations are in ``experiments.depth_diffusion``).

Derivation and notes: docs/depth_diffusion.md (provenance and sources tried, the closed forms, the width-3/4 change,
the Monte Carlo numbers).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats

from theory.activations import Activation
from theory.architectures import ResNet

Array = jax.Array

CRITICAL_EXPONENT = 0.5
NORM_PRESERVING = ("identity", "abs")

__all__ = [
    "CRITICAL_EXPONENT",
    "GaussianLaw",
    "check_sde_resnet",
    "check_width",
    "diffusion_scale",
    "finite_depth_log_norm_moments",
    "horizon",
    "is_norm_preserving",
    "log_norm_law",
    "output_excess_kurtosis",
    "relu_active_mean_at_init",
    "relu_first_growing_width",
    "relu_initial_log_growth_rate",
    "relu_log_drift",
    "relu_log_growth_bounds",
    "resnet_log_norm_law",
]


# -- validation -------------------------------------------------------------------------------------
def check_width(width: object) -> int:
    """``width`` as an ``int >= 1``; ``ValueError`` naming the value otherwise."""
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"width must be a positive integer (the number of units n), got {width!r}")
    return int(width)


def check_sde_resnet(res: object) -> ResNet:
    """``res`` if it is a :class:`theory.ResNet` with ``depth_exponent = 1/2`` (the only exponent whose
    finite-width depth limit is a non-trivial diffusion); ``ValueError`` naming the regime otherwise."""
    if not isinstance(res, ResNet):
        raise ValueError(
            f"the finite-width infinite-depth diffusion is defined for a theory.ResNet (branches scaled by "
            f"branch_scale / depth**depth_exponent), got {res!r}"
        )
    if res.depth_exponent != CRITICAL_EXPONENT:
        regime = ("the blocks' total contribution vanishes like L^(1 - 2 beta): the limit is the identity map"
                  if res.depth_exponent > CRITICAL_EXPONENT else
                  "the blocks' total variance grows like L^(1 - 2 beta): there is no finite limit")
        raise ValueError(
            f"depth_exponent={res.depth_exponent}: only depth_exponent=0.5 has a diffusion limit at fixed "
            f"width; with beta={res.depth_exponent} {regime}"
        )
    return res


def _check_no_bias(res: ResNet, what: str) -> None:
    if res.b_std != 0:
        raise ValueError(
            f"{what} assumes b_std = 0 (the network (1) has no biases), got b_std={res.b_std}; "
            "simulate the SDE with experiments.depth_diffusion.simulate_sde instead"
        )


def _check_time(t: object) -> float:
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
        raise ValueError(f"t must be a finite real number >= 0 (t = l / depth), got {t!r}")
    return float(t)


def is_norm_preserving(activation: Activation) -> bool:
    """Whether ``||phi(x)|| = ||x||`` for every ``x``: identity, abs, ``leaky_relu`` with slope ``+-1``."""
    if activation.name in NORM_PRESERVING:
        return True
    return activation.name == "leaky_relu" and len(activation.params) == 1 and abs(activation.params[0]) == 1.0


# -- the SDE ------------------------------------------------------------------------------------------
def horizon(res: ResNet, t: float = 1.0) -> float:
    """``T = branch_scale^2 w_std^2 t``: the time of the diffusion of (1) whose law the residual stream of
    ``res`` has at depth fraction ``t`` as ``L -> inf`` (for ``b_std = 0``)."""
    res = check_sde_resnet(res)
    return res.branch_scale**2 * res.w_std**2 * _check_time(t)


def diffusion_scale(res: ResNet, width: int, post_norm_sq: Array) -> Array:
    """The diffusion coefficient of (2): ``a sqrt(w^2 ||phi(h)||^2 / n + b^2)``, given ``||phi(h)||^2``.

    Each coordinate of the residual stream moves by ``N(0, diffusion_scale^2 dt)`` in time ``dt``: a block of
    the finite network (``dt = 1/L``) in law, an Euler-Maruyama step of the SDE.
    """
    res = check_sde_resnet(res)
    n = check_width(width)
    return res.branch_scale * jnp.sqrt(res.w_std**2 * post_norm_sq / n + res.b_std**2)


# -- closed forms: norm-preserving activations ---------------------------------------------------------
@dataclass(frozen=True)
class GaussianLaw:
    """``N(mean, variance)``: here the law of a log-norm, ``ln ||X_T||``."""

    mean: float
    variance: float

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def pdf(self, y: np.ndarray | float) -> np.ndarray:
        """Density at ``y``."""
        return stats.norm.pdf(y, self.mean, self.std)

    def cdf(self, y: np.ndarray | float) -> np.ndarray:
        """Distribution function at ``y``."""
        return stats.norm.cdf(y, self.mean, self.std)

    def quantile(self, p: np.ndarray | float) -> np.ndarray:
        """Inverse of :meth:`cdf`, ``p`` in (0, 1)."""
        return stats.norm.ppf(p, self.mean, self.std)

    def exp_moment(self, p: float) -> float:
        """``E[exp(p Y)]`` for ``Y`` with this law, i.e. ``E||X_T||^p`` when ``Y = ln ||X_T||``."""
        return math.exp(p * self.mean + 0.5 * p**2 * self.variance)


def log_norm_law(width: int, horizon: float, initial_norm: float = 1.0) -> GaussianLaw:
    """Law (3) of ``ln ||X_T||`` for the diffusion of (1) with a norm-preserving ``phi`` (``||phi(x)|| = ||x||``):

        ln ||X_T|| ~ N(ln ||X_0|| + (1/2 - 1/n) T,  T / n).

    Also the law of ``ln X_T`` for ReLU at width 1 when ``X_0 = initial_norm > 0``.
    """
    n = check_width(width)
    hz = _check_time(horizon)
    if isinstance(initial_norm, bool) or not isinstance(initial_norm, numbers.Real) or not initial_norm > 0 \
            or not math.isfinite(initial_norm):
        raise ValueError(f"initial_norm must be a finite number > 0, got {initial_norm!r}")
    return GaussianLaw(math.log(initial_norm) + (0.5 - 1.0 / n) * hz, hz / n)


def resnet_log_norm_law(res: ResNet, width: int, t: float = 1.0, initial_norm: float = 1.0) -> GaussianLaw:
    """Law of ``ln ||phi(h)||`` at depth fraction ``t`` of ``res`` at width ``width`` as ``depth -> inf``,
    given ``||phi(h_0)|| = initial_norm``: (3) at the horizon ``T = branch_scale^2 w_std^2 t``.

    Defined for norm-preserving activations (then ``||phi(h)|| = ||h||``) and for ReLU at width 1
    (given ``h_0 = initial_norm > 0``); other activations have no closed form here (``ValueError``).
    """
    res = check_sde_resnet(res)
    n = check_width(width)
    _check_no_bias(res, "the closed-form law (3)")
    relu_width_one = res.activation.name == "relu" and n == 1
    if not (is_norm_preserving(res.activation) or relu_width_one):
        raise ValueError(
            f"no closed-form law for {res.activation!r} at width {n}: (3) needs ||phi(x)|| = ||x|| (identity, "
            "abs, leaky_relu(+-1)) or ReLU at width 1; simulate the SDE (experiments.depth_diffusion)"
        )
    return log_norm_law(n, horizon(res, t), initial_norm)


def _noncentral_log_moments(k: int, lam: float) -> tuple[float, float]:
    """Mean and variance of ``ln Q``, ``Q ~ chi'^2_k(lam)`` (noncentral chi-square), from its Poisson mixture
    ``Q | J ~ chi^2_{k + 2J}``, ``J ~ Poisson(lam / 2)``, and ``E ln chi^2_m = ln 2 + psi(m/2)``,
    ``Var ln chi^2_m = psi'(m/2)``."""
    mu = lam / 2.0
    half = 12.0 * math.sqrt(mu) + 40.0
    j = np.arange(max(0.0, math.floor(mu - half)), math.ceil(mu + half) + 1.0)
    w = stats.poisson.pmf(j, mu)
    w = w / w.sum()
    dig = special.digamma(k / 2.0 + j)
    mean_dig = float(np.sum(w * dig))
    var_dig = float(np.sum(w * (dig - mean_dig) ** 2))
    trig = float(np.sum(w * special.polygamma(1, k / 2.0 + j)))
    return math.log(2.0) + mean_dig, trig + var_dig


def finite_depth_log_norm_moments(res: ResNet, width: int) -> tuple[float, float]:
    """Exact mean and variance of ``ln(||h_L|| / ||h_0||)`` for the width-``width`` network ``res`` at its
    finite depth ``L = res.depth`` (norm-preserving activations, ``b_std = 0``; any ``h_0 != 0``).

    A block maps ``h -> h + c ||h|| g`` in law, ``g ~ N(0, I_n)``, ``c^2 = T / (n L)``; by rotation
    invariance ``||h_l||^2 / ||h_{l-1}||^2 = ||e_1 + c g||^2 = c^2 chi'^2_n(1/c^2)``, iid over blocks, so the
    log-ratio is a sum of ``L`` iid terms ``(ln c^2 + ln chi'^2_n(1/c^2)) / 2``. As ``L -> inf`` the moments
    tend to those of (3), ``(1/2 - 1/n) T`` and ``T / n``, at the Euler rate ``O(1/L)``.
    """
    res = check_sde_resnet(res)
    n = check_width(width)
    _check_no_bias(res, "finite_depth_log_norm_moments")
    if not is_norm_preserving(res.activation):
        raise ValueError(f"finite_depth_log_norm_moments needs a norm-preserving activation (identity, abs, "
                         f"leaky_relu(+-1)), got {res.activation!r}")
    depth, hz = res.depth, horizon(res)
    if depth == 0 or hz == 0:
        return 0.0, 0.0
    c2 = hz / (n * depth)
    m, v = _noncentral_log_moments(n, 1.0 / c2)
    return depth * 0.5 * (math.log(c2) + m), depth * 0.25 * v


def output_excess_kurtosis(res: ResNet, width: int, *, finite_depth: bool = False) -> float:
    """Excess kurtosis ``E f^4 / (E f^2)^2 - 3`` of the output of ``res`` at width ``width`` (one input,
    Gaussian stem and readout, norm-preserving activation, ``b_std = 0``).

    ``f | h_L ~ N(0, r^2 ||h_L||^2 / n)`` and ``||h_0||^2 ~ chi^2_n`` (times a constant), so
    ``E f^4 / (E f^2)^2 = 3 (1 + 2/n) E||h_L||^4 / (E||h_L||^2)^2 / (E||h_0||^4 / (E||h_0||^2)^2)``. As
    ``L -> inf`` (default) it is ``3 (1 + 2/n) e^{4T/n} - 3`` by (3); at the finite depth ``L = res.depth``
    (``finite_depth=True``) each block multiplies ``E||h||^4 / (E||h||^2)^2`` by
    ``(1 + (2n + 4) c^2 + n (n + 2) c^4) / (1 + n c^2)^2``, ``c^2 = T / (nL)``.
    """
    res = check_sde_resnet(res)
    n = check_width(width)
    _check_no_bias(res, "output_excess_kurtosis")
    if not is_norm_preserving(res.activation):
        raise ValueError(f"output_excess_kurtosis has a closed form for norm-preserving activations only "
                         f"(identity, abs, leaky_relu(+-1)), got {res.activation!r}")
    hz = horizon(res)
    stem = 3.0 * (1.0 + 2.0 / n)
    if not finite_depth:
        return stem * math.exp(4.0 * hz / n) - 3.0
    if res.depth == 0:
        return stem - 3.0
    c2 = hz / (n * res.depth)
    per_block = (1.0 + (2 * n + 4) * c2 + n * (n + 2) * c2**2) / (1.0 + n * c2) ** 2
    return stem * per_block**res.depth - 3.0


# -- ReLU ------------------------------------------------------------------------------------------------
def relu_log_drift(width: int, n_active: np.ndarray | int) -> np.ndarray:
    """Drift of ``ln ||phi(X)||`` per unit time of the diffusion of (1) for ReLU with ``n_active`` positive
    coordinates, (4): ``(n_active - 2) / (2n)``. Negative with one active unit, zero with two, positive with
    three or more."""
    n = check_width(width)
    k = np.asarray(n_active)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError(f"n_active must be between 0 and width={n}, got {n_active!r}")
    return (k - 2.0) / (2.0 * n)


def relu_active_mean_at_init(width: int) -> float:
    """``E[N_0 | N_0 >= 1] = (n/2) / (1 - 2^{-n})``: the mean number of positive coordinates of an isotropic
    Gaussian stem output given that at least one is positive (``N_0 ~ Binomial(n, 1/2)``)."""
    n = check_width(width)
    return 0.5 * n / (1.0 - 2.0**-n)


def relu_initial_log_growth_rate(width: int) -> float:
    """``g(n) = d/dT E ln(||phi(X_T)|| / ||phi(X_0)||)`` at ``T = 0`` for ReLU, Gaussian stem conditioned on
    ``phi(X_0) != 0``: ``(E[N_0 | N_0 >= 1] - 2) / (2n)`` by (4). Negative for ``n <= 3``, positive for ``n >= 4``.

    ``g(n) T`` is the expected log-growth to first order in ``T`` only: ``E N_t`` starts flat but falls like
    ``t^{3/2}`` (Monte Carlo; at ``n = 4`` the drift integral is ``0.0148(2)`` at ``T = 1`` against ``g T =
    0.0167``), and at every width it tends to 1, so ``E ln(...)`` eventually decreases like ``-T/(2n)`` (module
    docstring: at ``n = 4`` it is negative from ``T`` of about 7).
    """
    n = check_width(width)
    return (relu_active_mean_at_init(n) - 2.0) / (2.0 * n)


def relu_first_growing_width() -> int:
    """The smallest width at which the expected log post-activation norm of a ReLU ResNet grows at small depth
    (``g(n) > 0``): 4 (``g(3) = -1/21``, ``g(4) = +1/60``). The growth is transient (module docstring)."""
    n = 1
    while relu_initial_log_growth_rate(n) <= 0:
        n += 1
    return n


def relu_log_growth_bounds(width: int, horizon: float) -> tuple[float, float]:
    """``(-T/(2n), (n - 2) T/(2n))``: bounds on ``E ln(||phi(X_T)|| / ||phi(X_0)||)`` for ReLU, from
    ``1 <= N_t <= n`` in (4)."""
    n = check_width(width)
    hz = _check_time(horizon)
    return -hz / (2.0 * n), (n - 2.0) * hz / (2.0 * n)
