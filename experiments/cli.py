"""The ``deeplimits`` command line (also ``python -m experiments``).

::

    deeplimits list                                    # the experiments: name, paper, what it shows
    deeplimits run NAME [--quick] [--set KEY=VALUE ...] [--results DIR] [--figures DIR] [--no-plot]
                        [--jobs N | --scheduler ADDRESS]
    deeplimits report [--results DIR] [--figures DIR]  # markdown summary of stored results and figures
    deeplimits clean --stale [NAME ...] [--results DIR] [--dry-run]   # remove records older code made

Exit codes: 0 success, 2 bad usage (unknown experiment, malformed ``--set``, bad ``--jobs``, a results folder
that does not exist, an experiment module that cannot be imported), 1 a folder that cannot be written or a
scheduler that cannot be reached, 130 interrupted (finished points are kept); a failing computation raises with
its traceback.
"""

from __future__ import annotations

import argparse
import sys

from theory import __version__

EPILOG = """examples:
  deeplimits list
  deeplimits run width-convergence --quick
  deeplimits run width-convergence --set widths=64,128,256 --set seeds=8
  deeplimits run relu-kurtosis --jobs 2                   # on 2 local worker processes (Dask)
  deeplimits run relu-kurtosis --scheduler tcp://host:8786  # on a running Dask cluster
  deeplimits report > results.md
  deeplimits clean --stale

Results go to ./results (or $DEEPLIMITS_RESULTS), figures to ./figures (or $DEEPLIMITS_FIGURES);
quick runs put theirs in the figures folder's quick/ subfolder.
Experiments declared outside experiments/figures/ are found through
$DEEPLIMITS_EXPERIMENT_MODULES (comma-separated module names).
Python API: `import theory; theory.kernels(...)`, `import experiments; experiments.run(...)`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplimits",
        description=(
            "deeplimits: infinite-width and infinite-depth theory of neural networks, "
            "checked against finite networks."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deeplimits {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("list", help="list the experiments (name, paper, what it shows)")

    run = sub.add_parser("run", help="run an experiment's sweep (only missing points), write figure and data")
    run.add_argument("name", help="experiment name (see `deeplimits list`)")
    run.add_argument("--quick", action="store_true", help="the reduced sweep (laptop/CI, under a minute)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="change a config field, e.g. --set widths=64,128,256 --set seeds=8 (repeatable)")
    run.add_argument("--results", metavar="DIR", help="results folder (default: $DEEPLIMITS_RESULTS or ./results)")
    run.add_argument("--figures", metavar="DIR", help="figures folder (default: $DEEPLIMITS_FIGURES or ./figures)")
    run.add_argument("--no-plot", action="store_true", help="compute and store only")
    run.add_argument("--jobs", type=int, metavar="N",
                     help="compute on a local Dask cluster of N worker processes (default: in this process)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="compute on the running Dask cluster of this scheduler, e.g. tcp://host:8786")
    bar = run.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show the progress bar (default: only on a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show the progress bar")

    rep = sub.add_parser("report", help="markdown summary of stored results and figures")
    rep.add_argument("--results", metavar="DIR", help="results folder (default: $DEEPLIMITS_RESULTS or ./results)")
    rep.add_argument("--figures", metavar="DIR", help="figures folder (default: $DEEPLIMITS_FIGURES or ./figures)")

    cln = sub.add_parser("clean", help="remove stored records that the current code would not serve (--stale)")
    cln.add_argument("names", nargs="*", metavar="NAME", help="only these experiments (default: all registered)")
    cln.add_argument("--stale", action="store_true", help="remove the records of older code versions (required)")
    cln.add_argument("--results", metavar="DIR", help="results folder (default: $DEEPLIMITS_RESULTS or ./results)")
    cln.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    return parser


def _error(message: str, code: int) -> int:
    print(f"deeplimits: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``deeplimits``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0

    from experiments.registry import ExperimentModuleError, UsageError, list_experiments, parse_set

    try:
        if args.command == "list":
            infos = list_experiments()
            if not infos:
                print("no experiments registered (they live in experiments/figures/)")
            width = max((len(i.name) for i in infos), default=0)
            for info in infos:
                print(f"{info.name:<{width}}  {info.paper} — {info.summary}")
            return 0

        if args.command == "report":
            from experiments.report import report

            sys.stdout.write(report(args.results, args.figures))
            return 0

        if args.command == "clean":
            from experiments.report import clean_stale

            if not args.stale:
                raise UsageError("say what to remove: `deeplimits clean --stale` removes the records of older code")
            removed = clean_stale(args.results, args.names, dry_run=args.dry_run)
            verb = "would remove" if args.dry_run else "removed"
            for name, count in removed.items():
                print(f"{name}: {verb} {count} stale record{'s' if count != 1 else ''}")
            print(f"{verb} {sum(removed.values())} stale records in all")
            return 0

        from experiments.runner import run

        overrides = parse_set(args.overrides)
        df = run(args.name, quick=args.quick, overrides=overrides, results_dir=args.results,
                 figures_dir=args.figures, progress=args.progress, plot=not args.no_plot, quiet=True,
                 jobs=args.jobs, scheduler=args.scheduler)
        print(df.attrs["summary"])
        return 0
    except (UsageError, ExperimentModuleError) as err:
        return _error(str(err), 2)
    except KeyboardInterrupt:
        return _error("interrupted; every finished point is stored, run the same command again to resume", 130)
    except OSError as err:
        return _error(str(err), 1)


if __name__ == "__main__":
    sys.exit(main())
