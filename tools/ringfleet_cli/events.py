"""`ringfleet events`: a tenant's job events, as they happen with `--follow`."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ringfleet_cli import attach
from ringfleet_cli.errors import EXIT_USAGE, CliError
from ringfleet_cli.output import add_output

__all__ = ["cmd_events", "register"]


def cmd_events(args: argparse.Namespace) -> int:
    """Prints the tenant's job events; with --output json an array, or one object per line with --follow."""
    tenant = attach.need_tenant(args)
    client = attach.job_client()
    if client.jobs is None:
        raise CliError("set RINGFLEET_JOBS_TABLE to read job events", EXIT_USAGE)
    seen: set[tuple[str, str, str, int]] = set()
    deadline = time.monotonic() + args.for_seconds if args.for_seconds else None
    while True:
        _print_events(_new_events(client, tenant, seen), args.output, args.follow)
        if not args.follow or (deadline is not None and time.monotonic() > deadline):
            return 0
        time.sleep(1.0)


def _print_events(found: list[tuple[str, Any]], output: str, follow: bool) -> None:
    """Lines for people; for programs a JSON array, or with ``follow`` one JSON object per line as they come."""
    if output != "json":
        for job_id, incident in found:
            print(_event_text(job_id, incident), flush=True)
    elif follow:
        for job_id, incident in found:
            print(json.dumps(_event_json(job_id, incident)), flush=True)
    else:
        print(json.dumps([_event_json(job_id, incident) for job_id, incident in found], indent=2))


def _new_events(client: Any, tenant: str, seen: set[tuple[str, str, str, int]]) -> list[tuple[str, Any]]:
    """The tenant's job events not in ``seen`` (added to it), as (job id, incident), oldest first."""
    found: list[tuple[Any, str, Any]] = []
    for job in client.list_jobs(tenant):
        for i in job.incidents:
            key = (job.job_id, i.at.isoformat(), i.cause, i.generation)
            if key not in seen:
                seen.add(key)
                found.append((i.at, job.job_id, i))
    found.sort(key=lambda entry: entry[0])  # stable: a job's events keep their order
    return [(job_id, i) for _, job_id, i in found]


def _event_json(job_id: str, i: Any) -> dict[str, Any]:
    return {
        "at": i.at.isoformat(),
        "job_id": job_id,
        "generation": i.generation,
        "cause": i.cause,
        "instance_id": i.instance_id or None,
        "detail": i.detail,
    }


def _event_text(job_id: str, i: Any) -> str:
    # A multi-line detail (a failed script's traceback tail) follows its event, indented.
    first, *more = i.detail.splitlines() or [""]
    detail = f" {first}" if first else ""
    on = f" on {i.instance_id}" if i.instance_id else ""
    text = f"{i.at:%H:%M:%S} {job_id} gen {i.generation} {i.cause}{on}{detail}"
    return "\n".join([text, *(f"    {line}" for line in more)])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet events``."""
    ev = sub.add_parser("events", help="your jobs' events (admitted, started, interrupted, reconfigured, ...)")
    attach.add_tenant(ev)
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    ev.add_argument("--for-seconds", type=float, default=None, help=argparse.SUPPRESS)
    add_output(ev, json_help="a JSON array; with --follow one JSON object per line")
    ev.set_defaults(func=cmd_events)
