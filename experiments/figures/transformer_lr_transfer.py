r"""``transformer-lr-transfer``: the optimal Adam learning rate of pre-LN transformers against depth and width.

Yang, Yu, Zhu & Hayou 2023 (TP VI, Fig. 1), Bordelon et al. 2023 and Dey et al. 2025 (CompleteP, Fig. 1) across
depth; Yang et al. 2022 (TP V) across width. ``theory.Transformer(L, n_heads)`` (pre-LN: a Dense embedding, ``L``
layers of ``h += L^-alpha SelfAttention(LN h)``, ``h += L^-alpha MLP(LN h)``, LN, mean over positions, readout) is
trained by Adam on the next token of a random Markov-chain language (``experiments.sequence_tasks.markov_language``;
cross-entropy, minibatches of ``batch_size``, ``steps`` steps), and the final training loss on all ``n_samples``
sequences is measured on the grid ``2^lr_log2_min .. 2^lr_log2_max`` (diverged runs score ``inf``).

Depth arms (:data:`DEPTH_ARMS`, branch exponent ``alpha`` and Adam learning-rate exponent ``gamma`` of the parameters
inside the blocks, ``eta L^-gamma``; Adam's epsilon ``eps L^-alpha`` there, ``theory.parameterizations.depth_scales``):
"sp" (no depth scaling), "depth-mup" (``alpha = gamma = 1/2``, TP VI), "complete-p" (``alpha = 1``, ``gamma = 0``)
and "1/sqrt(L) only" (``alpha = 1/2``, ``gamma = 0``: TP VI predicts ``eta* ~ L^-1/2``), at width ``depth_width``.
Width arms: the parameterizations of ``theory.parameterize`` at depth ``width_depth``.

The optimum is a parabola vertex in ``(log2 eta, log loss)`` with a bootstrap SE over seeds
(``experiments.transfer.optimum_over_seeds``), its drift the power law ``eta* ~ L^p`` (``n^p``) fitted by
``experiments.scaling.fit_power_law``; transfer means ``p = 0``.

:func:`final_losses` trains every (seed, learning rate) of a grid in one compiled, vectorised call (``vmap`` over the
learning rates, ``lax.map`` over seeds): the same networks, minibatches and Adam as ``experiments.training.train``
(tested against ``experiments.transfer.final_losses``), for any input shape (``(N, length, channels)`` sequences).

Derivation and notes: docs/figures/transformer_lr_transfer.md.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import theory
from experiments import networks, sequence_tasks, training, transfer
from experiments.figures import style
from experiments.registry import Experiment, Point
from experiments.scaling import PowerLawFit
from theory import parameterizations as pz
from theory.layers import Program

STEM = "transformer_lr_transfer"
DEPTH_ARMS = {"sp": (0.0, 0.0), "depth-mup": (0.5, 0.5), "complete-p": (1.0, 0.0), "1/sqrt(L) only": (0.5, 0.0)}
LABELS = {"sp": "no depth scaling (SP)", "depth-mup": r"Depth-$\mu$P", "complete-p": "CompleteP",
          "1/sqrt(L) only": r"$1/\sqrt{L}$ branches, $\eta$ not scaled", "ntk": "NTK param. (Adam)",
          "standard": "SP", "mup": r"$\mu$P"}


BLOCKS_ONLY = ", blocks only"
"""Suffix of an arm that trains only the residual blocks (embedding / stem and readout frozen at their init)."""


UNSCALED = ("sp", "1/sqrt(L) only")
"""Depth arms without Adam's depth factor on the learning rate (``gamma = 0`` with ``alpha < 1``)."""


def depth_rule(arm: str) -> pz.DepthParameterization:
    """The depth rule of a depth arm (:data:`DEPTH_ARMS`, optionally with the :data:`BLOCKS_ONLY` suffix):
    ``theory.parameterizations.depth_mup()``, ``complete_p()``, or a ``DepthParameterization(alpha, gamma)`` for
    "sp" and "1/sqrt(L) only"."""
    arm = arm.removesuffix(BLOCKS_ONLY)
    if arm == "depth-mup":
        return pz.depth_mup()
    if arm == "complete-p":
        return pz.complete_p()
    if arm not in DEPTH_ARMS:
        raise ValueError(f"unknown depth arm {arm!r}; choose among {list(DEPTH_ARMS)}")
    return pz.DepthParameterization(*DEPTH_ARMS[arm], name=arm)


def frozen_groups(arm: str) -> tuple[str, ...]:
    """The weight groups an arm does not train: ``("input", "output")`` (stem / embedding and readout) for a
    :data:`BLOCKS_ONLY` arm, none otherwise."""
    depth_rule(arm)
    return ("input", "output") if arm.endswith(BLOCKS_ONLY) else ()


# -- the vectorised learning-rate sweep -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Static:
    steps: int
    batch_size: int | None
    loss: str
    explode_at: float


def final_losses(arch: Program, parameterization: str | pz.AbcParameterization | None, data: Any, width: int,
                 learning_rates: np.ndarray | tuple[float, ...], *, seeds: tuple[int, ...] = (0,), steps: int = 40,
                 batch_size: int | None = 32, loss: str = "cross_entropy",
                 depth_parameterization: pz.DepthParameterization | None = None, adam_eps: float = 1e-8,
                 frozen: tuple[str, ...] = (), explode_at: float = 1e8, dtype: Any = None) -> np.ndarray:
    """Training loss on all of ``data`` after ``steps`` Adam steps, per seed and learning rate, ``(seeds, n_lr)``.

    The network of every seed is ``experiments.training.train``'s (same init key, same minibatches, the same Adam:
    bias-corrected moments, ``eta * lr_factor * m / (sqrt(v) + eps)``). ``parameterization=None`` trains ``arch`` as
    built (neural-tangents' NTK parameterization; any layer ``experiments.networks`` runs, ``SelfAttention``
    included) and applies ``depth_parameterization``'s learning-rate factors from
    ``theory.parameterizations.depth_scales``; otherwise ``theory.parameterize(arch, parameterization, width,
    optimizer="adam", depth_rule=...)`` sets every factor. Adam's epsilon is ``adam_eps`` times the rule's factor.
    A run whose minibatch loss becomes non-finite or exceeds ``explode_at`` stops and scores ``inf``, as does a
    final loss that is not finite or exceeds ``explode_at`` (``transfer.final_losses`` also stops on exploding
    activations). Adam's epsilon and ``frozen`` are as in ``training.TrainConfig``.

    Args:
        arch: a layer program (``theory.MLP``, ``theory.ResNet``, ``theory.Transformer``); its ``depth_exponent``
            must equal the rule's ``alpha`` (the architecture owns the branch multipliers).
        data: ``(x, y)``: ``x`` ``(N, ..., features)``; ``y`` ``(N,)`` int labels (cross-entropy) or ``(N, n_out)``.
        learning_rates: the base learning rates ``eta``, ``(n_lr,)``.
    Returns:
        ``(len(seeds), n_lr)`` float64 array of final losses (computed in ``dtype``, default JAX's float).
    """
    lrs = np.asarray(learning_rates, dtype=float)
    if lrs.ndim != 1 or lrs.size < 1 or not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"learning_rates must be a non-empty 1-d array of positive numbers, got {learning_rates!r}")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty tuple of integers >= 0, got {seeds!r}")
    seeds = tuple(int(s) for s in seeds)
    frozen = tuple(frozen)
    if any(g not in training.FREEZABLE for g in frozen):
        raise ValueError(f"cannot freeze {frozen}: frozen groups are any of {training.FREEZABLE}")
    steps = int(networks.check_positive_int("steps", steps))
    if batch_size is not None:
        batch_size = networks.check_positive_int("batch_size", batch_size)
    if loss not in training.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {training.LOSSES}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim < 2 or y.shape[:1] != x.shape[:1] or not np.all(np.isfinite(x)):
        raise ValueError(f"data must be (x, y) with x (N, ..., features) finite and y of N rows, got {x.shape}, "
                         f"{y.shape}")
    if loss == "cross_entropy" and (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError(f"cross_entropy needs integer labels y of shape (N,), got {y.dtype} {y.shape}")
    if loss == "mse" and y.ndim != 2:
        raise ValueError(f"mse needs float targets y of shape (N, n_out), got {y.shape}")
    rule = depth_parameterization
    if rule is not None and abs(getattr(arch, "depth_exponent", rule.alpha) - rule.alpha) > 1e-12:
        raise ValueError(f"the depth rule has alpha = {rule.alpha:g} but the architecture's depth_exponent is "
                         f"{arch.depth_exponent:g}; build it with depth_exponent={rule.alpha:g}")
    net = arch if parameterization is None else training.scaled_network(
        arch, parameterization, width, optimizer="adam", depth_parameterization=depth_parameterization)
    dtype = dtype or jnp.result_type(float)
    n_out = int(y.max()) + 1 if loss == "cross_entropy" else y.shape[1]
    inits = [networks.init(net, width, jax.random.fold_in(jax.random.fold_in(jax.random.key(s), 0), width),
                           features=x.shape[-1] if x.ndim == 2 else x.shape[1:], n_out=n_out, dtype=dtype)
             for s in seeds]
    params = jax.tree.map(lambda *a: jnp.stack(a), *inits)
    factors = training.learning_rates(net, inits[0], frozen)
    ones = networks.weight_tree(net, inits[0], lambda layer, group: (1.0, 1.0))
    eps = jax.tree.map(lambda o: adam_eps * o, ones)
    if depth_parameterization is not None:
        scales = pz.depth_scales(arch, depth_parameterization, "adam")  # L from arch: a transformer's layers

        def tree(field: str) -> Any:
            visit = iter(scales)
            return networks.weight_tree(net, inits[0], lambda layer, group: (getattr(next(visit), field),) * 2)

        eps = jax.tree.map(lambda e, f: e * f, eps, tree("eps"))
        if parameterization is None:  # parameterize already put the rule's factor into the learning rates
            factors = jax.tree.map(lambda a, f: a * f, factors, tree("lr"))
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 1) for s in seeds])
    static = _Static(steps, batch_size, loss, float(explode_at))
    out = _sweep(net, static, params, factors, eps, jnp.asarray(x, dtype),
                 jnp.asarray(y, jnp.int32 if loss == "cross_entropy" else dtype), keys, jnp.asarray(lrs, dtype))
    out = np.asarray(out, dtype=float)
    return np.where(np.isfinite(out), out, np.inf)


def _loss_fn(kind: str):
    if kind == "mse":
        return lambda f, y: 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))
    return lambda f, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(f, y))


@functools.partial(jax.jit, static_argnums=(0, 1))  # one compilation per network shape and budget
def _sweep(net: Program, static: _Static, params: Any, factors: Any, eps: Any, x: jax.Array, y: jax.Array,
           keys: jax.Array, etas: jax.Array) -> jax.Array:
    loss_of = _loss_fn(static.loss)
    n = x.shape[0]
    b1, b2 = 0.9, 0.999

    def objective(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return loss_of(networks.apply(net, p, xb), yb)

    def one(p0: Any, key: jax.Array, eta: jax.Array) -> jax.Array:
        def step(carry: tuple, t: jax.Array) -> tuple[tuple, None]:
            p, m, v, alive = carry
            if static.batch_size is None or static.batch_size >= n:
                xb, yb = x, y
            else:
                idx = jax.random.choice(jax.random.fold_in(key, t), n, (static.batch_size,), replace=False)
                xb, yb = x[idx], y[idx]
            value, g = jax.value_and_grad(objective)(p, xb, yb)
            m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
            v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
            c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
            new = jax.tree.map(lambda w, a, b, f, e: w - eta * f * (a / c1) / (jnp.sqrt(b / c2) + e), p, m, v,
                               factors, eps)
            # the step's loss is of the parameters before it (as training's probe loss one step later)
            alive = alive & jnp.isfinite(value) & (jnp.abs(value) <= static.explode_at)
            p = jax.tree.map(lambda a, b: jnp.where(alive, a, b), new, p)
            return (p, m, v, alive), None

        zeros = jax.tree.map(jnp.zeros_like, p0)
        (p, _, _, alive), _ = jax.lax.scan(step, (p0, zeros, zeros, jnp.asarray(True)), jnp.arange(static.steps))
        final = loss_of(networks.apply(net, p, x), y)
        return jnp.where(alive & jnp.isfinite(final) & (jnp.abs(final) <= static.explode_at), final, jnp.inf)

    def per_seed(args: tuple) -> jax.Array:
        p0, key = args
        return jax.vmap(lambda eta: one(p0, key, eta))(etas)

    return jax.lax.map(per_seed, (params, keys))


# -- the experiment -------------------------------------------------------------------------------------------------
SWEEPS = ("resnet-depth", "depth", "width")


@dataclass(frozen=True)
class Config:
    """The sweep; every (sweep, arm, size) trains ``seeds`` seeds at the learning rates ``2^k``,
    ``k = lr_log2_min, lr_log2_min + lr_log2_step, .., lr_log2_max`` (``resnet_lr_log2_min/max`` for the ResNets).

    * ``depths`` x ``depth_arms`` (:data:`DEPTH_ARMS`), and ``long_depths`` x ``long_depth_arms``: transformers of
      ``L`` layers at width ``depth_width``.
    * ``widths`` x ``parameterizations``: transformers of ``width_depth`` layers under Depth-muP's depth rule and
      each width parameterization ("ntk": the program as built; others through ``theory.parameterize``).
    * ``resnet_depths`` x ``resnet_arms``: ReLU ResNets of one-layer blocks (``lr-transfer``'s, muP in width) at
      width ``resnet_width`` on scikit-learn's digits (``resnet_steps`` steps of ``resnet_batch_size``); an arm
      ending in :data:`BLOCKS_ONLY` trains the blocks only.

    The arms without Adam's depth factor ("sp", "1/sqrt(L) only"), whose optimum falls with depth, start their grid
    at ``unscaled_lr_log2_min``; the width sweep has its own grid (``width_lr_log2_*``), the ResNets
    ``resnet_lr_log2_min/max`` (blocks-only arms ``blocks_only_lr_log2_min/max``) with ``lr_log2_step`` and
    ``resnet_seeds`` seeds. The transformers (``n_heads`` heads, relu MLPs) learn the next token of
    ``markov_language(n_samples, length, vocab=vocab)`` for ``steps`` Adam steps of ``batch_size``."""

    depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    depth_arms: tuple[str, ...] = ("sp", "depth-mup", "complete-p", "1/sqrt(L) only")
    long_depths: tuple[int, ...] = ()
    long_depth_arms: tuple[str, ...] = ("depth-mup", "1/sqrt(L) only")
    depth_width: int = 64
    widths: tuple[int, ...] = (64, 128, 256)
    parameterizations: tuple[str, ...] = ("standard", "mup")
    width_depth: int = 2
    resnet_depths: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128)
    resnet_arms: tuple[str, ...] = ("1/sqrt(L) only", "depth-mup", "1/sqrt(L) only" + BLOCKS_ONLY)
    resnet_width: int = 64
    seeds: int = 8
    resnet_seeds: int = 6
    lr_log2_min: float = -8.0
    unscaled_lr_log2_min: float = -11.0
    lr_log2_max: float = -2.5
    lr_log2_step: float = 0.5
    width_lr_log2_min: float = -13.0
    width_lr_log2_max: float = 3.0
    width_lr_log2_step: float = 1.0
    resnet_lr_log2_min: float = -8.0
    resnet_lr_log2_max: float = -1.0
    blocks_only_lr_log2_min: float = -5.0
    blocks_only_lr_log2_max: float = 3.0
    steps: int = 40
    batch_size: int = 16
    n_samples: int = 256
    length: int = 4
    vocab: int = 8
    n_heads: int = 2
    resnet_steps: int = 40
    resnet_batch_size: int = 32

    def __post_init__(self) -> None:
        if not (self.depths or self.widths or self.resnet_depths):
            raise ValueError("nothing to sweep: give depths, widths or resnet_depths")
        for arms in (self.depth_arms, self.long_depth_arms, self.resnet_arms):
            unknown = [a for a in arms if a.removesuffix(BLOCKS_ONLY) not in DEPTH_ARMS]
            if unknown:
                raise ValueError(f"unknown depth arms {unknown}; choose among {list(DEPTH_ARMS)}")
        for p in self.parameterizations:
            if p != "ntk":
                pz.get(p, "adam")
        for lo, hi, step in ((self.lr_log2_min, self.lr_log2_max, self.lr_log2_step),
                             (self.unscaled_lr_log2_min, self.lr_log2_max, self.lr_log2_step),
                             (self.resnet_lr_log2_min, self.resnet_lr_log2_max, self.lr_log2_step),
                             (self.blocks_only_lr_log2_min, self.blocks_only_lr_log2_max, self.lr_log2_step),
                             (self.width_lr_log2_min, self.width_lr_log2_max, self.width_lr_log2_step)):
            if not (step > 0 and hi > lo) or len(_grid(lo, hi, step)) < 5:
                raise ValueError("each learning-rate grid needs lr_log2_step > 0, max > min and >= 5 points")
        for name in ("seeds", "steps", "batch_size", "n_samples", "length", "n_heads", "depth_width", "width_depth",
                     "resnet_width", "resnet_seeds", "resnet_steps", "resnet_batch_size"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab < 2:
            raise ValueError(f"vocab must be >= 2, got {self.vocab}")


def _grid(lo: float, hi: float, step: float) -> np.ndarray:
    n = math.floor((hi - lo) / step + 1e-9) + 1
    return lo + step * np.arange(n)


def points(c: Config) -> list[Point]:
    seq = {"seeds": c.seeds, "steps": c.steps, "batch_size": c.batch_size, "n_samples": c.n_samples,
           "length": c.length, "vocab": c.vocab, "n_heads": c.n_heads}
    grid = {"lr_log2_min": c.lr_log2_min, "lr_log2_max": c.lr_log2_max, "lr_log2_step": c.lr_log2_step}
    width_grid = {"lr_log2_min": c.width_lr_log2_min, "lr_log2_max": c.width_lr_log2_max,
                  "lr_log2_step": c.width_lr_log2_step}
    res = {"lr_log2_min": c.resnet_lr_log2_min, "lr_log2_max": c.resnet_lr_log2_max,
           "lr_log2_step": c.lr_log2_step, "seeds": c.resnet_seeds, "steps": c.resnet_steps,
           "batch_size": c.resnet_batch_size}
    blocks = {"lr_log2_min": c.blocks_only_lr_log2_min, "lr_log2_max": c.blocks_only_lr_log2_max}
    out = [{"sweep": "resnet-depth", "arm": a, "size": L, "width": c.resnet_width, "depth": L,
            **res, **(blocks if a.endswith(BLOCKS_ONLY) else {})}
           for a in c.resnet_arms for L in c.resnet_depths]
    depth = [(a, L) for a in c.depth_arms for L in c.depths]
    depth += [(a, L) for a in c.long_depth_arms for L in c.long_depths if (a, L) not in depth]
    out += [{"sweep": "depth", "arm": a, "size": L, "width": c.depth_width, "depth": L, **seq,
             **grid, **({"lr_log2_min": c.unscaled_lr_log2_min} if a in UNSCALED else {})} for a, L in depth]
    out += [{"sweep": "width", "arm": p, "size": n, "width": n, "depth": c.width_depth, **seq, **width_grid}
            for p in c.parameterizations for n in c.widths]
    return out


def compute(point: Point) -> dict:
    """The final training loss of every seed at every learning rate of the grid for one network shape."""
    log2 = _grid(point["lr_log2_min"], point["lr_log2_max"], point["lr_log2_step"])
    seeds = tuple(range(point["seeds"]))
    common = {"seeds": seeds, "steps": point["steps"], "batch_size": point["batch_size"]}
    if point["sweep"] == "resnet-depth":
        rule = depth_rule(point["arm"])
        arch = theory.ResNet(point["depth"], "relu", w_std=math.sqrt(2), depth_exponent=rule.alpha)
        loss = final_losses(arch, "mup", training.digits(), point["width"], 2.0**log2,
                            depth_parameterization=rule, frozen=frozen_groups(point["arm"]), **common)
    else:
        task = sequence_tasks.markov_language(point["n_samples"], point["length"], vocab=point["vocab"], seed=0)
        rule = depth_rule("depth-mup" if point["sweep"] == "width" else point["arm"])
        arch = theory.Transformer(point["depth"], point["n_heads"], depth_exponent=rule.alpha)
        parameterization = None if point["sweep"] == "depth" or point["arm"] == "ntk" else point["arm"]
        frozen = () if point["sweep"] == "width" else frozen_groups(point["arm"])
        loss = final_losses(arch, parameterization, (task.x, task.y), point["width"], 2.0**log2,
                            depth_parameterization=rule, frozen=frozen, **common)
    return {"log2_lr": log2.tolist(), "loss": [[float(v) if np.isfinite(v) else math.inf for v in row]
                                                for row in loss]}


def _matrix(row: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(log2 lrs, losses (seeds, n_lr))`` of one record, NaN or None read back as ``inf``."""
    log2 = np.asarray(row["log2_lr"], float)
    losses = np.array([[math.inf if v is None else float(v) for v in r] for r in row["loss"]], float)
    return log2, np.where(np.isnan(losses), np.inf, losses)


def optima(df: pd.DataFrame, *, n_bootstrap: int = 1000) -> pd.DataFrame:
    """One row per (sweep, arm, size): the optimum ``log2_lr_opt`` ± ``log2_lr_se`` (``transfer.optimum_over_seeds``:
    parabola vertex of the seed-mean curve, bootstrap over seeds), ``loss_opt``, ``on_edge``, ``seeds`` and the
    number of learning rates at which any seed diverged."""
    rows = []
    for _, row in df.iterrows():
        log2, losses = _matrix(row)
        opt = transfer.optimum_over_seeds(log2, losses, n_bootstrap=n_bootstrap, seed=int(row["size"]))
        rows.append({"sweep": row["sweep"], "arm": row["arm"], "size": int(row["size"]), "log2_lr_opt": opt.log2_lr,
                     "log2_lr_se": opt.log2_lr_se, "loss_opt": opt.loss, "on_edge": opt.on_edge,
                     "seeds": losses.shape[0], "diverged_lrs": int(np.sum(~np.isfinite(losses).all(axis=0)))})
    return pd.DataFrame(rows)


def drift(opt: pd.DataFrame, grid_step: float = 0.5) -> dict[tuple[str, str], PowerLawFit]:
    """Per (sweep, arm) the power law ``eta* = C size^p`` fitted to the optima not on the grid's edge
    (:func:`experiments.transfer.drift_fits`: weighted by the bootstrap SEs floored at a tenth of the grid step, scale
    from the residuals, 95% confidence interval)."""
    return transfer.drift_fits(opt[~opt["on_edge"].astype(bool)], grid_step)


TITLES = {"resnet-depth": "ResNet (digits)", "depth": "transformer", "width": "transformer"}


def _label(arm: str) -> str:
    base = arm.removesuffix(BLOCKS_ONLY)
    return LABELS.get(base, base) + (", blocks only" if arm.endswith(BLOCKS_ONLY) else "")


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    """Per sweep (a row): the seed-mean loss against the learning rate for each arm (one curve per size, its
    optimum ± bootstrap SE marked), then the optima against size with the fitted power laws."""
    opt = optima(df)
    fits = drift(opt, config.lr_log2_step)  # the SE floor: a tenth of the finer grid's step
    for (sweep, arm), fit in fits.items():
        print(f"transformer-lr-transfer: {sweep:12s} {arm:16s} optimal lr ~ size^({fit.exponent:+.3f} ± "
              f"{fit.exponent_stderr:.3f}), 95% CI [{fit.ci_low:+.3f}, {fit.ci_high:+.3f}]", file=sys.stderr)
    sweeps = [(s, list(dict.fromkeys(df[df.sweep == s].arm))) for s in SWEEPS if (df.sweep == s).any()]
    ncols = 1 + max(len(arms) for _, arms in sweeps)
    fig, axes = style.subplots(len(sweeps), ncols, panel_size=(3.6, 3.0))
    axes = np.asarray(axes).reshape(len(sweeps), ncols)
    for r, (sweep, arms) in enumerate(sweeps):
        symbol = "n" if sweep == "width" else "L"
        for c, arm in enumerate(arms):
            ax = axes[r, c]
            part = df[(df.sweep == sweep) & (df.arm == arm)].sort_values("size")
            for i, (_, row) in enumerate(part.iterrows()):
                log2, losses = _matrix(row)
                mean = losses.mean(axis=0)
                ok = np.isfinite(mean)
                ax.plot(2.0 ** log2[ok], mean[ok], color=style.color(i), linewidth=1.1,
                        label=f"{symbol} = {row['size']}")
                o = opt[(opt.sweep == sweep) & (opt.arm == arm) & (opt["size"] == row["size"])].iloc[0]
                if np.isfinite(o.log2_lr_opt):
                    s = 0.0 if not np.isfinite(o.log2_lr_se) else o.log2_lr_se
                    u = o.log2_lr_opt
                    ax.errorbar([2.0**u], [o.loss_opt], xerr=[[2.0**u - 2.0 ** (u - s)], [2.0 ** (u + s) - 2.0**u]],
                                color=style.color(i), marker=style.marker(i), markersize=4, markeredgecolor="k",
                                markeredgewidth=0.5, capsize=2, zorder=5, linestyle="none")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(r"learning rate $\eta$ (Adam)")
            ax.set_ylabel("training loss after the budget")
            # the top edge: a little above the least-trained loss (the smallest learning rate) of any size
            first = [_matrix(r_)[1].mean(0)[0] for _, r_ in part.iterrows()]
            first = [v for v in first if np.isfinite(v)]
            lowest = [np.nanmin(np.where(np.isfinite(m), m, np.nan)) for m in
                      (_matrix(r_)[1].mean(0) for _, r_ in part.iterrows())]
            if first:
                ax.set_ylim(0.97 * min(lowest), 1.08 * max(first))
            title = f"{_label(arm)}: {TITLES[sweep]}"
            fit = fits.get((sweep, arm))
            if fit is not None:
                title += f"\n$\\eta^* \\propto {symbol}^{{{fit.exponent:+.2f} \\pm {fit.exponent_stderr:.2f}}}$"
            ax.set_title(title, fontsize=8.5)
            ax.legend(fontsize=6.5, loc="lower left")
        for c in range(len(arms), ncols - 1):
            axes[r, c].set_visible(False)
        ax = axes[r, ncols - 1]
        for i, arm in enumerate(arms):
            part = opt[(opt.sweep == sweep) & (opt.arm == arm) & np.isfinite(opt["log2_lr_opt"])].sort_values("size")
            if part.empty:
                continue
            fit = fits.get((sweep, arm))
            shift = 1 + 0.04 * (i - (len(arms) - 1) / 2)
            se = part["log2_lr_se"].fillna(0).to_numpy()
            y = 2.0 ** part["log2_lr_opt"].to_numpy()
            ax.errorbar(part["size"] * shift, y, yerr=[y * (1 - 2.0**-se), y * (2.0**se - 1)], color=style.color(i),
                        marker=style.marker(i), linestyle="none", markersize=4,
                        label=_label(arm) + (f": {fit.exponent:+.2f} ± {fit.exponent_stderr:.2f}"
                                                      if fit else ""))
            if fit is not None:
                style.plot_fit(ax, fit, part["size"], index=i)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("width $n$" if sweep == "width" else "depth $L$")
        ax.set_ylabel(r"optimal learning rate $\eta^*$")
        ax.set_title(f"{TITLES[sweep]}: optimum ± bootstrap SE", fontsize=8.5)
        ax.legend(fontsize=6, loc="best")
    return style.save(fig, outdir, STEM)


EXPERIMENT = Experiment(
    name="transformer-lr-transfer",
    paper="Yang, Yu, Zhu & Hayou 2023 (TP VI), Fig. 1; Dey et al. 2025 (CompleteP), Fig. 1; Yang et al. 2022 (TP V)",
    summary="optimal Adam learning rate of pre-LN transformers on a random Markov-chain language against depth (SP, "
            "Depth-muP, CompleteP, 1/sqrt(L) branches without the lr factor) and width, and of ReLU ResNets for the "
            "1/sqrt(L)-without-lr-factor drift (fitted exponents ± bootstrap SE)",
    config=Config(),
    # quick: three compilations (each network shape is one), the 1/sqrt(L)-only arm at depths 1-4
    quick_config=Config(depths=(1, 2, 4), depth_arms=("1/sqrt(L) only",), long_depths=(), widths=(), resnet_depths=(),
                        seeds=2, lr_log2_min=-9.0, unscaled_lr_log2_min=-9.0, lr_log2_max=-3.0, lr_log2_step=1.0,
                        steps=10, batch_size=16, n_samples=64),
    points=points,
    compute=compute,
    plot=plot,
    dtype="float32",
)
