r"""One module per reproduced experiment; each declares ``EXPERIMENT = Experiment(...)``.

The registry (``experiments.registry``) imports every module here (except ``style`` and names starting
with ``_``) and registers its ``EXPERIMENT``. Modules hold no math: ``compute`` calls ``theory`` and
``experiments`` for one grid point, ``plot`` draws the DataFrame of all points with
``experiments.figures.style``. A complete declaration::

    from dataclasses import dataclass

    from experiments import monte_carlo
    from experiments.figures import style
    from experiments.registry import Experiment, grid

    @dataclass(frozen=True)
    class Config:
        widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
        depth: int = 3
        seeds: int = 8                                   # seeds 0..7

    def points(c):
        return grid(width=c.widths, depth=c.depth, seed=range(c.seeds))

    def compute(point):                                  # pure function of the point
        return {"err": ..., "err_se": ...}               # calls theory / experiments.monte_carlo

    def plot(df, config, outdir):                        # called inside style.context() by the runner
        fig, ax = style.subplots()
        style.errorbar_loglog(ax, df.width, df.err, df.err_se, fit=True, label="NNGP")   # slope ± SE in legend
        ax.set(xlabel="width $n$", ylabel=r"$\|\hat K_n - K_\infty\|$")
        ax.legend()
        return style.save(fig, outdir, "width_convergence")             # PNG + PDF; the runner adds the CSV

    EXPERIMENT = Experiment(name="width-convergence", paper="Jacot et al. 2018", summary="...",
                            config=Config(), quick_config=Config(widths=(16, 64, 256), seeds=2),
                            points=points, compute=compute, plot=plot)
"""
