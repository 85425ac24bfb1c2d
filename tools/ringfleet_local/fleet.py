"""The fleet emulator: emulated EC2 instances become real worker processes; chaos sends what AWS would send.

moto keeps the instances' state but runs nothing. The emulator watches moto's running instances of the stack (tag
``ringfleet:stack``) and boots ``python -m training_worker`` with each (forked from a warm interpreter that imported
torch once, ``ringfleet_local.warm``), as the worker container starts with its instance in AWS: with its own
instance-metadata endpoint and no job yet; the worker waits in its instance's mailbox until the fleet scaler places
it and its first Reconfigure names the job. (Runs without a control plane pass ``job_of``: a worker then starts once
its instance is assigned, with that job.) Each agent is told its instance's slots (``RINGFLEET_SLOTS``: the GPUs of
its instance type in the local instance catalog, one training process each, as many as the control plane's
Reconfigure may ask of it), and starts that many at boot. Each worker leads a process group of its own, as if it
were alone on its instance: whatever it starts (the job's script) goes with it when its instance is terminated or
the emulator stops (SIGTERM, then SIGKILL to the whole group: nothing is left behind).
Chaos injection reproduces the two ways AWS takes capacity:

- ``interrupt(instance, grace_s)``: the spot notice appears in the instance's metadata and the interruption
  warning (and a rebalance recommendation) goes through EventBridge; after the grace period the instance is
  terminated, its state-change event is sent and its process killed;
- ``hard_kill(instance)``: the process dies and the instance is terminated with no notice at all.

``containers=IMAGE`` (``local up --containers``) boots each agent as AWS's launch template does (docs/deploy.md):
``docker run`` of the worker image on host networking, with the Docker engine's socket and
``RINGFLEET_CONTAINER_RUNTIME=docker``, so the agent starts the job's own image beside itself
(``training_worker.containers``). The instance's folders (its checkpoint cache, its training events file) are
bind-mounted at the same paths and owned by the image's ``worker`` user. Ending such an instance removes every
container labelled with it (``ringfleet.instance``): its agent's and its job's.

``duplicate_events=True`` sends every cloud event twice, as EventBridge's at-least-once delivery may.
``replay`` (a :class:`~ringfleet_local.spot_traces.TraceReplay`, ``local up --spot-traces DIR``) replays spot
availability: on every poll, a spot pool holding more than its trace has available now gets the newest of its
instances interrupted (the notice scaled by the trace's speed), several at once when the drop is deep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ringfleet.contracts.messages import CONTAINER_INSTANCE_LABEL as INSTANCE_LABEL
from ringfleet.contracts.messages import CONTAINER_ROLE_LABEL as ROLE_LABEL
from ringfleet.contracts.training import EVENTS_FILE_VARIABLE
from ringfleet_local import warm
from ringfleet_local.catalog import local_catalog
from ringfleet_local.context import CloudContext
from ringfleet_local.spot_traces import TraceReplay
from ringfleet_local.training_events import events_file
from ringfleet_local.warm import ProcessHandle

__all__ = ["EmulatedInstance", "FleetEmulator", "MetadataServer"]

STACK_TAG = "ringfleet:stack"
DOCKER_SOCKET = "/var/run/docker.sock"
#: The uid of the worker image's ``worker`` user (training_worker/Dockerfile): it owns an instance's folders.
IMAGE_WORKER_UID = 1000
POOL_TAG = "ringfleet:pool"


class MetadataServer:
    """Instance metadata for every emulated instance: ``/<instance-id>/latest/meta-data/...``.

    Serves ``instance-id`` always and ``spot/instance-action`` once a notice is set (404 before, as EC2 does).
    """

    def __init__(self) -> None:
        self.notices: dict[str, dict[str, str]] = {}
        notices = self.notices

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/", 1)
                instance, rest = parts[0], parts[1] if len(parts) > 1 else ""
                body: bytes | None = None
                if rest == "latest/meta-data/instance-id":
                    body = instance.encode()
                elif rest == "latest/meta-data/spot/instance-action" and instance in notices:
                    body = json.dumps(notices[instance]).encode()
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="metadata")
        self._thread.start()

    def base_url(self, instance_id: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{instance_id}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class EmulatedInstance:
    """One instance and its worker process."""

    instance_id: str
    #: The job it was started for; None when it boots unplaced and learns its job from its first Reconfigure.
    job_id: str | None
    process: ProcessHandle
    log_path: Path
    #: Its EC2 instance type: how many slots its agent starts (``instance_slots``).
    instance_type: str
    started_at: float = field(default_factory=time.time)
    #: When the emulator first saw the process gone while the instance still ran.
    exited_at: float | None = None


def instance_slots(instance_type: str) -> int:
    """The slots of an instance of ``instance_type``: its GPUs in the local instance catalog (the one the control plane
    reads on the local cloud, so the agent starts as many processes as a Reconfigure may ask of it); 1 for a type the
    catalog does not list."""
    catalog = local_catalog()
    return catalog.gpus(instance_type) if instance_type in catalog else 1


def one_thread_each() -> dict[str, str]:
    """The environment of a training process that shares this machine's cores with others (the emulated instances,
    the demo's baseline ranks): one intra-op thread each, torchrun's default when it starts several processes on one
    host. OpenMP's idle threads spin: with several workers per core, each took about twice the CPU for the same
    steps. A value the user exported is kept."""
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


class FleetEmulator:
    """Turns the stack's running instances into worker processes; ``poll()`` or ``start()`` a watcher thread."""

    def __init__(
        self,
        ctx: CloudContext,
        *,
        job_of: Callable[[str], str | None] | None = None,
        worker_args: Callable[[str | None, str], list[str]] | None = None,
        log_dir: Path,
        duplicate_events: bool = False,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        workdir: Path | None = None,
        replay: TraceReplay | None = None,
        containers: str | None = None,
    ) -> None:
        self.ctx = ctx
        #: The worker image each agent runs in (``docker run``); None: agents are processes of this machine.
        self.containers = containers
        self.replay = replay
        self.job_of = job_of
        self.worker_args = worker_args or (lambda job, instance: [])
        self.log_dir = log_dir
        self.duplicate_events = duplicate_events
        self.on_event = on_event or (lambda kind, info: None)
        #: The workers' working directory (default: this process's): a job's entrypoint resolves there.
        self.workdir = workdir
        self.metadata = MetadataServer()
        self.instances: dict[str, EmulatedInstance] = {}
        self.gone: set[str] = set()
        self.seen: set[str] = set()
        #: instance -> when the emulator saw each of its agents exit (wall clock), oldest first.
        self.exits: dict[str, list[float]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ec2 = ctx.client("ec2")
        self._events = ctx.client("events")

    # -- processes -------------------------------------------------------------------------------------------
    def running_instances(self) -> list[str]:
        return list(self._running_types())

    def _running_types(self) -> dict[str, str]:
        """The stack's running instances, each with its instance type."""
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{STACK_TAG}", "Values": [self.ctx.stack]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )
        return {
            i["InstanceId"]: i["InstanceType"] for page in pages for r in page["Reservations"] for i in r["Instances"]
        }

    def poll(self) -> None:
        """Starts a worker for each assigned running instance that has none; reaps workers whose instance went.

        moto sends no EC2 state-change events: a newly running instance's ``running`` event is sent from here.
        """
        types = self._running_types()
        running = set(types)
        if self.replay is not None:
            self.replay_traces()
        for instance_id in sorted(running - self.seen):
            self.seen.add(instance_id)
            self._put(
                "EC2 Instance State-change Notification", {"instance-id": instance_id, "state": "running"}, instance_id
            )
        with self._lock:
            for instance_id in sorted(running - set(self.instances) - self.gone):
                if self.job_of is None:
                    self._launch(instance_id, None, types[instance_id])
                elif (job_id := self.job_of(instance_id)) is not None:
                    self._launch(instance_id, job_id, types[instance_id])
            for instance_id in sorted(set(self.instances) - running):
                self._kill(instance_id, signal.SIGKILL)
            if self.job_of is None:
                self._restart_exited(time.time())

    #: Seconds an agent that exited on a running instance stays down before it is started again (Docker's
    #: ``--restart always`` in the launch template): long enough for an instance given notice to be gone first.
    RESTART_AFTER_S = 15.0

    def _restart_exited(self, now: float) -> None:
        """An agent ends with its job (trained, stopped, failed for good); its instance may serve the next job,
        so, as the container in AWS is, it is started again, unplaced."""
        for instance_id, inst in list(self.instances.items()):
            code = inst.process.poll()
            if code is None:
                inst.exited_at = None
                continue
            if inst.exited_at is None:
                inst.exited_at = now
                self.exits.setdefault(instance_id, []).append(now)
            elif now - inst.exited_at >= self.RESTART_AFTER_S:
                self._launch(instance_id, None, inst.instance_type)

    def _launch(self, instance_id: str, job_id: str | None, instance_type: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{instance_id}.log"
        inherited = {k: v for k, v in os.environ.items() if k not in ("RINGFLEET_JOB_ID", "RINGFLEET_BROKER_URL")}
        env = {
            **({"RINGFLEET_JOB_ID": job_id} if job_id else {}),
            **self.ctx.aws_environment,
            "RINGFLEET_INSTANCE_ID": instance_id,
            # As many training processes as its instance has GPUs: the agent starts them at boot, warm.
            "RINGFLEET_SLOTS": str(instance_slots(instance_type)),
            # The agents log in as the worker user, its login read from Secrets Manager as in AWS, and obey only the
            # control plane's user (broker_roles).
            **self.ctx.worker_broker_environment(),
            **({"RINGFLEET_CONTROL_USER": self.ctx.control_user} if self.ctx.control_user else {}),
            "RINGFLEET_METADATA_URL": self.metadata.base_url(instance_id),
            "RINGFLEET_CHECKPOINT_BUCKET": str(self.ctx.resolve({"Ref": "CheckpointBucket"})),
            # The instance's own disk (the local-disk checkpoint tier) lies beside its log, and goes with the run.
            "RINGFLEET_CHECKPOINT_CACHE": str(self.log_dir / "checkpoint-cache" / instance_id),
            # Its typed training events, beside its log: what the demo and the tests read (never the log lines).
            EVENTS_FILE_VARIABLE: str(events_file(self.log_dir, instance_id)),
            "PYTHONUNBUFFERED": "1",
            **one_thread_each(),
        }
        args = self.worker_args(job_id, instance_id)
        process: ProcessHandle
        if self.containers:
            # the container gets the instance's variables and the worker's settings this process has, no more (its
            # own PATH, HOME, ... are the image's)
            env.update({k: v for k, v in inherited.items() if k.startswith("RINGFLEET_") and k not in env})
            command = [*self._container_command(instance_id, env), *args]
            process = warm.popen(command, env={**os.environ, **env}, cwd=None, log_path=log_path, new_session=True)
        else:  # python -m training_worker, forked from the warm interpreter (ringfleet_local.warm)
            process = warm.start_agent(args, env={**inherited, **env}, cwd=self.workdir, log_path=log_path)
        self.instances[instance_id] = EmulatedInstance(instance_id, job_id, process, log_path, instance_type)
        self.on_event("worker-started", {"instance_id": instance_id, "job_id": job_id, "pid": process.pid})

    def _container_command(self, instance_id: str, env: dict[str, str]) -> list[str]:
        """``docker run`` of the worker image for one instance's agent: its variables by name (``env`` holds their
        values), the engine's socket, its folders at their own paths, owned by the image's worker user."""
        assert self.containers is not None
        cache, events = Path(env["RINGFLEET_CHECKPOINT_CACHE"]), Path(env[EVENTS_FILE_VARIABLE])
        cache.mkdir(parents=True, exist_ok=True)
        events.touch()
        for path in (cache, events):
            os.chown(path, IMAGE_WORKER_UID, IMAGE_WORKER_UID)
        env["RINGFLEET_CONTAINER_RUNTIME"] = "docker"
        socket = Path(DOCKER_SOCKET)
        return [
            "docker",
            "run",
            "--rm",
            "--network=host",
            f"--label={INSTANCE_LABEL}={instance_id}",
            f"--label={ROLE_LABEL}=agent",
            f"--group-add={socket.stat().st_gid}",
            f"--volume={socket}:{socket}",
            f"--volume={cache}:{cache}",
            f"--volume={events.parent}:{events.parent}",
            *(f"--env={k}" for k in sorted(env)),
            self.containers,
        ]

    def _kill(self, instance_id: str, sig: signal.Signals) -> None:
        inst = self.instances.pop(instance_id, None)
        self.gone.add(instance_id)
        if inst is not None:
            _end([inst.process], sig, grace_s=30)
        if self.containers:
            remove_containers(instance_id)

    # -- chaos ------------------------------------------------------------------------------------------------
    def _put(self, detail_type: str, detail: dict[str, Any], instance_id: str) -> None:
        arn = f"arn:aws:ec2:{self.ctx.region}:{self.ctx.account}:instance/{instance_id}"
        entry = {"Source": "aws.ec2", "DetailType": detail_type, "Detail": json.dumps(detail), "Resources": [arn]}
        for _ in range(2 if self.duplicate_events else 1):
            self._events.put_events(Entries=[entry])
        self.on_event(detail_type, {"instance_id": instance_id, **detail})

    def spot_pools(self) -> dict[str, list[str]]:
        """The stack's running spot instances per pool (tag ``ringfleet:pool``), oldest launch first."""
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{STACK_TAG}", "Values": [self.ctx.stack]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )
        found: list[tuple[str, str, str]] = []
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    pool = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get(POOL_TAG, "")
                    if pool.startswith("spot:"):
                        found.append((str(inst.get("LaunchTime", "")), inst["InstanceId"], pool))
        by_pool: dict[str, list[str]] = {}
        for _, instance_id, pool in sorted(found):
            by_pool.setdefault(pool, []).append(instance_id)
        return by_pool

    def replay_traces(self) -> list[str]:
        """Interrupts what the replayed traces take back now (see the module); returns those instances."""
        if self.replay is None:
            return []
        taken = self.replay.reclaim(self.spot_pools())
        for instance_id in taken:
            self.on_event("trace-reclaim", {"instance_id": instance_id, "at_hours": round(self.replay.hours(), 3)})
            self.interrupt(instance_id, self.replay.grace_s)
        return taken

    def interrupt(self, instance_id: str, grace_s: float, *, rebalance: bool = True) -> threading.Thread:
        """Spot interruption with notice; returns the thread that terminates the instance after the grace period."""
        when = datetime.now(UTC) + timedelta(seconds=grace_s)
        self.metadata.notices[instance_id] = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if rebalance:
            self._put("EC2 Instance Rebalance Recommendation", {"instance-id": instance_id}, instance_id)
        self._put(
            "EC2 Spot Instance Interruption Warning",
            {"instance-id": instance_id, "instance-action": "terminate"},
            instance_id,
        )

        def terminate_later() -> None:
            if self._stop.wait(grace_s):
                return
            self.terminate(instance_id, sig=signal.SIGKILL)

        t = threading.Thread(target=terminate_later, daemon=True, name=f"terminate-{instance_id}")
        t.start()
        return t

    def terminate(self, instance_id: str, *, sig: signal.Signals = signal.SIGKILL) -> None:
        """The instance goes: moto terminates it, EC2's state-change events are sent, the process is killed."""
        with self._lock:
            self._kill(instance_id, sig)
        self._ec2.terminate_instances(InstanceIds=[instance_id])
        for state in ("shutting-down", "terminated"):
            self._put(
                "EC2 Instance State-change Notification", {"instance-id": instance_id, "state": state}, instance_id
            )

    def hard_kill(self, instance_id: str) -> None:
        """No notice at all: the instance and its worker die mid-step; the control plane must notice on its own.

        moto learns first, so that EC2 already reports the instance gone when a survivor's failed collective asks.
        """
        self._ec2.terminate_instances(InstanceIds=[instance_id])
        with self._lock:
            self._kill(instance_id, signal.SIGKILL)
        self.on_event("hard-kill", {"instance_id": instance_id})

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, interval_s: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.poll()

        self._thread = threading.Thread(target=loop, daemon=True, name="fleet-emulator")
        self._thread.start()

    def stop(self, grace_s: float = 30) -> None:
        """Ends every worker: SIGTERM to all at once (each may checkpoint), SIGKILL to what is left after
        ``grace_s``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            ending = list(self.instances.values())
            self.gone.update(self.instances)
            self.instances.clear()
        _end([i.process for i in ending], signal.SIGTERM, grace_s=grace_s)
        if self.containers:
            for inst in ending:
                remove_containers(inst.instance_id)
        self.metadata.close()


def remove_containers(instance_id: str) -> None:
    """Removes, at once, every container of an instance (its agent's, its job's): the instance is gone."""
    found = subprocess.run(
        ["docker", "ps", "--all", "--quiet", f"--filter=label={INSTANCE_LABEL}={instance_id}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if found:
        subprocess.run(["docker", "rm", "--force", *found], capture_output=True)


def _signal_group(process: ProcessHandle, sig: signal.Signals) -> None:
    # The worker leads its group (start_new_session): the group is the worker and whatever it started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _end(processes: Sequence[ProcessHandle], sig: signal.Signals, *, grace_s: float) -> None:
    """Sends ``sig`` to each worker's group, waits up to ``grace_s`` for the workers, then SIGKILLs the groups:
    a script the worker started (or orphaned) never outlives its instance."""
    for process in processes:
        if process.poll() is None:
            _signal_group(process, sig)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        _signal_group(process, signal.SIGKILL)
        process.wait()
