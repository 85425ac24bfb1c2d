"""The `ringfleet` command: jobs (submit, cancel, status, events, logs), the local cloud (up, down, status, emit,
env), invoke, and the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_UNREACHABLE", "EXIT_USAGE", "CliError", "main"]

#: Exit codes, as `ringfleet --help` lists them.
EXIT_OK = 0
#: What was asked was refused or failed: a job rejected, a handler that failed, no answer in time.
EXIT_FAILED = 1
#: The command line or a file it names is wrong: unknown option, missing or malformed file, bad --set, invalid job.
EXIT_USAGE = 2
#: Nothing to talk to: no local cloud is running and RINGFLEET_BROKER_URL is unset, or the broker / AWS endpoint
#: does not answer.
EXIT_UNREACHABLE = 3
#: Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A mistake or refusal the user can act on: printed as one line on stderr, the process exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


STATE_DIR = Path(os.environ.get("RINGFLEET_STATE_DIR", ".ringfleet"))
#: Where `local serve` says where its fleet's agents log and run (written once the fleet emulator is up).
FLEET_FILE = "fleet.json"
#: Seconds the agents get to end after SIGTERM when the local cloud goes down, before SIGKILL ends their groups.
AGENT_GRACE_S = 10.0

EPILOG = """\
examples:
  ringfleet local up                         start moto + router + fleet emulator in the background (RabbitMQ must
                                             answer); every instance the fleet scaler launches boots an agent
                                             here, in the directory `local up` ran from
  ringfleet local emit events/ec2_spot_interruption_warning.json --set detail.instance-id=i-0123456789abcdef0
  ringfleet local status                     endpoints, resources and the last deliveries
  ringfleet invoke NodeRecoveryFunction --event events/sqs_spot_interruption_warning.json
  eval "$(ringfleet local env)"; aws s3 ls   point the AWS CLI / boto3 at the local cloud
  ringfleet local down

jobs (against the local cloud when one is up, else RINGFLEET_BROKER_URL + RINGFLEET_JOBS_TABLE):
  ringfleet submit examples/digits/job.yaml         validate a job file and publish it (waits for admission)
  ringfleet status --tenant acme             a table of the tenant's jobs; `ringfleet status JOB` for one
  ringfleet cancel digits-demo --tenant acme
  ringfleet upgrade digits-demo --tenant acme --image acme/digits:2   replace its workers one at a time
  ringfleet events --tenant acme --follow    job events (admitted, started, interrupted, ...) as they happen
  ringfleet logs digits-demo --tenant acme -f   the job's agents' logs (local cloud only)

read commands (status, events, local status) take --output table|json; --debug shows a traceback on errors.

exit codes:
  0    done
  1    refused or failed: a job rejected by intake, a handler that failed, no answer within --timeout
  2    usage: an unknown option, a missing or malformed file (YAML errors give line and column), a bad --set,
       a job that fails validation (`submit --dry-run` checks one offline)
  3    nothing to talk to: no local cloud is running here and RINGFLEET_BROKER_URL is unset, or it does not answer
  130  interrupted (Ctrl-C)
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
    from ringfleet_local.context import CloudContext, LocalState

    state = LocalState.load(STATE_DIR)
    if state is None:
        raise CliError("no local cloud is running here; start one with `ringfleet local up`", EXIT_UNREACHABLE)
    return CloudContext.from_state(state)


def _start_fleet(cloud: Any, replay: Any = None) -> Any:
    """The fleet emulator, as the demo runs it: every instance the fleet scaler launches boots an agent
    (``python -m training_worker`` with no job: it learns the job from its first Reconfigure), working in this
    directory so that a job's entrypoint (``python examples/digits/train.py``) resolves here, logging to
    ``<state dir>/workers/<instance-id>.log``."""
    from ringfleet_local.fleet import FleetEmulator

    log_dir = (STATE_DIR / "workers").resolve()
    fleet_file = STATE_DIR / FLEET_FILE
    info: dict[str, Any] = {"log_dir": str(log_dir), "workdir": str(Path.cwd()), "agents": {}}

    def write_info() -> None:
        tmp = fleet_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(fleet_file)

    def on_event(kind: str, detail: dict[str, Any]) -> None:
        if kind == "worker-started":
            instance = detail["instance_id"]
            info["agents"][instance] = detail["pid"]
            write_info()
            print(f"fleet emulator: instance {instance} boots an agent (pid {detail['pid']})", flush=True)

    emulator = FleetEmulator(cloud.ctx, log_dir=log_dir, on_event=on_event, workdir=Path.cwd(), replay=replay)
    write_info()
    emulator.start()
    print(f"fleet emulator: agents work in {info['workdir']} and log to {log_dir}/<instance-id>.log", flush=True)
    return emulator


def _trace_replay(args: argparse.Namespace) -> Any:
    from ringfleet_local.spot_traces import TraceError, replay_from_options

    try:
        return replay_from_options(getattr(args, "spot_traces", None), getattr(args, "trace_speed", 1.0))
    except TraceError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _tenant_registry(args: argparse.Namespace) -> Any:
    """The tenant registry ``local up`` runs with (``--tenant``, ``--tenant-registry``; default the local tenants)."""
    from ringfleet_local.cloud import registry_from_options

    try:
        return registry_from_options(args.tenants, args.tenant_registry)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _tenant_options(args: argparse.Namespace) -> list[str]:
    options = [f"--tenant={t}" for t in args.tenants or ()]
    return options + ([f"--tenant-registry={args.tenant_registry}"] if args.tenant_registry else [])


def _trace_options(args: argparse.Namespace) -> list[str]:
    if not getattr(args, "spot_traces", None):
        return []
    return ["--spot-traces", str(args.spot_traces), "--trace-speed", str(args.trace_speed)]


def cmd_serve(args: argparse.Namespace) -> int:
    from ringfleet_local.cloud import LocalCloud

    def on_delivery(d: Any) -> None:
        _print_delivery(d)
        _append_delivery(d)

    (STATE_DIR / "deliveries.jsonl").unlink(missing_ok=True)
    # Built before the cloud: the fleet scaler's processes get it in their environment and refuse launches beyond
    # what the traces have, at the same moment of the trace as the emulator's interruptions.
    replay = _trace_replay(args)
    cloud = LocalCloud(
        args.template,
        state_dir=STATE_DIR,
        on_delivery=on_delivery,
        function_env=replay.environment() if replay is not None else None,
        tenants=_tenant_registry(args),
    )
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
        print(f"  registered tenants: {', '.join(sorted(cloud.tenants.tenants)) or 'none'}", flush=True)
        emulator = _start_fleet(cloud, replay) if args.fleet else None
        try:
            print(f"routing events to {len(cloud.ctx.functions)} functions; Ctrl-C to stop", flush=True)
            while not stop:
                time.sleep(0.2)
        finally:
            # Before the cloud goes: the agents get SIGTERM while the broker and moto still answer them.
            if emulator is not None:
                emulator.stop(grace_s=AGENT_GRACE_S)
                (STATE_DIR / FLEET_FILE).unlink(missing_ok=True)
                print("fleet emulator: every agent stopped", flush=True)
    print("local cloud down", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ringfleet_local.context import LocalState

    if args.foreground:
        return cmd_serve(args)
    if (state := LocalState.load(STATE_DIR)) is not None:
        print(f"the local cloud is already up (pid {state.pid}) at {state.endpoint}")
        return 0
    # A trace folder that cannot be replayed is refused here, in one line, not in the background process's log.
    _trace_replay(args)
    _tenant_registry(args)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = STATE_DIR / "local.log"
    with log_path.open("w") as log:
        command = [sys.executable, "-m", "ringfleet_cli.main", "local", "serve", "--template", args.template]
        proc = subprocess.Popen(
            [*command, *([] if args.fleet else ["--no-fleet"]), *_trace_options(args), *_tenant_options(args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(log_path.read_text(), file=sys.stderr)
            raise CliError(f"the local cloud did not start (log above, also in {log_path})", EXIT_UNREACHABLE)
        if (state := LocalState.load(STATE_DIR)) is not None:
            print(f"local cloud up (pid {state.pid}): AWS at {state.endpoint}; log: {log_path}")
            if args.fleet:
                print(
                    f"fleet emulator: each instance boots an agent working in {Path.cwd()}, "
                    f"logging to {(STATE_DIR / 'workers').resolve()}/<instance-id>.log"
                )
            print('use it from a shell with: eval "$(ringfleet local env)"')
            return 0
        time.sleep(0.2)
    proc.terminate()
    raise CliError(f"the local cloud did not come up within 60 s; see {log_path}", EXIT_UNREACHABLE)


def cmd_down(args: argparse.Namespace) -> int:
    from ringfleet_local.context import LocalState

    state = LocalState.load(STATE_DIR)
    if state is None:
        print("no local cloud is running")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    # It stops its agents first (SIGTERM, then SIGKILL after AGENT_GRACE_S), then the router and moto.
    deadline = time.monotonic() + AGENT_GRACE_S + 50
    while time.monotonic() < deadline and LocalState.load(STATE_DIR) is not None:
        time.sleep(0.2)
    if LocalState.load(STATE_DIR) is not None:
        # Stuck: end it and what it started in its session (moto); agents lead groups of their own.
        _kill_group(state.pid)
        _kill_agents()
        (STATE_DIR / "local.json").unlink(missing_ok=True)
    print("local cloud down")
    return 0


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _kill_agents() -> None:
    """SIGKILLs the process group of every agent a killed `local serve` left behind (its fleet file lists them)."""
    path = STATE_DIR / FLEET_FILE
    if not path.is_file():
        return
    for pid in json.loads(path.read_text()).get("agents", {}).values():
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # still the agent's own group, not a recycled pid
                _kill_group(pid)
    path.unlink(missing_ok=True)


def cmd_status(args: argparse.Namespace) -> int:
    ctx = _attached()
    path = STATE_DIR / "deliveries.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    deliveries = [json.loads(raw) for raw in lines]
    fleet = _fleet_info()
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


def _fleet_info() -> dict[str, Any] | None:
    path = STATE_DIR / FLEET_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def cmd_env(args: argparse.Namespace) -> int:
    ctx = _attached()
    if args.sam_env_vars:
        print(json.dumps(sam_env_vars(ctx), indent=2))
        return 0
    for key, value in ctx.aws_environment.items():
        print(f"export {key}={value}")
    print(f"export RINGFLEET_BROKER_URL={ctx.broker_url}")
    return 0


def cmd_credentials(args: argparse.Namespace) -> int:
    """Prints the AMQP URL of one broker role of the running local cloud (``ringfleet_local.broker_roles``)."""
    ctx = _attached()
    if args.role == "app" and not args.tenant:
        raise CliError("--role app needs --tenant: each tenant's apps have a broker user of their own", EXIT_USAGE)
    if ctx.roles is None:
        raise CliError("this local cloud runs on a broker given by RINGFLEET_BROKER_URL: it has no per-role users")
    print(_app_url(ctx, args.tenant) if args.role == "app" else ctx.role_broker_url(args.role))
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
    ctx = _attached()
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


def cmd_demo(args: argparse.Namespace) -> int:
    from ringfleet_local.demo import run_demo

    return run_demo(template=args.template, fast=args.fast, out_dir=args.out)


# -- jobs ---------------------------------------------------------------------------------------------------------


def _job_client(tenant: str | None = None) -> Any:
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
        return RingfleetClient(_app_url(ctx, tenant) if tenant else ctx.broker_url, repository)
    url, jobs_table = os.environ.get("RINGFLEET_BROKER_URL"), os.environ.get("RINGFLEET_JOBS_TABLE")
    if not url:
        raise CliError(
            "no local cloud is up here and RINGFLEET_BROKER_URL is not set; start one with `ringfleet local up`",
            EXIT_UNREACHABLE,
        )
    jobs = DynamoDbJobRepository(jobs_table, clock=SystemClock()) if jobs_table else None
    return RingfleetClient(url, jobs)


def _app_url(ctx: Any, tenant: str) -> str:
    """The broker URL of ``tenant``'s app user on the local cloud ``ctx``; a tenant it has not registered is a usage
    error that says how to register it."""
    try:
        ctx.require_registered(tenant)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return str(ctx.role_broker_url("app", tenant))


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


def _known_instance_types() -> frozenset[str]:
    from ringfleet.adapters.ec2_fleet import ON_DEMAND_PRICES

    return frozenset(ON_DEMAND_PRICES)


def cmd_submit(args: argparse.Namespace) -> int:
    from ringfleet_client import Rejected, apply_job_overrides, check_job, load_job_file

    try:
        fields = apply_job_overrides(load_job_file(args.file), args.set or [])
        # The contract before the tenant is looked up: a tenant id it refuses is "not registered" too, and the
        # advice that comes with that (`local up --tenant`) refuses the same id.
        message = check_job(fields, _known_instance_types() if args.dry_run else None)
        if not args.dry_run:
            client = _job_client(message.tenant)
            message = client.submit(fields)
    except Rejected as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.dry_run:
        print(
            f"valid: {message.job_id} for tenant {message.tenant}, {message.min_workers}..{message.max_workers} "
            f"workers on {', '.join(message.instance_types)} (nothing sent)"
        )
        return EXIT_OK
    print(f"submitted {message.job_id} for tenant {message.tenant} (message {message.message_id})")
    if args.no_wait or client.jobs is None:
        return 0
    job = _wait_for_job(client, message.job_id, args.timeout)
    if job is None:
        raise CliError(f"no word from job intake within {args.timeout:.0f} s; see `ringfleet status`")
    if job.tenant != message.tenant or job.spec.message_id != message.message_id:
        raise CliError(f"job rejected: job id {message.job_id!r} is already taken")
    if job.state.value == "FAILED":
        reason = job.failure or next((i.detail for i in job.incidents if i.cause == "rejected"), "rejected")
        raise CliError(f"job rejected: {one_line(reason, 400)}")
    print(f"admitted: {job.job_id} is {job.state.value}")
    return 0


def _need_tenant(args: argparse.Namespace) -> str:
    tenant: str = args.tenant
    if not tenant:
        raise CliError("whose jobs? pass --tenant NAME or set RINGFLEET_TENANT", EXIT_USAGE)
    return tenant


def cmd_cancel(args: argparse.Namespace) -> int:
    from ringfleet_client import Rejected

    try:
        tenant = _need_tenant(args)
        _job_client(tenant).cancel(tenant, args.job, args.reason)
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
        tenant = _need_tenant(args)
        client = _job_client(tenant)
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
        incidents = list(job.incidents) if job is not None else []
        start = next(
            (n for n, i in enumerate(incidents) if i.cause == "upgrade-started" and reference in i.detail), None
        )
        steps = [i for i in incidents[start:] if i.cause in _UPGRADE_STEPS] if start is not None else []
        for incident in steps[shown:]:
            print(f"{incident.cause}: {one_line(incident.detail, 400)}", flush=True)
        shown = len(steps)
        if steps and steps[-1].cause in ("upgrade-completed", "upgrade-rolled-back"):
            return 0 if steps[-1].cause == "upgrade-completed" else 1
        if job is not None and job.is_final:
            raise CliError(f"upgrade of {job_id} did not finish: the job is {job.state.value}")
        time.sleep(1.0)
    raise CliError(f"upgrade of {job_id} still running after {timeout:.0f} s; follow it with `ringfleet events`")


def _job_row(job: Any, now: float) -> list[str]:
    # Workers report their step in heartbeats (nodes table); the job record knows the last one a recovery saw.
    step = job.recovery.last_step if job.recovery is not None else None
    durable = job.durable_checkpoint.step if job.durable_checkpoint else None
    started = next((i.at for i in job.incidents if i.cause == "started"), None)
    end = job.updated_at.timestamp() if job.is_final and job.updated_at else now
    hours = max(0.0, end - started.timestamp()) / 3600 if started else 0.0
    # An estimate: workers x hours at the job's budget rate share, capped by its budget.
    cost = hours * min(job.spec.budget_usd_per_hour, job.spec.budget_usd_per_hour * job.world_size / job.max_workers)
    if job.state.value == "FAILED" and job.failure:
        reason = f"failed: {one_line(job.failure)}"
    elif job.incidents:
        last = job.incidents[-1]
        reason = last.cause + (f": {one_line(last.detail)}" if last.detail else "")
    else:
        reason = ""
    return [
        job.job_id,
        job.state.value,
        str(job.generation),
        str(job.world_size),
        "-" if step is None else str(step),
        "-" if durable is None else str(durable),
        f"{cost:.2f}",
        reason,
    ]


def one_line(text: str, width: int = 120) -> str:
    """A reason on one line of at most ``width`` characters: a traceback's tail keeps its first line (what failed)
    and its last (the exception), the frames between are left to `ringfleet events`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    head, last = lines[0], lines[-1]
    if head.startswith("Traceback (most recent call last)"):
        head = last
    line = head if head == last else f"{head} ... {last}"
    return line if len(line) <= width else line[: width - 3] + "..."


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
    tenant = _need_tenant(args)
    client = _job_client()
    if client.jobs is None:
        raise CliError("set RINGFLEET_JOBS_TABLE to read job status", EXIT_USAGE)
    if args.job:
        job = client.job(tenant, args.job)
        if job is None:
            raise CliError(f"no job {args.job!r} of tenant {tenant!r}")
        jobs = [job]
    else:
        jobs = client.list_jobs(tenant)
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


def cmd_events(args: argparse.Namespace) -> int:
    """Prints the tenant's job events; with --output json an array, or one object per line with --follow."""
    tenant = _need_tenant(args)
    client = _job_client()
    if client.jobs is None:
        raise CliError("set RINGFLEET_JOBS_TABLE to read job events", EXIT_USAGE)
    seen: set[tuple[str, str, str, int]] = set()
    deadline = time.monotonic() + args.for_seconds if args.for_seconds else None
    while True:
        found = _new_events(client, tenant, seen)
        if args.output != "json":
            for job_id, incident in found:
                print(_event_text(job_id, incident), flush=True)
        elif args.follow:
            for job_id, incident in found:
                print(json.dumps(_event_json(job_id, incident)), flush=True)
        else:
            print(json.dumps([_event_json(job_id, incident) for job_id, incident in found], indent=2))
        if not args.follow or (deadline is not None and time.monotonic() > deadline):
            return 0
        time.sleep(1.0)


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


def cmd_logs(args: argparse.Namespace) -> int:
    """Prints the logs of the agents that served a job on the local cloud (the nodes table says which)."""
    from ringfleet.adapters.dynamodb import DynamoDbNodeRepository
    from ringfleet.core.ports import SystemClock

    ctx = _attached()
    fleet = _fleet_info()
    if fleet is None:
        raise CliError("the local cloud runs no fleet emulator (it was started with --no-fleet)")
    if _job_client().job(args.tenant, args.job) is None:
        raise CliError(f"no job {args.job!r} of tenant {args.tenant!r}")
    table = str(ctx.resolve({"Ref": "NodesTable"}))
    nodes = DynamoDbNodeRepository(table, clock=SystemClock(), boto3_resource=ctx.resource("dynamodb"))
    log_dir = Path(fleet["log_dir"])

    def instances() -> list[str]:
        # Every instance ever placed on the job (replacements join as they come); or the one asked for.
        placed = [n.instance_id for n in nodes.list_by_job(args.job)]
        return [i for i in placed if i == args.instance] if args.instance else placed

    offsets: dict[str, int] = {}
    try:
        while True:
            for instance in instances():
                path = log_dir / f"{instance}.log"
                if not path.is_file():
                    continue
                with path.open("rb") as f:
                    f.seek(offsets.get(instance, 0))
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1 if args.follow else len(chunk)
                offsets[instance] = offsets.get(instance, 0) + end
                for line in chunk[:end].decode(errors="replace").splitlines():
                    print(f"[{instance}] {line}", flush=True)
            if not args.follow:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass  # --follow ends with Ctrl-C: not an error
    if not offsets:
        print(f"no agent log of job {args.job} yet in {log_dir}", file=sys.stderr)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ringfleet")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_output(parser: argparse.ArgumentParser, json_help: str = "JSON") -> None:
    parser.add_argument(
        "--output",
        "-o",
        choices=("table", "json"),
        default="table",
        help=f"table (default) for people, or {json_help} for programs",
    )


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

    local = sub.add_parser(
        "local",
        help="run the local cloud",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lsub = local.add_subparsers(dest="local_command", required=True, metavar="{up,down,status,env,credentials,emit}")
    up = lsub.add_parser(
        "up",
        help="start moto, create the template's resources, route events, emulate the fleet (background)",
        description="Starts the local cloud in the background: a moto server with template.yaml's resources, the "
        "event router that invokes the handlers, and the fleet emulator: every instance the fleet scaler launches "
        "boots an agent process (python -m training_worker, no job yet: it learns the job and what to run from its "
        "first Reconfigure). The agents work in the directory this command runs from, so a job's entrypoint such as "
        "`python examples/digits/train.py` resolves here; their logs are in <state dir>/workers/<instance-id>.log "
        "(`ringfleet logs JOB`). `ringfleet local down` stops them all.",
    )
    up.add_argument("--template", default="template.yaml")
    up.add_argument("--foreground", action="store_true", help="stay attached and print every delivery")
    up.add_argument(
        "--no-fleet", dest="fleet", action="store_false", help="no fleet emulator: launched instances run nothing"
    )
    up.set_defaults(func=cmd_up)
    serve = lsub.add_parser("serve")  # what `local up` runs in the background; not listed
    serve.add_argument("--template", default="template.yaml")
    serve.add_argument("--no-fleet", dest="fleet", action="store_false")
    for p in (up, serve):
        p.add_argument("--spot-traces", metavar="DIR", help="replay spot availability traces (one JSON per zone)")
        p.add_argument("--trace-speed", type=float, default=1.0, help="trace-seconds per second (default 1)")
        p.add_argument(
            "--tenant",
            dest="tenants",
            action="append",
            metavar="NAME[:max_gpus=N,max_usd_per_hour=X]",
            help="register a tenant (repeatable) besides acme, globex, evil and own; its jobs are admitted",
        )
        p.add_argument(
            "--tenant-registry",
            metavar="FILE",
            help="register the tenants of FILE instead of the defaults: JSON as the TenantRegistry parameter, "
            '{"acme": {"max_gpus": 8}}',
        )
    serve.set_defaults(func=cmd_serve)
    lsub.add_parser("down", help="stop the local cloud and every agent of its fleet").set_defaults(func=cmd_down)
    status_help = "endpoints, functions, the last deliveries and where the agents log"
    ls = lsub.add_parser("status", help=status_help, description=status_help)
    _add_output(ls)
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

    demo = sub.add_parser(
        "demo",
        help="spot-interrupted distributed training end to end on the local cloud, with a report and a plot",
        description="Brings the local cloud up (moto server, RabbitMQ, the event router and its handlers, the fleet "
        "emulator), submits a 3-worker training job through the client and, while it trains, injects a spot "
        "interruption warning followed by termination and a hard kill of another worker, every cloud event "
        "delivered twice. Recovery goes through the real handlers and workers. Then trains the same job "
        "uninterrupted for comparison and writes report.md and timeline.png. Exits 1 if an incident was not "
        "recovered exactly once within its loss budget or the final model differs from the uninterrupted one.",
    )
    demo.add_argument("--fast", action="store_true", help="the short scenario, under 3 minutes (what the tests run)")
    demo.add_argument("--out", default="demo-output", help="folder for report.md, timeline.png and worker logs")
    demo.add_argument("--template", default="template.yaml")
    demo.set_defaults(func=cmd_demo)

    tenant_help = "the tenant whose jobs these are (default: $RINGFLEET_TENANT)"
    sub_ = sub.add_parser(
        "submit",
        help="validate a job file and send it to job intake",
        description="Reads a YAML job file (see examples/digits/job.yaml), checks every field against the JobSubmitted "
        "contract (workers 1..1024 with max >= min, a positive budget, known instance type names, ...) and "
        "publishes it to the broker with publisher confirms. Then waits for job intake to admit it or say why not "
        "(tenant quotas: GPUs and $/h). A refused job exits non-zero with the reason. On the local cloud the job's "
        "entrypoint runs in the directory `ringfleet local up` was run from (relative paths resolve there). A script "
        "that fails is run again up to max_restarts times (default 3); one more failure ends the job FAILED.",
    )
    sub_.add_argument("file", help="a job file, e.g. examples/digits/job.yaml")
    sub_.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field, e.g. --set job_id=j2")
    sub_.add_argument("--no-wait", action="store_true", help="return once the broker confirmed the message")
    sub_.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the job file offline (fields, and instance types the market knows) and send nothing",
    )
    sub_.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for admission (default 30)")
    sub_.set_defaults(func=cmd_submit)
    can = sub.add_parser(
        "cancel", help="cancel one of your jobs", description="Stops the job's workers; it ends CANCELLED."
    )
    can.add_argument("job", help="the job id")
    can.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    can.add_argument("--reason", default="cancelled by its tenant", help="why, for the job's event log")
    can.set_defaults(func=cmd_cancel)
    up = sub.add_parser(
        "upgrade",
        help="replace a running job's workers with a new version, one at a time",
        description="A rolling upgrade through the elastic ring: each new worker joins before an old one leaves; "
        "the job never stops. A new worker that fails (say it cannot restore the checkpoint) rolls the upgrade back.",
    )
    up.add_argument("job", help="the job id")
    up.add_argument("--image", required=True, help="the new container image")
    up.add_argument("--entrypoint", help="the new entrypoint, one shell-quoted string (default: the job's)")
    up.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    up.add_argument("--no-wait", action="store_true", help="return once the broker confirmed the message")
    up.add_argument("--timeout", type=float, default=600.0, help="seconds to follow the upgrade (default 600)")
    up.set_defaults(func=cmd_upgrade)
    st = sub.add_parser(
        "status",
        help="a table of your jobs: state, generation, world size, step, checkpoint, cost",
        description="One row per job: state, generation (grows at each membership change), world size, step, "
        "newest durable checkpoint's step, an estimate of the cost so far, and the last event.",
    )
    st.add_argument("job", nargs="?", help="only this job")
    st.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    _add_output(st)
    st.set_defaults(func=cmd_job_status)
    ev = sub.add_parser("events", help="your jobs' events (admitted, started, interrupted, reconfigured, ...)")
    ev.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    ev.add_argument("--for-seconds", type=float, default=None, help=argparse.SUPPRESS)
    _add_output(ev, json_help="a JSON array; with --follow one JSON object per line")
    ev.set_defaults(func=cmd_events)
    lg = sub.add_parser(
        "logs",
        help="the logs of a job's agents and its script (local cloud)",
        description="Prints what the agents that served the job wrote (their own log and the job script's output), "
        "each line prefixed with its instance. Reads <state dir>/workers/<instance-id>.log of the local cloud.",
    )
    lg.add_argument("job", help="the job id")
    lg.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    lg.add_argument("--instance", help="only this instance's agent")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C")
    lg.set_defaults(func=cmd_logs)
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
    if not args.debug and args.func is not cmd_serve:
        # The broker libraries log a failed connect before raising it; the raise becomes our one line.
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return int(args.func(args))
    except CliError as exc:
        if args.debug:
            raise
        print(f"ringfleet: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(file=sys.stderr)  # end the line ^C was echoed on
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        what = " ".join(str(exc).split()) or type(exc).__name__
        if _unreachable(exc):
            print(f"ringfleet: cannot reach the broker or AWS ({what}); is the local cloud up?", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"ringfleet: {type(exc).__name__}: {what} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
