"""Command line: argument parsing and exit codes, nothing else.

Each sub-command lives in its own module here with ``register(subparsers)``, which adds its
parser and sets ``handler`` (``(argparse.Namespace) -> int``). Exit codes: 0 ok, 1 runtime
failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from gpuguardd import __version__
from gpuguardd.cli import (
    allocate,
    check_config,
    ctl,
    evaluate,
    fit,
    probe,
    profile,
    run,
    simulate,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Order = order in --help.
COMMANDS: tuple[ModuleType, ...] = (
    run,
    check_config,
    simulate,
    evaluate,
    allocate,
    fit,
    profile,
    probe,
    ctl,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 on usage errors; keep that
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuguardd", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"gpuguardd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
