r"""``transformer-coord-check-depth``: the depth coordinate check (TP VI; CompleteP, Dey et al. 2025) of pre-LN
transformers under SP, Depth-muP and CompleteP.

``theory.Transformer(L)`` (a Dense embedding, ``L`` layers of ``h <- h + L^-alpha SelfAttention(LN(h))``,
``h <- h + L^-alpha MLP(LN(h))``, a final LayerNorm, the mean over positions, a Dense readout), muP in width
(``theory.parameterize(..., "mup", width, optimizer=...)``, its attention as TP V: hidden q/k/v/o weights, ``1/d``
logits), trained a few full-batch steps on in-context linear regression (``experiments.sequence_tasks.
linear_regression``: 16 sequences of 7 examples and a query, dimension 6) with every parameter trained. Arms:

* ``"sp"``: no branch scaling (``alpha = 0``), one learning rate at every depth;
* ``"depth-mup"``: ``alpha = 1/2`` with ``theory.parameterizations.depth_mup()`` (Adam ``eta / sqrt(L)``, Adam
  epsilon ``eps / sqrt(L)``; SGD ``eta``);
* ``"complete-p"``: ``alpha = 1`` with ``complete_p()`` (Adam ``eta``, epsilon ``eps / L``; SGD ``eta L``);
* ``"mlp depth-mup"`` and ``"mlp branch-only"``: the same transformer with the attention blocks removed
  (``Residual(LN, Dense, act, Dense)`` blocks only) at ``alpha = 1/2`` with and without the depth learning-rate
  factor: the check against the ResNet Depth-muP result of ``coord-check-depth`` / tests/test_depth_rules.py.

Measured per recorded layer (the residual stream after each block, the output) and step: the RMS of the activations
and of their change since init, against depth; fitted slopes (``training.fit_slopes``: power law in ``L`` of the
seeds' means, SE from the fit). Predicted (TP VI, CompleteP): under both depth rules the activations at init and
the change of the last block's stream and of the output are flat in ``L`` (slope 0); without the learning-rate
factor at ``alpha = 1/2`` (Adam) the change grows like ``L^{1/2}``; SP's activations at init grow like ``L^{1/2}``
and its updates faster.

Float64 on the CPU. Derivation and notes: docs/figures/transformer_coord_check_depth.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import theory
from experiments import networks, sequence_tasks, training
from experiments.figures import style
from experiments.registry import Experiment, grid
from theory import layers as nn
from theory import parameterizations as pz

ARMS = {  # arm: (alpha, depth rule, attention)
    "sp": (0.0, None, True),
    "depth-mup": (0.5, pz.depth_mup, True),
    "complete-p": (1.0, pz.complete_p, True),
    "mlp depth-mup": (0.5, pz.depth_mup, False),
    "mlp branch-only": (0.5, None, False),
}
LABELS = {"sp": "SP (no branch scaling)", "depth-mup": r"Depth-$\mu$P ($\alpha = 1/2$)",
          "complete-p": r"CompleteP ($\alpha = 1$)", "mlp depth-mup": r"no attention, Depth-$\mu$P",
          "mlp branch-only": r"no attention, $L^{-1/2}$ branches only"}
KEEP = ("embedding", "middle block", "last attention", "last block", "output")


@dataclass(frozen=True)
class Config:
    """Adam: ``arms`` (keys of ``ARMS``) x ``widths`` x ``depths``; SGD: ``sgd_arms`` x ``sgd_widths`` x ``depths``
    (empty: no SGD); ``seeds`` initialisations each, ``steps`` full-batch steps at ``adam_lr`` / ``sgd_lr`` (Adam
    epsilon ``adam_eps`` before the depth factor), ``frozen`` groups not trained (as ``coord-check-depth``: the
    embedding's and readout's own O(1) updates pass along the skip path and would hide the blocks' depth scaling);
    the task: ``n_samples`` in-context regression sequences of ``n_context`` examples in ``dim`` dimensions.
    ``n_heads`` heads, ReLU MLPs."""

    arms: tuple[str, ...] = tuple(ARMS)
    widths: tuple[int, ...] = (64, 256)
    sgd_arms: tuple[str, ...] = ("sp", "depth-mup", "complete-p")
    sgd_widths: tuple[int, ...] = (64,)
    depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    seeds: int = 3
    steps: int = 3
    adam_lr: float = 0.01
    sgd_lr: float = 0.05
    adam_eps: float = 1e-8
    frozen: tuple[str, ...] = ("input", "output")
    n_samples: int = 16
    n_context: int = 7
    dim: int = 6
    n_heads: int = 2


QUICK = Config(arms=("complete-p", "mlp depth-mup"), widths=(32,), sgd_arms=(), depths=(2, 4, 8), seeds=2, steps=2)


def points(c: Config) -> list[dict]:
    bad = [a for a in (*c.arms, *c.sgd_arms) if a not in ARMS]
    if bad:
        raise ValueError(f"unknown arms {bad}; choose from {list(ARMS)}")
    common = dict(depth=c.depths, seeds=c.seeds, steps=c.steps, adam_lr=c.adam_lr, sgd_lr=c.sgd_lr,
                  adam_eps=c.adam_eps, frozen=",".join(c.frozen), n_samples=c.n_samples, n_context=c.n_context,
                  dim=c.dim, n_heads=c.n_heads)
    out = grid(arm=c.arms, optimizer="adam", width=c.widths, **common)
    if c.sgd_arms:
        out += grid(arm=c.sgd_arms, optimizer="sgd", width=c.sgd_widths, **common)
    return out


def architecture(arm: str, depth: int, n_heads: int = 2) -> theory.layers.Program:
    """The arm's program at ``depth`` layers (before ``theory.parameterize``)."""
    alpha, _, attention = ARMS[arm]
    if attention:
        return theory.Transformer(depth, n_heads=n_heads, depth_exponent=alpha)
    # Attention removed: the transformer's MLP blocks only. The branch multiplier L^-alpha comes from the depth
    # rule for a generic program (parameterize scales top-level Residual blocks); without a rule it is set here.
    scale = 1.0 if ARMS[arm][1] is not None else depth**-alpha
    block = nn.Residual(nn.LayerNorm(), nn.Dense(), nn.Elementwise("relu"), nn.Dense(), scale=scale)
    names = ("embedding", *(f"block {i + 1} mlp" for i in range(depth)), "output")
    return nn.Serial((nn.Dense(), *(block,) * depth, nn.LayerNorm(), nn.GlobalAvgPool(), nn.Dense()), names=names)


def keep_indices(arm: str, depth: int) -> list[int]:
    """Indices of ``KEEP``'s layers among the recorded ones (``last attention``: -1 without attention)."""
    if ARMS[arm][2]:
        return [0, depth if depth > 1 else 2, 2 * depth - 1, 2 * depth, 2 * depth + 1]
    return [0, max(depth // 2, 1), -1, depth, depth + 1]


def _rms(layers: list, init: list | None = None) -> jax.Array:
    out = []
    for i, a in enumerate(layers):
        d = a if init is None else a - init[i]
        out.append(jnp.sqrt(jnp.mean(d * d, axis=tuple(range(1, d.ndim)))))
    return jnp.concatenate(out)


def _scale_tree(factors):
    return optax.GradientTransformation(lambda p: optax.EmptyState(),
                                        lambda u, s, p=None: (jax.tree.map(lambda a, f: a * f, u, factors), s))


def trainer(net, x, y, *, optimizer: str, learning_rate: float, steps: int, rule=None, adam_eps: float = 1e-8,
            frozen: tuple[str, ...] = ()):
    """A jitted ``params -> (rms, delta_rms, loss)`` that trains ``net`` (a parameterized program) ``steps``
    full-batch steps on MSE ``1/2 mean |f - y|^2`` with each parameter's learning-rate factor
    (``training.learning_rates``, 0 for ``frozen`` groups) and the depth rule's Adam-epsilon factors
    (``training.depth_factors``); the
    arrays are ``(steps + 1, n_recorded)`` (row 0: init) and ``(steps + 1,)``."""

    def loss_fn(p):
        f, _ = networks.forward(net, p, x)
        return 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))

    @jax.jit
    def go(p):
        lr = training.learning_rates(net, p, frozen)
        eps, _ = training.depth_factors(net, p, rule, optimizer)
        if optimizer == "adam":
            base = training.scale_by_adam_eps(jax.tree.map(lambda e: adam_eps * e, eps))
        else:
            base = optax.identity()
        opt = optax.chain(base, _scale_tree(lr), optax.scale(-learning_rate))
        _, init = networks.forward(net, p, x)

        def step(carry, _):
            p, state = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, state = opt.update(g, state, p)
            p = optax.apply_updates(p, u)
            _, rec = networks.forward(net, p, x)
            return (p, state), (_rms(rec), _rms(rec, init), loss)

        (p_end, _), (rms, delta, loss) = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        rms0 = _rms(init)
        return (jnp.concatenate([rms0[None], rms]), jnp.concatenate([jnp.zeros_like(rms0)[None], delta]),
                jnp.concatenate([loss, loss_fn(p_end)[None]]))

    return go


def compute(point: dict) -> dict:
    arm, depth, width, optimizer = point["arm"], point["depth"], point["width"], point["optimizer"]
    _, make_rule, _ = ARMS[arm]
    rule = make_rule() if make_rule is not None else None
    task = sequence_tasks.linear_regression(point["n_samples"], point["n_context"], dim=point["dim"], seed=0)
    x, y = jnp.asarray(task.x), jnp.asarray(task.y)
    net = theory.parameterize(architecture(arm, depth, point["n_heads"]), "mup", width, optimizer=optimizer,
                              depth_rule=rule)
    lr = point["adam_lr"] if optimizer == "adam" else point["sgd_lr"]
    keep = keep_indices(arm, depth)
    rows = {"rms": [], "delta_rms": [], "loss": []}
    init = jax.jit(lambda k: networks.init(net, width, k, features=x.shape[-1], n_out=1))
    go = trainer(net, x, y, optimizer=optimizer, learning_rate=lr, steps=point["steps"], rule=rule,
                 adam_eps=point["adam_eps"], frozen=tuple(g for g in point["frozen"].split(",") if g))
    for seed in range(point["seeds"]):
        params = init(jax.random.fold_in(jax.random.key(seed), width))
        rms, delta, loss = (np.asarray(a) for a in go(params))
        for name, a in (("rms", rms), ("delta_rms", delta)):
            rows[name].append(np.stack([a[:, i] if i >= 0 else np.full(a.shape[0], np.nan) for i in keep], axis=1))
        rows["loss"].append(loss.tolist())
    return {"layer_names": list(KEEP), **{k: np.asarray(v).tolist() for k, v in rows.items()}}


def long_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, optimizer, width, depth, seed, step, layer)."""
    out = []
    for rec in df.itertuples(index=False):
        for seed, (rms, delta) in enumerate(zip(rec.rms, rec.delta_rms, strict=True)):
            for step, (r_row, d_row) in enumerate(zip(rms, delta, strict=True)):
                for name, r, d in zip(rec.layer_names, r_row, d_row, strict=True):
                    out.append({"arm": rec.arm, "optimizer": rec.optimizer, "width": rec.width, "depth": rec.depth,
                                "seed": seed, "step": step, "layer_name": name, "rms": r, "delta_rms": d})
    return pd.DataFrame(out)


def slopes(data: pd.DataFrame, value: str = "delta_rms", step: int | None = None) -> pd.DataFrame:
    """Fitted exponents of ``value`` against depth per (arm, optimizer, width, layer) at ``step`` (default: the
    last; ``value="rms"`` at step 0 gives the activations at init)."""
    step = int(data.step.max()) if step is None else step
    part = data[(data.step == step) & np.isfinite(data[value])]
    return training.fit_slopes(part, "depth", value, by=("arm", "optimizer", "width", "layer_name"))


def plot(df: pd.DataFrame, config: Config, outdir: Path) -> list[Path]:
    data = long_frame(df)
    last = int(data.step.max())
    upd = slopes(data)
    init = slopes(data, "rms", 0)
    _print(upd, f"RMS change after step {last}")
    _print(init, "RMS of activations at init")
    optimizers = list(dict.fromkeys(data.optimizer))
    fig, axes = style.subplots(len(optimizers), 3, panel_size=(4.4, 3.5))
    axes = np.atleast_2d(axes)
    for r, opt in enumerate(optimizers):
        width = int(data[data.optimizer == opt].width.max())  # each optimizer's widest networks
        for c, (layer, value, step, table) in enumerate((("last block", "rms", 0, init),
                                                          ("last block", "delta_rms", last, upd),
                                                          ("output", "delta_rms", last, upd))):
            ax = axes[r, c]
            for i, arm in enumerate(a for a in ARMS if a in set(data.arm)):
                part = data[(data.arm == arm) & (data.optimizer == opt) & (data.width == width)
                            & (data.layer_name == layer) & (data.step == step)]
                stats = part.groupby("depth")[value].agg(["mean", "std", "count"]).dropna()
                stats = stats[stats["mean"] > 0]
                if stats.empty:
                    continue
                row = table[(table.arm == arm) & (table.optimizer == opt) & (table.width == width)
                            & (table.layer_name == layer)]
                label = LABELS[arm] + (f": {row.slope.iloc[0]:+.2f} ± {row.slope_se.iloc[0]:.2f}" if len(row) else "")
                err = (stats["std"] / np.sqrt(stats["count"])).to_numpy()
                style.errorbar_loglog(ax, stats.index, stats["mean"], err, label=label, index=i,
                                      linestyle="--" if arm.startswith("mlp") else "-")
            ax.set_xscale("log", base=2)
            low, high = ax.get_ylim()  # at least two decades: a flat curve must look flat
            span = math.log10(high / low)
            if span < 2:
                pad = 10 ** ((2 - span) / 2)
                ax.set_ylim(low / pad, high * pad)
            what = "activations at init" if value == "rms" else f"change after step {last}"
            ax.set(xlabel="depth $L$ (layers)", title=f"{opt}, width {width}: {layer}, {what}")
            ax.legend(fontsize=6)
        axes[r, 0].set_ylabel("RMS")
    return style.save(fig, outdir, "transformer_coord_check_depth")


def _print(table: pd.DataFrame, what: str) -> None:
    print(f"transformer-coord-check-depth: fitted slopes against depth of the {what} (± SE)")
    for rec in table.itertuples(index=False):
        print(f"  {rec.arm:>16} {rec.optimizer:>4} width {rec.width:>4} {rec.layer_name:>14}: "
              f"{rec.slope:+.3f} ± {rec.slope_se:.3f}")


EXPERIMENT = Experiment(
    name="transformer-coord-check-depth",
    paper="Yang, Yu, Zhu & Hayou 2023 (TP VI); Dey et al. 2025 (CompleteP); Yang et al. 2022 (TP V) for attention",
    summary="pre-LN transformers: activation and update sizes against depth under SP, Depth-muP and CompleteP",
    config=Config(), quick_config=QUICK, points=points, compute=compute, plot=plot,
)

__all__ = ["ARMS", "EXPERIMENT", "Config", "architecture", "compute", "long_frame", "slopes", "trainer"]
