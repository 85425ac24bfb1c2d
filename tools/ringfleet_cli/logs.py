"""`ringfleet logs`: the logs of a job's agents on the local cloud."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ringfleet_cli import attach
from ringfleet_cli.errors import CliError

__all__ = ["cmd_logs", "register"]


def cmd_logs(args: argparse.Namespace) -> int:
    """Prints the logs of the agents that served a job on the local cloud (the nodes table says which)."""
    from ringfleet.adapters.dynamodb import DynamoDbNodeRepository
    from ringfleet.core.ports import SystemClock

    ctx = attach.attached()
    fleet = attach.fleet_info()
    if fleet is None:
        raise CliError("the local cloud runs no fleet emulator (it was started with --no-fleet)")
    if attach.job_client().job(args.tenant, args.job) is None:
        raise CliError(f"no job {args.job!r} of tenant {args.tenant!r}")
    table = str(ctx.resolve({"Ref": "NodesTable"}))
    nodes = DynamoDbNodeRepository(table, clock=SystemClock(), boto3_resource=ctx.resource("dynamodb"))
    log_dir = Path(fleet["log_dir"])

    def instances() -> list[str]:
        # Every instance ever placed on the job (replacements join as they come): those whose node still names it,
        # and those whose worker's events do (once the job ended, its instances may serve another); or the one asked.
        placed = sorted({n.instance_id for n in nodes.list_by_job(args.job)} | served_by(log_dir, args.job))
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


def served_by(log_dir: Path, job_id: str) -> set[str]:
    """The instances whose workers' typed events (``ringfleet_local.training_events``) say they served ``job_id``."""
    from ringfleet_local.training_events import EventFollower

    return {e.instance_id for e in EventFollower(log_dir).poll() if e.job_id == job_id}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ringfleet logs``."""
    lg = sub.add_parser(
        "logs",
        help="the logs of a job's agents and its script (local cloud)",
        description="Prints what the agents that served the job wrote (their own log and the job script's output), "
        "each line prefixed with its instance. Reads <state dir>/workers/<instance-id>.log of the local cloud.",
    )
    lg.add_argument("job", help="the job id")
    attach.add_tenant(lg)
    lg.add_argument("--instance", help="only this instance's agent")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C")
    lg.set_defaults(func=cmd_logs)
