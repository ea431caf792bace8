"""theory.kernels against neural-tangents 0.6.5, through fixtures committed in tests/data.

The fixtures are written by tests/reference/make_nt_fixtures.py in the pinned reference
environment (tests/reference/setup_nt_env.sh); CI's reference stage regenerates them live and
fails if they differ from the committed ones, so this test always compares with what NT computes.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import theory
from theory import activations

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(DATA.glob("nt_*.npz"))


def _architecture(config: dict) -> theory.MLP | theory.ResNet:
    act = dict(config["activation"])
    name = act.pop("name")
    activation = activations.get(name, **act)
    fields = {k: v for k, v in config.items() if k not in ("arch", "activation", "quadrature_degree")}
    cls = {"MLP": theory.MLP, "ResNet": theory.ResNet}[config["arch"]]
    return cls(activation=activation, **fields)


def test_enough_fixtures_cover_the_issue():
    configs = [json.loads(str(np.load(f)["config"])) for f in FIXTURES]
    assert len(configs) >= 50
    names = {c["activation"]["name"] for c in configs}
    assert {"relu", "leaky_relu", "abs", "erf", "identity", "sign", "gelu", "sin", "cos", "tanh"} <= names
    assert {c["depth"] for c in configs if c["arch"] == "MLP"} >= {1, 3, 10}
    assert {c["depth"] for c in configs if c["arch"] == "ResNet"} >= {4, 16, 64}
    assert {c["parameterization"] for c in configs} == {"ntk", "standard"}
    assert any(c["b_std"] > 0 for c in configs) and any(c["b_std"] == 0 for c in configs)


@pytest.mark.parametrize("path", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_kernels_equal_neural_tangents(path):
    data = np.load(path)
    config = json.loads(str(data["config"]))
    arch = _architecture(config)
    # Closed forms must agree to 1e-6 relative; quadrature (tanh, NT's ElementwiseNumerical at
    # its own degree vs our default rule) to 1e-4.
    rtol = 1e-6 if arch.activation.has_closed_form else 1e-4
    cross = theory.kernels(arch, data["x1"], data["x2"])
    same = theory.kernels(arch, data["x1"])
    for ours, key in ((cross.nngp, "nngp_12"), (cross.ntk, "ntk_12"), (same.nngp, "nngp_11"), (same.ntk, "ntk_11")):
        ref = data[key]
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-3 * np.abs(ref).max(), err_msg=key)
    if "nngp_layers_11" in data:
        layers = theory.kernels(arch, data["x1"], per_layer=True)
        for ours, key in ((layers.nngp, "nngp_layers_11"), (layers.ntk, "ntk_layers_11")):
            ref = data[key]
            np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-3 * np.abs(ref).max(), err_msg=key)
