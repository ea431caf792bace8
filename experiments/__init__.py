"""deeplimits' experiments: finite networks, Monte Carlo, sweeps and figures (built on `theory`)."""

from theory import __version__

__all__ = ["__version__"]
