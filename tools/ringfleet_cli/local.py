"""`ringfleet local up | down` (and `serve`, what `up` runs in the background): the local cloud and its fleet
emulator."""

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

from ringfleet_cli import attach
from ringfleet_cli.epilog import EPILOG
from ringfleet_cli.errors import EXIT_UNREACHABLE, EXIT_USAGE, CliError

__all__ = ["cmd_down", "cmd_serve", "cmd_up", "register"]


#: Seconds the agents get to end after SIGTERM when the local cloud goes down, before SIGKILL ends their groups.
AGENT_GRACE_S = 10.0


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
    attach.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (attach.STATE_DIR / "deliveries.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


def _worker_image(args: argparse.Namespace) -> str | None:
    """The worker image the agents run in with ``--containers`` (built now when this checkout has none); None
    without."""
    if not getattr(args, "containers", False):
        return None
    from ringfleet_local import images

    try:
        images.docker_ready()
        return images.worker_image()
    except (images.DockerUnavailable, RuntimeError) as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from exc


def cmd_image(args: argparse.Namespace) -> int:
    from ringfleet_local import images

    folder = Path(args.folder)
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder: give the job's folder, e.g. examples/digits", EXIT_USAGE)
    try:
        images.docker_ready()
        tag = images.job_image(folder, args.repository or f"ringfleet-{folder.resolve().name}")
    except (images.DockerUnavailable, RuntimeError, ValueError) as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from exc
    print(tag)
    print(
        f"run it on a fleet of containers (`ringfleet local up --containers`) with: ringfleet submit JOB.yaml --set "
        f"image={tag}",
        file=sys.stderr,
    )
    return 0


def _start_fleet(cloud: Any, replay: Any = None, containers: str | None = None) -> Any:
    """The fleet emulator, as the demo runs it: every instance the fleet scaler launches boots an agent
    (``python -m training_worker`` with no job: it learns the job from its first Reconfigure), working in this
    directory so that a job's entrypoint (``python examples/digits/train.py``) resolves here, logging to
    ``<state dir>/workers/<instance-id>.log``."""
    from ringfleet_local.fleet import FleetEmulator

    log_dir = (attach.STATE_DIR / "workers").resolve()
    fleet_file = attach.STATE_DIR / attach.FLEET_FILE
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

    emulator = FleetEmulator(
        cloud.ctx, log_dir=log_dir, on_event=on_event, workdir=Path.cwd(), replay=replay, containers=containers
    )
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


def _schedule_speed(args: argparse.Namespace) -> float:
    if not args.schedule_speed > 0:
        raise CliError(f"--schedule-speed {args.schedule_speed:g} is not a positive number, e.g. 12", EXIT_USAGE)
    return float(args.schedule_speed)


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

    (attach.STATE_DIR / "deliveries.jsonl").unlink(missing_ok=True)
    # Built before the cloud: the fleet scaler's processes get it in their environment and refuse launches beyond
    # what the traces have, at the same moment of the trace as the emulator's interruptions.
    replay = _trace_replay(args)
    cloud = LocalCloud(
        args.template,
        state_dir=attach.STATE_DIR,
        on_delivery=on_delivery,
        function_env=replay.environment() if replay is not None else None,
        tenants=_tenant_registry(args),
        schedule_speed=_schedule_speed(args),
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
        emulator = _start_fleet(cloud, replay, _worker_image(args)) if args.fleet else None
        try:
            print(f"routing events to {len(cloud.ctx.functions)} functions; Ctrl-C to stop", flush=True)
            while not stop:
                time.sleep(0.2)
        finally:
            # Before the cloud goes: the agents get SIGTERM while the broker and moto still answer them.
            if emulator is not None:
                emulator.stop(grace_s=AGENT_GRACE_S)
                (attach.STATE_DIR / attach.FLEET_FILE).unlink(missing_ok=True)
                print("fleet emulator: every agent stopped", flush=True)
    print("local cloud down", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ringfleet_local.context import LocalState

    if args.foreground:
        return cmd_serve(args)
    if (state := LocalState.load(attach.STATE_DIR)) is not None:
        print(f"the local cloud is already up (pid {state.pid}) at {state.endpoint}")
        return 0
    # A trace folder that cannot be replayed is refused here, in one line, not in the background process's log.
    _trace_replay(args)
    _tenant_registry(args)
    _schedule_speed(args)
    # Built here, with its progress shown, not in the background process (which finds it built).
    image = _worker_image(args)
    attach.STATE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = attach.STATE_DIR / "local.log"
    with log_path.open("w") as log:
        command = [sys.executable, "-m", "ringfleet_cli.main", "local", "serve", "--template", args.template]
        proc = subprocess.Popen(
            [
                *command,
                *([] if args.fleet else ["--no-fleet"]),
                *(["--containers"] if args.containers else []),
                *_trace_options(args),
                *_tenant_options(args),
                f"--schedule-speed={args.schedule_speed}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(log_path.read_text(), file=sys.stderr)
            raise CliError(f"the local cloud did not start (log above, also in {log_path})", EXIT_UNREACHABLE)
        if (state := LocalState.load(attach.STATE_DIR)) is not None:
            print(f"local cloud up (pid {state.pid}): AWS at {state.endpoint}; log: {log_path}")
            if args.fleet:
                where = (
                    f"in a container of {image}, running each job's image beside it (`ringfleet local image`)"
                    if image
                    else f"working in {Path.cwd()}"
                )
                print(
                    f"fleet emulator: each instance boots an agent {where}, "
                    f"logging to {(attach.STATE_DIR / 'workers').resolve()}/<instance-id>.log"
                )
            print('use it from a shell with: eval "$(ringfleet local env)"')
            return 0
        time.sleep(0.2)
    proc.terminate()
    raise CliError(f"the local cloud did not come up within 60 s; see {log_path}", EXIT_UNREACHABLE)


def cmd_down(args: argparse.Namespace) -> int:
    from ringfleet_local.context import LocalState

    state = LocalState.load(attach.STATE_DIR)
    if state is None:
        print("no local cloud is running")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    # It stops its agents first (SIGTERM, then SIGKILL after AGENT_GRACE_S), then the router and moto.
    deadline = time.monotonic() + AGENT_GRACE_S + 50
    while time.monotonic() < deadline and (LocalState.load(attach.STATE_DIR) is not None or _alive(state.pid)):
        time.sleep(0.2)
    if LocalState.load(attach.STATE_DIR) is not None:
        # Stuck: end it and what it started in its session (moto); agents lead groups of their own.
        _kill_group(state.pid)
        _kill_agents()
        (attach.STATE_DIR / "local.json").unlink(missing_ok=True)
    print("local cloud down")
    return 0


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (the background process: `local up` left it to init, which reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, another user's
        pass
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _kill_agents() -> None:
    """SIGKILLs the process group of every agent a killed `local serve` left behind (its fleet file lists them)."""
    path = attach.STATE_DIR / attach.FLEET_FILE
    if not path.is_file():
        return
    for pid in json.loads(path.read_text()).get("agents", {}).values():
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # still the agent's own group, not a recycled pid
                _kill_group(pid)
    path.unlink(missing_ok=True)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet local`` and its commands: up, down and serve here; status, env, credentials and emit beside."""
    from ringfleet_cli import invoke, local_status

    local = sub.add_parser(
        "local",
        help="run the local cloud",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lsub = local.add_subparsers(
        dest="local_command", required=True, metavar="{up,down,image,status,env,credentials,emit}"
    )
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
        _add_cloud_options(p)
        p.add_argument(
            "--containers",
            action="store_true",
            help="each instance boots its agent in the worker image (docker run, as AWS's launch template does), "
            "and the agent runs the job's image beside it: see `ringfleet local image`. Needs a Docker engine",
        )
    serve.set_defaults(func=cmd_serve)
    lsub.add_parser("down", help="stop the local cloud and every agent of its fleet").set_defaults(func=cmd_down)
    image = lsub.add_parser(
        "image",
        help="build a job's image from its folder, for a fleet of containers",
        description="Builds a job's container image the way a user does for AWS (FROM ringfleet-worker, the folder "
        "copied in at its path under /job, which is the working directory, so the job file's entrypoint is the same "
        "as on a fleet of processes), on this machine's Docker engine with no registry: the worker image and its "
        "Debian base are built first when missing (a few minutes, once). Prints the image's tag: submit the job "
        "with `--set image=TAG` to a local cloud started with `ringfleet local up --containers`.",
    )
    image.add_argument("folder", help="the job's folder, relative to this directory, e.g. examples/digits")
    image.add_argument("--repository", help="the image's name (default ringfleet-<folder name>)")
    image.set_defaults(func=cmd_image)
    local_status.register(lsub)
    invoke.register_emit(lsub)


def _add_cloud_options(parser: argparse.ArgumentParser) -> None:
    """What `local up` and `local serve` both take: the spot traces to replay and the tenants to register."""
    parser.add_argument("--spot-traces", metavar="DIR", help="replay spot availability traces (one JSON per zone)")
    parser.add_argument("--trace-speed", type=float, default=1.0, help="trace-seconds per second (default 1)")
    parser.add_argument(
        "--schedule-speed",
        type=float,
        default=1.0,
        metavar="X",
        help="fire the template's rate() schedules X times as often (default 1, as in AWS): with 12, the fleet "
        "scaler's and the heartbeat sweep's rate(1 minute) fire every 5 s",
    )
    parser.add_argument(
        "--tenant",
        dest="tenants",
        action="append",
        metavar="NAME[:max_gpus=N,max_usd_per_hour=X]",
        help="register a tenant (repeatable) besides acme, globex, evil and own; its jobs are admitted",
    )
    parser.add_argument(
        "--tenant-registry",
        metavar="FILE",
        help="register the tenants of FILE instead of the defaults: JSON as the TenantRegistry parameter, "
        '{"acme": {"max_gpus": 8}}',
    )
