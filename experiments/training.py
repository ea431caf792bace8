r"""Small training loops for parameterization checks (muP / Depth-muP coordinate checks, learning-rate transfer).

An architecture (``theory.MLP`` / ``theory.ResNet``), an abc-parameterization (``theory.parameterizations``: per layer
group a multiplier ``n^-a``, an init std ``sigma n^-b``, a learning rate ``eta n^-c``) and, for ResNets, an optional
depth rule (TP VI: block learning rates ``L^-gamma`` Adam, ``L^(alpha - gamma)`` SGD) fix a finite network of width
``n`` and how it is trained. Effective weights are ``W = multiplier * w``, ``w ~ N(0, init_std^2)``; a ResNet's stem,
blocks and readout are the input, hidden and output groups. ``sigma`` is ``w_std / sqrt(d)`` (input; ``stem_w_std``
for a ResNet), ``w_std`` (hidden), ``w_std`` or ``readout_w_std`` (output), ``b_std`` (biases, input exponents).
Under "standard"/"ntk" the network at init is the one of ``experiments.networks`` (same function for the same draws).

Losses: ``"mse"`` = ``mean_batch 1/2 ||f - y||^2``; ``"cross_entropy"`` = mean softmax cross-entropy with integer
labels. After every step the RMS over batch and units of each layer's activations on a fixed probe batch, and of their
change since initialisation, is recorded. A step after which the probe loss or any layer's RMS is non-finite or above
``explode_at`` ends training; :class:`TrainResult` records that step and the first layer that exploded (or "loss").

Derivation and notes: docs/training_loop.md (the networks layer by layer, the optimiser setup, divergence).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from experiments import networks
from experiments.networks import check_positive_int
from theory import MLP
from theory import parameterizations as pz
from theory.layers import Program

Array = jax.Array
LOSSES = ("mse", "cross_entropy")
FREEZABLE = ("input", "hidden", "output", "bias")


# -- data -----------------------------------------------------------------------------------------------------
class Dataset(NamedTuple):
    """Inputs ``x`` ``(N, d)`` and targets ``y``: ``(N, n_out)`` floats (regression / one-hot) or ``(N,)`` ints."""

    x: np.ndarray
    y: np.ndarray


def teacher(n_samples: int = 256, features: int = 16, *, seed: int = 0, hidden: int = 8, scale: float = 1.0
            ) -> Dataset:
    """A synthetic regression task: ``x ~ N(0, I_d)``, ``y = scale * sum_k v_k tanh(u_k . x / sqrt(d))`` with a
    fixed random two-layer teacher of ``hidden`` units (``u, v ~ N(0, 1)``, ``v`` scaled by ``1/sqrt(hidden)``), so
    that ``y`` has variance O(``scale^2``). A ``scale`` well above the network's output at init makes the first
    error signal ``f_0 - y`` nearly the same for every initialisation (less seed noise in coordinate checks).
    Deterministic in ``seed`` (NumPy's PCG64)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    n_samples = check_positive_int("n_samples", n_samples)
    features = check_positive_int("features", features)
    hidden = check_positive_int("hidden", hidden)
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((features, hidden))
    v = rng.standard_normal((hidden, 1)) / math.sqrt(hidden)
    x = rng.standard_normal((n_samples, features))
    y = scale * (np.tanh(x @ u / math.sqrt(features)) @ v)
    return Dataset(x, y)


def digits(*, one_hot: bool = False, n_samples: int | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes; no download): pixels standardised per feature
    (constant pixels left at 0) so that ``|x|^2 / d`` is about 1. Labels as ints, or one-hot floats for MSE.
    ``n_samples`` keeps the first ones."""
    from sklearn.datasets import load_digits  # imported here: only this data set needs scikit-learn

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=float)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    y = np.asarray(bunch.target, dtype=np.int64)
    if n_samples is not None:
        n_samples = check_positive_int("n_samples", n_samples)
        x, y = x[:n_samples], y[:n_samples]
    return Dataset(x, np.eye(10)[y] if one_hot else y)


# -- the finite network ---------------------------------------------------------------------------------------
def scaled_network(arch: Program, parameterization: str | pz.AbcParameterization | None, width: int, *,
                   optimizer: str = "sgd", depth_parameterization: pz.DepthParameterization | None = None) -> Program:
    """The program ``arch`` under an abc-parameterization at ``width`` (``theory.parameterize``); ``None`` takes
    the member named like the architecture's ``weight_scaling`` ("ntk" or "standard")."""
    if not isinstance(arch, Program):
        raise ValueError(f"expected a layer program (theory.MLP, theory.ResNet, theory.serial(...)), got {arch!r}")
    if isinstance(arch, MLP) and arch.depth < 1:
        raise ValueError("training an MLP needs at least one hidden layer (depth >= 1); depth 0 has no width")
    if parameterization is None:
        parameterization = getattr(arch, "weight_scaling", "ntk")
    return pz.parameterize(arch, parameterization, check_positive_int("width", width), optimizer=optimizer,
                           depth_rule=depth_parameterization)


def forward(net: Program, params: Any, x: Array) -> tuple[Array, list[Array]]:
    """Outputs ``(batch, n_out)`` and the recorded layers' outputs, stacked per segment of the program
    (``experiments.networks.forward``)."""
    return networks.forward(net, jax.tree.map(jnp.asarray, params), jnp.asarray(x))


def _layer_rms(layers: list[Array], init: list[Array] | None = None) -> Array:
    """RMS over batch, positions and units of each recorded layer (of its change from ``init`` if given),
    ``(n_recorded,)``; ``layers`` are stacked per segment."""
    out = []
    for i, a in enumerate(layers):
        d = a if init is None else a - init[i]
        out.append(jnp.sqrt(jnp.mean(d * d, axis=tuple(range(1, d.ndim)))))
    return jnp.concatenate(out)


# -- training -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """How to train: ``optimizer`` ("sgd" or "adam"), base ``learning_rate`` eta (each group's is ``eta * lr_scale``),
    ``steps``, ``batch_size`` (``None``: full batch), ``loss`` ("mse" or "cross_entropy"), ``frozen`` groups (any of
    "input", "hidden", "output", "bias"), ``probe_size`` (the first examples, on which layers are measured),
    ``explode_at`` (an RMS or loss above it is a divergence) and ``require_stable`` (refuse a parameterization
    TP IV classifies as unstable, naming the failing condition). ``adam_eps`` is Adam's epsilon (optax's default)
    and ``weight_decay`` the decoupled weight decay ``lambda`` (every step ``w <- w - eta_w lambda_w w``, AdamW's
    form, for both optimizers); a depth rule multiplies both per parameter (``theory.parameterizations.
    depth_scales``: ``eps L^-alpha``, ``lambda`` times the inverse of the learning-rate factor)."""

    optimizer: str = "sgd"
    learning_rate: float = 0.1
    steps: int = 10
    batch_size: int | None = None
    loss: str = "mse"
    frozen: tuple[str, ...] = ()
    probe_size: int = 64
    explode_at: float = 1e8
    require_stable: bool = False
    adam_eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        pz._check_optimizer(self.optimizer)
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning_rate must be a finite positive number, got {lr!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        object.__setattr__(self, "frozen", tuple(self.frozen))
        bad = [g for g in self.frozen if g not in FREEZABLE]
        if bad:
            raise ValueError(f"cannot freeze {bad}: frozen groups are any of {FREEZABLE}")
        check_positive_int("probe_size", self.probe_size)
        if not (isinstance(self.explode_at, numbers.Real) and self.explode_at > 0):
            raise ValueError(f"explode_at must be a positive number, got {self.explode_at!r}")
        for name in ("adam_eps", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value)
                                                                                     and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` measured. Arrays have one row per step ``0 .. steps_done`` (row 0 is the init):
    ``loss`` (probe loss), ``rms`` and ``delta_rms`` ``(rows, n_layers)``. ``diverged_step`` / ``diverged_layer``
    are ``None`` unless training stopped (then the last row is the step where it exploded). ``init_params`` and
    ``params`` (after training; after the last step before a divergence) are ``experiments.networks``
    parameters with NumPy leaves; ``network`` is the trained program (``theory.parameterize``'s)."""

    layer_names: tuple[str, ...]
    layer_groups: tuple[str, ...]
    loss: np.ndarray
    rms: np.ndarray
    delta_rms: np.ndarray
    diverged_step: int | None
    diverged_layer: str | None
    init_params: Any
    params: Any
    network: Program

    @property
    def scales(self) -> Program:
        """The trained program (its layers carry each weight's multiplier, initial scale and learning rate)."""
        return self.network

    @property
    def steps_done(self) -> int:
        return self.loss.shape[0] - 1

    def frame(self, **columns: Any) -> pd.DataFrame:
        """Long format: one row per (step, layer) with ``layer`` (index), ``layer_name``, ``group``, ``step``,
        ``rms``, ``delta_rms``, ``loss``, ``diverged_step`` (-1 if none), plus the constant ``columns``."""
        rows, n_layers = self.rms.shape
        step = np.repeat(np.arange(rows), n_layers)
        layer = np.tile(np.arange(n_layers), rows)
        df = pd.DataFrame({
            "layer": layer, "layer_name": np.array(self.layer_names)[layer],
            "group": np.array(self.layer_groups)[layer], "step": step,
            "rms": self.rms.ravel(), "delta_rms": self.delta_rms.ravel(), "loss": self.loss[step],
            "diverged_step": -1 if self.diverged_step is None else self.diverged_step,
        })
        for name, value in columns.items():
            df.insert(0, name, value)
        return df


def learning_rates(net: Program, params: Any, frozen: tuple[str, ...] = ()) -> Any:
    """Each parameter's factor on the base learning rate (0 for a frozen group), shaped like ``params``."""
    def factors(layer: Any, group: str) -> tuple[float, float]:
        s = layer.weight_scaling
        w = 0.0 if group in frozen else s.w_lr
        b = 0.0 if (group in frozen or "bias" in frozen) else s.b_lr
        return w, b

    return networks.weight_tree(net, params, factors)


def depth_factors(net: Program, params: Any, rule: pz.DepthParameterization | None, optimizer: str
                  ) -> tuple[Any, Any]:
    """Per-parameter factors on Adam's epsilon and on the weight decay from a depth rule (all 1 without one),
    shaped like ``params``: ``theory.parameterizations.depth_scales`` of ``net`` (weights and biases of a layer
    share its factors)."""
    if rule is None:
        ones = networks.weight_tree(net, params, lambda layer, group: (1.0, 1.0))
        return ones, ones
    scales = pz.depth_scales(net, rule, optimizer)
    trees = []
    for field in ("eps", "weight_decay"):
        visit = iter(scales)  # weight_tree visits the weight layers in program order, as depth_scales lists them

        def fn(layer: Any, group: str, visit: Any = visit, field: str = field) -> tuple[float, float]:
            value = getattr(next(visit), field)
            return value, value

        trees.append(networks.weight_tree(net, params, fn))
    return trees[0], trees[1]


def scale_by_adam_eps(eps: Any, b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` (bias-corrected moments, update ``m / (sqrt(v) + eps)``) with a per-parameter
    ``eps`` tree."""
    def init(params: Any) -> Any:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (jnp.zeros([], jnp.int32), zeros, zeros)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        count, mu, nu = state
        count = count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, updates)
        c1, c2 = 1 - b1 ** count, 1 - b2 ** count
        out = jax.tree.map(lambda m, v, e: (m / c1) / (jnp.sqrt(v / c2) + e), mu, nu, eps)
        return out, (count, mu, nu)

    return optax.GradientTransformation(init, update)


def _decay(decay: Any) -> optax.GradientTransformation:
    """Add ``decay * w`` to every update (before the learning rate: the step is ``-eta_w (u + lambda_w w)``)."""
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return jax.tree.map(lambda u, d, w: u + d * w, updates, decay, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _scale_updates(factors: Any) -> optax.GradientTransformation:
    """Multiply every update by its parameter's learning-rate factor (``optax.adam(eta)`` then ``* lr`` is
    ``optax.adam(eta * lr)``; likewise for SGD)."""
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _loss_fn(kind: str):
    if kind == "mse":
        return lambda f, y: 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))
    return lambda f, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(f, y))


def train(arch: Program, parameterization: str | pz.AbcParameterization | None, data: Dataset, width: int, *,
          config: TrainConfig | None = None, seed: int = 0,
          depth_parameterization: pz.DepthParameterization | None = None, dtype: Any = None) -> TrainResult:
    """Train the width-``width`` network of ``arch`` under ``parameterization`` on ``data``; measure every step.

    The network is ``experiments.networks``' network of ``theory.parameterize(arch, parameterization, width)``
    (``None``: the abc member named like ``arch.weight_scaling``). Deterministic given ``seed`` (init from
    ``fold_in(fold_in(key(seed), 0), width)``, minibatches from ``fold_in(key(seed), 1)``).
    ``n_out`` is ``y.shape[1]`` for float targets and ``max(y) + 1`` for integer labels (cross-entropy).
    Raises ``ValueError`` for bad input; a diverging run is not an error (see :class:`TrainResult`).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {config!r}")
    x, y = _check_data(data, config.loss)
    n_out = int(y.max()) + 1 if config.loss == "cross_entropy" else y.shape[1]
    net = scaled_network(arch, parameterization, width, optimizer=config.optimizer,
                         depth_parameterization=depth_parameterization)
    if config.require_stable:
        depth = 1 + pz.weight_groups(net).count("hidden")
        name = getattr(arch, "weight_scaling", "ntk") if parameterization is None else parameterization
        pz.check_stable(pz.get(name, config.optimizer), depth)
    dtype = dtype or jnp.result_type(float)
    x = jnp.asarray(x, dtype)
    y = jnp.asarray(y, jnp.int32 if config.loss == "cross_entropy" else dtype)
    key = jax.random.key(seed)
    # The width enters the init key: JAX draws a larger array as an extension of a smaller one's stream, which would
    # correlate networks of different widths with the same seed (and a coordinate check's errors across widths).
    params = networks.init(net, width, jax.random.fold_in(jax.random.fold_in(key, 0), width),
                           features=x.shape[1] if x.ndim == 2 else tuple(x.shape[1:]), n_out=n_out, dtype=dtype)
    # The learning rate is traced, not static: a learning-rate sweep compiles once per network shape.
    eta = jnp.asarray(config.learning_rate, dtype)
    static = dataclasses.replace(config, learning_rate=1.0)
    loss, rms, delta, alive, final = _run(net, static, params, x, y, jax.random.fold_in(key, 1), eta,
                                          depth_parameterization)
    loss, rms, delta, alive = (np.asarray(a) for a in (loss, rms, delta, alive))
    names = net.recorded_names()
    diverged_step = diverged_layer = None
    if not alive[-1]:
        step = int(np.argmin(alive))
        bad = ~np.isfinite(rms[step]) | (rms[step] > config.explode_at)
        diverged_layer = names[int(np.argmax(bad))] if bad.any() else "loss"
        diverged_step = step
        loss, rms, delta = loss[: step + 1], rms[: step + 1], delta[: step + 1]
    return TrainResult(names, networks.recorded_groups(net), loss, rms, delta, diverged_step, diverged_layer,
                       jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, final), net)


@functools.partial(jax.jit, static_argnums=(0, 1, 7))  # one compilation per network shape and training config
def _run(net: Program, config: TrainConfig, params: Any, x: Array, y: Array, batch_key: Array, eta: Array,
         rule: pz.DepthParameterization | None = None):
    probe_x, probe_y = x[: config.probe_size], y[: config.probe_size]
    lr = learning_rates(net, params, config.frozen)
    if rule is None and config.weight_decay == 0 and config.adam_eps == 1e-8:
        make = optax.sgd if config.optimizer == "sgd" else optax.adam
        opt = optax.chain(make(eta), _scale_updates(lr))
    else:
        eps, decay = depth_factors(net, params, rule, config.optimizer)
        parts = [] if config.optimizer == "sgd" else [scale_by_adam_eps(jax.tree.map(lambda e: config.adam_eps * e,
                                                                                  eps))]
        if config.weight_decay:
            parts.append(_decay(jax.tree.map(lambda d: config.weight_decay * d, decay)))
        opt = optax.chain(*parts, optax.scale(-eta), _scale_updates(lr))
    loss_of = _loss_fn(config.loss)

    def objective(p: Any, xb: Array, yb: Array) -> Array:
        return loss_of(networks.forward(net, p, xb)[0], yb)

    out0, init_layers = networks.forward(net, params, probe_x)
    rms0 = _layer_rms(init_layers)
    loss0 = loss_of(out0, probe_y)

    def step(carry: tuple, t: Array) -> tuple[tuple, tuple]:
        p, opt_state, alive = carry
        if config.batch_size is None or config.batch_size >= x.shape[0]:
            xb, yb = x, y
        else:
            idx = jax.random.choice(jax.random.fold_in(batch_key, t), x.shape[0], (config.batch_size,),
                                    replace=False)
            xb, yb = x[idx], y[idx]
        grads = jax.grad(objective)(p, xb, yb)
        updates, new_state = opt.update(grads, opt_state, p)
        new_p = optax.apply_updates(p, updates)
        out, layers = networks.forward(net, new_p, probe_x)
        loss = loss_of(out, probe_y)
        rms = _layer_rms(layers)
        delta = _layer_rms(layers, init_layers)
        ok = jnp.isfinite(loss) & (jnp.abs(loss) <= config.explode_at) & jnp.all(jnp.isfinite(rms)) \
            & jnp.all(rms <= config.explode_at)
        # Once diverged, later updates are not applied: the recorded rows after it are dropped by train().
        now = alive & ok
        keep = jax.tree.map(lambda new, old: jnp.where(now, new, old), (new_p, new_state), (p, opt_state))
        return (keep[0], keep[1], now), (loss, rms, delta, now)

    alive0 = jnp.isfinite(loss0) & jnp.all(jnp.isfinite(rms0)) & jnp.all(rms0 <= config.explode_at)
    (final, _, _), (losses, rmss, deltas, alive) = jax.lax.scan(step, (params, opt.init(params), alive0),
                                                                jnp.arange(config.steps))
    cat = jnp.concatenate
    return (cat([loss0[None], losses]), cat([rms0[None], rmss]), cat([jnp.zeros_like(rms0)[None], deltas]),
            cat([alive0[None], alive]), final)


def _check_data(data: object, loss: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple) and len(data) == 2):
        raise ValueError(f"data must be a Dataset(x, y) (e.g. training.teacher() or training.digits()), got "
                         f"{type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"data.x must have shape (batch, features) (or (batch, length, channels) for a sequence "
                         f"model, (batch, ..., channels) for a CNN), got {x.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"data.y has {y.shape[0]} rows but data.x has {x.shape[0]}")
    if loss == "cross_entropy":
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError(f"cross_entropy needs integer class labels y of shape (batch,), got {y.dtype} "
                             f"{y.shape}; use digits(one_hot=False)")
    elif y.ndim != 2 or not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"mse needs float targets y of shape (batch, n_out), got {y.dtype} {y.shape}; "
                         "use digits(one_hot=True) for classification with MSE")
    if not (np.all(np.isfinite(x)) and (loss == "cross_entropy" or np.all(np.isfinite(y)))):
        raise ValueError("data contains NaN or inf")
    return x, y


# -- coordinate checks ----------------------------------------------------------------------------------------
def coord_check(arch: Program, parameterization: str | pz.AbcParameterization | None = "mup", *,
                widths: tuple[int, ...] = (64, 128, 256, 512, 1024), depths: tuple[int, ...] | None = None,
                steps: int = 3, seeds: int = 1, data: Dataset | None = None, config: TrainConfig | None = None,
                depth_parameterization: pz.DepthParameterization | None = None, dtype: Any = None) -> pd.DataFrame:
    """muP's coordinate check (TP V, Sec. 7 / Fig. 5) in one call: train ``steps`` steps at every width (and depth,
    when ``depths`` is given: ``arch`` with its ``depth`` replaced) for ``seeds`` seeds and return the long
    DataFrame of :meth:`TrainResult.frame` with columns ``width``, ``depth``, ``seed``, ``parameterization``.

    Under muP every layer's ``rms`` and ``delta_rms`` are flat in width at every step; under SP (SGD, fixed
    learning rate) the first step's change grows like ``n^e`` with ``e`` from
    :meth:`~theory.parameterizations.AbcParameterization.first_step_exponents` (``+1`` at the output).
    ``data`` defaults to :func:`teacher` (64 examples, 16 features); ``config`` to ``TrainConfig(steps=steps)``.
    """
    data = teacher(64, 16) if data is None else data
    config = TrainConfig(steps=steps) if config is None else dataclasses.replace(config, steps=steps)
    seeds = check_positive_int("seeds", seeds)
    widths = tuple(check_positive_int("width", w) for w in widths)
    archs = [arch] if depths is None else [dataclasses.replace(arch, depth=int(d)) for d in depths]
    name = parameterization if isinstance(parameterization, str) else (
        getattr(arch, "weight_scaling", "ntk") if parameterization is None else parameterization.name)
    frames = []
    for a in archs:
        for width in widths:
            for seed in range(seeds):
                result = train(a, parameterization, data, width, config=config, seed=seed,
                               depth_parameterization=depth_parameterization, dtype=dtype)
                frames.append(result.frame(width=width, depth=a.depth, seed=seed, parameterization=name))
    return pd.concat(frames, ignore_index=True)


def fit_slopes(df: pd.DataFrame, axis: str = "width", value: str = "delta_rms",
               by: tuple[str, ...] = ("parameterization", "layer_name", "step")) -> pd.DataFrame:
    """Power-law exponent of ``value`` against ``axis`` (``width`` or ``depth``) for every group of ``by``.

    Per ``axis`` value the seeds' mean and its standard error are fitted with ``experiments.scaling.fit_power_law``
    (weighted by the SEs with the scale re-estimated from the residuals, ``absolute_sigma=False``, so that
    finite-size curvature widens the error; unweighted with one seed). Rows with a non-finite or non-positive
    ``value`` (diverged runs, the zero change at step 0) are left out, and a group needs 3 ``axis`` values (a group
    with fewer is left out). Returns one row per group: ``slope``, ``slope_se``, ``n_points``.

    Raises ``ValueError`` if ``df`` has fewer than 3 ``axis`` values with a finite positive ``value`` (e.g.
    ``coord_check`` run at two widths), or if no group has 3: a slope needs three points.
    """
    from experiments.scaling import fit_power_law  # only here: training itself does not fit

    rows = []
    ok = df[np.isfinite(df[value]) & (df[value] > 0)]
    present = sorted(ok[axis].unique().tolist())
    if len(present) < 3:
        raise ValueError(f"fit_slopes needs at least 3 values of {axis!r} with a finite, positive {value!r} to fit a "
                         f"slope, got {len(present)}: {present}; run more {axis}s")
    for key, part in ok.groupby(list(by), sort=False):
        stats = part.groupby(axis)[value].agg(["mean", "std", "count"])
        if len(stats) < 3:
            continue
        err = stats["std"].to_numpy() / np.sqrt(stats["count"].to_numpy())
        use_err = bool(np.all(stats["count"] > 1) and np.all(err > 0))
        fit = fit_power_law(stats.index.to_numpy(float), stats["mean"].to_numpy(),
                            err if use_err else None, absolute_sigma=False)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                     "slope": fit.exponent, "slope_se": fit.exponent_stderr, "n_points": fit.n_points})
    if not rows:
        raise ValueError(f"fit_slopes: no group of {list(by)} has 3 values of {axis!r} with a finite, positive "
                         f"{value!r} (diverged runs and step 0 are left out)")
    return pd.DataFrame(rows, columns=[*by, "slope", "slope_se", "n_points"])
