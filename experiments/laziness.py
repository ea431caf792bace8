r"""The laziness diagnostic: how far each trained block of a finite network is from its linearisation.

For a top-level layer ``F_l(h; theta_l)`` with parameters ``theta_l`` (a residual block, a Dense / Conv, a
SelfAttention) and its input ``h_l`` in the network at training time ``t``, the relative distance from the
linearisation in its own parameters about their initial value ``theta_l^0`` (Dey et al. 2025, "Don't be lazy:
CompleteP enables compute-efficient deep transformers", arXiv 2505.01618, Sec. 4: a block is lazy when its change
is its linearisation)

    d_l(t) = || F_l(h_l; theta_l) - F_l(h_l; theta_l^0) - J_l (theta_l - theta_l^0) ||
             / || F_l(h_l; theta_l) - F_l(h_l; theta_l^0) ||,          J_l = dF_l / dtheta_l at theta_l^0,

norms over the examples and every output coordinate; ``nan`` where the block did not move (a frozen group).
``d_l = 0`` exactly for a block linear in its parameters (a Dense, a one-layer residual block ``W phi(h) + b``
of any ``phi``); a block of two or more weight layers has ``d_l -> 0`` in a lazy (NTK-like) limit and
``d_l = O(1)`` where it learns features. CompleteP's claim: with two-layer blocks, ``d_l -> 0`` as ``L -> inf``
for ``alpha = 1/2`` (Depth-muP) and ``d_l = O(1)`` for ``alpha = 1``. Definition and known answers:
docs/laziness.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from experiments import networks, training
from experiments.networks import NetworkParams, check_positive_int
from theory import parameterizations as pz
from theory.layers import Program


def linearisation_distance(net: Program, init_params: NetworkParams, params: NetworkParams, x: Any
                           ) -> tuple[tuple[str, ...], np.ndarray]:
    """``d_l`` (module docstring) of every top-level layer with parameters of the finite network ``net``.

    Args:
        net: the program the parameters belong to (e.g. ``TrainResult.network``).
        init_params, params: ``experiments.networks`` parameters at initialisation and after training.
        x: inputs ``(batch, ..., features)`` on which the blocks are evaluated.
    Returns:
        ``(names, d)``: the layers' names (``net.recorded_names()``) and ``d`` of shape ``(n_layers,)``, in the
        parameters' dtype.
    """
    to_array = jax.tree.map(jnp.asarray, (init_params, params))
    x = jnp.asarray(x)
    trained = networks.blocks(net, to_array[1], x)
    initial = networks.blocks(net, to_array[0], x)
    out = []
    for block, block0 in zip(trained, initial, strict=True):
        def f(p: Any, block: networks.Block = block) -> jax.Array:
            return networks.apply_block(block.layer, p, block.inputs)

        delta = jax.tree.map(lambda a, b: a - b, block.params, block0.params)
        f0, lin = jax.jvp(f, (block0.params,), (delta,))
        change = f(block.params) - f0
        den = jnp.linalg.norm(change.ravel())
        num = jnp.linalg.norm((change - lin).ravel())
        out.append(jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan))
    return tuple(b.name for b in trained), np.asarray(jnp.stack(out))


def laziness(arch: Program, parameterization: str | pz.AbcParameterization | None, data: training.Dataset,
             width: int, *, steps: tuple[int, ...] = (1, 4, 16), config: training.TrainConfig | None = None,
             depth_parameterization: pz.DepthParameterization | None = None, seed: int = 0, probe_size: int = 64,
             dtype: Any = None) -> pd.DataFrame:
    """The laziness diagnostic over training: ``d_l(t)`` of every block after each of ``steps`` training steps.

    Trains ``arch`` as ``experiments.training.train`` does (same seed, so the runs share their initialisation and
    trajectory) and evaluates :func:`linearisation_distance` on the first ``probe_size`` training inputs.
    Returns a long DataFrame: ``step``, ``layer`` (index), ``layer_name``, ``distance``, ``width``, ``depth``
    (``arch.depth`` when defined, else -1), ``diverged`` (the run stopped early; its distance is then at the
    last finite step).
    """
    config = training.TrainConfig() if config is None else config
    width = check_positive_int("width", width)
    probe_size = check_positive_int("probe_size", probe_size)
    steps = tuple(check_positive_int("steps", s) for s in steps)
    if not steps:
        raise ValueError("steps must name at least one training step count, e.g. (1, 4, 16)")
    rows = []
    for t in steps:
        result = training.train(arch, parameterization, data, width, config=dataclasses.replace(config, steps=t),
                                seed=seed, depth_parameterization=depth_parameterization, dtype=dtype)
        x = np.asarray(data.x[:probe_size], np.asarray(result.params[0].W).dtype)
        names, d = linearisation_distance(result.network, result.init_params, result.params, x)
        for i, (name, value) in enumerate(zip(names, d, strict=True)):
            rows.append({"step": t, "layer": i, "layer_name": name, "distance": float(value), "width": width,
                         "depth": int(getattr(arch, "depth", -1)), "diverged": result.diverged_step is not None})
    return pd.DataFrame(rows)


__all__ = ["laziness", "linearisation_distance"]
