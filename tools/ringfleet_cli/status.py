"""`ringfleet status`: a table (or JSON) of a tenant's jobs."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ringfleet_cli import attach
from ringfleet_cli.errors import EXIT_USAGE, CliError
from ringfleet_cli.output import add_output, one_line

__all__ = ["cmd_job_status", "register"]


def _job_row(job: Any, now: float) -> list[str]:
    # Workers report their step in heartbeats (nodes table); the job record knows the last one a recovery saw.
    step = job.recovery.last_step if job.recovery is not None else None
    durable = job.durable_checkpoint.step if job.durable_checkpoint else None
    return [
        job.job_id,
        job.state.value,
        str(job.generation),
        str(job.world_size),
        "-" if step is None else str(step),
        "-" if durable is None else str(durable),
        f"{_cost_so_far(job, now):.2f}",
        _last_event(job),
    ]


def _cost_so_far(job: Any, now: float) -> float:
    """An estimate: workers x hours since the job started at the job's budget rate share, capped by its budget."""
    started = next((i.at for i in job.incidents if i.cause == "started"), None)
    end = job.updated_at.timestamp() if job.is_final and job.updated_at else now
    hours = max(0.0, end - started.timestamp()) / 3600 if started else 0.0
    return float(
        hours * min(job.spec.budget_usd_per_hour, job.spec.budget_usd_per_hour * job.world_size / job.max_workers)
    )


def _last_event(job: Any) -> str:
    """Why a failed job failed, else its last event, on one line."""
    if job.state.value == "FAILED" and job.failure:
        return f"failed: {one_line(job.failure)}"
    if not job.incidents:
        return ""
    last = job.incidents[-1]
    return last.cause + (f": {one_line(last.detail)}" if last.detail else "")


def _job_json(job: Any, row: list[str]) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "state": job.state.value,
        "generation": job.generation,
        "world_size": job.world_size,
        "step": None if row[4] == "-" else int(row[4]),
        "checkpoint_step": None if row[5] == "-" else int(row[5]),
        "cost_usd": float(row[6]),
        "last_event": row[7],
        "failure": job.failure or None,
    }


def cmd_job_status(args: argparse.Namespace) -> int:
    tenant = attach.need_tenant(args)
    client = attach.job_client()
    if client.jobs is None:
        raise CliError("set RINGFLEET_JOBS_TABLE to read job status", EXIT_USAGE)
    jobs = [_one_job(client, tenant, args.job)] if args.job else client.list_jobs(tenant)
    now = time.time()
    body = [(j, _job_row(j, now)) for j in jobs]
    if args.output == "json":
        print(json.dumps([_job_json(j, row) for j, row in body], indent=2))
        return 0
    header = ["JOB", "STATE", "GEN", "WORLD", "STEP", "CHECKPOINT", "COST $", "LAST EVENT"]
    rows = [header] + [row for _, row in body]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _one_job(client: Any, tenant: str, job_id: str) -> Any:
    job = client.job(tenant, job_id)
    if job is None:
        raise CliError(f"no job {job_id!r} of tenant {tenant!r}")
    return job


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet status``."""
    st = sub.add_parser(
        "status",
        help="a table of your jobs: state, generation, world size, step, checkpoint, cost",
        description="One row per job: state, generation (grows at each membership change), world size, step, "
        "newest durable checkpoint's step, an estimate of the cost so far, and the last event.",
    )
    st.add_argument("job", nargs="?", help="only this job")
    attach.add_tenant(st)
    add_output(st)
    st.set_defaults(func=cmd_job_status)
