import jax
import pytest

# The suite checks float64 exactness; tests that want float32 pass float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after a test module once the process holds many memory maps: each XLA CPU
    executable holds ~120, and the whole suite compiles more programs than the kernel's map limit (65,530) allows
    in one process (LLVM then dies with "Unable to allocate section memory": a segmentation fault mid-run)."""
    yield
    if _memory_maps() > 30_000:
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
