r"""Finite-width corrections: the excess kurtosis of a deep ReLU network's output, exactly and to O(L/n).

Setting (the conventions of ``theory.architectures``): a ``theory.MLP(depth=L, activation="relu",
w_std=sqrt(2), b_std=0)`` (ReLU at criticality, ``C_W = w_std^2 = 2``, ``C_b = 0``) with ``L`` hidden
layers of width ``n``, a Dense readout, and a single non-zero input ``x`` with ``d`` features. Write
``h_1 = sqrt(2/d) W_1 x`` for the first pre-activation, ``h_{l+1} = sqrt(2/n) W_{l+1} relu(h_l)`` for the
next ones (``h_{L+1}`` is the readout, the output ``f``), all ``W ~ N(0, 1)`` entrywise, and

    G_0 = q = 2 ||x||^2 / d,        G_l = (2/n) ||relu(h_l)||^2        (l = 1, ..., L).

**The exact law.** Given layer ``l``, the ``n`` units of ``h_{l+1}`` are i.i.d. ``N(0, G_l)`` (a Gaussian
matrix times a fixed vector). With ``z ~ N(0, G)`` the half-normal moments are ``E[relu(z)^2] = G/2`` and
``E[relu(z)^4] = 3 G^2/2``, so, summing over the ``n`` i.i.d. units (``n`` diagonal and ``n(n-1)``
off-diagonal terms of the square)::

    E[G_{l+1}^2 | G_l] = (4/n^2) (n * 3 G_l^2/2 + n(n-1) * G_l^2/4) = (1 + 5/n) G_l^2,
    E[G_{l+1}   | G_l] = G_l.

Hence ``E[G_L] = q`` and ``E[G_L^2] = q^2 (1 + 5/n)^L``. The output is Gaussian given ``G_L``,
``f | G_L ~ N(0, G_L)``, so ``E[f^2] = E[G_L]`` and ``E[f^4] = 3 E[G_L^2]``, and

    E[f^4] / E[f^2]^2 = 3 E[G_L^2] / E[G_L]^2 = 3 (1 + 5/n)^L,
    excess kurtosis   kappa_4(L, n) = 3 (1 + 5/n)^L - 3,

for every width ``n >= 1``, every depth ``L >= 0`` and every input (``q`` cancels). The output units of
a wider readout share ``G_L``: each has this kurtosis (they are exchangeable, not independent). Hidden
layer ``k`` (1-based) has ``3 (1 + 5/n)^(k-1) - 3``: the first pre-activation is exactly Gaussian.

**Leading order.** Expanding, ``kappa_4 = 3 sum_{k>=1} binom(L, k) (5/n)^k = 15 L/n + 75 L(L-1)/(2 n^2) + ...``:
to first order in ``1/n`` the excess kurtosis grows linearly in the depth-to-width ratio, ``15 L/n``
(Hanin & Nica 2019, "Products of many large random matrices and gradients in deep neural networks",
Comm. Math. Phys. 376 (2020); Roberts, Yaida & Hanin 2022, "The Principles of Deep Learning Theory", ch. 5:
in the scale-invariant class the normalised four-point vertex of the ``l``-th pre-activation grows as
``V^{(l)} / (n K^{(l)2}) = (3 A_4 / A_2^2 - 1) (l - 1) / n``, with ``3 A_4 / A_2^2 - 1 = 5`` for ReLU,
and the excess kurtosis is ``3 V / (n K^2)``: ``15 L/n`` at the readout, ``l = L + 1``). The relative
correction to the line is ``5 (L - 1) / (2 n) + O((L/n)^2)``: the line is exact at ``L = 1`` and drifts
away as ``L/n`` grows.

**Double-scaling limit.** At fixed ``r = L/n`` with ``n -> infinity``, ``(1 + 5/n)^(r n) -> e^(5 r)`` and
``kappa_4 -> 3 (e^(5 r) - 1)`` (Hanin & Nica 2019: ``log G_L`` becomes Gaussian with variance ``~ 5 L/n``,
a log-normal output variance); ``L/n``, not ``L`` or ``n`` alone, is the effective depth. The finite-``n``
law lies below this curve, ``log(1 + 5/n) < 5/n``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "relu_output_excess_kurtosis",
    "relu_output_excess_kurtosis_leading_order",
    "relu_output_excess_kurtosis_limit",
]


def _nonnegative(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return arr


def _positive(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return arr


def relu_output_excess_kurtosis(depth: ArrayLike, width: ArrayLike) -> np.ndarray:
    r"""Exact excess kurtosis of the output of a ReLU MLP at criticality: ``3 (1 + 5/n)^L - 3``.

    ``depth`` is ``L``, the number of hidden layers (``theory.MLP(depth=L)``), ``width`` is ``n``; both
    broadcast (real values allowed, to draw the law as a curve). ReLU, ``C_W = 2``, ``C_b = 0``, one
    input; derivation in the module docstring: ``E[G_{l+1}^2] = (1 + 5/n) E[G_l^2]`` for
    ``G_l = (2/n) ||relu(h_l)||^2`` and ``E[f^4] / E[f^2]^2 = 3 E[G_L^2] / E[G_L]^2``. Computed as
    ``3 expm1(L log1p(5/n))``, accurate for small ``L/n``.

    Raises:
        ValueError: a negative or non-finite depth, or a non-positive or non-finite width.
    """
    depth_ = _nonnegative("depth", depth)
    n = _positive("width", width)
    return 3.0 * np.expm1(depth_ * np.log1p(5.0 / n))


def relu_output_excess_kurtosis_leading_order(depth: ArrayLike, width: ArrayLike) -> np.ndarray:
    r"""The leading order of :func:`relu_output_excess_kurtosis` in ``1/n``: ``15 L / n``.

    The first term of ``3 ((1 + 5/n)^L - 1) = 3 sum_k binom(L, k) (5/n)^k``; the kurtosis growth linear
    in depth/width of Hanin & Nica 2019 and Roberts, Yaida & Hanin 2022 (ch. 5). Relative error
    ``5 (L - 1) / (2 n) + O((L/n)^2)`` (it is exact at ``L = 1``).
    """
    depth_ = _nonnegative("depth", depth)
    n = _positive("width", width)
    return 15.0 * depth_ / n


def relu_output_excess_kurtosis_limit(depth_over_width: ArrayLike) -> np.ndarray:
    r"""The double-scaling limit ``L, n -> infinity`` at fixed ``r = L/n``: ``3 (e^(5 r) - 1)``.

    The curve onto which :func:`relu_output_excess_kurtosis` collapses when plotted against ``L/n``
    (from below: ``(1 + 5/n)^L < e^(5 L/n)``); its slope at ``r = 0`` is the leading-order ``15 r``.
    """
    r = _nonnegative("depth_over_width", depth_over_width)
    return 3.0 * np.expm1(5.0 * r)
