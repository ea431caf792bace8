"""Shared pieces of the DMFT solvers (:mod:`theory.dmft`): the solution type, argument checks, noise and
standard errors. Derivations: docs/dmft.md."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from theory.inputs import validate_inputs

Array = jax.Array

RESPONSES = ("auto", "pathwise", "stein")
METHODS = ("auto", "monte_carlo", "exact", "particles")
KERNEL_MODES = ("two_time", "equal_time")


@dataclass(frozen=True)
class DMFTSolution:
    """The infinite-width trajectory of :func:`theory.dmft.solve`; row ``t`` is after ``t`` gradient steps
    (row 0: init).

    With ``T = steps``, ``P`` training and ``Q`` test inputs, ``N = P + Q`` (training inputs first), ``L`` layers:

    - ``f_train`` ``(T + 1, P)``, ``f_test`` ``(T + 1, Q)``: the network's outputs; ``loss`` ``(T + 1,)``:
      ``1/P sum_mu 1/2 (f_mu - y_mu)^2``.
    - ``phi`` ``(L, T + 1, T + 1, N, N)``: the feature kernels ``Phi^l_{mu nu}(t, s)`` of hidden layers 1..L
      (``(L, T + 1, N, N)``, ``Phi^l(t, t)``, with ``kernels="equal_time"``); ``g`` the same for the gradient
      kernels ``G^l``; ``ntk`` ``(T + 1, N, N)``: the NTK at each step.
    - ``*_stderr``: the standard error of each (the spread of ``replicas`` independent Monte-Carlo solves over
      ``sqrt(replicas)``; zeros for ``method="exact"``).
    - ``iterations``: fixed-point iterations used (the largest over replicas; 1 for ``method="particles"``, one
      pass); ``change``: the last relative change (below ``tol``; 0 for particles); ``method``, ``samples`` (per
      replica), ``replicas``, ``dtype`` (the float type used).
    """

    f_train: np.ndarray
    f_test: np.ndarray
    loss: np.ndarray
    phi: np.ndarray
    g: np.ndarray
    ntk: np.ndarray
    f_train_stderr: np.ndarray
    f_test_stderr: np.ndarray
    loss_stderr: np.ndarray
    phi_stderr: np.ndarray
    g_stderr: np.ndarray
    ntk_stderr: np.ndarray
    iterations: int
    change: float
    method: str
    samples: int
    replicas: int
    gamma: float
    learning_rate: float
    dtype: str

    @property
    def n_train(self) -> int:
        return self.f_train.shape[1]


class DMFTConvergenceError(ValueError):
    """The fixed-point iteration did not reach ``tol`` within ``max_iterations`` (the message says how far it got
    and what to change)."""


# -- checks ----------------------------------------------------------------------------------------------------
def positive(name: str, value: object, *, integer: bool = False, allow_zero: bool = False) -> float | int:
    kind = numbers.Integral if integer else numbers.Real
    ok = not isinstance(value, bool) and isinstance(value, kind)
    if ok:
        v = int(value) if integer else float(value)
        ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        what = "integer" if integer else "finite number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {what}, got {value!r}")
    return v


def check_data(x_train: object, y_train: object, x_test: object | None) -> tuple[Array, Array, int]:
    x, xt = validate_inputs(x_train, x_test, network="dmft")
    y = jnp.asarray(y_train, dtype=x.dtype)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (x.shape[0],):
        raise ValueError(f"y_train must hold one scalar target per training input, shape ({x.shape[0]},) or "
                         f"({x.shape[0]}, 1); got {tuple(jnp.shape(y_train))}")
    if not bool(jnp.all(jnp.isfinite(y))):
        raise ValueError("y_train must be finite")
    n_train = x.shape[0]
    x_all = x if xt is None else jnp.concatenate([x, xt], axis=0)
    return x_all, y, n_train


def derivative(fn):
    """``phi'`` elementwise (forward mode, so it composes with the solvers' forward-mode responses)."""
    def dphi(x: Array) -> Array:
        return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]
    return dphi


def sqrt_psd(c: Array) -> Array:
    """The principal square root of a symmetric positive semi-definite matrix (negative round-off clipped):
    continuous in ``c``, so fixed noise gives fields that change smoothly with the kernels."""
    finite = jnp.all(jnp.isfinite(c))
    c = jnp.where(finite, c, 0.0)  # LAPACK's eigh can hang on NaN: a diverged iterate becomes NaN afterwards
    lam, v = jnp.linalg.eigh((c + c.T) / 2)
    return jnp.where(finite, (v * jnp.sqrt(jnp.maximum(lam, 0.0))) @ v.T, jnp.nan)


STEIN_RTOL = 1e-8
"""Eigenvalues of a covariance below this fraction of its largest are dropped by :func:`stein_response`."""


def stein_response(k: Array, cov: Array, row_step: np.ndarray, col_step: np.ndarray, *, same_step: bool,
                   rtol: float | None = None) -> Array:
    """The causal response ``R = E[dF / dw]`` from ``K = E[F w^T]`` for a Gaussian field ``w`` of covariance ``cov``
    (Gaussian integration by parts: ``K = R cov``); ``k`` ``(rows, cols)``, ``cov`` ``(cols, cols)``.

    ``row_step``, ``col_step`` (static integer arrays): the step of each row of ``F`` and column of ``w`` (-1 for a
    field constant in time). ``R(t, s)`` vanishes for ``s > t`` (``same_step``) or ``s >= t``, so each step's rows
    solve ``R(t, past) cov(past, past) = K(t, past)`` on the past columns only: where ``cov`` is singular (the
    fields repeat in time when the kernels move little) that picks the causal solution, and the pseudo-inverse
    (eigenvalues below ``rtol`` times the largest dropped) leaves out directions the fields do not take. Exact for
    any integrable ``F``, also where ``F`` jumps (relu's ``phi'``), where differentiating each path misses the
    jumps."""
    rtol = STEIN_RTOL if rtol is None else rtol
    finite = jnp.all(jnp.isfinite(cov)) & jnp.all(jnp.isfinite(k))
    cov = jnp.where(finite, (cov + cov.T) / 2, 0.0)
    out = jnp.zeros(k.shape, k.dtype)
    for t in np.unique(row_step):
        rows = np.flatnonzero(row_step == t)
        cols = np.flatnonzero(col_step <= t if same_step else col_step < t)
        if cols.size == 0:
            continue
        lam, v = jnp.linalg.eigh(cov[np.ix_(cols, cols)])
        inv = jnp.where(lam > rtol * jnp.maximum(lam[-1], jnp.finfo(k.dtype).tiny), 1.0 / lam, 0.0)
        out = out.at[np.ix_(rows, cols)].set(k[np.ix_(rows, cols)] @ (v * inv) @ v.T)
    return jnp.where(finite, out, jnp.nan)


def replica_stats(a: object) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 (the replicas) and its standard error (zeros for one replica)."""
    a = np.asarray(a)
    r = a.shape[0]
    mean = a.mean(axis=0)
    se = a.std(axis=0, ddof=1) / math.sqrt(r) if r > 1 else np.zeros_like(mean)
    return mean, se


@dataclass(frozen=True)
class SolverOptions:
    """The checked solver arguments of :func:`theory.dmft.solve` (see there)."""

    method: str
    samples: int
    replicas: int
    damping: float
    tol: float
    max_iterations: int
    chunk: int
    kernels: str
    responses: str = "pathwise"
    rough: bool = False

    @property
    def exact(self) -> bool:
        return self.method == "exact"

    @property
    def stein(self) -> bool:
        return self.responses == "stein"

    @property
    def kernel_slack(self) -> float:
        """How many times ``tol`` the kernels' relative change may be (10 where the fixed-noise map jitters)."""
        return 10.0 if self.method == "monte_carlo" and self.rough else 1.0


def solver_options(*, identity: bool, dtype: object, key: object, method: str, samples: object, replicas: object,
                   damping: object, tol: object, max_iterations: object, chunk: object, kernels: str,
                   particles: bool = False, responses: str = "auto", is_rough: bool = False,
                   default_samples: int = 2048, regressors: int = 0) -> SolverOptions:
    """Check the solver arguments and fill the defaults (``method="auto"``: exact for the identity activation,
    ``"particles"`` for other activations where ``particles`` (one hidden layer), else Monte Carlo;
    ``responses="auto"``: ``"stein"`` for Monte Carlo with a rough activation (``is_rough``), else ``"pathwise"``;
    ``samples=None``: ``default_samples``, raised for ``"stein"`` to a power of 2 of at least 32 per regressor
    (``regressors``: the fields one step's responses are regressed on; measured: tanh, two layers, 36 regressors,
    256 samples did not converge, 1024 did);
    ``tol``: 1e-10 exact (1e-5 in float32); Monte Carlo ``0.1 / sqrt(samples)``, a tenth of one replica's relative
    noise. With a rough activation its fixed-noise map is only piecewise continuous (relu: a sample whose
    pre-activation crosses 0 flips ``phi'``), so the iterates end jittering around the fixed point: the largest
    kernel entry's relative change stalls at ~20/samples undamped, about half that at ``damping`` 0.5 (its default
    there), while the outputs move by ~1e-4; so the kernels' changes are held to ``kernel_slack = 10`` times ``tol``
    and the outputs' to ``tol`` (docs/dmft.md, "Rough activations")."""
    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {KERNEL_MODES}, got {kernels!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if responses not in RESPONSES:
        raise ValueError(f"responses must be one of {RESPONSES}, got {responses!r}")
    if method == "auto":
        method = "exact" if identity else "particles" if particles else "monte_carlo"
    if responses == "auto":
        responses = "stein" if method == "monte_carlo" and is_rough else "pathwise"
    jitter = method == "monte_carlo" and is_rough
    if method == "particles" and not particles:
        raise ValueError("method='particles' samples one hidden layer's neurons in weight space: it needs an MLP with "
                         "one hidden layer (depth 1); use method='monte_carlo'")
    if method == "exact" and not identity:
        raise ValueError("method='exact' is the linear network's recursion: the activation must be 'identity'; "
                         "use method='monte_carlo'")
    f64 = jnp.dtype(dtype) == jnp.float64
    tol_given = tol
    if damping is None:
        damping = 0.5 if jitter else 1.0
    damping = positive("damping", damping)
    if damping > 1:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    max_iterations = positive("max_iterations", max_iterations, integer=True)
    if method == "exact":
        samples, replicas = 1, 1
    else:
        if samples is None:  # integration by parts regresses on up to `regressors` fields per step: 32 samples each
            samples = default_samples
            if responses == "stein" and method == "monte_carlo":
                samples = max(samples, 2 ** math.ceil(math.log2(32 * max(regressors, 1))))
        samples = positive("samples", samples, integer=True)
        replicas = positive("replicas", replicas, integer=True)
        if replicas < 2:
            raise ValueError(f"replicas must be at least 2 (their spread is the standard error), got {replicas}")
        if key is None:
            raise ValueError(f"method={method!r} needs a JAX key: solve(..., key=jax.random.key(0))")
    tol = tol_given
    if tol is None:  # exact: round-off; Monte Carlo: a tenth of one replica's relative noise, 1/sqrt(samples)
        tol = (1e-10 if f64 else 1e-5) if method == "exact" else max(0.1 / math.sqrt(samples), 0 if f64 else 1e-4)
    tol = positive("tol", tol)
    if chunk is None:
        chunk = min(samples, 64)
    chunk = positive("chunk", chunk, integer=True)
    if samples % chunk and method != "particles":
        raise ValueError(f"samples ({samples}) must be a multiple of chunk ({chunk})")
    return SolverOptions(method, samples, replicas, damping, tol, max_iterations, chunk, kernels, responses,
                         is_rough)


def fixed_point(sweep, change, state0, *, damping: Array, tol: Array, max_iterations: Array, steps: int):
    """Damped fixed-point iteration ``state <- (1 - damping) state + damping sweep(state, front)`` until the relative
    ``change(old, new)`` is below ``tol``; returns ``(state, iterations, change)``.

    ``sweep(state, front)`` must use the training residuals of steps ``s < front`` only (``front = steps + 1``: all).
    The first iterates are far from the fixed point at late steps (the outputs start at 0), and in the rich regime
    sample paths driven by such residuals can overflow (relu, ``gamma = 4``, 12 steps: non-finite after 4 sweeps,
    with or without damping). Time is causal, so on a non-finite iterate the iteration restarts from ``state0``
    with a *causal front*: sweep ``k`` uses the residuals of steps ``< k`` only (later steps evolve without them,
    frozen), which makes step ``k`` exact after ``k`` sweeps (one hidden layer), then goes on as before once the
    front has passed the last step. A non-finite iterate after the restart means the infinite-width trajectory
    itself diverges: ``change`` is returned as NaN."""
    t1 = steps + 1

    def finite(tree):
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))

    def body(carry):
        state, it, _, front, restarted = carry
        new = sweep(state, front)
        ok = finite(new)
        mixed = jax.tree.map(lambda o, n_: (1 - damping) * o + damping * n_, state, new)
        restart = ~ok & ~restarted
        state = jax.tree.map(lambda s0, m: jnp.where(restart, s0, m), state0, mixed)
        ch = jnp.where(ok, change(carry[0], new), jnp.nan)
        ch = jnp.where(restart, jnp.inf, ch)
        front = jnp.where(restart, 1, jnp.where(ok, jnp.minimum(front + 1, t1), t1))
        return state, it + 1, ch, front, restarted | restart

    def cond(carry):
        _, it, ch, front, _ = carry
        return (it < max_iterations) & ((ch > tol) | (front < t1))

    dtype = jax.tree.leaves(state0)[0].dtype
    init = (state0, jnp.asarray(0), jnp.asarray(jnp.inf, dtype), jnp.asarray(t1), jnp.asarray(False))
    state, it, ch, _, _ = jax.lax.while_loop(cond, body, init)
    return state, it, ch


def rough(fn) -> bool:
    """Whether ``phi`` or ``phi'`` jumps on [-6, 6]: consecutive values on a 0.005 grid (0 included) differ by more
    than the derivative allows (relu, abs, sign, clipped activations; not tanh, gelu, softplus, erf, polynomials).
    Remembered per function (each check compiles a small program)."""
    try:
        return _rough_cached(fn)
    except TypeError:  # an unhashable callable
        return _rough(fn)


@functools.lru_cache(maxsize=256)
def _rough_cached(fn) -> bool:
    return _rough(fn)


def _rough(fn) -> bool:
    z = jnp.linspace(-6.0, 6.0, 2401, dtype=jnp.float32)
    dz = float(z[1] - z[0])
    d1 = derivative(fn)
    d2 = derivative(d1)
    p, p1, p2 = (np.asarray(a, dtype=np.float64) for a in jax.jit(lambda x: (fn(x), d1(x), d2(x)))(z))
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(p1)) and np.all(np.isfinite(p2))):
        return True
    jump = np.abs(np.diff(p)) > 2 * dz * np.maximum(np.abs(p1[1:]), np.abs(p1[:-1])) + 1e-3
    jump1 = np.abs(np.diff(p1)) > 2 * dz * np.maximum(np.abs(p2[1:]), np.abs(p2[:-1])) + 1e-3
    return bool(np.any(jump) or np.any(jump1))


def check_smooth(name: str, steps: int, opt: SolverOptions) -> None:
    """Refuse pathwise responses for a rough activation beyond one step (docs/dmft.md, "Rough activations")."""
    if opt.method == "monte_carlo" and not opt.stein and steps >= 2 and opt.rough:
        raise ValueError(
            f"responses='pathwise' differentiates each sampled path, which misses the jumps of phi' (for relu a delta "
            f"function in phi''): with the rough activation {name!r} and steps >= 2 its trajectory is biased (relu, "
            f"one hidden layer, 12 steps: outputs 8.7 SE off). Use responses='stein' (the default for it)")


def check_converged(iterations: object, change: object, tol: float) -> tuple[int, float]:
    """The largest iteration count and change over the replicas; raise :class:`DMFTConvergenceError` above
    ``tol``, or for a non-finite iterate (a diverging trajectory, see :func:`fixed_point`)."""
    it, ch = int(jnp.max(iterations)), float(jnp.max(change))
    if not np.all(np.isfinite(np.asarray(change))):
        raise DMFTConvergenceError(
            f"the DMFT iteration produced non-finite values after {it} iterations, also when restarted one step at a "
            f"time from the start (the causal front): the infinite-width gradient descent itself diverges at this "
            f"learning rate; lower learning_rate (or gamma)")
    if not ch <= tol:
        raise DMFTConvergenceError(
            f"the DMFT fixed point did not converge: relative change {ch:.2e} > tol {tol:.1e} after {it} "
            f"iterations; raise max_iterations, lower damping (e.g. 0.5), use more samples (with responses='stein' "
            f"the regressions need many samples per field), or use a smaller gamma * learning_rate * steps")
    return it, ch


def training_weights(n_train: int, n: int, steps: int, y: Array) -> tuple[Array, Array]:
    """``(y_all, w)`` ``(M,)``, time-major: the targets (0 on test inputs) and ``w = 1/P`` on training inputs, 0 on
    test inputs (they move with the training gradients and contribute none)."""
    dtype = y.dtype
    y_all = jnp.tile(jnp.concatenate([y, jnp.zeros((n - n_train,), dtype)]), steps + 1)
    w = jnp.tile(jnp.concatenate([jnp.full((n_train,), 1.0 / n_train, dtype), jnp.zeros((n - n_train,), dtype)]),
                 steps + 1)
    return y_all, w
