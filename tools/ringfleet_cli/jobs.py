"""`ringfleet submit | cancel | upgrade`: the commands that send a job message, and wait for what it caused."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from ringfleet_cli import attach
from ringfleet_cli.errors import EXIT_OK, EXIT_USAGE, CliError
from ringfleet_cli.output import one_line

__all__ = ["cmd_cancel", "cmd_submit", "cmd_upgrade", "register"]


def _wait_for_job(client: Any, job_id: str, timeout: float) -> Any:
    """The job record once intake wrote it, or None after ``timeout``; shows the wait on stderr meanwhile."""
    started = time.monotonic()
    deadline = started + timeout
    live = sys.stderr.isatty()
    if not live:
        print(f"waiting up to {timeout:.0f} s for job intake to admit {job_id} ...", file=sys.stderr, flush=True)
    try:
        while time.monotonic() < deadline:
            job = client.jobs.get(job_id) if client.jobs is not None else None
            if job is not None:
                return job
            if live:
                waited = time.monotonic() - started
                sys.stderr.write(f"\rwaiting for job intake to admit {job_id} ... {waited:.0f} s / {timeout:.0f} s")
                sys.stderr.flush()
            time.sleep(0.2)
        return None
    finally:
        if live:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _instance_catalog() -> tuple[Any, str]:
    """The instance catalog the job is checked against, and where it came from: the running local cloud's (refreshed
    there first if it has none yet), the deployed stack's catalog table (RINGFLEET_CATALOG_TABLE), or, with neither,
    the one a local cloud would read."""
    import os

    from ringfleet_local.context import CloudContext, LocalState

    from ringfleet.adapters.instance_catalog import DynamoDbInstanceCatalogStore

    state = LocalState.load(attach.STATE_DIR)
    if state is not None:
        from ringfleet.adapters.instance_catalog import Ec2InstanceTypes, PricingOnDemandPrices
        from ringfleet.core.ports import SystemClock
        from ringfleet.scaling.catalog_service import (
            INSTANCE_TYPES_ENV,
            InstanceCatalogService,
            instance_types_from_env,
        )

        ctx = CloudContext.from_state(state)
        env = ctx.function_environment("JobIntakeFunction")
        service = InstanceCatalogService(
            instance_types=instance_types_from_env(env.get(INSTANCE_TYPES_ENV)),
            ec2=Ec2InstanceTypes(ec2_client=ctx.client("ec2")),
            pricing=PricingOnDemandPrices(pricing_client=ctx.client("pricing")),
            store=DynamoDbInstanceCatalogStore(env["CATALOG_TABLE"], boto3_resource=ctx.resource("dynamodb")),
            clock=SystemClock(),
        )
        return service.current(), "the local cloud's instance catalog"
    table = os.environ.get("RINGFLEET_CATALOG_TABLE")
    if table:
        catalog = DynamoDbInstanceCatalogStore(table).load()
        if catalog is None:
            raise CliError(
                f"the catalog table {table} holds no catalog yet: invoke the stack's InstanceCatalogFunction"
            )
        return catalog, f"the instance catalog in {table}"
    from ringfleet_local.catalog import local_catalog

    return local_catalog(), "the local cloud's instance catalog (none running here; RINGFLEET_CATALOG_TABLE unset)"


def _dry_run(message: Any, catalog: Any, source: str) -> None:
    """Prints what the job would get: per instance type asked for, the slots (training processes) it runs there, one
    per GPU up to its slots_per_instance, and the on-demand price; then what it holds of its tenant's quota."""
    from ringfleet.intake.quotas import gpus_per_instance, held_by

    print(
        f"valid: {message.job_id} for tenant {message.tenant}, {message.min_workers}..{message.max_workers} "
        f"workers on {', '.join(message.instance_types)} (nothing sent)"
    )
    print(f"instance types, from {source}:")
    for name in message.instance_types:
        t = catalog.types[name]
        slots = message.slots_on(t.gpus)
        memory = f", {t.gpu_memory_mib // 1024} GiB each" if t.gpu_memory_mib else ""
        idle = f"; slots_per_instance {message.slots_per_instance}: {t.gpus - slots} idle" if slots < t.gpus else ""
        print(
            f"  {name}: {slots} slot{'s' if slots != 1 else ''} ({t.gpus} x {t.gpu_name or 'GPU'}{memory}{idle}), "
            f"on-demand ${t.on_demand_per_hour:.3f}/h"
        )
    held = held_by(message, catalog)
    print(
        f"quota: holds up to {held.gpus} GPUs ({message.max_workers} workers x {gpus_per_instance(message, catalog)}) "
        f"and ${held.usd_per_hour:.2f}/h of tenant {message.tenant}'s"
    )


def cmd_submit(args: argparse.Namespace) -> int:
    from ringfleet_client import Rejected, apply_job_overrides, check_job, load_job_file

    from ringfleet.intake.quotas import check_min_workers_budget

    try:
        fields = apply_job_overrides(load_job_file(args.file), args.set or [])
        if args.dry_run:
            check_job(fields)  # the contract first: a file that is not a job needs no catalog to be refused
            catalog, source = _instance_catalog()
            message = check_job(fields, catalog.names())
            # intake's own check, so that a dry run never says valid of a job intake then rejects
            over = check_min_workers_budget(message, {n: catalog.on_demand(n) for n in catalog.names()})
            if over:
                raise Rejected(over)
            _dry_run(message, catalog, source)
            return EXIT_OK
        # The contract before the tenant is looked up: a tenant id it refuses is "not registered" too, and the
        # advice that comes with that (`local up --tenant`) refuses the same id.
        message = check_job(fields)
        client = attach.job_client(message.tenant)
        message = client.submit(fields)
    except Rejected as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(f"submitted {message.job_id} for tenant {message.tenant} (message {message.message_id})")
    if not args.no_wait and client.jobs is not None:
        _await_admission(client, message, args.timeout)
    return EXIT_OK


def _await_admission(client: Any, message: Any, timeout: float) -> None:
    """Waits for job intake's word on ``message``: admitted is printed, anything else raises with the reason."""
    job = _wait_for_job(client, message.job_id, timeout)
    if job is None:
        raise CliError(f"no word from job intake within {timeout:.0f} s; see `ringfleet status`")
    if job.tenant != message.tenant or job.spec.message_id != message.message_id:
        raise CliError(f"job rejected: job id {message.job_id!r} is already taken")
    if job.state.value == "FAILED":
        reason = job.failure or next((i.detail for i in job.incidents if i.cause == "rejected"), "rejected")
        raise CliError(f"job rejected: {one_line(reason, 400)}")
    print(f"admitted: {job.job_id} is {job.state.value}")


def cmd_cancel(args: argparse.Namespace) -> int:
    from ringfleet_client import Rejected

    try:
        tenant = attach.need_tenant(args)
        attach.job_client(tenant).cancel(tenant, args.job, args.reason)
    except Rejected as exc:
        raise CliError(str(exc)) from None
    print(f"cancel of {args.job} sent")
    return 0


_UPGRADE_STEPS = ("upgrade-started", "upgrade-progressed", "upgrade-completed", "upgrade-rolled-back")


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Sends UpgradeJob, then prints the upgrade's steps from the job's events until it completes or rolls back."""
    from ringfleet_client import Rejected

    entrypoint = shlex.split(args.entrypoint) if args.entrypoint else None
    try:
        tenant = attach.need_tenant(args)
        client = attach.job_client(tenant)
        message = client.upgrade(tenant, args.job, args.image, entrypoint)
    except Rejected as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(f"upgrade of {args.job} to {args.image} sent (message {message.message_id})", flush=True)
    if args.no_wait or client.jobs is None:
        return 0
    return _follow_upgrade(client, tenant, args.job, str(message.message_id), args.timeout)


def _follow_upgrade(client: Any, tenant: str, job_id: str, reference: str, timeout: float) -> int:
    """Prints each upgrade step of the job (from the one ``reference`` started) as it happens."""
    deadline = time.monotonic() + timeout
    shown = 0
    while time.monotonic() < deadline:
        job = client.job(tenant, job_id)
        steps = _upgrade_steps(job, reference)
        for incident in steps[shown:]:
            print(f"{incident.cause}: {one_line(incident.detail, 400)}", flush=True)
        shown = len(steps)
        if steps and steps[-1].cause in ("upgrade-completed", "upgrade-rolled-back"):
            return 0 if steps[-1].cause == "upgrade-completed" else 1
        if job is not None and job.is_final:
            raise CliError(f"upgrade of {job_id} did not finish: the job is {job.state.value}")
        time.sleep(1.0)
    raise CliError(f"upgrade of {job_id} still running after {timeout:.0f} s; follow it with `ringfleet events`")


def _upgrade_steps(job: Any, reference: str) -> list[Any]:
    """The job's upgrade events from the upgrade-started that names ``reference`` on, oldest first."""
    incidents = list(job.incidents) if job is not None else []
    start = next((n for n, i in enumerate(incidents) if i.cause == "upgrade-started" and reference in i.detail), None)
    return [] if start is None else [i for i in incidents[start:] if i.cause in _UPGRADE_STEPS]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet submit``, ``cancel`` and ``upgrade``."""
    submit = sub.add_parser(
        "submit",
        help="validate a job file and send it to job intake",
        description="Reads a YAML job file (see examples/digits/job.yaml), checks every field against the JobSubmitted "
        "contract (workers 1..1024 with max >= min, a positive budget, known instance type names, ...) and "
        "publishes it to the broker with publisher confirms. Then waits for job intake to admit it or say why not "
        "(tenant quotas: GPUs and $/h; a job holds every GPU of its largest instance type, per worker). A refused "
        "job exits non-zero with the reason. An instance runs one training process per GPU (a slot); the job's "
        "optional slots_per_instance runs at most that many. On the local cloud the job's "
        "entrypoint runs in the directory `ringfleet local up` was run from (relative paths resolve there). A script "
        "that fails is run again up to max_restarts times (default 3); one more failure ends the job FAILED.",
    )
    submit.add_argument("file", help="a job file, e.g. examples/digits/job.yaml")
    submit.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field, e.g. --set job_id=j2")
    submit.add_argument("--no-wait", action="store_true", help="return once the broker confirmed the message")
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the job file offline (fields, and instance types the market knows), show the slots and "
        "price of each of its instance types and the quota it holds, and send nothing",
    )
    submit.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for admission (default 30)")
    submit.set_defaults(func=cmd_submit)
    cancel = sub.add_parser(
        "cancel", help="cancel one of your jobs", description="Stops the job's workers; it ends CANCELLED."
    )
    cancel.add_argument("job", help="the job id")
    attach.add_tenant(cancel)
    cancel.add_argument("--reason", default="cancelled by its tenant", help="why, for the job's event log")
    cancel.set_defaults(func=cmd_cancel)
    upgrade = sub.add_parser(
        "upgrade",
        help="replace a running job's workers with a new version, one at a time",
        description="A rolling upgrade through the elastic ring: each new worker joins before an old one leaves; "
        "the job never stops. A new worker that fails (say it cannot restore the checkpoint) rolls the upgrade back.",
    )
    upgrade.add_argument("job", help="the job id")
    upgrade.add_argument("--image", required=True, help="the new container image")
    upgrade.add_argument("--entrypoint", help="the new entrypoint, one shell-quoted string (default: the job's)")
    attach.add_tenant(upgrade)
    upgrade.add_argument("--no-wait", action="store_true", help="return once the broker confirmed the message")
    upgrade.add_argument("--timeout", type=float, default=600.0, help="seconds to follow the upgrade (default 600)")
    upgrade.set_defaults(func=cmd_upgrade)
