"""The `ringfleet` command: jobs (submit, cancel, status, events, logs), the local cloud (up, down, status, emit,
env), invoke, and the demo."""

from __future__ import annotations

import argparse
import contextlib
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
  ringfleet events --tenant acme --follow    job events (admitted, started, interrupted, ...) as they happen
  ringfleet logs digits-demo --tenant acme -f   the job's agents' logs (local cloud only)
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


def _start_fleet(cloud: Any) -> Any:
    """The fleet emulator, as the demo runs it: every instance the fleet scaler launches boots an agent
    (``python -m training_worker`` with no job: it learns the job from its first Reconfigure), working in this
    directory so that a job's entrypoint (``python examples/digits/train.py``) resolves here, logging to
    ``<state dir>/workers/<instance-id>.log``."""
    from ringfleet.local.fleet import FleetEmulator

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

    emulator = FleetEmulator(cloud.ctx, log_dir=log_dir, on_event=on_event, workdir=Path.cwd())
    write_info()
    emulator.start()
    print(f"fleet emulator: agents work in {info['workdir']} and log to {log_dir}/<instance-id>.log", flush=True)
    return emulator


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
        emulator = _start_fleet(cloud) if args.fleet else None
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
    from ringfleet.local.context import LocalState

    if args.foreground:
        return cmd_serve(args)
    if (state := LocalState.load(STATE_DIR)) is not None:
        print(f"the local cloud is already up (pid {state.pid}) at {state.endpoint}")
        return 0
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = STATE_DIR / "local.log"
    with log_path.open("w") as log:
        command = [sys.executable, "-m", "ringfleet.cli", "local", "serve", "--template", args.template]
        proc = subprocess.Popen(
            [*command, *([] if args.fleet else ["--no-fleet"])],
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
            if args.fleet:
                print(
                    f"fleet emulator: each instance boots an agent working in {Path.cwd()}, "
                    f"logging to {(STATE_DIR / 'workers').resolve()}/<instance-id>.log"
                )
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
    fleet = _fleet_info()
    if fleet is not None:
        agents = fleet.get("agents", {})
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
        running = sum(len(r["Instances"]) for page in pages for r in page["Reservations"])
        print(
            f"fleet emulator: {running} instance(s) running; {len(agents)} agent(s) booted so far, working in "
            f"{fleet['workdir']}; "
            f"their logs: {fleet['log_dir']}/<instance-id>.log (`ringfleet logs JOB`)"
        )
    else:
        print("fleet emulator: off (started with --no-fleet)")
    return 0


def _fleet_info() -> dict[str, Any] | None:
    path = STATE_DIR / FLEET_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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

    return run_demo(template=args.template, fast=args.fast, out_dir=args.out)


# -- jobs ---------------------------------------------------------------------------------------------------------


def _job_client() -> Any:
    """A client on the running local cloud, or on RINGFLEET_BROKER_URL / RINGFLEET_JOBS_TABLE in AWS."""
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository
    from ringfleet.client import RingfleetClient
    from ringfleet.local.context import CloudContext, LocalState
    from ringfleet.wiring import WallClock

    state = LocalState.load(STATE_DIR)
    if state is not None:
        ctx = CloudContext.from_state(state)
        table = str(ctx.resolve({"Ref": "JobsTable"}))
        repository = DynamoDbJobRepository(table, clock=WallClock(), boto3_resource=ctx.resource("dynamodb"))
        return RingfleetClient(ctx.broker_url, repository)
    url, jobs_table = os.environ.get("RINGFLEET_BROKER_URL"), os.environ.get("RINGFLEET_JOBS_TABLE")
    if not url:
        sys.exit("ringfleet: no local cloud is up and RINGFLEET_BROKER_URL is not set")
    jobs = DynamoDbJobRepository(jobs_table, clock=WallClock()) if jobs_table else None
    return RingfleetClient(url, jobs)


def _wait_for_job(client: Any, tenant: str, job_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.jobs.get(job_id) if client.jobs is not None else None
        if job is not None:
            return job
        time.sleep(0.2)
    return None


def cmd_submit(args: argparse.Namespace) -> int:
    from ringfleet.client import Rejected, load_job_file

    try:
        fields = load_job_file(args.file)
        for override in args.set or []:
            key, _, value = override.partition("=")
            fields[key] = json.loads(value) if value[:1] in "-0123456789[{tf" else value
        client = _job_client()
        message = client.submit(fields)
    except (Rejected, OSError) as exc:
        sys.exit(f"ringfleet: {exc}")
    print(f"submitted {message.job_id} for tenant {message.tenant} (message {message.message_id})")
    if args.no_wait or client.jobs is None:
        return 0
    job = _wait_for_job(client, message.tenant, message.job_id, args.timeout)
    if job is None:
        sys.exit(f"ringfleet: no word from job intake within {args.timeout:.0f} s; see `ringfleet status`")
    if job.tenant != message.tenant or job.spec.message_id != message.message_id:
        sys.exit(f"ringfleet: job rejected: job id {message.job_id!r} is already taken")
    if job.state.value == "FAILED":
        reason = job.failure or next((i.detail for i in job.incidents if i.cause == "rejected"), "rejected")
        sys.exit(f"ringfleet: job rejected: {reason}")
    print(f"admitted: {job.job_id} is {job.state.value}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from ringfleet.client import Rejected

    try:
        _job_client().cancel(args.tenant, args.job, args.reason)
    except Rejected as exc:
        sys.exit(f"ringfleet: {exc}")
    print(f"cancel of {args.job} sent")
    return 0


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


def cmd_job_status(args: argparse.Namespace) -> int:
    client = _job_client()
    if client.jobs is None:
        sys.exit("ringfleet: set RINGFLEET_JOBS_TABLE to read job status")
    if args.job:
        job = client.job(args.tenant, args.job)
        if job is None:
            sys.exit(f"ringfleet: no job {args.job!r} of tenant {args.tenant!r}")
        jobs = [job]
    else:
        jobs = client.list_jobs(args.tenant)
    header = ["JOB", "STATE", "GEN", "WORLD", "STEP", "CHECKPOINT", "COST $", "LAST EVENT"]
    rows = [header] + [_job_row(j, time.time()) for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    client = _job_client()
    if client.jobs is None:
        sys.exit("ringfleet: set RINGFLEET_JOBS_TABLE to read job events")
    seen: set[tuple[str, str, str, int]] = set()
    deadline = time.monotonic() + args.for_seconds if args.for_seconds else None
    while True:
        lines = []
        for job in client.list_jobs(args.tenant):
            for i in job.incidents:
                key = (job.job_id, i.at.isoformat(), i.cause, i.generation)
                if key not in seen:
                    seen.add(key)
                    # A multi-line detail (a failed script's traceback tail) follows its event, indented.
                    first, *more = i.detail.splitlines() or [""]
                    detail = f" {first}" if first else ""
                    on = f" on {i.instance_id}" if i.instance_id else ""
                    text = f"{i.at:%H:%M:%S} {job.job_id} gen {i.generation} {i.cause}{on}{detail}"
                    lines.append((i.at, "\n".join([text, *(f"    {line}" for line in more)])))
        for _, line in sorted(lines, key=lambda entry: entry[0]):  # stable: a job's events keep their order
            print(line, flush=True)
        if not args.follow or (deadline is not None and time.monotonic() > deadline):
            return 0
        time.sleep(1.0)


def cmd_logs(args: argparse.Namespace) -> int:
    """Prints the logs of the agents that served a job on the local cloud (the nodes table says which)."""
    from ringfleet.adapters.dynamodb import DynamoDbNodeRepository
    from ringfleet.wiring import WallClock

    ctx = _attached()
    fleet = _fleet_info()
    if fleet is None:
        sys.exit("ringfleet: the local cloud runs no fleet emulator (it was started with --no-fleet)")
    if _job_client().job(args.tenant, args.job) is None:
        sys.exit(f"ringfleet: no job {args.job!r} of tenant {args.tenant!r}")
    table = str(ctx.resolve({"Ref": "NodesTable"}))
    nodes = DynamoDbNodeRepository(table, clock=WallClock(), boto3_resource=ctx.resource("dynamodb"))
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
    serve = lsub.add_parser("serve", help=argparse.SUPPRESS)
    serve.add_argument("--template", default="template.yaml")
    serve.add_argument("--no-fleet", dest="fleet", action="store_false")
    serve.set_defaults(func=cmd_serve)
    lsub.add_parser("down", help="stop the local cloud and every agent of its fleet").set_defaults(func=cmd_down)
    status_help = "endpoints, functions, the last deliveries and where the agents log"
    lsub.add_parser("status", help=status_help).set_defaults(func=cmd_status)
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
    sub_.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for admission (default 30)")
    sub_.set_defaults(func=cmd_submit)
    can = sub.add_parser(
        "cancel", help="cancel one of your jobs", description="Stops the job's workers; it ends CANCELLED."
    )
    can.add_argument("job", help="the job id")
    can.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    can.add_argument("--reason", default="cancelled by its tenant", help="why, for the job's event log")
    can.set_defaults(func=cmd_cancel)
    st = sub.add_parser(
        "status",
        help="a table of your jobs: state, generation, world size, step, checkpoint, cost",
        description="One row per job: state, generation (grows at each membership change), world size, step, "
        "newest durable checkpoint's step, an estimate of the cost so far, and the last event.",
    )
    st.add_argument("job", nargs="?", help="only this job")
    st.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    st.set_defaults(func=cmd_job_status)
    ev = sub.add_parser("events", help="your jobs' events (admitted, started, interrupted, reconfigured, ...)")
    ev.add_argument("--tenant", default=os.environ.get("RINGFLEET_TENANT", ""), help=tenant_help)
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    ev.add_argument("--for-seconds", type=float, default=None, help=argparse.SUPPRESS)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
