"""The ``laziness`` experiment (experiments/figures/laziness.py): its grid, networks and data, the analysis on synthetic
records with a known power law, and (quick sweep) CompleteP's claim: alpha = 1/2 blocks turn lazy with depth like
L^-1/2, alpha = 1 blocks do not, for ResNets with two-layer blocks and for pre-LN transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import theory
from experiments.figures import laziness as fig
from theory import layers as nn


def test_grid_networks_and_data():
    c = fig.Config(widths=(16, 32), resnet_depths=(2, 3, 4), transformer_depths=(1, 3), seeds=2, steps=(4, 1))
    pts = fig.points(c)
    assert len(pts) == 2 * 2 * (3 + 2) * 2  # alphas x widths x depths (both architectures) x seeds
    # the trajectory at the widest width and the smallest and largest depths, the last step elsewhere
    ends = {"resnet": (2, 4), "transformer": (1, 3)}
    assert all(p["steps"] == ([1, 4] if p["width"] == 32 and p["depth"] in ends[p["architecture"]] else [4])
               for p in pts)
    res = next(p for p in pts if p["architecture"] == "resnet" and p["depth"] == 4)
    arch, data = fig.setup(res)
    assert isinstance(arch, nn.Serial) and sum(isinstance(layer, nn.Residual) for layer in arch.layers) == 4
    assert data.x.shape == (32, 8) and data.y.shape == (32, 1)
    tr = next(p for p in pts if p["architecture"] == "transformer" and p["depth"] == 3 and p["alpha"] == 1.0)
    arch, data = fig.setup(tr)
    assert isinstance(arch, theory.Transformer) and arch.depth == 3 and arch.depth_exponent == 1.0
    assert data.x.shape == (32, 8, 10) and data.y.shape == (32, 1)  # 7 context tokens + query, dim 8 + 2 flags
    for bad, match in (({"alphas": (0.25,)}, "alpha must be in"), ({"architectures": ("mlp",)}, "architectures"),
                       ({"widths": ()}, "widths must be"), ({"steps": (0,)}, "steps must be"),
                       ({"learning_rate": -1.0}, "learning_rate")):
        with pytest.raises(ValueError, match=match):
            fig.Config(**bad)


def _synthetic(p_half: float = -0.5, p_one: float = 0.0) -> pd.DataFrame:
    # records as compute returns them: d_l = C L^p (1 + small seed noise) for the blocks, 0 for the linear layers
    rng = np.random.default_rng(1)
    rows = []
    for alpha, p in ((0.5, p_half), (1.0, p_one)):
        for depth in (2, 4, 8, 16):
            for seed in range(3):
                d = 0.05 * depth**p * (1 + 0.01 * rng.normal(size=(2, depth)))
                rows.append({"architecture": "resnet", "alpha": alpha, "width": 64, "depth": depth, "seed": seed,
                             "recorded_steps": [4, 16], "diverged": False,
                             "layer_names": ["layer 1"] + [f"layer {i + 2}" for i in range(depth)] + ["output"],
                             "distance": [[0.0, *row, 0.0] for row in d]})
    return pd.DataFrame(rows)


def test_analysis_recovers_a_known_power_law():
    df = _synthetic()
    long = fig.long_frame(df)
    assert set(long.kind) == {"block"} and long.distance.min() > 0  # stem and readout left out
    assert len(long) == 2 * 3 * 2 * (2 + 4 + 8 + 16)
    means = fig.block_means(long)
    assert set(means.kind) == {"all"} and set(fig.block_means(long, by_kind=True).kind) == {"block"}
    slopes = fig.fit_depth_slopes(means).set_index(["alpha", "step"])
    assert len(slopes) == 4 and set(slopes.n_depths) == {4}
    for (alpha, _), rec in slopes.iterrows():
        want = -0.5 if alpha == 0.5 else 0.0
        assert rec.slope == pytest.approx(want, abs=0.02)
        assert rec.ci_low < rec.slope < rec.ci_high and rec.ci_high - rec.ci_low < 0.1
    # transformer blocks are told apart by name
    assert [fig.block_kind(n) for n in ("block 3 attention", "block 3 mlp", "layer 2")] == \
        ["attention", "mlp", "block"]


@pytest.mark.slow
def test_figure_from_synthetic_records(tmp_path):
    # the quick sweep has two depths per arm; this draws the fitted lines and the exponent panel
    paths = fig.plot(_synthetic(), fig.Config(), tmp_path)
    assert {p.suffix for p in paths} == {".png", ".pdf"} and all(p.stat().st_size > 0 for p in paths)


def two_point_exponents(df: pd.DataFrame) -> pd.DataFrame:
    """Per (architecture, alpha): p = log(d(L2) / d(L1)) / log(L2 / L1) of the seed-mean block-averaged d, with
    its standard error by the delta method from the seeds' spread."""
    means = fig.block_means(fig.long_frame(df))
    rows = []
    for (arch, alpha), part in means.groupby(["architecture", "alpha"]):
        stats = part.groupby("depth").distance.agg(["mean", "std", "count"])
        assert len(stats) == 2
        (l1, l2), m = stats.index.to_numpy(float), stats["mean"].to_numpy()
        rel = (stats["std"] / np.sqrt(stats["count"]) / stats["mean"]).to_numpy()
        rows.append({"architecture": arch, "alpha": alpha, "p": np.log(m[1] / m[0]) / np.log(l2 / l1),
                     "se": np.sqrt(np.sum(rel**2)) / np.log(l2 / l1)})
    return pd.DataFrame(rows)


@pytest.mark.experiments
def test_quick_sweep_reproduces_completep(quick_run):
    df, _ = quick_run("laziness")
    assert not df.diverged.any()
    for rec in df.itertuples():
        d = np.asarray(rec.distance)
        assert np.all(d[:, 0] < 1e-12) and np.all(d[:, -1] < 1e-12)  # embedding / readout: linear in parameters
        assert np.all((d[:, 1:-1] > 1e-4) & (d[:, 1:-1] < 1))       # the blocks moved, and not by O(1) yet
    p = two_point_exponents(df).set_index(["architecture", "alpha"])
    assert len(p) == 4
    # CompleteP (Dey et al. 2025, Sec. 4): alpha = 1/2 blocks' d ~ L^-1/2, alpha = 1 flat. 3 SE of the seeds plus
    # 0.2 for finite-depth curvature (the depths start at 2): half the distance between the two predictions.
    for (arch, alpha), rec in p.iterrows():
        want = -0.5 if alpha == 0.5 else 0.0
        assert abs(rec.p - want) < 3 * rec.se + 0.2, (arch, alpha, rec.p, rec.se)
        assert rec.se < 0.1
    for arch in ("resnet", "transformer"):
        assert p.p[(arch, 1.0)] - p.p[(arch, 0.5)] > 0.3
    assert {Path(path).suffix for path in df.attrs["figures"]} >= {".png", ".pdf"}
