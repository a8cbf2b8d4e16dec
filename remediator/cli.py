"""The ``remediator`` command.

Each command group lives beside the code it drives and registers itself here: ``run`` and
``fence`` in ``remediator.controller_cli``, ``lab`` in ``remediator.lab.cli``, ``bmc`` in
``remediator.fencing.cli``. This module only builds the parser,
runs the chosen command and turns project errors into one clear line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from remediator import __version__
from remediator.errors import RemediatorError

#: A command: takes the parsed arguments, returns the process exit status.
Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remediator",
        description="Fence failed Kubernetes nodes through their BMCs and bring their workloads back.",
    )
    parser.add_argument("--version", action="version", version=f"remediator {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    from remediator import controller_cli, vm_cli
    from remediator.fencing import cli as bmc_cli
    from remediator.lab import cli as lab_cli

    controller_cli.register(groups)
    lab_cli.register(groups)
    bmc_cli.register(groups)
    vm_cli.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command: Command = args.command
    try:
        return command(args)
    except RemediatorError as exc:
        print(f"remediator: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("remediator: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
