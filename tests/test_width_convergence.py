"""The width-convergence experiment: its quick sweep end to end, and the statistics it reports."""

import math

import numpy as np
import pytest

from experiments.figures import width_convergence as wc


@pytest.fixture(scope="module")
def quick(quick_run):
    df, folder = quick_run("width-convergence")
    return df, folder / "figures"


@pytest.mark.experiments
def test_quick_run_writes_the_frame_and_the_figure(quick):
    df, figures = quick
    config = wc.QUICK
    assert len(df) == len(config.architectures) * len(config.widths) * config.seeds
    for col in ("architecture", "width", "seed", "n_samples", "description"):
        assert col in df.columns
    for k in wc.KERNELS:
        for name in ("limit", "mean", "se", "bias_sq", "bias_sq_se", "noise_floor", "fluctuation", "fluctuation_se"):
            values = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in df[f"{k}_{name}"]])
            assert np.isfinite(values).all(), (k, name)
        assert np.asarray(df[f"{k}_mean"].iloc[0]).shape == (config.batches, config.n_inputs, config.n_inputs)
    for suffix in ("png", "pdf", "csv"):
        path = figures / f"width_convergence.{suffix}"
        assert path.exists() and path.stat().st_size > 1000, path
    table = wc.pooled(df, config.resolved_sigma)
    assert len(table) == len(config.architectures) * len(config.widths) * len(wc.KERNELS)
    assert (table.replicates == config.seeds * config.batches).all()


@pytest.mark.experiments
def test_quick_run_shows_the_width_scalings(quick):
    """One network's kernels fluctuate as n^(-1/2): the slope between the two largest widths is within 4 SE of
    -1/2 (at n ~ 16 the O(1/n^2) term still steepens it); and the mean kernel's bias is resolved at the
    smallest width and larger there than at the largest."""
    df, _ = quick
    table = wc.pooled(df, wc.QUICK.resolved_sigma)
    for arch in wc.QUICK.architectures:
        for k in wc.KERNELS:
            t = table[(table.architecture == arch) & (table.kernel == k)].sort_values("width")
            (n1, f1, s1), (n2, f2, s2) = t[["width", "fluctuation", "fluctuation_se"]].to_numpy()[-2:]
            slope = math.log(f2 / f1) / math.log(n2 / n1)
            slope_se = math.hypot(s1 / f1, s2 / f2) / math.log(n2 / n1)
            assert slope_se < 0.1 and abs(slope + 0.5) <= 4 * slope_se, (arch, k, slope, slope_se)
        t = table[(table.architecture == arch) & (table.kernel == "ntk")].sort_values("width")
        smallest, largest = t.iloc[0], t.iloc[-1]
        assert smallest.resolved, (arch, smallest.to_dict())
        assert smallest.bias > largest.bias_high, (arch, smallest.to_dict(), largest.to_dict())


@pytest.mark.parametrize("true_bias", [0.0, 0.05])
def test_debiased_bias_recovers_a_known_bias_under_correlated_noise(true_bias):
    """Synthetic replicates: mean = limit + bias + noise correlated across entries; the debiased squared norm
    is within 4 of its standard errors of the truth, while the plain squared norm is biased up by ~floor^2."""
    rng = np.random.default_rng(1)
    limit = np.eye(3) + 0.5
    norm = np.linalg.norm(limit)
    bias = true_bias * norm * rng.normal(size=(3, 3)) / 3
    reps, per_batch, sd = 16, 100, 0.2
    common = rng.normal(size=(reps, per_batch, 1, 1))  # every entry of one "network" moves together
    samples = limit + bias + sd * (0.8 * common + 0.6 * rng.normal(size=(reps, per_batch, 3, 3)))
    means, ses = samples.mean(axis=1), samples.std(axis=1, ddof=1) / math.sqrt(per_batch)
    s = wc.summarize(limit, means, ses, per_batch)
    truth = float(np.sum(bias**2)) / norm**2
    assert abs(s["bias_sq"] - truth) <= 4 * s["bias_sq_se"], (s, truth)
    plain = float(np.sum((means.mean(axis=0) - limit) ** 2)) / norm**2
    assert plain == pytest.approx(s["bias_sq"] + s["noise_floor"] ** 2)
    assert s["fluctuation"] == pytest.approx(3 * sd / norm, rel=0.1)  # sum of 9 entry variances sd^2
