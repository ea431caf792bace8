"""lr-transfer (quick grid: widths 32, 128, 512; two seeds): SP's optimal Adam learning rate falls with width,
muP's stays put, and the difference of the fitted drift exponents is many standard errors; the depth sweep's
compute on a tiny ResNet; bad configs.

TP V predicts an SP hidden-layer optimum ~ 1/n (exponent -1; at these widths the other layers blur it, so we ask
only for < -1/2) and a muP exponent 0 up to finite-width corrections. The fitted SEs come from the bootstrap over
seeds rescaled by the fit's residuals.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from experiments.figures import lr_transfer


@pytest.fixture(scope="module")
def quick(quick_run):
    return quick_run("lr-transfer")[0]


@pytest.mark.experiments
def test_sp_optimum_drifts_and_mup_optimum_stays(quick):
    opt = lr_transfer.optima(quick)
    assert len(opt) == 6 and not opt.on_edge.any()
    fits = lr_transfer.drift(opt)
    sp, mup = fits[("width", "standard")], fits[("width", "mup")]
    assert sp.exponent < -0.5, sp
    gap = abs(sp.exponent) - abs(mup.exponent)
    assert gap > 3 * math.hypot(sp.exponent_stderr, mup.exponent_stderr), (sp, mup)
    assert abs(mup.exponent) < 0.25, mup  # "stays put": well under SP's drift, allowing finite-width corrections
    assert all(Path(p).exists() for p in quick.attrs["figures"])


def test_depth_compute_on_a_tiny_resnet():
    point = {"sweep": "depth", "arm": "depth-mup", "size": 2, "seed": 0, "resnet_width": 8, "lr_log2_min": -6.0,
             "lr_log2_max": 6.0, "lr_log2_step": 2.0, "steps": 3, "batch_size": 16, "n_samples": 64}
    out = lr_transfer.compute(point)
    assert out["log2_lr"] == [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
    loss = np.array(out["loss"])
    assert np.all(np.isfinite(loss[:3])) and np.all(loss[:3] > 0)


def test_bad_config():
    with pytest.raises(ValueError, match="depth arms"):
        lr_transfer.Config(depth_arms=("nope",))
    with pytest.raises(ValueError, match="grid"):
        lr_transfer.Config(lr_log2_min=0.0, lr_log2_max=-1.0)
    with pytest.raises(ValueError, match=">= 5"):
        lr_transfer.Config(lr_log2_min=-2.0, lr_log2_max=0.0)
    with pytest.raises(ValueError, match="nothing"):
        lr_transfer.Config(widths=(), depths=())
