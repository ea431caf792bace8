"""experiments.coord_checks: coordinate checks of any layer program against training.train run by hand, the fitted
exponents against an independent weighted least-squares fit and Student-t interval, the laziness check against
experiments.laziness.linearisation_distance averaged by hand, bad input; (slow) the checks tell muP from SP in width
and a depth rule from unscaled branches in depth."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import theory
from experiments import coord_checks as cc
from experiments import laziness, training
from theory import layers as nn
from theory import parameterizations as pz

DATA = training.teacher(16, 5, seed=0)


def _build(depth: int) -> nn.Serial:
    block = nn.Residual(nn.LayerNorm(), nn.Dense(), nn.Elementwise("tanh"), nn.Dense())
    return theory.serial(nn.Dense(), *([block] * depth), nn.LayerNorm(), nn.Dense())


def test_roles_name_the_first_middle_last_hidden_and_output_layers():
    assert cc.roles(6) == {0: "first", 3: "middle", 4: "last hidden", 5: "output"}
    assert cc.roles(4) == {0: "first", 2: "last hidden", 3: "output"}  # middle = last hidden: the later role
    assert cc.roles(1) == {0: "output"}
    with pytest.raises(ValueError, match="n_recorded must be a positive integer"):
        cc.roles(0)


ADAM = training.TrainConfig(optimizer="adam", learning_rate=0.02, steps=2)  # one compiled run serves every test


def test_coord_check_is_training_run_by_hand():
    df = cc.coord_check(_build, "mup", widths=(12,), depths=(3,), steps=2, seeds=2, data=DATA, config=ADAM,
                        depth_rule=pz.complete_p())
    assert set(df.depth) == {3} and set(df.rule) == {"complete-p"} and set(df.parameterization) == {"mup"}
    for seed in (0, 1):
        want = training.train(_build(3), "mup", DATA, 12, config=ADAM, seed=seed,
                              depth_parameterization=pz.complete_p())
        got = df[df.seed == seed]
        n = len(want.layer_names)
        assert len(got) == 3 * n  # (steps + 1) x recorded layers
        np.testing.assert_allclose(got.delta_rms.to_numpy().reshape(3, -1), want.delta_rms, rtol=1e-12)
        np.testing.assert_allclose(got.rms.to_numpy().reshape(3, -1), want.rms, rtol=1e-12)
        first = got[got.step == 0].set_index("layer").role
        assert first[0] == "first" and first[n // 2] == "middle" and first[n - 2] == "last hidden"
        assert first[n - 1] == "output" and (first == "").sum() == n - 4
    # a program (not a builder): the width grid only, depth -1 for a program without a depth
    one = cc.coord_check(_build(3), "mup", widths=(12,), steps=2, seeds=2, data=DATA, config=ADAM,
                         depth_rule=pz.complete_p())
    np.testing.assert_allclose(one.delta_rms, df.delta_rms, rtol=1e-12)
    assert set(one.depth) == {-1}


def test_exponents_are_an_independent_weighted_fit():
    rng = np.random.default_rng(0)
    widths = np.array([16, 32, 64, 128, 256])
    rows = []
    for seed in range(4):
        for n in widths:
            for role, p in (("first", 0.0), ("output", 1.0)):
                value = 3.0 * n**p * np.exp(0.05 * rng.normal())
                rows.append({"parameterization": "x", "rule": "none", "role": role, "step": 1, "width": n,
                             "seed": seed, "delta_rms": value})
    rows.append({"parameterization": "x", "rule": "none", "role": "", "step": 1, "width": 16, "seed": 0,
                 "delta_rms": 1.0})  # a layer without a role: left out
    df = pd.DataFrame(rows)
    got = cc.exponents(df, "width").set_index("role")
    assert list(got.index) == ["first", "output"] and set(got.n_points) == {5}
    for role in ("first", "output"):
        part = df[df.role == role].groupby("width").delta_rms
        mean, se = part.mean(), part.std() / 2.0
        x, z, s = np.log(mean.index.to_numpy(float)), np.log(mean.to_numpy()), (se / mean).to_numpy()
        (slope, _), cov = np.polyfit(x, z, 1, w=1 / s, cov=True)  # cov: scaled by the residuals, as wanted
        assert got.slope[role] == pytest.approx(slope, rel=1e-10)
        assert got.slope_se[role] == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-8)
        q = stats.t.ppf(0.975, 3)
        assert got.ci_low[role] == pytest.approx(slope - q * np.sqrt(cov[0, 0]), rel=1e-8)
    # an exact power law: exact slope
    exact = pd.DataFrame({"depth": [2, 4, 8, 16], "distance": [0.4 * d**-0.5 for d in (2, 4, 8, 16)],
                          "rule": "r"})
    assert cc.exponents(exact, "depth", "distance", by=("rule",)).slope[0] == pytest.approx(-0.5, abs=1e-12)
    with pytest.raises(ValueError, match="no column"):
        cc.exponents(exact, "width", "distance", by=("rule",))
    with pytest.raises(ValueError, match="3 values of 'depth'"):
        cc.exponents(exact[:2], "depth", "distance", by=("rule",))


def test_laziness_check_averages_the_residual_blocks():
    df = cc.laziness_check(_build, depths=(3,), width=12, steps=(2,), seeds=1, data=DATA, config=ADAM,
                           depth_rule=pz.complete_p())
    assert len(df) == 1 and df.blocks[0] == 3 and not df.diverged[0] and df.rule[0] == "complete-p"
    run = training.train(_build(3), "mup", DATA, 12, config=ADAM, depth_parameterization=pz.complete_p())
    names, d = laziness.linearisation_distance(run.network, run.init_params, run.params, jnp.asarray(DATA.x))
    assert names[1:4] == ("layer 2", "layer 3", "layer 4") and d[0] < 1e-12 and d[-1] < 1e-12  # Dense layers: linear
    assert df.distance[0] == pytest.approx(np.mean(d[1:4]), rel=1e-12)
    assert 1e-5 < df.distance[0] < 1


def test_bad_input():
    with pytest.raises(ValueError, match="depths needs a function"):
        cc.coord_check(_build(2), widths=(8,), depths=(2, 4))
    with pytest.raises(ValueError, match="pass depths"):
        cc.coord_check(_build, widths=(8,))
    with pytest.raises(ValueError, match="not a layer program"):
        cc.coord_check(lambda depth: "net", widths=(8,), depths=(2,))
    with pytest.raises(ValueError, match="width must be a positive integer"):
        cc.coord_check(_build(2), widths=(0,))
    with pytest.raises(ValueError, match="no top-level Residual blocks"):
        cc.laziness_check(lambda depth: theory.MLP(depth), depths=(2,), width=8, data=DATA)
    # training takes (batch, features) or (batch, ..., channels) inputs, not one number per example
    with pytest.raises(ValueError, match=r"data.x must have shape \(batch, features\)"):
        cc.coord_check(_build(2), widths=(8,), data=training.Dataset(np.zeros(4), np.zeros((4, 1))))


@pytest.mark.slow
def test_checks_tell_the_parameterizations_apart():
    # width: muP's changes are flat in width, SP's (SGD, fixed learning rate) output change grows (TP IV: n^+1;
    # with the LayerNorm before the readout measured ~ +0.8)
    data = training.teacher(32, 8, seed=0, scale=10.0)
    config = training.TrainConfig(learning_rate=0.002)
    width = pd.concat([cc.coord_check(_build(2), p, widths=(32, 64, 128, 256), steps=1, seeds=2, data=data,
                                      config=config) for p in ("standard", "mup")])
    slopes = cc.exponents(width, "width").query("step == 1").set_index(["parameterization", "role"])
    for role in ("first", "last hidden", "output"):
        rec = slopes.loc[("mup", role)]
        assert abs(rec.slope) < 3 * rec.slope_se + 32**-0.5, rec
    assert slopes.loc[("standard", "output")].slope > 0.5
    # depth: with a depth rule the last block's change is flat in depth; unscaled branches grow
    adam = training.TrainConfig(optimizer="adam", learning_rate=0.01)
    depth = pd.concat([cc.coord_check(_build, "mup", widths=(64,), depths=(2, 4, 8, 16), steps=2, seeds=2, data=data,
                                      config=adam, depth_rule=rule) for rule in (None, pz.depth_mup())])
    slopes = cc.exponents(depth, "depth").query("step == 2 and role == 'last hidden'").set_index("rule")
    assert abs(slopes.slope["depth-mup"]) < 3 * slopes.slope_se["depth-mup"] + 0.1, slopes
    assert slopes.slope["none"] > 0.25, slopes
