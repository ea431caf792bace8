r"""One module per reproduced experiment; each declares ``EXPERIMENT = Experiment(...)``.

The registry (``experiments.registry``) imports every module here (except ``style`` and names starting
with ``_``) and registers its ``EXPERIMENT``. Modules hold no math: ``compute`` calls ``theory`` and
``experiments`` for one grid point, ``plot`` draws the DataFrame of all points with
``experiments.figures.style``. A module defines a frozen ``Config`` dataclass, ``points(config)`` (a ``grid``),
``compute(point)`` (a pure function of the point returning JSON-able values), ``plot(df, config, outdir)`` (called
inside ``style.context()``; returns ``style.save(...)``) and ``EXPERIMENT = Experiment(name, paper, summary, config,
quick_config, points, compute, plot)``.

A complete example and notes on each figure: docs/figures/README.md.
"""
