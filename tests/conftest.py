import jax
import pytest

# The suite checks float64 exactness; tests that want float32 pass float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)


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
