"""`ringfleet local emit` and `ringfleet invoke`: one event in, through the path AWS would use or straight to one
handler as `sam local invoke` does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ringfleet_cli import attach
from ringfleet_cli.errors import EXIT_USAGE, CliError

__all__ = ["cmd_emit", "cmd_invoke", "register", "register_emit"]


def _load_event(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{path}: no such file (the samples are in events/)", EXIT_USAGE)
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise CliError(f"{path} is not JSON: {exc}", EXIT_USAGE) from None


def cmd_emit(args: argparse.Namespace) -> int:
    from ringfleet_local.emit import EmitError, apply_overrides, emit

    event = _load_event(args.file)
    if args.body and not Path(args.body).is_file():
        raise CliError(f"--body {args.body}: no such file", EXIT_USAGE)
    try:
        event = apply_overrides(event, args.set or [])
    except (EmitError, ValueError, LookupError, TypeError) as exc:
        raise CliError(f"--set: {exc}", EXIT_USAGE) from None
    ctx = attach.attached()
    body = Path(args.body).read_bytes() if args.body else None
    try:
        for action in emit(ctx, event, body=body):
            print(action)
    except (EmitError, ValueError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    from ringfleet_local.cloud import LocalCloud
    from ringfleet_local.context import CloudContext, LocalState
    from ringfleet_local.router import Router
    from ringfleet_local.template import TemplateError

    event = _load_event(args.event)
    state = LocalState.load(attach.STATE_DIR)
    cloud = None
    if state is not None:
        ctx = CloudContext.from_state(state)
    else:
        # Like `sam local invoke`, work without anything running: a throwaway moto with the template's resources.
        print("no local cloud is up: starting a throwaway one for this invocation", file=sys.stderr)
        cloud = LocalCloud(args.template, route=False).start()
        ctx = cloud.ctx
    try:
        router = Router(ctx, only=set())
        delivery = router.invoke(args.function, event)
        router.stop()
    except TemplateError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        if cloud is not None:
            cloud.stop()
    r = delivery.result
    sys.stderr.write(r.logs)
    print(f"REPORT RequestId: {r.request_id} Duration: {r.duration_ms:.2f} ms", file=sys.stderr)
    if r.ok:
        print(json.dumps(r.result, indent=2, default=str))
        return 0
    print(json.dumps({"errorType": r.error_type, "errorMessage": r.error_message}, indent=2))
    return 1


def register_emit(lsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet local emit``."""
    em = lsub.add_parser(
        "emit",
        help="put an event in through the path AWS would use",
        description="EventBridge events go through put_events, S3 notifications through "
        "put_object, SQS events through send_message, aws:rmq events and ringfleet messages "
        "through RabbitMQ.",
    )
    em.add_argument("file", help="an event file, e.g. events/ec2_spot_interruption_warning.json")
    em.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="override a field, e.g. --set detail.instance-id=i-0123456789abcdef0 (repeatable)",
    )
    em.add_argument("--body", help="with an S3 event: the file to upload as the object's content")
    em.set_defaults(func=cmd_emit)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet invoke``."""
    inv = sub.add_parser(
        "invoke",
        help="invoke one function with an event, like `sam local invoke`",
        description="Runs the handler in its own process with its template environment resolved "
        "to the local cloud (a throwaway one when none is up), and prints its result and logs.",
    )
    inv.add_argument("function", help="the function's logical id in template.yaml, e.g. NodeRecoveryFunction")
    inv.add_argument("--event", "-e", required=True, help="event file, e.g. events/sqs_spot_interruption_warning.json")
    inv.add_argument("--template", default="template.yaml")
    inv.set_defaults(func=cmd_invoke)
