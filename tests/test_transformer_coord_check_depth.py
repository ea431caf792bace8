"""``transformer-coord-check-depth``: its training loop against ``experiments.training``, the arms' programs, and
the required check: with the attention removed, the transformer's Depth-muP coordinate check reproduces the ResNet
one of tests/test_depth_rules.py (Adam, one step, embedding and readout frozen: update slopes ~0 in depth with the
``eta / sqrt(L)`` rule, ~+1/2 without it; the ResNet's measured 0.035 +- 0.006 / -0.03 +- 0.04 and 0.535 / 0.463)."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import theory
from experiments import sequence_tasks, training
from experiments.figures import transformer_coord_check_depth as tcc
from theory import layers as nn
from theory import parameterizations as pz


def test_points_and_programs():
    pts = tcc.points(tcc.Config())
    assert len(pts) == 5 * 2 * 5 + 3 * 1 * 5
    assert {p["optimizer"] for p in pts} == {"adam", "sgd"}
    with pytest.raises(ValueError, match="unknown arms"):
        tcc.points(tcc.Config(arms=("muP",)))
    for arm, (alpha, rule, attention) in tcc.ARMS.items():
        net = tcc.architecture(arm, 4)
        attends = any(isinstance(layer, nn.SelfAttention) for block in net.layers if isinstance(block, nn.Residual)
                      for layer in block.branch)
        assert attends == attention
        assert pz.residual_depth(net) == 4
        assert len(net.recorded_names()) == net.n_recorded
        scaled = theory.parameterize(net, "mup", 32, optimizer="adam", depth_rule=rule() if rule else None)
        scales = {round(b.scale, 12) for b in scaled.layers if isinstance(b, nn.Residual)}
        assert scales == {round(4.0**-alpha, 12)}  # L^-alpha on every branch, from the architecture or the rule
        names = [net.recorded_names()[i] for i in tcc.keep_indices(arm, 4) if i >= 0]
        assert names[-1] == "output" and names[0] == "embedding"
        assert names[-2] == "block 4 mlp"


def test_trainer_equals_experiments_training():
    """The experiment's loop (per-parameter learning rates, depth-rule Adam epsilons, frozen groups) against
    ``training.train`` on a ResNet with vector inputs: Adam with Depth-muP, two steps, to 1e-12."""
    data = training.teacher(16, 5, seed=2)
    arch = theory.ResNet(3, "relu", depth_exponent=0.5)
    rule = pz.depth_mup()
    config = training.TrainConfig(optimizer="adam", learning_rate=0.03, steps=2, frozen=("input", "output"),
                                  adam_eps=1e-3)
    ref = training.train(arch, "mup", data, 16, config=config, seed=3, depth_parameterization=rule)
    net = ref.network
    go = tcc.trainer(net, jnp.asarray(data.x), jnp.asarray(data.y), optimizer="adam", learning_rate=0.03, steps=2,
                     rule=rule, adam_eps=1e-3, frozen=("input", "output"))
    rms, delta, loss = go(jax.tree.map(jnp.asarray, ref.init_params))
    np.testing.assert_allclose(rms, ref.rms, rtol=1e-12)
    np.testing.assert_allclose(delta, ref.delta_rms, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loss, ref.loss, rtol=1e-12)
    assert np.all(np.asarray(delta)[1:, 0] == 0)  # the frozen stem does not move


def _slopes(arm, depths=(4, 8, 16, 32), width=128, seeds=2):
    rows = []
    for depth in depths:
        point = dict(arm=arm, optimizer="adam", width=width, depth=depth, seeds=seeds, steps=1, adam_lr=0.01,
                     sgd_lr=0.05, adam_eps=1e-8, frozen="input,output", n_samples=16, n_context=7, dim=6, n_heads=2)
        rows.append({**point, **tcc.compute(point)})


    data = tcc.long_frame(pd.DataFrame(rows))
    data = data[data.layer_name.isin(["last block", "output"])]
    change = tcc.slopes(data, "delta_rms", 1)
    init = tcc.slopes(data, "rms", 0)
    as_dict = lambda t: {r.layer_name: (r.slope, r.slope_se) for r in t.itertuples()}  # noqa: E731
    return as_dict(change), as_dict(init)


@pytest.mark.slow
def test_output_at_init_is_depth_independent_in_the_limit():
    """The output's size at init, from the infinite-width NNGP of the attention-free arm at ``alpha = 1/2``: flat in
    ``L`` (measured 0.2521 -> 0.2557 over L = 4-32, slope +0.007). The finite runs' output RMS at init is one
    readout unit per seed (a chi-square of few degrees of freedom), too noisy at 2 seeds to test this."""
    task = sequence_tasks.linear_regression(16, 7, dim=6, seed=0)
    depths = np.array([4, 8, 16, 32])
    var = [np.mean(np.diag(np.asarray(theory.kernels(tcc.architecture("mlp branch-only", int(d)), task.x[:4]).nngp)))
           for d in depths]
    slope = np.polyfit(np.log(depths), np.log(var), 1)[0] / 2  # of the RMS
    assert abs(slope) < 0.02, (var, slope)


@pytest.mark.slow
def test_without_attention_the_transformer_reproduces_the_resnet_depth_mup_check():
    with_rule, init = _slopes("mlp depth-mup")
    without, _ = _slopes("mlp branch-only")
    print("no attention, Depth-muP:", with_rule, "branch-only:", without, "init:", init)
    slope, se = init["last block"]
    assert abs(slope) < 3 * se + 0.05, (slope, se)  # the stream at init is O(1) in L
    for name in ("last block", "output"):
        for (slope, se), want in ((with_rule[name], 0.0), (without[name], 0.5)):
            assert abs(slope - want) < 3 * se + 0.05, (name, slope, se, want)  # the ResNet test's criterion
            assert se < 0.1
