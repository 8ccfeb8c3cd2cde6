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
    from curvlab.guards import get_memory_budget

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)  # exits 2 with a message on bad options
    args.argv = argv  # which options were given (presets change only the defaults of the others)
    try:
        get_memory_budget()  # a bad CURVLAB_MEMORY_BUDGET is reported before any work
        return int(args.run(args) or 0)
    except (UsageError, CurvlabError, OSError, ValueError) as err:  # OSError: unreadable or unwritable paths
        parser.exit(2, f"curvlab {args.command}: error: {_one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (an OSError as 'strerror: filename')."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.strerror}: {err.filename}"
    else:
        text = str(err).strip() or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
