"""Code versions: every module of ours an experiment reaches, and the numerical libraries' versions.

The edits happen on a copy of `theory/` and `experiments/` in a temporary folder (``copied_packages``): the real
source is never touched, and the copy stands in for it only in the code-version computation.
"""

import ast
import dataclasses
import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import experiments
import theory
from experiments import provenance
from experiments.registry import Experiment, grid

ROOT = Path(__file__).resolve().parents[1]


def test_code_version_follows_the_module_source(tmp_path, monkeypatch):
    mod_file = tmp_path / "toy_cv_module.py"
    mod_file.write_text("def compute(p):\n    return {'y': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("toy_cv_module")
    v1 = provenance.code_version(mod)
    assert v1.startswith(theory.__version__ + "+") and len(v1.split("+")[1]) == 12
    assert provenance.code_version("toy_cv_module") == v1
    assert provenance.code_version(mod, "experiments.store") != v1
    mod_file.write_text("def compute(p):\n    return {'y': 2}\n")
    assert provenance.code_version(mod) != v1
    with pytest.raises(ValueError, match="at least one module"):
        provenance.code_version()


def test_a_module_edited_after_its_import_is_reported(tmp_path, monkeypatch):
    mod_file = tmp_path / "toy_edited_module.py"
    mod_file.write_text("def compute(p):\n    return {'y': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_edited_module")
    assert provenance.changed_since_import("toy_edited_module") == []
    mod_file.write_text("def compute(p):\n    return {'y': 2}\n")
    assert provenance.changed_since_import("toy_edited_module") == ["toy_edited_module"]
    assert provenance.changed_since_import("experiments.store") == []  # theory/ and experiments/ as imported


def test_reachable_modules_of_a_figure():
    mods = provenance.reachable_modules("experiments.figures.width_convergence")
    assert {"theory", "theory.kernels", "theory.hermite", "theory.layers.base", "experiments.monte_carlo",
            "experiments.networks", "experiments.figures", "experiments.figures.width_convergence"} <= set(mods)
    assert mods["theory.kernels"] == ROOT / "theory" / "kernels.py"
    assert mods["theory.layers"] == ROOT / "theory" / "layers" / "__init__.py"
    # not imported by it: other figures, the command line, the report
    assert not {"experiments.figures.relu_kurtosis", "experiments.cli", "experiments.report"} & set(mods)
    # learning_curves is not imported by theory/__init__: only the figure that imports it reaches it
    assert "theory.learning_curves" not in mods
    assert "theory.learning_curves" in provenance.reachable_modules("experiments.figures.cnn_learning_curves")


def test_relative_and_nested_imports_are_followed(tmp_path, monkeypatch):
    pkg = tmp_path / "experiments"
    shutil.copytree(ROOT / "experiments", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "figures" / "rel_mod.py").write_text(
        "def compute(point):\n"
        "    from . import style\n"
        "    from ..scaling import fit_power_law\n"
        "    if point:\n"
        "        import experiments.transfer as t\n"
        "    return {}\n")
    monkeypatch.setattr(provenance, "_package_dirs", lambda: {"theory": ROOT / "theory", "experiments": pkg})
    mods = provenance.reachable_modules("experiments.figures.rel_mod")
    assert {"experiments.figures.style", "experiments.scaling", "experiments.transfer"} <= set(mods)
    assert mods["experiments.figures.rel_mod"] == pkg / "figures" / "rel_mod.py"


def test_library_versions_are_part_of_the_code_version(monkeypatch):
    before = provenance.code_version("experiments.figures.relu_kurtosis")
    versions = provenance.library_versions()
    assert set(versions) == set(provenance.LIBRARIES) and versions["jax"] != "absent"
    monkeypatch.setattr(provenance, "library_versions", lambda: {**versions, "jaxlib": "0.0.1"})
    assert provenance.code_version("experiments.figures.relu_kurtosis") != before


# -- editing the code an experiment calls makes the next run recompute; editing other code does not ------------
@dataclass(frozen=True)
class KernelConfig:
    depths: tuple[int, ...] = (1, 2)


def kernel_compute(point):
    x = np.array([[1.0, 0.0], [0.6, 0.8]])
    return {"ntk": theory.kernels(theory.MLP(point["depth"], "relu", w_std=2**0.5), x).ntk}


KERNEL_EXP = Experiment(name="kernel-user", paper="-", summary="-", config=KernelConfig(), quick_config=KernelConfig(),
                        points=lambda c: grid(depth=c.depths), compute=kernel_compute,
                        plot=lambda df, config, outdir: [])


@pytest.fixture
def copied_packages(tmp_path, monkeypatch):
    """Copies of theory/ and experiments/ that the code version reads instead of the real ones."""
    dirs = {}
    for name in ("theory", "experiments"):
        dirs[name] = tmp_path / "copy" / name
        shutil.copytree(ROOT / name, dirs[name], ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "_package_dirs", lambda: dict(dirs))
    return dirs


def edit_function(path: Path, name: str) -> None:
    """Add a statement at the end of function ``name``'s body (after a return: dead code, but new source)."""
    lines = path.read_text().splitlines(keepends=True)
    fn = next(n for n in ast.parse("".join(lines)).body if isinstance(n, ast.FunctionDef) and n.name == name)
    last = fn.body[-1]
    indent = " " * last.col_offset
    lines.insert(last.end_lineno, f"{indent}_edited = None\n")
    path.write_text("".join(lines))


def test_editing_a_theory_function_an_experiment_calls_recomputes(copied_packages, tmp_path, monkeypatch):
    kernels_py = copied_packages["theory"] / "kernels.py"
    assert "kernels" in [n.name for n in ast.parse(kernels_py.read_text()).body if isinstance(n, ast.FunctionDef)]
    first = experiments.run(KERNEL_EXP, results_dir=tmp_path / "res", plot=False, quiet=True)
    assert first.attrs["computed"] == 2
    assert experiments.run(KERNEL_EXP, results_dir=tmp_path / "res", plot=False, quiet=True).attrs["cached"] == 2

    edit_function(copied_packages["experiments"] / "figures" / "phase_diagram.py", "compute")  # not reached
    same = experiments.run(KERNEL_EXP, results_dir=tmp_path / "res", plot=False, quiet=True)
    assert (same.attrs["computed"], same.attrs["cached"]) == (0, 2)

    edit_function(kernels_py, "kernels")  # the function kernel_compute calls
    # This process still runs the old kernels(): it refuses to store its results under the new code version ...
    with pytest.raises(RuntimeError, match=r"theory\.kernels changed on disk after this process imported"):
        experiments.run(KERNEL_EXP, results_dir=tmp_path / "res", plot=False, quiet=True)
    # ... while a fresh process (which imports the edited file: emulated) recomputes every point.
    monkeypatch.setattr(provenance, "changed_since_import", lambda *modules: [])
    again = experiments.run(KERNEL_EXP, results_dir=tmp_path / "res", plot=False, quiet=True)
    assert (again.attrs["computed"], again.attrs["cached"]) == (2, 0)
    assert set(again.code_version) != set(first.code_version)
    cols = ["depth", "ntk", "dtype"]
    assert again[cols].equals(first[cols])

    edit_function(copied_packages["theory"] / "layers" / "base.py",  # deeper: theory/layers/base.py
                  next(n.name for n in ast.parse((copied_packages["theory"] / "layers" / "base.py").read_text()).body
                       if isinstance(n, ast.FunctionDef)))
    assert experiments.run(KERNEL_EXP, results_dir=tmp_path / "res", plot=False, quiet=True).attrs["computed"] == 2


def test_the_experiment_declaration_has_no_depends():
    assert "depends" not in {f.name for f in dataclasses.fields(Experiment)}
