"""The runtime beside a user's training script: membership, the control channel, heartbeats, checkpoints, notices.

A user's script sees only the public API (``training_worker.init()``, ``DistributedOptimizer``,
``elastic.TorchState``, ``@elastic.run``, ...); everything operational lives here, in one ``Runtime`` per process
(Horovod keeps the same kind of global behind ``hvd.init()``). It is configured from environment variables, so the
same script runs under the instance agent (which sets them and starts the runtime before the script), under
torchrun-style variables (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) or ``RINGFLEET_STATIC_WORLD``, or
alone (a ring of one).

Step boundaries are the script's ``state.commit()`` calls: there every rank OR-s its pending flags (a newer
membership, CheckpointNow, a notice, Stop) in one tiny all-reduce, so every rank acts on them at the same step.

A hard kill is healed inside the ring (``Runtime.heal``): the survivors agree among themselves who is gone at the
ring's heal stores and form a ring of their own at once, then tell the control plane, whose Reconfigure naming
exactly that ring is later taken as it is, without a second re-form.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ringfleet.contracts.messages import (
    DEFAULT_CHECKPOINT_INTERVAL_STEPS,
    CheckpointCompleted,
    CheckpointNow,
    Heartbeat,
    Message,
    Reconfigure,
    Stop,
    WorkerFailed,
)
from ringfleet.contracts.training import (
    GenerationJoined,
    RankLeft,
    RingShrank,
    StepTaken,
    TrainingFinished,
)
from training_worker.checkpoint import (
    AsyncCheckpointer,
    CheckpointCorrupt,
    S3CheckpointStore,
    SavedCheckpoint,
)
from training_worker.collectives import BACKENDS, AllreduceBackend, select_backend
from training_worker.control import ControlChannel, SpotNoticeWatcher, broker_url_from_secret, install_sigterm
from training_worker.device_copy import copy_async
from training_worker.events import EventLog
from training_worker.membership import (
    CommandDiscovery,
    FileDiscovery,
    FixedHosts,
    HostDiscovery,
    Membership,
    Superseded,
    agree_survivors,
    join_group,
    leave_group,
    rendezvous_store,
)

if TYPE_CHECKING:
    from training_worker.elastic import TorchState

__all__ = [
    "CollectiveError",
    "HostsUpdatedInterrupt",
    "Runtime",
    "RuntimeConfig",
    "Stopped",
    "cache_dir",
    "current",
    "install",
    "parse_static",
]

log = logging.getLogger("training_worker")

#: How long the members of a ring wait for each other at its rendezvous once a generation that adds workers to it is
#: known, before they all go to that one instead (see Runtime._superseded).
SUPERSET_PATIENCE_S = 1.5
#: How long a worker booted without a job waits to be placed: as long as its instance runs (ten years).
UNPLACED_WAIT_S = 10 * 365 * 86400.0
#: Bytes of one heal store's "host:port" in the exchange that arms a ring (see Runtime._arm_heal).
_ADDRESS_BYTES = 64


class CollectiveError(RuntimeError):
    """A collective with the ring's peers failed (a peer died or froze): recoverable by re-forming the ring.

    Only failures of our own collectives are wrapped in it, so a ``RuntimeError`` of the user's code (a shape
    mismatch) is never mistaken for a lost peer: it fails the script instead.
    """


class HostsUpdatedInterrupt(Exception):
    """Raised by ``state.commit()`` when the membership changes: ``@elastic.run`` re-forms the ring and calls the
    training function again from the committed state. Not a failure."""


class Stopped(SystemExit):
    """This worker's part in the job is over (Stop, SIGTERM, a spot notice, left out of the new generation): the
    script ends with exit status 0."""

    def __init__(self, why: str) -> None:
        super().__init__(0)
        self.why = why

    def __str__(self) -> str:
        return self.why


def parse_static(value: str) -> Membership:
    """``RANK:WORLD:HOST:PORT`` as a fixed membership."""
    try:
        rank, world, host, port = value.split(":")
        return Membership(generation=0, rank=int(rank), world_size=int(world), rendezvous=f"{host}:{int(port)}")
    except ValueError as e:
        raise ValueError(f"expected RANK:WORLD:HOST:PORT, got {value!r}") from e


def cache_dir(env: Mapping[str, str]) -> Path | None:
    """RINGFLEET_CHECKPOINT_CACHE: the local-disk checkpoint tier's folder; "none" turns it off; by default one per
    instance under the temporary directory (an instance's own disk: it goes with the instance)."""
    value = env.get("RINGFLEET_CHECKPOINT_CACHE")
    if value == "none":
        return None
    if value:
        return Path(value)
    instance = env.get("RINGFLEET_INSTANCE_ID") or f"local-{os.getpid()}"
    return Path(tempfile.gettempdir()) / "ringfleet-checkpoints" / instance


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return float(env.get(name) or default)


def _broker_secret(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(RINGFLEET_BROKER_SECRET_ID, RINGFLEET_BROKER_ENDPOINT) when the worker logs in with its broker secret."""
    secret, endpoint = _set(env, "RINGFLEET_BROKER_SECRET_ID"), _set(env, "RINGFLEET_BROKER_ENDPOINT")
    if secret and not endpoint:
        raise ValueError("RINGFLEET_BROKER_SECRET_ID needs RINGFLEET_BROKER_ENDPOINT (amqps://host:5671/)")
    return (secret, endpoint) if secret and endpoint else None


def _set(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value; None when it is unset or empty."""
    return env.get(name) or None


def _static_world(env: Mapping[str, str]) -> Membership | None:
    """A fixed world from RINGFLEET_STATIC_WORLD or torchrun's variables; None: the agent's discovery decides."""
    if env.get("RINGFLEET_STATIC_WORLD"):
        return parse_static(env["RINGFLEET_STATIC_WORLD"])
    if all(env.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        # torchrun's variables: `torchrun --nproc-per-node 2 train.py` runs a script as is.
        return Membership(0, int(env["RANK"]), int(env["WORLD_SIZE"]), f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}")
    return None


@dataclass
class RuntimeConfig:
    """What the runtime needs; ``from_env`` reads it from the variables the agent (or the user) sets."""

    job_id: str | None = None
    instance_id: str = "local"
    broker_url: str | None = None
    bucket: str | None = None
    metadata_url: str | None = None
    static: Membership | None = None
    discovery_file: Path | None = None
    backends: tuple[str, ...] = BACKENDS
    wire: str = "none"
    timeout_s: float = 10.0
    join_timeout_s: float = 60.0
    wait_s: float = 600.0
    heartbeat_every_s: float = 5.0
    checkpoint_interval_steps: int = DEFAULT_CHECKPOINT_INTERVAL_STEPS
    log_every: int = 10
    max_failures: int = 10
    #: Where a Reconfigure came from before this process started (a container the agent launched), as JSON.
    reconfigure_json: str | None = None
    #: The local-disk tier of checkpoints (this instance's newest ones); None: S3 only.
    checkpoint_cache: Path | None = None
    #: (secret id, endpoint) when ``broker_url`` came from the worker's broker secret: a process the agent launches
    #: is handed these, never the URL with its password.
    broker_secret: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeConfig:
        env = os.environ if env is None else env
        secret = _broker_secret(env)
        broker = broker_url_from_secret(*secret) if secret else _set(env, "RINGFLEET_BROKER_URL")
        discovery_file = _set(env, "RINGFLEET_DISCOVERY_FILE")
        return cls(
            job_id=_set(env, "RINGFLEET_JOB_ID"),
            instance_id=env.get("RINGFLEET_INSTANCE_ID") or f"local-{os.getpid()}",
            broker_url=None if broker in (None, "none") else broker,
            bucket=_set(env, "RINGFLEET_CHECKPOINT_BUCKET"),
            metadata_url=_set(env, "RINGFLEET_METADATA_URL"),
            static=_static_world(env),
            discovery_file=Path(discovery_file) if discovery_file else None,
            backends=tuple((env.get("RINGFLEET_BACKENDS") or ",".join(BACKENDS)).split(",")),
            wire=env.get("RINGFLEET_WIRE") or "none",
            timeout_s=_float(env, "RINGFLEET_TIMEOUT", 10.0),
            join_timeout_s=_float(env, "RINGFLEET_JOIN_TIMEOUT", 60.0),
            wait_s=_float(env, "RINGFLEET_WAIT", 600.0),
            heartbeat_every_s=_float(env, "RINGFLEET_HEARTBEAT_EVERY", 5.0),
            checkpoint_interval_steps=int(
                env.get("RINGFLEET_CHECKPOINT_INTERVAL_STEPS") or DEFAULT_CHECKPOINT_INTERVAL_STEPS
            ),
            log_every=int(env.get("RINGFLEET_LOG_EVERY") or 10),
            reconfigure_json=_set(env, "RINGFLEET_RECONFIGURE"),
            checkpoint_cache=cache_dir(env),
            broker_secret=secret,
        )

    def environment(self) -> dict[str, str]:
        """The variables ``from_env`` reads back into this configuration (for a process the agent launches)."""
        env = {
            "RINGFLEET_INSTANCE_ID": self.instance_id,
            "RINGFLEET_BROKER_URL": "none" if self.broker_url is None or self.broker_secret else self.broker_url,
            "RINGFLEET_BACKENDS": ",".join(self.backends),
            "RINGFLEET_WIRE": self.wire,
            "RINGFLEET_TIMEOUT": str(self.timeout_s),
            "RINGFLEET_JOIN_TIMEOUT": str(self.join_timeout_s),
            "RINGFLEET_WAIT": str(self.wait_s),
            "RINGFLEET_HEARTBEAT_EVERY": str(self.heartbeat_every_s),
            "RINGFLEET_CHECKPOINT_INTERVAL_STEPS": str(self.checkpoint_interval_steps),
            "RINGFLEET_LOG_EVERY": str(self.log_every),
        }
        optional = {
            "RINGFLEET_JOB_ID": self.job_id,
            "RINGFLEET_CHECKPOINT_BUCKET": self.bucket,
            "RINGFLEET_METADATA_URL": self.metadata_url,
            "RINGFLEET_DISCOVERY_FILE": str(self.discovery_file) if self.discovery_file else None,
            "RINGFLEET_RECONFIGURE": self.reconfigure_json,
            "RINGFLEET_CHECKPOINT_CACHE": str(self.checkpoint_cache) if self.checkpoint_cache else "none",
        }
        if self.broker_secret is not None:
            optional["RINGFLEET_BROKER_SECRET_ID"], optional["RINGFLEET_BROKER_ENDPOINT"] = self.broker_secret
        if self.static is not None:
            s = self.static
            optional["RINGFLEET_STATIC_WORLD"] = f"{s.rank}:{s.world_size}:{s.rendezvous}"
        return {**env, **{k: v for k, v in optional.items() if v}}


_WIRE = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class _HealPoint:
    """Where a ring's survivors find each other after a hard kill: a connection to each of its heal stores (rank 0's,
    then rank 1's; this rank's own server among them, kept alive by holding it)."""

    stores: tuple[dist.Store, ...]


@dataclass(frozen=True)
class Healed:
    """A ring the survivors of a hard kill formed among themselves (``Runtime.heal``)."""

    generation: int
    #: The ranks of the broken ring that were left out (the lost).
    lost: tuple[int, ...]
    world_size: int
    rank: int
    took_s: float


def _advertised_host(rendezvous: str) -> str:
    """This machine's address on the route to the ring's rendezvous host: where its peers reach a store it serves."""
    import socket

    host = rendezvous.rsplit(":", 1)[0].strip("[]")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # UDP: nothing is sent, the kernel only picks the route
            return str(s.getsockname()[0])
    except OSError:
        return host


class GoodputMeter:
    """Productive training time, for the heartbeat's ``goodput``: the time from one step to the next counts when the
    worker was training all along (no rendezvous, restore or wait between them) and the step is a new highest one
    (a step redone after a rollback to an older commit or checkpoint is lost work, not progress). ``window`` is
    the share of wall time that was productive since the previous call, so each heartbeat reports its own interval."""

    def __init__(self, now: float) -> None:
        self.productive_s = 0.0
        self._best = 0
        self._window = (now, 0.0)

    def stepped(self, step: int, since: float | None, now: float) -> None:
        if since is not None and step > self._best:
            self.productive_s += now - since
        self._best = max(self._best, step)

    def window(self, now: float) -> float | None:
        start, productive = self._window
        self._window = (now, self.productive_s)
        if now <= start:
            return None
        return min(1.0, max(0.0, (self.productive_s - productive) / (now - start)))


class Runtime:
    """One per process: the ring this worker is in, and everything the script must never see."""

    # Step-boundary flags, OR-ed across ranks at every commit, so every rank acts on them at the same step.
    RECONFIGURE, STOP, CHECKPOINT, LEAVE = range(4)

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.discovery: HostDiscovery
        self.commands: CommandDiscovery | None = None
        if config.static is not None:
            self.discovery = FixedHosts(config.static)
        elif config.discovery_file is not None:
            self.commands = FileDiscovery(config.discovery_file, config.instance_id)
            self.discovery = self.commands
        elif config.broker_url is not None or config.reconfigure_json is not None:
            self.commands = CommandDiscovery(config.instance_id)
            self.discovery = self.commands
            if config.reconfigure_json is not None:
                from ringfleet.contracts import parse_message

                command = parse_message(config.reconfigure_json)
                if isinstance(command, Reconfigure):
                    self.commands.offer(command)
        else:
            # Neither a control plane nor a fixed ring: the script trains alone, a ring of one.
            self.discovery = FixedHosts(Membership(0, 0, 1, f"127.0.0.1:{_free_port()}"))
        self.store: S3CheckpointStore | None = None
        self.checkpointer: AsyncCheckpointer | None = None
        if config.job_id is not None:
            self.serve(config.job_id)
        self.channel: ControlChannel | None = None
        self.membership: Membership | None = None
        #: The membership waited for and known, whose group is not joined yet (see join_next).
        self.pending: Membership | None = None
        #: The newest generation this worker joined (or tried to); commands of older ones are ignored.
        self.generation = -1
        self.member = False  # has been a member of some generation
        #: Rank and world size of the generation joined last (what heartbeats say while the worker is between rings).
        self._place = (0, 1)
        self._trained = False
        self._copier: ThreadPoolExecutor | None = None
        self._copies: list[Future[Any]] = []
        self.backend: AllreduceBackend | None = None
        #: The ring's process group when it is a sub-group of the generation's (the survivors after a shrink); None:
        #: the generation's own (torch's default group).
        self.group: dist.ProcessGroup | None = None
        #: The next generation's rendezvous, served early by its rank 0 / probed by the current ring's rank 0.
        self._served: tuple[int, dist.TCPStore] | None = None
        self._probe: tuple[int, dist.TCPStore] | None = None
        #: The ring's heal stores (None: a ring of fewer than 3, or none formed): see heal().
        self._heal: _HealPoint | None = None
        #: The ring was formed by its survivors (heal), not named by the control plane: a later Reconfigure naming
        #: exactly its members is taken as it is (see _adoptable).
        self._self_formed = False
        #: The survivors of this worker's ring re-formed without it: it reports itself lost (see ring_failed).
        self._left_out_by_survivors = False
        #: Global optimizer steps taken (every ``DistributedOptimizer.step()``); saved with the state.
        self.step = 0
        #: What ``report()`` last said (loss, ...), for progress lines and heartbeats.
        self.metrics: dict[str, float] = {}
        #: The typed events tools read (RINGFLEET_EVENTS_FILE); the log lines beside them are for people.
        self.events = EventLog.from_env(config.instance_id)
        #: Samples per global step, when the script's TorchState has an ElasticSampler.
        self.global_batch = 0
        #: Gradient weight of this rank's share of the global batch (see ElasticSampler).
        self.grad_scale = 1.0
        self.initialized = False
        self.failures = 0
        self.last_checkpoint_step = 0
        self.leaving = False
        self._pending = [False] * 4
        self._checkpoint_generation = -1
        self._stepped_at: float | None = None
        self.goodput = GoodputMeter(time.monotonic())
        self._logged = (time.perf_counter(), 0)
        self._beating: Future[None] | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def serve(self, job_id: str) -> None:
        """From now on this worker trains ``job_id``: its checkpoints and messages are that job's."""
        self.config.job_id = job_id
        if self.config.bucket:
            self.store = S3CheckpointStore(
                self.config.bucket, job_id, cache_dir=self.config.checkpoint_cache, writer=self.config.instance_id
            )
            self.checkpointer = AsyncCheckpointer(self.store)

    @property
    def job_id(self) -> str:
        if self.config.job_id is None:
            raise RuntimeError("no job yet: the worker has not been placed")
        return self.config.job_id

    def start(self) -> None:
        """Connects the control channel, watches for notices and SIGTERM, and starts heartbeats (once)."""
        if self._started:
            return
        self._started = True
        config = self.config
        if config.broker_url:
            self.channel = ControlChannel(config.broker_url, config.job_id, config.instance_id, self.on_command)
            self.channel.start()
            job = f"of job {config.job_id}" if config.job_id else "(not placed on a job yet)"
            print(f"control channel ready: waiting for a Reconfigure {job}", flush=True)
            threading.Thread(target=self._heartbeats, daemon=True, name="heartbeats").start()
        if config.metadata_url:
            SpotNoticeWatcher(config.metadata_url, lambda notice: self.leave("spot interruption notice")).start()
        if threading.current_thread() is threading.main_thread():
            install_sigterm(lambda: self.leave("SIGTERM"))
        # A script run without the agent ends without calling close(): its process group and threads are still
        # ended in order (gloo's threads torn down at exit abort the process).
        atexit.register(self.close)

    def reconnect(self) -> None:
        """Takes the control channel back after a child process that had its own (see the agent)."""
        if self.config.broker_url and self.channel is None:
            self.channel = ControlChannel(
                self.config.broker_url, self.config.job_id, self.config.instance_id, self.on_command
            )
            self.channel.start()

    def close(self) -> None:
        self._done.set()
        self.leave_group()
        if self.checkpointer is not None:
            self.checkpointer.wait()
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def reset_for_rerun(self) -> None:
        """The script failed and will run again in this process: it starts from a fresh state and in a generation
        newer than every one known now (the control plane's restart), never in the one it failed in."""
        self.leave_group()
        self.pending = None
        self.generation = max(self.generation, self.discovery.generation)
        self.initialized = False
        self.step = 0
        self.metrics = {}
        self.global_batch, self.grad_scale = 0, 1.0

    # -- inputs from other threads -------------------------------------------------------------------------------

    def on_command(self, command: CheckpointNow | Reconfigure | Stop) -> None:
        if self.config.job_id is None:
            # Booted before placement: the first Reconfigure (the control channel lets no other command through
            # before it) names the job. Set up before the membership is offered, so the run finds it ready.
            self.serve(command.job_id)
        if command.generation < self.generation:
            log.info("ignoring %s of generation %d (now %d)", command.type, command.generation, self.generation)
            return
        if isinstance(command, Reconfigure):
            # Not a pending flag: each step boundary asks discovery whether a newer generation is known, so the
            # Reconfigure that starts a generation never ends it.
            if self.commands is not None:
                self.commands.offer(command)
        elif isinstance(command, CheckpointNow):
            log.info("CheckpointNow (%s): checkpointing at the next step boundary", command.reason)
            self._checkpoint_generation = command.generation
            self._raise(self.CHECKPOINT)
        else:
            log.info("Stop (%s): stopping at the next step boundary", command.reason)
            self._raise(self.STOP)
            self.discovery.close()  # a worker waiting for a membership stops now

    def leave(self, why: str) -> None:
        """SIGTERM or a spot notice: checkpoint at the next step boundary, then exit.

        The other ranks take the same step boundary, rank 0 writes the checkpoint, and they wait for the control
        plane's next Reconfigure. A worker that is not training (waiting for a membership) exits at once.
        """
        log.warning("%s: checkpointing at the next step boundary, then leaving", why)
        self.leaving = True
        self._raise(self.LEAVE)
        self.discovery.close()

    def _raise(self, flag: int) -> None:
        with self._lock:
            self._pending[flag] = True

    def publish(self, message: Message) -> None:
        """Publishes and waits for the broker (CheckpointCompleted, WorkerFailed)."""
        if self.channel is not None:
            try:
                self.channel.publish(message).result(10)
            except Exception:
                log.exception("could not publish %s", message.type)

    def _heartbeats(self) -> None:
        """Beats every ``heartbeat_every_s`` from its own thread: while training, and while waiting for or joining a
        generation (a worker between rings is alive, and must not be swept as silent). A worker whose training stops
        making steps stops beating, so a frozen one is found by the heartbeat sweep.

        Publishes without waiting: a broker that is away must not stall anything. One at a time, so an outage does
        not pile them up; the robust connection resumes them once the broker is back.
        """
        config = self.config
        stall_s = max(30.0, 6 * config.heartbeat_every_s)
        while not self._done.wait(config.heartbeat_every_s):
            if self.channel is None or (self._beating is not None and not self._beating.done()):
                continue
            stepped = self._stepped_at
            if stepped is not None and time.monotonic() - stepped > stall_s:
                continue  # training is stuck: stay silent
            if not self._trained or config.job_id is None:
                continue  # has not trained in any ring yet: nobody waits for its beats
            # The newest generation known: one that adds members is announced before the ring takes it (when the
            # newcomers are ready), and the control plane counts this worker in it from the announcement on.
            generation = max(self.generation, self.discovery.generation)
            rank, world = self._place
            beat = Heartbeat(
                job_id=config.job_id,
                instance_id=config.instance_id,
                generation=generation,
                rank=rank,
                world_size=world,
                step=self.step,
                loss=self.metrics.get("loss"),
                samples_per_second=self.metrics.get("samples_per_second", 0.0),
                goodput=self.goodput.window(time.monotonic()),
            )

            def report(future: Future[None]) -> None:
                if not future.cancelled() and future.exception() is not None:
                    log.warning("could not publish a Heartbeat: %s", future.exception())

            self._beating = self.channel.publish(beat)
            self._beating.add_done_callback(report)

    # -- membership -------------------------------------------------------------------------------------------------

    def await_membership(self) -> Membership:
        """The next membership that includes this worker, waiting for it; not joined yet (``pending``). Raises
        Stopped when there is none for it (Stop, a notice, left out of the newest generation)."""
        if self.pending is not None:
            return self.pending
        config = self.config
        while True:
            wait = config.wait_s if self.member else UNPLACED_WAIT_S
            membership = self.discovery.wait(self.generation, wait)
            if membership is not None:
                self.generation, self.member = membership.generation, True
                self._place = (membership.rank, membership.world_size)
                self.pending = membership
                return membership
            if self.discovery.closed:
                raise Stopped("leaving: no further generation is joined")
            newest = self.discovery.generation
            if newest <= self.generation:
                raise TimeoutError(f"no membership newer than generation {self.generation} within {wait}s")
            if self.member:
                log.info("generation %d leaves this worker out: stopping", newest)
                raise Stopped(f"generation {newest} leaves this worker out")
            log.info("generation %d does not include this worker: waiting as a spare", newest)
            self.generation = newest

    def join_next(self) -> Membership:
        """Joins the group of the pending membership, or of the next one (waiting for it).

        A worker arrives at a rendezvous only from here: the first collective its script makes, or its
        ``@elastic.run`` starting, not ``init()``. So a newcomer arrives once its script has loaded its model and
        data, and the ring it joins (which grows only when every newcomer has arrived) never waits for that.
        """
        config = self.config
        while True:
            membership = self.await_membership()
            self.pending = None
            log.info(
                "joining generation %d as rank %d of %d at %s",
                membership.generation,
                membership.rank,
                membership.world_size,
                membership.rendezvous,
            )
            self.events.emit(
                GenerationJoined, generation=membership.generation, rank=membership.rank, world=membership.world_size
            )
            superseded = functools.partial(self._superseded, membership, time.monotonic())
            served = self._served[1] if self._served is not None and self._served[0] == membership.generation else None
            self._served, self._probe = None, None
            try:
                join_group(
                    membership, _process_group_backend(), config.timeout_s, config.join_timeout_s, superseded, served
                )
            except Superseded as e:
                log.info("%s: joining the newer one", e)
                leave_group()
                continue
            except (RuntimeError, TimeoutError, ConnectionError) as e:
                leave_group()
                raise CollectiveError(f"joining generation {membership.generation}: {e}") from e
            self.membership = membership
            self.backend = select_backend(list(config.backends), wire_dtype=_WIRE[config.wire])
            self._self_formed = self._left_out_by_survivors = False
            self._arm_heal()
            with self._lock:
                if self._checkpoint_generation < membership.generation:
                    # Asked of a ring that is gone: the new ring's state is no less durable than what that
                    # checkpoint would have saved.
                    self._pending[self.CHECKPOINT] = False
            return membership

    def leave_group(self) -> None:
        self._close_ring()
        self.membership = None
        self._heal = None
        self._stepped_at = None  # not training: the heartbeat says it waits

    def _close_ring(self) -> None:
        """Ends the ring's process group (its sockets close: a peer still waiting on this rank learns of a failure
        now, not at its timeout); the membership stays."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self.group = None
        leave_group()

    def place(self) -> Membership:
        """This worker's membership, joined or pending (rank and world size are known before the group forms)."""
        place = self.membership or self.pending
        if place is None:
            raise RuntimeError("training_worker is not initialised: call training_worker.init() first")
        return place

    def require_membership(self) -> Membership:
        """The ring's membership, joining its group first when it is only pending."""
        if self.membership is None and self.pending is not None:
            self.join_next()
        if self.membership is None:
            raise RuntimeError("training_worker is not initialised: call training_worker.init() before using the ring")
        return self.membership

    def require_backend(self) -> AllreduceBackend:
        self.require_membership()
        assert self.backend is not None
        return self.backend

    def ring_failed(self, error: BaseException) -> None:
        """A collective failed and the ring did not heal: tell the control plane at once (it finds the lost peer)
        instead of waiting for a heartbeat to go missing. A worker its ring's survivors left out reports itself lost:
        the ring trains on without it, and the control plane replaces it."""
        membership = self.membership
        self.failures += 1
        if self.channel is None or membership is None:
            return
        self.publish(self._failure_report(membership, error, left_out=self._left_out_by_survivors))

    def _failure_report(self, membership: Membership, error: BaseException, *, left_out: bool = False) -> WorkerFailed:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:400] or type(error).__name__
        # Reported in the newest generation this worker belongs to: the control plane may have announced a growth
        # the ring had not taken yet, and it judges a failure against the generation it knows.
        generation, rank = membership.generation, membership.rank
        latest = self.commands.latest if self.commands is not None else None
        if latest is not None and latest.generation > generation and self.config.instance_id in latest.ranks:
            generation, rank = latest.generation, latest.ranks[self.config.instance_id]
        return WorkerFailed(
            job_id=self.job_id,
            instance_id=self.config.instance_id,
            generation=generation,
            rank=rank,
            step=self.step,
            reason=(
                f"left out of the ring its survivors re-formed after: {reason}"
                if left_out
                else f"collective failed: {reason}"
            ),
            scope="self" if left_out else "ring",
        )

    # -- healing a hard kill inside the ring -------------------------------------------------------------------------

    def _arm_heal(self) -> None:
        """Ranks 0 and 1 of the ring just formed each serve a heal store, and every rank connects to both now, while
        they answer, so that after a hard kill the survivors find each other without the control plane (``heal``).

        A ring of fewer than 3 is not armed: without its lost member it has no majority. Every rank of the ring calls
        this at once (the stores' addresses go round in one all-gather)."""
        self._heal = None
        membership = self.membership
        if membership is None or membership.world_size < 3:
            return
        server: dist.TCPStore | None = None
        mine = torch.zeros(_ADDRESS_BYTES, dtype=torch.uint8)
        if membership.rank < 2:
            host = _advertised_host(membership.rendezvous)
            server = dist.TCPStore(host, 0, is_master=True, timeout=timedelta(seconds=2), wait_for_workers=False)
            served = f"{host}:{server.port}".encode()
            mine[: len(served)] = torch.frombuffer(bytearray(served), dtype=torch.uint8)
        gathered = [torch.empty_like(mine) for _ in range(membership.world_size)]
        collective(lambda: dist.all_gather(gathered, mine, group=self.group))
        stores: list[dist.Store] = []
        for rank in (0, 1):
            if rank == membership.rank and server is not None:
                stores.append(server)
                continue
            address = bytes(gathered[rank].tolist()).rstrip(b"\0").decode()
            try:
                stores.append(rendezvous_store(address, serve=False, timeout_s=2.0))
            except (RuntimeError, ConnectionError) as e:
                raise CollectiveError(f"heal store {address} of rank {rank} does not answer: {e}") from e
        self._heal = _HealPoint(tuple(stores))

    def _agree_survivors(self, membership: Membership, point: _HealPoint) -> tuple[int, tuple[int, ...]] | None:
        """The heal store's index and the survivors ``heal`` forms its ring from, once they agree on them; None (and
        why, logged) when they cannot agree or left this worker out: apart, so that ``heal`` reads as its steps."""
        try:
            found = agree_survivors(
                point.stores, "heal", membership.rank, membership.world_size, self.step, self.config.timeout_s + 1.0
            )
        except (RuntimeError, ConnectionError) as e:  # the store's server died while the survivors agreed
            log.warning("generation %d: the survivors could not agree (%s)", membership.generation, e)
            return None
        if found is None:
            log.warning("generation %d: no heal store answers: waiting for the control plane", membership.generation)
            return None
        index, members = found
        if membership.rank not in members:
            self._left_out_by_survivors = bool(members)
            log.warning(
                "generation %d: %s: waiting for the control plane",
                membership.generation,
                "the survivors re-formed without this worker" if members else "no majority of the ring checked in",
            )
            return None
        return index, members

    def heal(self, error: BaseException) -> Healed | None:
        """A collective failed (a peer died without notice): the survivors agree among themselves who is gone and
        form a ring of their own at once, in the same generation, instead of waiting for the control plane's round
        trip; then the control plane is told (it fences with a new generation and replaces the lost instance; its
        Reconfigure naming exactly this ring is taken without a second re-form, see ``_adoptable``).

        The state was already rolled back to the last commit; the survivors' states are synced next (they may be a
        commit apart). Returns None when the ring cannot heal (not armed, no majority checked in, this worker was
        left out, a heal store or a peer failed meanwhile): the worker then waits for the control plane, as before.
        """
        membership, point = self.membership, self._heal
        self._heal = None
        if membership is None or point is None:
            return None
        began = time.monotonic()
        self._close_ring()
        found = self._agree_survivors(membership, point)
        if found is None:
            return None
        index, members = found
        rank = members.index(membership.rank)
        try:
            dist.init_process_group(
                _process_group_backend(),
                store=dist.PrefixStore("heal/ring", point.stores[index]),
                rank=rank,
                world_size=len(members),
                timeout=timedelta(seconds=self.config.timeout_s),
            )
        except (RuntimeError, TimeoutError, ConnectionError) as e:
            log.warning("generation %d: the survivors' ring did not form (%s)", membership.generation, e)
            leave_group()
            return None
        self.membership = replace(
            membership,
            rank=rank,
            world_size=len(members),
            checkpoint=None,  # the survivors keep what they hold; never a restore from S3 here
            instances=tuple(membership.instances[r] for r in members) if membership.instances else (),
        )
        self._place = (rank, len(members))
        self.backend = select_backend(list(self.config.backends), wire_dtype=_WIRE[self.config.wire])
        self._self_formed = True
        self.failures += 1
        if self.channel is not None:
            # Told afterwards, without waiting for the broker: the ring trains on meanwhile.
            self._tell(self._failure_report(membership, error))
        try:
            self._arm_heal()
        except CollectiveError as e:
            log.warning("generation %d: the survivors' ring failed while arming (%s)", membership.generation, e)
            self._close_ring()
            self.membership = membership
            return None
        lost = tuple(r for r in range(membership.world_size) if r not in members)
        return Healed(membership.generation, lost, len(members), rank, time.monotonic() - began)

    def _tell(self, message: Message) -> None:
        """Publishes without waiting for the broker; a failure is logged."""
        if self.channel is None:
            return

        def report(future: Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.warning("could not publish %s: %s", message.type, future.exception())

        self.channel.publish(message).add_done_callback(report)

    def _adoptable(self, membership: Membership) -> Reconfigure | None:
        """The newest Reconfigure when it names exactly the ring its survivors formed (same members, same ranks, no
        checkpoint to restore): the control plane's fencing of a heal. The ring then takes its generation as it is,
        instead of re-forming into the very same ring."""
        if not self._self_formed or not self.discovery.newer(membership.generation):  # (newer() reads a file anew)
            return None
        latest = self.commands.latest if self.commands is not None else None
        return latest if latest is not None and self._names_this_ring(membership, latest) else None

    def _names_this_ring(self, membership: Membership, command: Reconfigure) -> bool:
        if not self._self_formed or command.generation <= membership.generation:
            return False
        if command.checkpoint is not None or not membership.instances:
            return False
        return tuple(sorted(command.ranks, key=command.ranks.__getitem__)) == membership.instances

    def _adopt(self, command: Reconfigure, membership: Membership) -> None:
        adopted = Membership.from_reconfigure(command, self.config.instance_id)
        assert adopted is not None and adopted.rank == membership.rank
        self.membership = adopted
        self.generation = max(self.generation, adopted.generation)
        self._place = (adopted.rank, adopted.world_size)
        self._self_formed = False
        log.info(
            "generation %d names the ring its survivors formed (world %d) at step %d: taken as it is, no re-form",
            adopted.generation,
            adopted.world_size,
            self.step,
        )

    def script_failed(self, reason: str) -> None:
        """The job's script failed on this worker: the control plane counts it against the job's max_restarts."""
        if self.channel is None or self.config.job_id is None:
            return
        membership = self.membership
        generation = max(self.generation, self.discovery.generation, 0)
        self.publish(
            WorkerFailed(
                job_id=self.job_id,
                instance_id=self.config.instance_id,
                generation=generation,
                rank=membership.rank if membership is not None else 0,
                step=self.step,
                reason=_fit(reason, 1024),
                scope="script",
            )
        )

    # -- step boundaries --------------------------------------------------------------------------------------------

    def copy_async(self, tree: Any) -> Future[Any]:
        """A snapshot of ``tree`` taken in the background (see ``TorchState.save``)."""
        if self._copier is None:
            self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit-copy")
        future = copy_async(tree, self._copier)
        self._copies.append(future)
        return future

    def before_update(self) -> None:
        """The state is about to change (an optimizer step, a load): every commit still being copied completes."""
        copies, self._copies = self._copies, []
        for future in copies:
            future.result()

    def on_step(self) -> None:
        """A global optimizer step was taken."""
        self.step += 1
        now = time.monotonic()
        self.goodput.stepped(self.step, self._stepped_at, now)
        self._stepped_at = now
        self._trained = True

    def boundary(self, state: TorchState) -> None:
        """``state.commit()``: every rank learns the pending flags; checkpoints; membership changes and stops."""
        membership = self.require_membership()
        with self._lock:
            local, self._pending = self._pending, [False] * 4
        if self._left_out(membership):
            # The newest generation goes on without this worker (it is leaving with notice, the control plane
            # replaces it): it leaves now, and the others train on without waiting for anyone.
            self.leaving = local[self.LEAVE] = True
        flags, membership = self._exchange_flags(local, membership)
        self.progress()
        if flags[self.STOP]:
            raise Stopped("Stop")
        if flags[self.LEAVE] and self._shrink(membership):
            # The survivors train on at once, without the leavers; the emergency checkpoint of this step is written
            # by the new ring's rank 0 in the background.
            self.checkpoint(state, self.require_membership(), blocking=False, emergency=True)
            state.on_reset()
        elif flags[self.LEAVE]:
            # Every rank leaves: the checkpoint must land before the processes go.
            self.checkpoint(state, membership, blocking=True, emergency=True)
            self._await_checkpoint(membership)
            raise Stopped("leaving: notice given")
        elif flags[self.CHECKPOINT]:
            self.checkpoint(state, membership, blocking=False, emergency=True)
        elif self.step - self.last_checkpoint_step >= self.config.checkpoint_interval_steps:
            self.checkpoint(state, membership, blocking=False, emergency=False)
        if flags[self.RECONFIGURE]:
            log.info("membership changes after step %d: leaving generation %d", self.step, membership.generation)
            self.events.emit(RankLeft, generation=membership.generation, reached=self.step)
            raise HostsUpdatedInterrupt(f"generation {self.discovery.generation} replaces {membership.generation}")

    def _exchange_flags(self, local: list[bool], membership: Membership) -> tuple[list[bool], Membership]:
        """Every rank's flags OR-ed together, and the membership to go on with (a healed ring's Reconfigure adopted)."""
        adopt = self._adoptable(membership)
        local[self.RECONFIGURE] = not self.leaving and adopt is None and self._next_generation_ready(membership)
        # Beside the flags, the generation each rank would adopt, as its max and (negated) min: adopted only when
        # every rank names the same one.
        named = float(adopt.generation if adopt is not None else membership.generation)
        flags_t = torch.tensor([*(float(f) for f in local), named, -named])
        collective(lambda: dist.all_reduce(flags_t, op=dist.ReduceOp.MAX, group=self.group))
        *flags_v, highest, lowest = flags_t.tolist()
        if adopt is not None and highest == -lowest == named:
            self._adopt(adopt, membership)
            membership = self.require_membership()
        return [bool(f) for f in flags_v], membership

    def _next_generation_ready(self, membership: Membership) -> bool:
        """Whether the ring should leave for the newest generation at this boundary.

        A generation that only removes members (a loss, a worker left) is taken at once. One that adds workers is
        taken only once they are ready, that is waiting at its rendezvous with the job's script loaded (a
        replacement still booting, importing torch or loading its data would otherwise stall the whole ring):
        until then the ring trains on. The new generation's rank 0 serves its rendezvous from the moment it hears
        of it, so the newcomers can arrive; the current ring's rank 0 counts them there, and the step-boundary
        flags carry its verdict to every rank.
        """
        if not self.discovery.newer(membership.generation):
            return False
        latest = self.commands.latest if self.commands is not None else None
        if latest is None or not membership.instances:
            return True
        if self._names_this_ring(membership, latest):
            return False  # arrived since _adoptable looked: the ring takes it as it is at the next boundary
        mine = latest.ranks.get(self.config.instance_id)
        if mine is None:
            return True  # left out (a discovery without the members' names): leave now
        joining = sum(1 for instance in latest.ranks if instance not in membership.instances)
        if mine == 0:
            self._serve_rendezvous(latest)
        if joining == 0:
            return True
        if membership.rank != 0:
            return False
        return self._arrived(latest) >= joining

    def _superseded(self, membership: Membership, joining_since: float) -> bool:
        """Whether a newer generation makes joining ``membership`` pointless: at once when it drops some of its
        members. One that only adds workers lets this ring form first (it trains, and takes the newer one at a step
        boundary once the newcomers are ready, see ``_next_generation_ready``) — for ``SUPERSET_PATIENCE_S``: a
        member that learned of the newer generation before joining this one went straight to it, and waiting for
        it here would wait for nobody."""
        if not self.discovery.newer(membership.generation):
            return False
        latest = self.commands.latest if self.commands is not None else None
        if latest is None or not membership.instances:
            return True
        if not set(membership.instances) <= set(latest.ranks):
            return True
        return time.monotonic() - joining_since > SUPERSET_PATIENCE_S

    def _left_out(self, membership: Membership) -> bool:
        """Whether a newer generation, named with its members, leaves this worker out."""
        latest = self.commands.latest if self.commands is not None else None
        return (
            latest is not None
            and bool(membership.instances)
            and latest.generation > membership.generation
            and self.config.instance_id not in latest.ranks
        )

    def _serve_rendezvous(self, command: Reconfigure) -> None:
        if self._served is not None and self._served[0] == command.generation:
            return
        try:
            self._served = (command.generation, rendezvous_store(command.rendezvous, serve=True, timeout_s=2.0))
        except (RuntimeError, ConnectionError) as e:  # the port is taken: joining will say so
            log.warning("cannot serve the rendezvous of generation %d yet: %s", command.generation, e)

    def _arrived(self, command: Reconfigure) -> int:
        """How many members already wait at ``command``'s rendezvous (0 while it does not answer)."""
        try:
            if self._served is not None and self._served[0] == command.generation:
                return int(self._served[1].add("arrived", 0))
            if self._probe is None or self._probe[0] != command.generation:
                self._probe = (command.generation, rendezvous_store(command.rendezvous, serve=False, timeout_s=0.2))
            return int(self._probe[1].add("arrived", 0))
        except (RuntimeError, ConnectionError):
            return 0

    def _survivors_group(self, survivors: list[int]) -> dist.ProcessGroup | None:
        """The survivors' sub-group, formed among the survivors alone (None on a leaver, which takes no part in it):
        ``_shrink``'s one collective that only some ranks join."""
        to_global = (lambda r: dist.get_global_rank(self.group, r)) if self.group is not None else (lambda r: r)
        members = [to_global(r) for r in survivors]
        group = None
        if not self.leaving:
            group = collective(lambda: dist.new_group(members, use_local_synchronization=True))
        return group

    def _shrink(self, membership: Membership) -> bool:
        """Some ranks leave with notice: the others form a ring of their own at this very step boundary and go on
        training (a sub-group of the generation's group, formed among themselves in milliseconds) while the
        leavers exit; nobody waits for the control plane or a replacement. Returns False when every rank leaves.

        A leaver raises Stopped once the survivors' ring exists (its state is theirs: nothing of it is lost).
        """
        bits = torch.zeros(membership.world_size)
        bits[membership.rank] = float(self.leaving)
        collective(lambda: dist.all_reduce(bits, group=self.group))
        survivors = [r for r, leaving in enumerate(bits.tolist()) if not leaving]
        if not survivors:
            return False
        group = self._survivors_group(survivors)
        # The leavers stay until the survivors' ring exists: rank 0 of the generation serves its store.
        collective(lambda: dist.barrier(group=self.group))
        if self.leaving:
            log.info("a rank leaves after step %d: the %d others train on", self.step, len(survivors))
            self.events.emit(RankLeft, generation=membership.generation, reached=self.step)
            raise Stopped("leaving: notice given; the others train on without this worker")
        if self.backend is not None:
            self.backend.close()
        self.group = group
        self.membership = replace(
            membership,
            rank=survivors.index(membership.rank),
            world_size=len(survivors),
            instances=tuple(membership.instances[r] for r in survivors) if membership.instances else (),
        )
        self._place = (self.membership.rank, self.membership.world_size)
        self.backend = select_backend(list(self.config.backends), group=group, wire_dtype=_WIRE[self.config.wire])
        self._arm_heal()
        log.info(
            "generation %d: shrank to %d at step %d without the leaving rank(s) %s; training on as rank %d",
            membership.generation,
            len(survivors),
            self.step,
            [r for r in range(membership.world_size) if r not in survivors],
            self.membership.rank,
        )
        self.events.emit(RingShrank, generation=membership.generation, step=self.step, world=len(survivors))
        return True

    def progress(self) -> None:
        """Prints the progress line once per ``log_every`` steps: from ``report()`` (with the step's loss), else from
        the step boundary."""
        membership = self.membership
        every = self.config.log_every
        started, at_step = self._logged
        if membership is None or self.step // every == at_step // every:
            return
        now = time.perf_counter()
        rate = max(0, self.step - at_step) * self.global_batch / max(now - started, 1e-9)
        self.metrics["samples_per_second"] = rate
        self._logged = (now, self.step)
        # "-" until the script reports one (training_worker.report(loss=...)): never a made-up 0.
        loss = f"{self.metrics['loss']:.4f}" if "loss" in self.metrics else "-"
        wall = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall)) + f",{int(wall % 1 * 1000):03d}"
        print(
            # Stamped like the log records, so that whoever reads the log (the demo) knows when each step ended.
            f"{stamp} step {self.step} loss {loss} samples/s {rate:.0f} "
            f"world {membership.world_size} rank {membership.rank} generation {membership.generation}",
            flush=True,
        )
        self.events.emit(
            StepTaken,
            generation=membership.generation,
            step=self.step,
            rank=membership.rank,
            world=membership.world_size,
            loss=self.metrics.get("loss"),
        )

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def checkpoint(
        self, state: TorchState, membership: Membership, *, blocking: bool, emergency: bool, final: bool = False
    ) -> None:
        self.last_checkpoint_step = self.step
        if self.checkpointer is None:
            if emergency and membership.rank == 0:
                log.warning(
                    "no checkpoint bucket configured: the emergency checkpoint at step %d is skipped", self.step
                )
            return
        if membership.rank != 0:
            return  # the state is replicated: rank 0 writes it for everyone
        step, generation = self.step, membership.generation

        def done(saved: SavedCheckpoint) -> None:
            self._report(saved, generation, emergency=emergency, final=final)

        tree = state.committed()
        if blocking:
            done(self.checkpointer.save(step, generation, membership.world_size, tree))
        else:
            # The commit is already a snapshot of its own, never changed again: uploaded as it is, not copied twice.
            self.checkpointer.save_async(step, generation, membership.world_size, tree, done, copy=False)

    def _report(self, saved: SavedCheckpoint, generation: int, *, emergency: bool, final: bool) -> None:
        if self.channel is None:
            return  # no control plane to tell (standalone runs)
        self.publish(
            CheckpointCompleted(
                job_id=self.job_id,
                instance_id=self.config.instance_id,
                generation=generation,
                step=saved.step,
                uri=saved.uri,
                manifest_sha256=saved.manifest_sha256,
                size_bytes=saved.size_bytes,
                emergency=emergency,
                final=final,
            )
        )

    def finish(self, state: TorchState) -> None:
        """The training function returned: the last step's checkpoint is the job's result, reported as final."""
        membership = self.require_membership()
        if self.checkpointer is not None:
            self.checkpointer.wait()
            last = self.checkpointer.last
            if last is not None and last.step == self.step:
                if membership.rank == 0:
                    self._report(last, membership.generation, emergency=False, final=True)
            else:
                self.checkpoint(state, membership, blocking=True, emergency=False, final=True)
        self._stepped_at = None
        print(f"finished: done at step {self.step}", flush=True)
        self.events.emit(TrainingFinished, generation=max(self.generation, 0), outcome="done", step=self.step)

    def restore_named(self, membership: Membership) -> dict[str, Any] | None:
        """The tree of the durable checkpoint a Reconfigure names (the control plane restarts the job from S3)."""
        ref = membership.checkpoint
        if ref is None:
            return None
        store = self.store
        if store is None or store.bucket != ref.bucket or store.job_id != ref.job_id:
            store = S3CheckpointStore(ref.bucket, ref.job_id)
        try:
            manifest, tree = store.load(ref.step)
        except (CheckpointCorrupt, store.s3.exceptions.NoSuchKey) as e:
            log.warning("checkpoint %s named by generation %d does not verify (%s)", ref.uri, membership.generation, e)
            newest = store.load_newest(max_step=ref.step)
            if newest is None:
                raise RuntimeError(f"no checkpoint at or before step {ref.step} verifies") from e
            manifest, tree = newest
        log.info("restored checkpoint step %d for generation %d", manifest.step, membership.generation)
        return tree

    def newest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint of this job that verifies (a job whose every worker starts fresh resumes there)."""
        if self.store is None:
            return None
        newest = self.store.load_newest()
        if newest is None:
            return None
        manifest, tree = newest
        log.info("resumed from checkpoint step %d (generation %d)", manifest.step, manifest.generation)
        return tree

    def _await_checkpoint(self, membership: Membership, timeout_s: float = 120.0) -> None:
        """A leaving rank other than 0 stays until rank 0's emergency checkpoint is in S3, so that it exits only
        once its work is durable (rank 0 writes for everyone)."""
        if self.store is None or membership.rank == 0:
            return
        deadline = time.monotonic() + timeout_s
        while not self.store.exists(self.step):
            if time.monotonic() >= deadline:
                log.warning("leaving without seeing the checkpoint of step %d within %.0fs", self.step, timeout_s)
                return
            time.sleep(0.1)
        log.info("checkpoint step %d saved by rank 0: leaving", self.step)


def _fit(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its first line (what failed) and as much of its end (the traceback's
    last frames) as fits."""
    if len(text) <= limit:
        return text
    head, _, rest = text.partition("\n")
    head = head[: limit // 3]
    return f"{head}\n...{rest[-(limit - len(head) - 4) :]}"


def collective(call: Callable[[], Any]) -> Any:
    """Runs one of our collectives; a failure of the ring becomes a CollectiveError (recoverable)."""
    try:
        return call()
    except CollectiveError:
        raise
    except (RuntimeError, TimeoutError, ConnectionError) as e:
        raise CollectiveError(str(e) or type(e).__name__) from e


def _process_group_backend() -> str:
    # CPU tensors (the step-boundary flags, state broadcasts of CPU state) always go over gloo; CUDA tensors over
    # NCCL when there is a GPU, so the ring and native collectives use NCCL for the model's gradients.
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_runtime: Runtime | None = None


def install(runtime: Runtime) -> Runtime:
    """Makes ``runtime`` this process's runtime (the agent does, before it runs the script)."""
    global _runtime
    _runtime = runtime
    return runtime


def current() -> Runtime:
    """This process's runtime, built from the environment the first time it is asked for."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(RuntimeConfig.from_env())
    return _runtime
