"""The kernel-regression experiment (quick grid) and its data sets."""

import numpy as np
import pytest

from experiments import datasets


@pytest.fixture(scope="module")
def frame(quick_run):
    return quick_run("kernel-regression")[0]


@pytest.mark.experiments
def test_kernel_regression_classifies_digits(frame):
    rows = frame[frame.kind == "kernel"]
    # Kernel regression on the 8x8 digits: well above the 10% of chance (published kernel / SVM results ~98%).
    assert (rows.nngp_accuracy > 0.95).all() and (rows.ntk_accuracy > 0.95).all(), rows
    assert np.isfinite(rows.nngp_mse).all() and (rows.nngp_mse < 0.9).all()  # 0.9 = predicting zero


@pytest.mark.experiments
def test_wider_networks_are_closer_to_the_linearised_limit(frame):
    nets = frame[frame.kind == "network"].sort_values("width")
    d = nets.distance.to_numpy()
    assert np.all(np.diff(d) < 0), d
    slope = np.polyfit(np.log(nets.width), np.log(d), 1)[0]
    assert -0.7 < slope < -0.15, slope  # -1/2 asymptotically; small widths bend it (docs/figures/kernel_regression.md)


def test_data_sets_are_fixed_and_standardised():
    digits = datasets.load("digits")
    assert digits.x_train.shape == (1200, 64) and digits.x_test.shape == (597, 64) and digits.classes == 10
    np.testing.assert_allclose(digits.x_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(digits.y_train.sum(axis=1), 0, atol=1e-12)
    assert np.array_equal(datasets.load("digits").labels_test, digits.labels_test)
    assert datasets.accuracy(digits.y_test, digits.labels_test) == 1.0
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load("mnist")


@pytest.mark.slow
def test_mnist1d_is_the_standard_split():
    m = datasets.load("mnist1d")
    assert m.x_train.shape == (4000, 40) and m.x_test.shape == (1000, 40)
    assert set(np.unique(m.labels_train)) == set(range(10))
