"""The `digits` command: one entry point whose subcommands live beside the code they drive.

Each command module exposes `add_commands(subparsers)`, registering its subcommands with
`set_defaults(handler=fn)` where `fn(args) -> int` is the exit code. This is the only place where
`model_export`, the server and the client tools meet; none of them imports another.
"""

from __future__ import annotations

import argparse
import sys

from model_export import cli as model_commands      # train, export, evaluate
from service.client import cli as classify_command  # classify
from service.loadtest import cli as loadtest_command  # loadtest
from service.server import cli as serve_command      # serve

COMMAND_MODULES = (model_commands, serve_command, classify_command, loadtest_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits", description="digit-serving: train, export, evaluate, serve, classify with and load-test "
                                   "the MNIST digit network.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
