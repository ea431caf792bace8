r"""Synthetic sequence tasks for small transformers, generated offline as pure functions of a seed.

Inputs are ``(N, length, channels)`` float arrays (the layout of ``theory.Transformer`` and
``experiments.networks``), targets one per sequence (``theory.Transformer`` pools over positions before its readout).

* :func:`markov_language`: sequences of a random Markov chain over ``vocab`` tokens (rows of the transition matrix
  drawn from a symmetric Dirichlet, :func:`markov_chain`), started from its stationary distribution; each token
  one-hot, plus one channel that flags the last position. The target is the next token (an integer label). By the
  Markov property the Bayes-optimal predictor is the transition row of the last token, and since the last token is
  stationary, its expected cross-entropy is the chain's entropy rate
  ``H = - sum_i pi_i sum_j P_ij log P_ij`` (Cover & Thomas, Thm 4.2.4): :func:`entropy_rate`.
* :func:`linear_regression`: in-context linear regression (Garg, Tsipras, Liang & Valiant 2022, "What can transformers
  learn in context?"), one token per example as in von Oswald et al. 2023: ``n_context`` tokens ``(x_i, y_i, 0)`` and
  a query token ``(x_q, 0, 1)``, with ``x ~ N(0, I_d)``, a fresh ``w ~ N(0, I_d / d)`` per sequence (so that
  ``Var y = 1``) and ``y = w . x + noise * xi``. The target is the query's ``w . x_q`` (its noise-free value). The
  Bayes-optimal predictor is the posterior mean, ridge regression with ``lambda = noise^2 d``
  (:func:`posterior_mean`); with ``noise = 0`` its expected squared error is ``max(0, d - n_context) / d`` (the prior
  variance of ``w`` left in the null space of the context, in closed form: ``bayes_loss``).

Every draw comes from NumPy's PCG64 seeded by ``seed`` (and ``chain_seed`` for the chain itself), float64.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from experiments import training


@dataclass(frozen=True)
class SequenceTask:
    """A generated task. ``x``: inputs ``(N, length, channels)`` float64. ``y``: targets, ``(N,)`` int64 labels
    (classification) or ``(N, 1)`` float64 (regression). ``bayes_loss``: the expected loss of the Bayes-optimal
    predictor in closed form (cross-entropy in nats; squared error ``E (y - f)^2``, twice
    ``experiments.training``'s ``"mse"`` convention ``1/2 (y - f)^2``), NaN where no closed form exists.
    ``bayes_prediction``: that predictor on these sequences, ``(N, vocab)`` next-token probabilities or ``(N, 1)``."""

    x: np.ndarray
    y: np.ndarray
    bayes_loss: float
    bayes_prediction: np.ndarray

    @property
    def dataset(self) -> training.Dataset:
        """``training.Dataset(x, y)``."""
        return training.Dataset(self.x, self.y)


def _int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _seed(name: str, value: object) -> int:
    return _int(name, value, 0)


def markov_chain(vocab: int = 8, *, concentration: float = 0.5, seed: int = 0) -> np.ndarray:
    """A random transition matrix ``P`` ``(vocab, vocab)``: rows i.i.d. symmetric Dirichlet(``concentration``)
    (small concentrations: peaked rows, a low entropy rate). ``P[i, j]`` = Prob(next = j | current = i)."""
    vocab = _int("vocab", vocab, 2)
    if isinstance(concentration, bool) or not isinstance(concentration, numbers.Real) or not (
            math.isfinite(concentration) and concentration > 0):
        raise ValueError(f"concentration must be a finite positive number, got {concentration!r}")
    rng = np.random.default_rng(_seed("seed", seed))
    p = rng.dirichlet(np.full(vocab, float(concentration)), size=vocab)
    # Dirichlet draws with tiny concentrations can underflow to exact zeros; keep every row a distribution.
    return p / p.sum(axis=1, keepdims=True)


def _check_chain(p: object) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] < 2:
        raise ValueError(f"a transition matrix must be square (vocab, vocab) with vocab >= 2, got shape {p.shape}")
    if not (np.all(np.isfinite(p)) and np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-10)):
        raise ValueError("a transition matrix needs non-negative finite entries and rows that sum to 1")
    return p


def stationary_distribution(p: np.ndarray) -> np.ndarray:
    """The stationary distribution ``pi`` (``pi P = pi``, ``sum pi = 1``) of the transition matrix ``p``, ``(vocab,)``:
    the solution of ``[(P^T - I); 1^T] pi = [0; 1]`` (unique for an irreducible chain; Dirichlet rows with positive
    entries are). Raises ``ValueError`` if that system is rank-deficient (a reducible chain with several stationary
    distributions) or its solution does not satisfy ``pi P = pi`` to 1e-9."""
    p = _check_chain(p)
    v = p.shape[0]
    a = np.vstack([p.T - np.eye(v), np.ones((1, v))])
    b = np.concatenate([np.zeros(v), [1.0]])
    pi, _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
    if rank < v or not (np.all(pi > -1e-12) and np.allclose(pi @ p, pi, atol=1e-9)):
        raise ValueError("the chain has no unique stationary distribution (it is reducible); draw another chain")
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def entropy_rate(p: np.ndarray) -> float:
    """The entropy rate ``H = - sum_i pi_i sum_j P_ij log P_ij`` in nats of the stationary chain ``p``: the expected
    cross-entropy of the Bayes-optimal next-token predictor (``0 log 0 = 0``)."""
    p = _check_chain(p)
    pi = stationary_distribution(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(-(pi @ plogp.sum(axis=1)))


def markov_language(n: int, length: int, *, vocab: int = 8, concentration: float = 0.5, chain_seed: int = 0,
                    seed: int = 0) -> SequenceTask:
    """``n`` sequences of ``length`` tokens of the chain ``markov_chain(vocab, concentration, seed=chain_seed)``,
    started from its stationary distribution; the target is the token after the last.

    Returns:
        :class:`SequenceTask` with ``x`` ``(n, length, vocab + 1)`` (one-hot tokens; the last channel is 1 at the
        last position, 0 elsewhere), ``y`` ``(n,)`` int64 next tokens, ``bayes_loss`` the entropy rate (nats) and
        ``bayes_prediction`` ``(n, vocab)`` the transition rows of the last tokens.
    """
    n, length = _int("n", n), _int("length", length)
    p = markov_chain(vocab, concentration=concentration, seed=chain_seed)
    pi = stationary_distribution(p)
    rng = np.random.default_rng(_seed("seed", seed))
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0

    def draw(cdf: np.ndarray) -> np.ndarray:  # one categorical draw per row of cumulative probabilities
        return np.minimum((rng.random(cdf.shape[0])[:, None] >= cdf).sum(axis=1), p.shape[0] - 1)

    tokens = np.empty((n, length + 1), dtype=np.int64)
    tokens[:, 0] = draw(np.broadcast_to(np.cumsum(pi), (n, p.shape[0])))
    for t in range(length):
        tokens[:, t + 1] = draw(cum[tokens[:, t]])
    x = np.zeros((n, length, p.shape[0] + 1))
    np.put_along_axis(x, tokens[:, :length, None], 1.0, axis=2)
    x[:, -1, -1] = 1.0
    return SequenceTask(x, tokens[:, length], entropy_rate(p), p[tokens[:, length - 1]])


def posterior_mean(x_context: np.ndarray, y_context: np.ndarray, x_query: np.ndarray, noise: float) -> np.ndarray:
    """The Bayes-optimal prediction ``E[w . x_q | context]`` for ``w ~ N(0, I_d / d)`` and Gaussian noise of std
    ``noise``: ridge regression ``x_q . (X^T X + noise^2 d I)^-1 X^T y`` (``noise = 0``: the minimum-norm
    interpolant ``x_q . X^+ y``). Shapes ``(N, n, d)``, ``(N, n)``, ``(N, d)`` -> ``(N,)``."""
    xc, yc, xq = (np.asarray(a, float) for a in (x_context, y_context, x_query))
    if noise == 0:
        w = np.einsum("bdn,bn->bd", np.linalg.pinv(xc), yc)
    else:
        d = xc.shape[-1]
        gram = np.einsum("bnd,bne->bde", xc, xc) + noise**2 * d * np.eye(d)
        w = np.linalg.solve(gram, np.einsum("bnd,bn->bd", xc, yc)[..., None])[..., 0]
    return np.einsum("bd,bd->b", w, xq)


def linear_regression(n: int, n_context: int, *, dim: int = 8, noise: float = 0.0, seed: int = 0) -> SequenceTask:
    """``n`` in-context linear-regression sequences (module docstring): ``n_context`` examples and one query.

    Returns:
        :class:`SequenceTask` with ``x`` ``(n, n_context + 1, dim + 2)`` (tokens ``(x_i, y_i, 0)``, the query
        ``(x_q, 0, 1)`` last), ``y`` ``(n, 1)`` the query's ``w . x_q``, ``bayes_prediction`` ``(n, 1)`` the
        posterior mean, and ``bayes_loss`` ``max(0, dim - n_context) / dim`` for ``noise = 0`` (NaN otherwise: the
        expectation of ``noise^2 + tr (X^T X / noise^2 + dim I)^-1`` over the Wishart ``X^T X`` has no closed form at
        finite ``n_context``; measure it with ``bayes_prediction``).
    """
    n, n_context, dim = _int("n", n), _int("n_context", n_context, 0), _int("dim", dim)
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(_seed("seed", seed))
    w = rng.standard_normal((n, dim)) / math.sqrt(dim)
    xs = rng.standard_normal((n, n_context + 1, dim))
    ys = np.einsum("bnd,bd->bn", xs, w)
    ys[:, :n_context] += noise * rng.standard_normal((n, n_context))
    x = np.zeros((n, n_context + 1, dim + 2))
    x[:, :, :dim] = xs
    x[:, :n_context, dim] = ys[:, :n_context]
    x[:, n_context, dim + 1] = 1.0
    if n_context:
        pred = posterior_mean(xs[:, :n_context], ys[:, :n_context], xs[:, n_context], float(noise))
    else:
        pred = np.zeros(n)
    bayes = max(0, dim - n_context) / dim if noise == 0 else math.nan
    return SequenceTask(x, ys[:, n_context:], bayes, pred[:, None])
