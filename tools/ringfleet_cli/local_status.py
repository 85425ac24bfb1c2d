"""`ringfleet local status | env | credentials`: where the running local cloud is and how to use it."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ringfleet_cli import attach
from ringfleet_cli.errors import EXIT_USAGE, CliError
from ringfleet_cli.output import add_output

__all__ = ["cmd_credentials", "cmd_env", "cmd_status", "register", "sam_env_vars"]


def cmd_status(args: argparse.Namespace) -> int:
    ctx = attach.attached()
    path = attach.STATE_DIR / "deliveries.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    deliveries = [json.loads(raw) for raw in lines]
    fleet = attach.fleet_info()
    running = None if fleet is None else _running_instances(ctx)
    if args.output == "json":
        print(json.dumps(_local_status_json(ctx, deliveries, fleet, running), indent=2))
    else:
        _print_local_status(ctx, deliveries, fleet, running)
    return 0


def _running_instances(ctx: Any) -> int:
    """The stack's instances pending or running in the local cloud (those the fleet emulator boots agents on)."""
    pages = (
        ctx.client("ec2")
        .get_paginator("describe_instances")
        .paginate(
            Filters=[
                {"Name": "tag:ringfleet:stack", "Values": [ctx.stack]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
    )
    return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])


def _local_status_json(
    ctx: Any, deliveries: list[dict[str, Any]], fleet: dict[str, Any] | None, running: int | None
) -> dict[str, Any]:
    return {
        "aws_endpoint": ctx.endpoint,
        "broker": ctx.broker_url.split("@")[-1],
        "stack": ctx.stack,
        "functions": {
            lid: [{"name": e.name, "type": e.type} for e in fn.events] for lid, fn in sorted(ctx.functions.items())
        },
        "deliveries": len(deliveries),
        "last_deliveries": deliveries[-10:],
        "fleet": None
        if fleet is None
        else {
            "running_instances": running,
            "agents_booted": len(fleet.get("agents", {})),
            "workdir": fleet["workdir"],
            "log_dir": fleet["log_dir"],
        },
    }


def _print_local_status(
    ctx: Any, deliveries: list[dict[str, Any]], fleet: dict[str, Any] | None, running: int | None
) -> None:
    print(f"AWS (moto) at {ctx.endpoint}; RabbitMQ at {ctx.broker_url.split('@')[-1]}; stack {ctx.stack}")
    for lid, fn in sorted(ctx.functions.items()):
        sources = ", ".join(f"{e.name} ({e.type})" for e in fn.events)
        print(f"  {lid}: {sources}")
    print(f"{len(deliveries)} deliveries so far" + (", the last ones:" if deliveries else ""))
    for d in deliveries[-10:]:
        outcome = "ok" if d["ok"] else f"FAILED {d['error']}"
        print(f"  {time.strftime('%H:%M:%S', time.localtime(d['at']))} {d['function']} <- {d['source']} {outcome}")
    if fleet is not None:
        print(
            f"fleet emulator: {running} instance(s) running; {len(fleet.get('agents', {}))} agent(s) booted so far, "
            f"working in {fleet['workdir']}; "
            f"their logs: {fleet['log_dir']}/<instance-id>.log (`ringfleet logs JOB`)"
        )
    else:
        print("fleet emulator: off (started with --no-fleet)")


def cmd_env(args: argparse.Namespace) -> int:
    ctx = attach.attached()
    if args.sam_env_vars:
        print(json.dumps(sam_env_vars(ctx), indent=2))
        return 0
    for key, value in ctx.aws_environment.items():
        print(f"export {key}={value}")
    print(f"export RINGFLEET_BROKER_URL={ctx.broker_url}")
    return 0


def cmd_credentials(args: argparse.Namespace) -> int:
    """Prints the AMQP URL of one broker role of the running local cloud (``ringfleet_local.broker_roles``)."""
    ctx = attach.attached()
    if args.role == "app" and not args.tenant:
        raise CliError("--role app needs --tenant: each tenant's apps have a broker user of their own", EXIT_USAGE)
    if ctx.roles is None:
        raise CliError("this local cloud runs on a broker given by RINGFLEET_BROKER_URL: it has no per-role users")
    print(attach.app_url(ctx, args.tenant) if args.role == "app" else ctx.role_broker_url(args.role))
    return 0


def sam_env_vars(ctx: Any) -> dict[str, dict[str, str]]:
    """The ``--env-vars`` file of ``sam local invoke``: per function, the template's variables resolved to the local
    cloud's names (tables, buckets, the broker), and the local endpoint and credentials.

    SAM only sets the variables a function's template declares; the AWS_* ones reach the container as SAM passes
    them, so run ``sam local invoke`` with the same shell exports (``eval "$(ringfleet local env)"``) and
    ``--docker-network host`` so that 127.0.0.1 is this machine."""
    out: dict[str, dict[str, str]] = {}
    for lid, fn in sorted(ctx.functions.items()):
        env = {
            key: "" if (value := ctx.resolve(raw, f"{lid}.Environment.{key}")) is None else str(value)
            for key, raw in fn.environment.items()
        }
        env.update(ctx.aws_environment)
        env.update({"POWERTOOLS_TRACE_DISABLED": "true", "RINGFLEET_LOCAL_CLOUD": "1"})
        out[lid] = env
    return out


def register(lsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet local status``, ``local env`` and ``local credentials``."""
    status_help = "endpoints, functions, the last deliveries and where the agents log"
    ls = lsub.add_parser("status", help=status_help, description=status_help)
    add_output(ls)
    ls.set_defaults(func=cmd_status)
    env = lsub.add_parser(
        "env",
        help="print exports that point boto3 / the AWS CLI here",
        description='Prints `export` lines for a shell (eval "$(ringfleet local env)"); with --sam-env-vars the '
        "JSON for `sam local invoke --env-vars env.json --docker-network host`: every function's template variables "
        "resolved to the local cloud's tables, buckets and broker.",
    )
    env.add_argument("--sam-env-vars", action="store_true", help="print sam local invoke's --env-vars JSON instead")
    env.set_defaults(func=cmd_env)
    cred = lsub.add_parser(
        "credentials",
        help="print a broker role's AMQP URL",
        description="Prints the AMQP URL of one broker user of the local cloud's vhost: control (the handlers; the "
        "only user that may publish commands), worker (the agents: worker events only) or app with --tenant (that "
        "tenant's job messages only; the user is created on first use; the tenant must be registered: `ringfleet local "
        "up --tenant NAME`).",
    )
    cred.add_argument("--role", required=True, choices=("app", "worker", "control"))
    cred.add_argument("--tenant", help="with --role app: the tenant whose apps log in with it")
    cred.set_defaults(func=cmd_credentials)
