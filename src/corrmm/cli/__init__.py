"""The ``corrmm`` command line: ``corrmm check`` (default), ``corrmm bench``, ``corrmm demo``.

Every bad argument, and a malformed ``CORRMM_*`` environment variable, ends the
command with one line on stderr and exit status 2; ``--help`` on the command or
any subcommand describes every option.
"""
from __future__ import annotations

import argparse
import sys

import corrmm

from .. import config
from . import bench, check, demo
from .usage import UsageError

COMMANDS = {
    "check": check,
    "bench": bench,
    "demo": demo,
}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage summary stays behind ``--help``)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="corrmm", description="GEMM-based convolution for PyTorch. Without a subcommand, "
                     "runs `corrmm check`.")
    parser.add_argument("--version", action="version", version=f"corrmm {corrmm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{check,bench,demo}", parser_class=_Parser)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv=None) -> int:
    """Run the command; returns the exit status (2 for a usage error, after one line on stderr)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            args = parser.parse_args(["check", *argv])
    except SystemExit as exit:  # --help, --version (0) or a parse error (2, already printed)
        return exit.code if isinstance(exit.code, int) else 2
    try:
        config.check_environment()
    except ValueError as err:  # a malformed CORRMM_* variable
        print(f"corrmm: error: {err}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(args) or 0
    except UsageError as err:
        print(f"corrmm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
