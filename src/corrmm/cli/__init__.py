"""The ``corrmm`` command line: ``corrmm check`` (default), ``corrmm bench``, ``corrmm demo``."""
from __future__ import annotations

import argparse
import sys

from . import bench, check, demo

COMMANDS = {
    "check": check,
    "bench": bench,
    "demo": demo,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="corrmm", description="GEMM-based convolution for PyTorch")
    sub = parser.add_subparsers(dest="command")
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["check", *(argv or [])])
    return COMMANDS[args.command].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
