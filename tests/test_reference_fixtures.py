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
    if config.get("quadrature_degree"):
        # Same Gauss-Hermite degree as NT's ElementwiseNumerical (our own implementation of the rule).
        act["quadrature_degree"] = config["quadrature_degree"]
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


def _parallel(x1, x2):
    u1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
    u2 = x2 / np.linalg.norm(x2, axis=1, keepdims=True)
    return u1 @ u2.T > 1 - 1e-12


def _identical(x1, x2):
    return (x1[:, None, :] == x2[None, :, :]).all(axis=-1)


@pytest.mark.parametrize("path", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_kernels_equal_neural_tangents(path):
    data = np.load(path)
    config = json.loads(str(data["config"]))
    arch = _architecture(config)
    # Closed forms must agree to 1e-6 relative; quadrature (tanh, NT's ElementwiseNumerical vs our
    # rule at the fixture's degree) to 1e-4.
    rtol = 1e-6 if arch.activation.has_closed_form else 1e-4
    x1, x2 = data["x1"], data["x2"]
    cross = theory.kernels(arch, x1, x2)
    same = theory.kernels(arch, x1)
    checks = [(cross.nngp, "nngp_12", x2), (cross.ntk, "ntk_12", x2), (same.nngp, "nngp_11", x1),
              (same.ntk, "ntk_11", x1)]
    if "nngp_layers_11" in data:
        layers = theory.kernels(arch, x1, per_layer=True)
        checks += [(layers.nngp, "nngp_layers_11", x1), (layers.ntk, "ntk_layers_11", x1)]
    for ours, key, other in checks:
        ours, ref = np.asarray(ours), data[key]
        if key.endswith("layers_11"):  # the first Dense layer reads x itself: no activation yet
            np.testing.assert_allclose(ours[0], ref[0], rtol=rtol, err_msg=key)
            ours, ref = ours[1:], ref[1:]
        if arch.activation.name == "sign":
            # Correlation 1 is an unstable fixed point of the sign network's correlation map (arcsin
            # has infinite slope at 1), so pairs that are parallel only up to rounding have no
            # well-conditioned kernel, and NT, which forms rho from rounded quantities, drifts away
            # even for identical inputs (its nngp_11 diagonal reaches 0.21 instead of 2.25 at depth
            # 10). Ours keeps identical inputs at rho = 1, where E[sign(u) sign(v)] = 1, so their
            # NNGP and NTK (equal for sign: E[sign'(u) sign'(v)] = 0) are w_std^2 + b_std^2 exactly.
            identical, parallel = _identical(x1, other), _parallel(x1, other)
            want = config["w_std"] ** 2 + config["b_std"] ** 2
            np.testing.assert_allclose(ours[..., identical], want, rtol=1e-14, err_msg=key)
            ours, ref = ours[..., ~parallel], ref[..., ~parallel]
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-3 * np.abs(ref).max(), err_msg=key)
