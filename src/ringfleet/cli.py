"""The `ringfleet` command: the local cloud (up, down, status, emit, env), invoke, and the demo."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

STATE_DIR = Path(os.environ.get("RINGFLEET_STATE_DIR", ".ringfleet"))

EPILOG = """\
examples:
  ringfleet local up                         start moto + router in the background (RabbitMQ must answer)
  ringfleet local emit events/ec2_spot_interruption_warning.json --set detail.instance-id=i-0123456789abcdef0
  ringfleet local status                     endpoints, resources and the last deliveries
  ringfleet invoke NodeRecoveryFunction --event events/sqs_spot_interruption_warning.json
  eval "$(ringfleet local env)"; aws s3 ls   point the AWS CLI / boto3 at the local cloud
  ringfleet local down
"""


def _print_delivery(delivery: Any) -> None:
    r = delivery.result
    stamp = time.strftime("%H:%M:%S", time.localtime(r.started_at))
    outcome = "ok" if r.ok else f"FAILED {r.error_type}: {r.error_message}"
    result = ""
    if r.ok and isinstance(r.result, dict) and r.result.get("batchItemFailures"):
        result = f" ({len(r.result['batchItemFailures'])} batch item failure(s))"
    print(
        f"{stamp} {delivery.function} <- {delivery.source} ({delivery.source_type}) {outcome}{result} "
        f"[{r.duration_ms:.0f} ms]",
        flush=True,
    )


def _append_delivery(delivery: Any) -> None:
    r = delivery.result
    line = {
        "function": delivery.function,
        "source": delivery.source,
        "type": delivery.source_type,
        "ok": r.ok,
        "error": r.error_message,
        "duration_ms": round(r.duration_ms, 1),
        "at": r.started_at,
    }
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / "deliveries.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


def _attached() -> Any:
    from ringfleet.local.context import CloudContext, LocalState

    state = LocalState.load(STATE_DIR)
    if state is None:
        sys.exit("ringfleet: no local cloud is running here; start one with `ringfleet local up`")
    return CloudContext.from_state(state)


def cmd_serve(args: argparse.Namespace) -> int:
    from ringfleet.local.cloud import LocalCloud

    def on_delivery(d: Any) -> None:
        _print_delivery(d)
        _append_delivery(d)

    (STATE_DIR / "deliveries.jsonl").unlink(missing_ok=True)
    cloud = LocalCloud(args.template, state_dir=STATE_DIR, on_delivery=on_delivery)
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with cloud:
        print(
            f"local cloud up: AWS at {cloud.endpoint}, RabbitMQ at {cloud.broker_url.split('@')[-1]}",
            flush=True,
        )
        for kind, names in sorted(cloud.created.items()):
            print(f"  {kind}: {', '.join(names)}", flush=True)
        print(f"routing events to {len(cloud.ctx.functions)} functions; Ctrl-C to stop", flush=True)
        while not stop:
            time.sleep(0.2)
    print("local cloud down", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ringfleet.local.context import LocalState

    if args.foreground:
        return cmd_serve(args)
    if (state := LocalState.load(STATE_DIR)) is not None:
        print(f"the local cloud is already up (pid {state.pid}) at {state.endpoint}")
        return 0
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = STATE_DIR / "local.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ringfleet.cli", "local", "serve", "--template", args.template],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(log_path.read_text(), file=sys.stderr)
            sys.exit(f"ringfleet: the local cloud did not start (log above, also in {log_path})")
        if (state := LocalState.load(STATE_DIR)) is not None:
            print(f"local cloud up (pid {state.pid}): AWS at {state.endpoint}; log: {log_path}")
            print('use it from a shell with: eval "$(ringfleet local env)"')
            return 0
        time.sleep(0.2)
    proc.terminate()
    sys.exit(f"ringfleet: the local cloud did not come up within 60 s; see {log_path}")


def cmd_down(args: argparse.Namespace) -> int:
    from ringfleet.local.context import LocalState

    state = LocalState.load(STATE_DIR)
    if state is None:
        print("no local cloud is running")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and LocalState.load(STATE_DIR) is not None:
        time.sleep(0.2)
    print("local cloud down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ctx = _attached()
    print(f"AWS (moto) at {ctx.endpoint}; RabbitMQ at {ctx.broker_url.split('@')[-1]}; stack {ctx.stack}")
    for lid, fn in sorted(ctx.functions.items()):
        sources = ", ".join(f"{e.name} ({e.type})" for e in fn.events)
        print(f"  {lid}: {sources}")
    path = STATE_DIR / "deliveries.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    print(f"{len(lines)} deliveries so far" + (", the last ones:" if lines else ""))
    for raw in lines[-10:]:
        d = json.loads(raw)
        outcome = "ok" if d["ok"] else f"FAILED {d['error']}"
        print(f"  {time.strftime('%H:%M:%S', time.localtime(d['at']))} {d['function']} <- {d['source']} {outcome}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    ctx = _attached()
    for key, value in ctx.aws_environment.items():
        print(f"export {key}={value}")
    print(f"export RINGFLEET_BROKER_URL={ctx.broker_url}")
    return 0


def _load_event(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        sys.exit(f"ringfleet: {path}: no such file (the samples are in events/)")
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        sys.exit(f"ringfleet: {path} is not JSON: {exc}")


def cmd_emit(args: argparse.Namespace) -> int:
    from ringfleet.local.emit import EmitError, apply_overrides, emit

    ctx = _attached()
    event = _load_event(args.file)
    body = Path(args.body).read_bytes() if args.body else None
    try:
        for action in emit(ctx, apply_overrides(event, args.set or []), body=body):
            print(action)
    except (EmitError, ValueError) as exc:
        sys.exit(f"ringfleet: {exc}")
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    from ringfleet.local.cloud import LocalCloud
    from ringfleet.local.context import CloudContext, LocalState
    from ringfleet.local.router import Router
    from ringfleet.local.template import TemplateError

    event = _load_event(args.event)
    state = LocalState.load(STATE_DIR)
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
        sys.exit(f"ringfleet: {exc}")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from ringfleet.demo import run_demo

    return run_demo(template=args.template, fast=args.fast)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringfleet",
        description="ringfleet: distributed training on spot GPU fleets. This command runs the local cloud "
        "(moto + RabbitMQ + an event router that delivers events to the handlers exactly as template.yaml wires "
        "them), invokes handlers like `sam local invoke`, and runs the demo.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser(
        "local",
        help="run the local cloud",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lsub = local.add_subparsers(dest="local_command", required=True)
    up = lsub.add_parser("up", help="start moto, create the template's resources, route events (background)")
    up.add_argument("--template", default="template.yaml")
    up.add_argument("--foreground", action="store_true", help="stay attached and print every delivery")
    up.set_defaults(func=cmd_up)
    serve = lsub.add_parser("serve", help=argparse.SUPPRESS)
    serve.add_argument("--template", default="template.yaml")
    serve.set_defaults(func=cmd_serve)
    lsub.add_parser("down", help="stop the local cloud").set_defaults(func=cmd_down)
    lsub.add_parser("status", help="endpoints, functions and the last deliveries").set_defaults(func=cmd_status)
    lsub.add_parser("env", help="print exports that point boto3 / the AWS CLI here").set_defaults(func=cmd_env)
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

    demo = sub.add_parser("demo", help="bring the local cloud up and route events end to end")
    demo.add_argument("--fast", action="store_true", help="the short scenario (what the tests run)")
    demo.add_argument("--template", default="template.yaml")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
