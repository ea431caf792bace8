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
from theory import layers as nn

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(f for f in DATA.glob("nt_*.npz") if f.stem != "nt_empirical_cnn")
RTOL = 1e-6


def _activation(spec: dict):
    """Our activation at its defaults: a closed form where there is one, otherwise (tanh) the automatic Hermite
    series that theory.kernels chooses. The fixture's "quadrature_degree" is the degree NT's ElementwiseNumerical
    used to compute the reference (>= 1000, converged); it is deliberately not passed on."""
    act = dict(spec)
    name = act.pop("name")
    return activations.get(name, **act)


def program_layers(specs: list, config: dict) -> list:
    """theory.layers from the fixture schema of tests/reference/make_nt_fixtures.py."""
    scaling = config["weight_scaling"]

    def weights(spec: dict) -> dict:
        w, b = spec["w_std"], spec["b_std"]
        if scaling == "standard":
            return {"w_std": w, "b_std": b, "scaling": nn.WeightScaling.standard(w, b, config["width"])}
        return {"w_std": w, "b_std": b}

    out = []
    for spec in specs:
        kind = spec["layer"]
        if kind == "Dense":
            out.append(nn.Dense(**weights(spec)))
        elif kind == "Conv":
            out.append(nn.Conv(tuple(spec["filter_shape"]), spec["strides"], spec["padding"], **weights(spec)))
        elif kind == "Elementwise":
            out.append(nn.Elementwise(_activation(spec["activation"])))
        elif kind == "AvgPool":
            out.append(nn.AvgPool(tuple(spec["window_shape"]), spec["strides"], spec["padding"]))
        elif kind == "GlobalAvgPool":
            out.append(nn.GlobalAvgPool())
        elif kind == "Flatten":
            out.append(nn.Flatten())
        elif kind == "LayerNorm":
            out.append(nn.LayerNorm(spec["eps"]))
        elif kind == "Identity":
            out.append(nn.Identity())
        elif kind == "Residual":
            out.append(nn.Residual(*program_layers(spec["branch"], config), scale=spec["scale"]))
        else:
            raise AssertionError(f"unknown layer {kind!r} in a fixture")
    return out


def _architecture(config: dict):
    if config["arch"] == "program":
        return theory.serial(*program_layers(config["layers"], config))
    fields = {k: v for k, v in config.items() if k not in ("arch", "activation", "quadrature_degree",
                                                           "parameterization")}
    cls = {"MLP": theory.MLP, "ResNet": theory.ResNet}[config["arch"]]
    return cls(activation=_activation(config["activation"]), weight_scaling=config["parameterization"], **fields)


def _walk(specs: list):
    for spec in specs:
        yield spec
        if spec["layer"] == "Residual":
            yield from _walk(spec["branch"])


def test_enough_fixtures_cover_the_issue():
    configs = [json.loads(str(np.load(f)["config"])) for f in FIXTURES]
    programs = [c for c in configs if c["arch"] == "program"]
    configs = [c for c in configs if c["arch"] != "program"]
    assert len(configs) >= 50 and len(programs) >= 30
    names = {c["activation"]["name"] for c in configs}
    assert {"relu", "leaky_relu", "abs", "erf", "identity", "sign", "gelu", "sin", "cos", "tanh"} <= names
    assert {c["depth"] for c in configs if c["arch"] == "MLP"} >= {1, 3, 10}
    assert {c["depth"] for c in configs if c["arch"] == "ResNet"} >= {4, 16, 64}
    assert {c["parameterization"] for c in configs} == {"ntk", "standard"}
    assert any(c["b_std"] > 0 for c in configs) and any(c["b_std"] == 0 for c in configs)
    layers = [spec for c in programs for spec in _walk(c["layers"])]
    convs = [spec for spec in layers if spec["layer"] == "Conv"]
    assert {(len(c["filter_shape"]), c["padding"]) for c in convs} >= {
        (nd, p) for nd in (1, 2) for p in ("SAME", "VALID", "CIRCULAR")}
    assert any(c["strides"] and max(c["strides"]) > 1 for c in convs)
    pools = [spec for spec in layers if spec["layer"] == "AvgPool"]
    assert {p["padding"] for p in pools} == {"SAME", "VALID", "CIRCULAR"} and any(p["strides"] for p in pools)
    kinds = {spec["layer"] for spec in layers}
    assert {"GlobalAvgPool", "Flatten", "LayerNorm", "Residual", "Identity", "Dense"} <= kinds
    assert any(c["input_shape"] and len(c["input_shape"]) == 1 and any(s["layer"] == "LayerNorm" for s in
                                                                       _walk(c["layers"])) for c in programs)
    assert any(s["layer"] == "Residual" and any(b["layer"] == "Conv" for b in s["branch"]) for s in layers)
    acts = {s["activation"]["name"] for s in layers if s["layer"] == "Elementwise"}
    assert {"relu", "erf", "tanh"} <= acts
    # tanh references: NT's quadrature at a converged degree (>= 1000; see make_nt_fixtures.py), ours automatic.
    degrees = [c["quadrature_degree"] for c in configs if c["activation"]["name"] == "tanh"]
    degrees += [s["quadrature_degree"] for s in layers
                if s["layer"] == "Elementwise" and s["activation"]["name"] == "tanh"]
    assert len(degrees) >= 20 and min(degrees) >= 1000
    assert _activation({"name": "tanh"}).automatic
    assert {c["weight_scaling"] for c in programs} == {"ntk", "standard"}


def _parallel(x1, x2):
    u1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
    u2 = x2 / np.linalg.norm(x2, axis=1, keepdims=True)
    return u1 @ u2.T > 1 - 1e-12


def _identical(x1, x2):
    return (x1[:, None, :] == x2[None, :, :]).all(axis=-1)


# Every fixture is compared in CI; the default suite compares every fifth (sorted by name, so each family keeps
# some), the slow stage the rest: one compilation per fixture made this file about a third of the default suite.
FIXTURE_PARAMS = [pytest.param(f, id=f.stem, marks=() if i % 5 == 0 else pytest.mark.slow)
                  for i, f in enumerate(FIXTURES)]


@pytest.mark.parametrize("path", FIXTURE_PARAMS)
def test_kernels_equal_neural_tangents(path):
    data = np.load(path)
    config = json.loads(str(data["config"]))
    arch = _architecture(config)
    # Every case, closed forms and tanh (our default automatic series vs NT's ElementwiseNumerical at a
    # converged degree >= 1000) alike, must agree to RTOL relative, measured entrywise: |ours - NT| <=
    # RTOL * (|NT entry| + 1e-3 * the largest |entry| of that kernel array), i.e. relative to each entry, with a
    # floor at 1e-3 of the kernel's scale (its largest entry, a diagonal one for the x1-x1 kernels) for entries
    # near zero.
    rtol = RTOL
    x1, x2 = data["x1"], data["x2"]
    cross = theory.kernels(arch, x1, x2)
    same = theory.kernels(arch, x1)
    checks = [(cross.nngp, "nngp_12", x2), (cross.ntk, "ntk_12", x2), (same.nngp, "nngp_11", x1),
              (same.ntk, "ntk_11", x1)]
    if "nngp_layers_11" in data:  # (MLPs)
        layers = theory.kernels(arch, x1, per_layer=True)
        checks += [(layers.nngp, "nngp_layers_11", x1), (layers.ntk, "ntk_layers_11", x1)]
    for ours, key, other in checks:
        ours, ref = np.asarray(ours), data[key]
        if key.endswith("layers_11"):  # the first Dense layer reads x itself: no activation yet
            np.testing.assert_allclose(ours[0], ref[0], rtol=rtol, err_msg=key)
            ours, ref = ours[1:], ref[1:]
        if config.get("activation", {}).get("name") == "sign":
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
