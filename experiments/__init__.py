"""deeplimits' experiments: finite networks, Monte Carlo, sweeps and figures (built on `theory`).

``experiments.run("width-convergence", quick=True)`` runs an experiment's sweep (computing only what
the results store lacks), draws its figure and returns the data as a pandas DataFrame;
``experiments.list_experiments()`` lists what can be run. The same from the shell: ``deeplimits``.
"""

from experiments.registry import list_experiments
from experiments.runner import run
from theory import __version__

__all__ = ["__version__", "list_experiments", "run"]
