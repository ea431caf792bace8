"""The cnn-learning-curves experiment (quick grid): locality beats dimension, and eigenlearning predicts the curves."""

import numpy as np
import pytest

from experiments.figures import cnn_learning_curves as m


@pytest.fixture(scope="module")
def frame(quick_run):
    return quick_run("cnn-learning-curves")[0]


@pytest.mark.experiments
def test_the_cnn_learns_the_local_teacher_faster_than_the_fc_kernel(frame):
    (geometry,) = m.QUICK.geometries
    p, cnn, cnn_se = m.curves(frame, geometry, "cnn_local")
    _, fc, fc_se = m.curves(frame, geometry, "fc_local")
    big = p >= m.QUICK.fit_from
    assert np.all(cnn[big] + 3 * cnn_se[big] < fc[big] - 3 * fc_se[big]), (cnn, fc)
    cnn_fit = m.exponent_fit(frame, geometry, "cnn_local", m.QUICK.fit_from)
    fc_fit = m.exponent_fit(frame, geometry, "fc_local", m.QUICK.fit_from)
    # Steeper decay, with disjoint 95% intervals (quick run: 0.29 [0.26, 0.33] against 0.19 [0.17, 0.21]).
    assert -cnn_fit.exponent > 0.2 and cnn_fit.ci_high < fc_fit.ci_low, (cnn_fit, fc_fit)


@pytest.mark.experiments
def test_global_teacher_decays_near_one_over_the_input_dimension(frame):
    (geometry,) = m.QUICK.geometries
    s, depth = m.parse_geometry(geometry)
    for student in m.STUDENTS:
        fit = m.exponent_fit(frame, geometry, f"{student}_global", m.QUICK.fit_from)
        low, _ = m.asymptotic_exponents(s, depth)[f"{student}_global"]
        # 1/D = 1/6 here; the quick range (P <= 512) measures 0.17-0.18.
        assert fit.ci_low - 0.05 < -low < fit.ci_high + 0.05, (student, fit, low)


@pytest.mark.experiments
def test_eigenlearning_predicts_the_measured_curves(frame):
    (geometry,) = m.QUICK.geometries
    for column in ("cnn_local", "fc_local", "cnn_global", "fc_global"):
        _, mean, se = m.curves(frame, geometry, column)
        q, predicted = m.prediction(frame, geometry, column)
        measured, err = mean[: len(q)], se[: len(q)]
        # Nystrom bias (<= ~6% low at P = M / 16) and the theory's finite-P error, plus 3 standard errors.
        assert np.all(np.abs(predicted - measured) < 0.08 * measured + 3 * err), (column, predicted, measured, err)


def test_geometry_and_config_refusals():
    assert m.parse_geometry("3^2") == (3, 2)
    with pytest.raises(ValueError, match="s\\^L"):
        m.parse_geometry("9")
    with pytest.raises(ValueError, match="increasing"):
        m.Config(n_train=(64, 32, 128))
    with pytest.raises(ValueError, match="fit_from"):
        m.Config(n_train=(16, 32, 64), fit_from=64)
    with pytest.raises(ValueError, match="unknown student"):
        m.student("rnn", 2, 2)
