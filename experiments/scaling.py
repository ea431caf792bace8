"""Power-law fits ``y = C n^p`` by least squares in log-log, with standard errors and confidence intervals.

``log y_i = log C + p log n_i + e_i``, ``e_i ~ N(0, s_i^2)``, fitted by weighted least squares with weights
``w_i = 1 / s_i^2``: ``s_i = y_err_i / y_i`` when standard errors ``y_err`` are given, otherwise one ``s`` estimated
from the residuals. The error scale is ``σ² = 1`` when ``y_err`` is trusted (``absolute_sigma=True``), otherwise
``σ² = Σ w_i r_i² / (m - 2)`` over the ``m`` points. Interval for ``p``: ``p ± q · SE(p)`` with the normal (``σ``
known) or Student-t (``m - 2`` degrees of freedom) quantile ``q``, or with ``bootstrap=B`` the percentile interval over
``B`` case-resampled refits (undercovers with very few points; prefer the analytic interval below ~8 points).

Derivation and notes: docs/power_law_fits.md (the estimates, their variances and covariance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["PowerLawFit", "fit_power_law"]


@dataclass(frozen=True)
class PowerLawFit:
    """The result of :func:`fit_power_law`: ``y ≈ prefactor * n ** exponent``.

    ``exponent_stderr`` and ``log_prefactor_stderr`` are analytic (from the fit's covariance);
    ``prefactor_stderr = prefactor * log_prefactor_stderr`` (first order). ``ci_low``, ``ci_high``
    bound the exponent at level ``confidence`` by ``method`` ("analytic" or "bootstrap").
    ``residual_rms`` is the root mean square of the log-space residuals; ``chi2_reduced`` is
    ``Σ w r² / (m - 2)`` when ``y_err`` was given (near 1 when the errors describe the scatter) and NaN
    otherwise.
    """

    exponent: float
    exponent_stderr: float
    prefactor: float
    prefactor_stderr: float
    log_prefactor: float
    log_prefactor_stderr: float
    covariance: tuple[tuple[float, float], tuple[float, float]]  # of (log C, p)
    ci_low: float
    ci_high: float
    confidence: float
    method: str
    n_points: int
    dof: int
    residual_rms: float
    chi2_reduced: float
    n_bootstrap: int = 0

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        """``prefactor * n ** exponent`` (to draw the fitted line)."""
        return self.prefactor * np.asarray(n, dtype=float) ** self.exponent

    def label(self, name: str = "slope", digits: int | None = None, *, ci: bool = False) -> str:
        """``"slope = -0.50 ± 0.03"`` (standard error), or with ``ci=True`` ``"slope = -0.50, 95% CI [-0.56, -0.44]"``.

        ``digits`` decimals; by default the standard error is shown to one significant figure (two if
        it starts with a 1) and the exponent to the same decimal place.
        """
        if digits is None:
            digits = _decimals_for(self.exponent_stderr)
        p = f"{self.exponent:.{digits}f}"
        if ci:
            level = f"{100 * self.confidence:g}%"
            return f"{name} = {p}, {level} CI [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
        return f"{name} = {p} ± {self.exponent_stderr:.{digits}f}"


def _decimals_for(se: float) -> int:
    if not math.isfinite(se) or se < 1e-6:  # exact data: no meaningful error digit
        return 2
    exp10 = math.floor(math.log10(se))
    decimals = -exp10
    leading = round(se / 10.0**exp10)
    if leading == 1:
        decimals += 1
    return int(min(max(decimals, 0), 6))


def _as_1d(name: str, value: object) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-d array of real numbers, got {value!r}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} must be finite; {name}[{bad[0]}] = {arr[bad[0]]}")
    return arr


def _wls(x: np.ndarray, z: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of z on x along the last axis: slope, intercept, S_xx, weighted mean of x."""
    sw = w.sum(axis=-1)
    xbar = (w * x).sum(axis=-1) / sw
    zbar = (w * z).sum(axis=-1) / sw
    dx = x - xbar[..., None]
    sxx = (w * dx * dx).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (w * dx * (z - zbar[..., None])).sum(axis=-1) / sxx
    return slope, zbar - slope * xbar, sxx, xbar


def fit_power_law(
    n: np.ndarray,
    y: np.ndarray,
    y_err: np.ndarray | None = None,
    *,
    confidence: float = 0.95,
    absolute_sigma: bool = True,
    bootstrap: int | None = None,
    seed: int | np.random.Generator | None = 0,
) -> PowerLawFit:
    """Fit ``y = C n^p`` by (weighted) least squares of ``log y = log C + p log n``; see the module docstring.

    Args:
        n: positive abscissae (widths, depths, ...), at least 3 points and at least 2 distinct values.
        y: positive values, same length.
        y_err: optional positive standard errors of ``y``; the fit is weighted by ``(y / y_err)^2``.
        confidence: level of the interval ``[ci_low, ci_high]`` for ``p``.
        absolute_sigma: with ``y_err``, trust its scale (``True``) or rescale it by the residual
            ``chi2_reduced`` (``False``, as when the errors are only relative).
        bootstrap: number of case-resampled refits for a percentile interval, or ``None`` for the
            analytic (normal / Student-t) interval.
        seed: seed or ``numpy.random.Generator`` for the bootstrap (fixed by default: reproducible).

    Raises:
        ValueError: mismatched lengths, fewer than 3 points, NaN/inf, non-positive ``n``, ``y`` or
            ``y_err``, a single distinct ``n``, a bad ``confidence`` or ``bootstrap``.
    """
    n_arr, y_arr = _as_1d("n", n), _as_1d("y", y)
    if n_arr.shape != y_arr.shape:
        raise ValueError(f"n and y must have the same length, got {n_arr.size} and {y_arr.size}")
    m = n_arr.size
    if m < 3:
        raise ValueError(f"a power-law fit with an error estimate needs at least 3 points, got {m}")
    for name, arr in (("n", n_arr), ("y", y_arr)):
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            raise ValueError(f"{name} must be positive for a log-log fit; {name}[{bad[0]}] = {arr[bad[0]]}")
    if np.unique(n_arr).size < 2:
        raise ValueError(f"n must take at least 2 distinct values to fit an exponent, got only {n_arr[0]}")
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if bootstrap is not None and (isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 10):
        raise ValueError(f"bootstrap must be None or an integer >= 10 (number of resamples), got {bootstrap!r}")

    x, z = np.log(n_arr), np.log(y_arr)
    if y_err is not None:
        err = _as_1d("y_err", y_err)
        if err.shape != y_arr.shape:
            raise ValueError(f"y_err must have the same length as y, got {err.size} and {y_arr.size}")
        bad = np.flatnonzero(err <= 0)
        if bad.size:
            raise ValueError(f"y_err must be positive; y_err[{bad[0]}] = {err[bad[0]]}")
        w = (y_arr / err) ** 2
    else:
        w = np.ones_like(x)

    slope, intercept, sxx, xbar = (float(v) for v in _wls(x, z, w))
    resid = z - intercept - slope * x
    dof = m - 2
    chi2 = float((w * resid**2).sum())
    estimated_scale = y_err is None or not absolute_sigma
    sigma2 = chi2 / dof if estimated_scale else 1.0
    var_p = sigma2 / sxx
    var_a = sigma2 * (1.0 / w.sum() + xbar**2 / sxx)
    cov_ap = -sigma2 * xbar / sxx
    se_p, se_a = math.sqrt(var_p), math.sqrt(var_a)

    alpha = 1.0 - confidence
    if bootstrap is None:
        q = stats.t.ppf(1 - alpha / 2, dof) if estimated_scale else stats.norm.ppf(1 - alpha / 2)
        ci_low, ci_high, method = slope - q * se_p, slope + q * se_p, "analytic"
    else:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        idx = rng.integers(0, m, size=(bootstrap, m))
        slopes, _, sxx_b, _ = _wls(x[idx], z[idx], w[idx])
        ok = sxx_b > 1e-12 * sxx
        if ok.sum() < 10:
            raise ValueError(f"only {int(ok.sum())} of {bootstrap} bootstrap resamples had 2 distinct n values; "
                             "use the analytic interval (bootstrap=None) or more points")
        ci_low, ci_high = (float(v) for v in np.quantile(slopes[ok], [alpha / 2, 1 - alpha / 2]))
        method = "bootstrap"

    prefactor = math.exp(intercept)
    return PowerLawFit(
        exponent=slope,
        exponent_stderr=se_p,
        prefactor=prefactor,
        prefactor_stderr=prefactor * se_a,
        log_prefactor=intercept,
        log_prefactor_stderr=se_a,
        covariance=((var_a, cov_ap), (cov_ap, var_p)),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        confidence=float(confidence),
        method=method,
        n_points=m,
        dof=dof,
        residual_rms=float(np.sqrt(np.mean(resid**2))),
        chi2_reduced=chi2 / dof if y_err is not None else math.nan,
        n_bootstrap=int(bootstrap or 0),
    )
