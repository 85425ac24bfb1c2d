"""What a command talks to: the local cloud running here (its state directory), or the broker and jobs table that
RINGFLEET_BROKER_URL and RINGFLEET_JOBS_TABLE name in AWS; and whose jobs it is about."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ringfleet_cli.errors import EXIT_UNREACHABLE, EXIT_USAGE, CliError

__all__ = [
    "FLEET_FILE",
    "STATE_DIR",
    "add_tenant",
    "app_url",
    "attached",
    "fleet_info",
    "job_client",
    "need_tenant",
]

STATE_DIR = Path(os.environ.get("RINGFLEET_STATE_DIR", ".ringfleet"))
#: Where `local serve` says where its fleet's agents log and run (written once the fleet emulator is up).
FLEET_FILE = "fleet.json"

_TENANT_HELP = "the tenant whose jobs these are (default: $RINGFLEET_TENANT)"


def attached() -> Any:
    """The running local cloud's context; none running here is a one-line error that says how to start one."""
    from ringfleet_local.context import CloudContext, LocalState

    state = LocalState.load(STATE_DIR)
    if state is None:
        raise CliError("no local cloud is running here; start one with `ringfleet local up`", EXIT_UNREACHABLE)
    return CloudContext.from_state(state)


def fleet_info() -> dict[str, Any] | None:
    """What `local serve` wrote about its fleet emulator (where the agents work and log), or None: no fleet."""
    path = STATE_DIR / FLEET_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def job_client(tenant: str | None = None) -> Any:
    """A client on the running local cloud, or on RINGFLEET_BROKER_URL / RINGFLEET_JOBS_TABLE in AWS.

    With ``tenant`` (a command that publishes a job message) the local cloud's client logs in as that tenant's app
    user, as the tenant's apps would: intake takes the tenant from the broker user, and only the control plane's
    user may speak for any tenant. The tenant must be registered in the local cloud; in AWS, RINGFLEET_BROKER_URL is
    the tenant's app user's URL."""
    from ringfleet_client import RingfleetClient
    from ringfleet_local.context import CloudContext, LocalState

    from ringfleet.adapters.dynamodb import DynamoDbJobRepository
    from ringfleet.core.ports import SystemClock

    state = LocalState.load(STATE_DIR)
    if state is not None:
        ctx = CloudContext.from_state(state)
        table = str(ctx.resolve({"Ref": "JobsTable"}))
        repository = DynamoDbJobRepository(table, clock=SystemClock(), boto3_resource=ctx.resource("dynamodb"))
        return RingfleetClient(app_url(ctx, tenant) if tenant else ctx.broker_url, repository)
    url, jobs_table = os.environ.get("RINGFLEET_BROKER_URL"), os.environ.get("RINGFLEET_JOBS_TABLE")
    if not url:
        raise CliError(
            "no local cloud is up here and RINGFLEET_BROKER_URL is not set; start one with `ringfleet local up`",
            EXIT_UNREACHABLE,
        )
    jobs = DynamoDbJobRepository(jobs_table, clock=SystemClock()) if jobs_table else None
    return RingfleetClient(url, jobs)


def app_url(ctx: Any, tenant: str) -> str:
    """The broker URL of ``tenant``'s app user on the local cloud ``ctx``; a tenant it has not registered is a usage
    error that says how to register it."""
    try:
        ctx.require_registered(tenant)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return str(ctx.role_broker_url("app", tenant))


def need_tenant(args: argparse.Namespace) -> str:
    tenant: str = args.tenant
    if not tenant:
        raise CliError("whose jobs? pass --tenant NAME or set RINGFLEET_TENANT", EXIT_USAGE)
    return tenant


def add_tenant(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=_TENANT_HELP)
