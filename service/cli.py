"""The `digits` command: one entry point whose subcommands live beside the code they drive.

Each command module exposes `add_commands(subparsers)`, registering its subcommands with
`set_defaults(handler=fn)` where `fn(args) -> int` is the exit code. This is the only place where
`model_export`, the server and the client tools meet; none of them imports another.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from model_export import cli as model_commands  # train, export, evaluate
from service.client import cli as classify_command  # classify
from service.loadtest import cli as loadtest_command  # loadtest
from service.server import cli as serve_command  # serve
from service.version import package_version

COMMAND_MODULES = (model_commands, serve_command, classify_command, loadtest_command)


class OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line (what is wrong, and where the help is) and exit code 2: argparse's
    default prints the whole usage first, for `digits serve` twenty lines that hide the reason.
    Subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="digits", description="digit-serving: train, export, evaluate, serve, classify with and load-test "
                                   "the MNIST digit network.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
