"""Entry point of the ``curvlab`` command.

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` and ``run(args) -> int``.
Bad options and bad input exit with code 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

_COMMANDS = ("compute", "analyze", "show")


class UsageError(Exception):
    """A bad option value found after parsing; reported with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``curvlab`` parser with one sub-parser per command module."""
    parser = argparse.ArgumentParser(
        prog="curvlab", description="Curvature analysis for PyTorch models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"curvlab.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"curvlab.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 bad usage or input)."""
    from curvlab.errors import CurvlabError

    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a message on bad options
    try:
        return int(args.run(args) or 0)
    except (UsageError, CurvlabError, FileExistsError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"curvlab {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
