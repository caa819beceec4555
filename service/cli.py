"""The `digits` command: one entry point whose subcommands live beside the code they drive.

Each module listed in COMMAND_MODULES exposes `add_commands(subparsers)`, registering its
subcommands with `set_defaults(handler=fn)` where `fn(args) -> int` is the exit code. This is
the only place where `model_export` and `service` meet; neither package imports the other.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "model_export.cli",     # train, export, evaluate
    "service.serve_cli",    # serve
    "service.classify_cli", # classify
    "service.loadtest.cli", # loadtest
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits", description="digit-serving: train, export, evaluate, serve, classify with and load-test "
                                   "the MNIST digit network.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
