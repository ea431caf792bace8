import jax
import pytest

# The suite checks float64 exactness; tests that want float32 pass float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after every test module: each XLA CPU executable holds ~120 memory maps, and
    the whole suite compiles more programs than the kernel's map limit (65,530) allows in one process (LLVM then
    dies with "Unable to allocate section memory": a segmentation fault mid-run)."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """``quick_run(name)`` runs experiment ``name``'s quick sweep into a fresh folder and returns
    ``(frame, folder)``, with the stored results in ``folder / "results"`` and the figure and CSV in
    ``folder / "figures"``."""
    import experiments

    def run(name: str):
        folder = tmp_path_factory.mktemp(name)
        frame = experiments.run(name, quick=True, results_dir=folder / "results", figures_dir=folder / "figures",
                                progress=False, quiet=True)
        return frame, folder

    return run
