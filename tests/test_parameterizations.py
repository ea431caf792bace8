"""theory.parameterizations against the papers' statements (TP IV Theorem 3.3 and Sec. 3-5, TP V Table 3, TP VI)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from theory import parameterizations as pz
from theory.parameterizations import AbcParameterization, LayerExponents


def test_named_members_sgd_as_tp4_states():
    # TP IV Sec. 3: SP with a width-independent learning rate is unstable (r = -1); SP with eta/n is stable and
    # in the kernel regime (r = 1/2); NTK is in the kernel regime (r = 1/2); muP and MF learn features (r = 0).
    sp = pz.standard("sgd").classify(3)
    assert not sp.stable and sp.r == -1 and sp.regime == "unstable"
    assert any(f.startswith("r = -1 < 0") for f in sp.failed)
    sp_small = pz.standard("sgd", c=1).classify(3)
    assert sp_small.stable and sp_small.kernel_regime and not sp_small.feature_learning and sp_small.r == 0.5
    nt = pz.ntk("sgd").classify(3)
    assert nt.stable and nt.nontrivial and nt.kernel_regime and nt.r == 0.5 and nt.failed == ()
    mu = pz.mup("sgd").classify(3)
    assert mu.stable and mu.nontrivial and mu.feature_learning and not mu.kernel_regime and mu.r == 0
    mf = pz.mean_field("sgd").classify(1)
    assert mf.stable and mf.nontrivial and mf.feature_learning and mf.r == 0


def test_named_members_adam():
    # TP V Table 3 (muP with Adam) learns features; SP / NTK with a width-independent Adam learning rate blow up.
    assert pz.mup("adam").classify(4).regime == "feature learning"
    assert pz.mean_field("adam").classify(1).regime == "feature learning"
    assert not pz.standard("adam").classify(4).stable
    assert not pz.ntk("adam").classify(4).stable


def test_tp5_table3_sgd_form_of_mup_is_feature_learning():
    # TP V Table 3 for SGD, written independently: input init var 1/fan_in (d fixed: b = 0) and lr eta * fan_out
    # (c = -1), hidden init 1/fan_in (b = 1/2) and lr eta, output init 1/fan_in^2 (b = 1) and lr eta / fan_in.
    p = AbcParameterization("tp5", LayerExponents(0, 0, -1), LayerExponents(0, 0.5, 0), LayerExponents(0, 1, 1))
    v = p.classify(3)
    assert v.feature_learning and v.nontrivial and v.r == 0
    assert p.first_step_exponents(3) == pz.mup("sgd").first_step_exponents(3) == {"input": 0, "hidden": 0,
                                                                                      "output": 0}


@pytest.mark.parametrize("optimizer,c_factor", [("sgd", 2), ("adam", 1)])
def test_abc_symmetry_leaves_the_classification_unchanged(optimizer, c_factor):
    # TP IV Eq. (5) (SGD: c -> c - 2 theta) and TP IVb (Adam: c -> c - theta): the trained function is unchanged,
    # so every verdict must be. A property over a grid of exponents, most of them unstable or trivial.
    rng = np.random.default_rng(0)
    values = (-0.5, 0, 0.5, 1, 1.5)
    seen = set()
    for a_out, b_out, c_in, c_hid, c_out in itertools.product(values, repeat=5):
        p = AbcParameterization("x", LayerExponents(0, 0, c_in), LayerExponents(0, 0.5, c_hid),
                                LayerExponents(a_out, b_out, c_out), optimizer)
        theta = rng.choice([-1.0, -0.5, 0.5, 1.0], size=3)
        q = AbcParameterization("y", *(LayerExponents(e.a + t, e.b - t, e.c - c_factor * t)
                                       for e, t in zip((p.input, p.hidden, p.output), theta, strict=True)),
                                optimizer)
        v, w = p.classify(3), q.classify(3)
        assert (v.stable, v.nontrivial, v.feature_learning, v.kernel_regime) == \
            (w.stable, w.nontrivial, w.feature_learning, w.kernel_regime)
        assert v.r == pytest.approx(w.r)
        assert p.first_step_exponents(3) == pytest.approx(q.first_step_exponents(3))
        seen.add(v.regime)
    assert seen == {"unstable", "trivial", "kernel", "feature learning"}  # the grid reaches every regime


def test_stable_nontrivial_is_exactly_one_of_feature_learning_or_kernel():
    # TP IV Corollary 3.9 (the dichotomy), over a grid of SGD parameterizations.
    values = (-1, -0.5, 0, 0.5, 1, 1.5)
    for a_out, b_out, c in itertools.product(values, repeat=3):
        v = AbcParameterization("x", LayerExponents(0, 0, c), LayerExponents(0, 0.5, c),
                                LayerExponents(a_out, b_out, c)).classify(2)
        if v.stable and v.nontrivial:
            assert v.feature_learning != v.kernel_regime


def test_first_step_exponents_of_sp_and_ntk():
    # Derivation in first_step_exponents' docstring: SGD, one step from init.
    assert pz.standard("sgd").first_step_exponents(3) == {"input": -0.5, "hidden": 0.5, "output": 1.0}
    assert pz.ntk("sgd").first_step_exponents(3) == {"input": -0.5, "hidden": -0.5, "output": 0.0}
    assert pz.standard("sgd").first_step_exponents(1) == {"input": -0.5, "output": 1.0}


def test_layer_scale_numbers():
    s = pz.mup("sgd").layer_scale("input", 256, 2.0)
    assert (s.multiplier, s.init_std, s.lr_scale) == (16.0, 2.0 / 16, 1.0)
    s = pz.mup("adam").layer_scale("output", 256, 1.0)
    assert (s.multiplier, s.init_std, s.lr_scale) == (1.0, 1 / 256, 1 / 256)


def test_depth_phases_as_tp6_states():
    assert pz.classify_depth(0.5, 0.5).phase == "depth-mup"
    assert pz.classify_depth(0.5, 0.5).maximal_diversity
    assert pz.classify_depth(1.0, 0.0).phase == "redundant"      # stable, nontrivial, less diversity
    assert pz.classify_depth(1.0, 0.0).nontrivial
    assert pz.classify_depth(1.0, 1.0).phase == "trivial"        # updates vanish like 1/L
    assert pz.classify_depth(1.0, 1.0).update_exponent == -1
    v = pz.classify_depth(0.0, 0.0)
    assert v.phase == "unstable at init" and "alpha = 0 < 1/2" in v.failed[0]
    assert pz.classify_depth(0.5, 0.0).phase == "unstable in training"


def test_depth_learning_rates():
    # TP VI: Depth-muP's learning rate is eta for SGD and eta / sqrt(L) for Adam.
    d = pz.depth_mup()
    assert d.lr_scale(64, "sgd") == 1.0
    assert d.lr_scale(64, "adam") == pytest.approx(1 / 8)
    # 1/L branches with a constant SGD learning rate: gamma = 0 + 1 -> trivial.
    one_over_l = pz.DepthParameterization.from_learning_rate(1.0, 0.0, "sgd")
    assert one_over_l.gamma == 1.0 and one_over_l.classify().phase == "trivial"
    assert pz.DepthParameterization.from_learning_rate(0.5, 0.5, "adam") == pz.DepthParameterization(0.5, 0.5)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        pz.mup("rmsprop")
    with pytest.raises(ValueError, match="unknown parameterization 'mpu'"):
        pz.get("mpu")
    with pytest.raises(ValueError, match="defined for one hidden layer only"):
        pz.mean_field().classify(3)
    with pytest.raises(ValueError, match="finite real exponent"):
        LayerExponents(float("nan"), 0, 0)
    with pytest.raises(ValueError, match="depth"):
        pz.mup().classify(0)
    with pytest.raises(ValueError, match=r"not stable at depth 3: r = -1 < 0"):
        pz.check_stable(pz.standard(), 3)
    with pytest.raises(ValueError, match="built for 'adam'"):
        pz.get(pz.mup("adam"), "sgd")
    with pytest.raises(ValueError, match="width"):
        pz.mup().layer_scale("hidden", 0, 1.0)
