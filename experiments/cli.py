"""The ``deeplimits`` command line (the experiment runner arrives with the runner issue)."""

from __future__ import annotations

import argparse
import sys

from theory import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplimits",
        description=(
            "deeplimits: infinite-width and infinite-depth theory of neural networks, "
            "checked against finite networks. Python API: `import theory; theory.kernels(...)`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"deeplimits {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(f"deeplimits {__version__}: no subcommands yet; see `deeplimits --help`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
