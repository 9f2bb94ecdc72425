"""``adaptkern`` command line. Each subcommand lives in its own module of this package,
exposing ``register(subparsers)``, which adds a parser whose ``func`` runs it."""

import argparse
import importlib
import sys

from ._types import Parser

# Subcommand modules, in the order `adaptkern --help` lists them.
SUBCOMMANDS = ["info", "fit", "demo", "train", "flops", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="adaptkern",
        description="Kernels, exact FLOP accounting and scaling laws for adaptive-shape training.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"adaptkern.cli.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 for bad input, with one line on
    stderr saying which flag and what it must be)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a flag argparse refused (2): a status, as run errors give
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
