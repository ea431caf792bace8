"""The sparse-activations experiment: the edge-of-chaos instability and its cure, in finite networks."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from experiments.figures import sparse_activations


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("sparse-activations")


@pytest.mark.experiments
def test_quick_run_writes_the_figure_and_the_data(quick):
    df, tmp = quick
    assert len(df) == len(sparse_activations.points(sparse_activations.EXPERIMENT.quick_config)) == 2
    for suffix in ("png", "pdf", "csv"):
        path = tmp / "figures" / f"sparse_activations.{suffix}"
        assert path.exists() and path.stat().st_size > 0, path
    csv = pd.read_csv(tmp / "figures" / "sparse_activations.csv")
    np.testing.assert_allclose(csv["last_over_q_star"], df["last_over_q_star"], rtol=1e-12)


@pytest.mark.experiments
def test_instability_and_cure_in_finite_networks(quick):
    """From q^1 = 1.15 q*: the shifted relu's variance grows past the start, the clipped one's falls back to
    within 5% of q*; at infinite width too; and the Monte Carlo follows the infinite-width trajectory within
    4 SE at every layer (width 128, 32 networks)."""
    df, _ = quick
    row = {kind: r for kind, (_, r) in zip(df["kind"], df.iterrows(), strict=True)}
    unstable, cured = row["shifted_relu"], row["clipped_shifted_relu"]
    assert not unstable["stable"] and unstable["variance_slope"] == pytest.approx(1, abs=1e-9)
    assert cured["stable"] and cured["variance_slope"] < 0.9
    assert unstable["last_theory_over_q_star"] > 1.25 and unstable["last_over_q_star"] > 1.25
    assert abs(cured["last_theory_over_q_star"] - 1) < 0.01 and abs(cured["last_over_q_star"] - 1) < 0.05
    assert (df["max_abs_z"] <= 4).all()


def test_activation_kinds():
    act = sparse_activations.activation("clipped_soft_threshold", 0.5, 2.0)
    x = np.array([-3.0, -1.0, 0.2, 1.5, 4.0])
    np.testing.assert_allclose(np.asarray(act(x)), [-2.0, -0.5, 0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="kinds must be among"):
        dataclasses.replace(sparse_activations.Config(), kinds=("relu",))
