"""The `ringfleet` command: assembles the parser from each command group's ``register(subparsers)`` and runs one
command, turning a user's mistake or a refusal into one line on stderr and an exit code.

The groups: ``local`` (up, down, serve), ``local_status`` (local status, env, credentials), ``invoke`` (invoke, local
emit), ``demo``, ``jobs`` (submit, cancel, upgrade), ``status``, ``events`` and ``logs``."""

from __future__ import annotations

import argparse
import logging
import sys

from ringfleet_cli import demo, events, invoke, jobs, local, logs, status
from ringfleet_cli.epilog import EPILOG
from ringfleet_cli.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "main",
]

#: Each command group, in the order `ringfleet --help` lists them.
GROUPS = (local, invoke, demo, jobs, status, events, logs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ringfleet")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringfleet",
        description="ringfleet: distributed training on spot GPU fleets. This command runs the local cloud "
        "(moto + RabbitMQ + an event router that delivers events to the handlers exactly as template.yaml wires "
        "them), invokes handlers like `sam local invoke`, and runs the demo.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def _unreachable(exc: BaseException) -> bool:
    """A broker or endpoint that does not answer (refused, unknown host, closed), whichever library noticed."""
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True
    names = {f"{t.__module__}.{t.__name__}" for t in type(exc).__mro__}
    return bool(
        names
        & {
            "aiormq.exceptions.AMQPConnectionError",
            "botocore.exceptions.EndpointConnectionError",
            "botocore.exceptions.ConnectionClosedError",
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Runs one command; a user's mistake or a refusal is one line on stderr and an exit code, never a traceback
    (``--debug`` shows it)."""
    args = build_parser().parse_args(argv)
    if not args.debug and args.func is not local.cmd_serve:
        # The broker libraries log a failed connect before raising it; the raise becomes our one line.
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as exc:
        if args.debug:
            raise
        return _report(exc)


def _report(exc: Exception | KeyboardInterrupt) -> int:
    """One line on stderr for what ended a command, and the exit code `ringfleet --help` documents for it."""
    if isinstance(exc, CliError):
        print(f"ringfleet: {exc}", file=sys.stderr)
        return exc.code
    if isinstance(exc, KeyboardInterrupt):
        print(file=sys.stderr)  # end the line ^C was echoed on
        return EXIT_INTERRUPTED
    what = " ".join(str(exc).split()) or type(exc).__name__
    if _unreachable(exc):
        print(f"ringfleet: cannot reach the broker or AWS ({what}); is the local cloud up?", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"ringfleet: {type(exc).__name__}: {what} (run with --debug for the traceback)", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
