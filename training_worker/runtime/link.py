"""The control channel and the heartbeats: connecting it (and again after a child process had its own), publishing
this worker's messages with or without waiting for the broker, and beating from a thread of its own.

What a heartbeat says comes from its owners: the step and goodput from ``Progress``, the generation, rank and world
size from the ring (``start``'s ``whereabouts``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from ringfleet.contracts.messages import CheckpointNow, Heartbeat, InstanceIdle, Message, Reconfigure, Stop
from training_worker.control import ControlChannel
from training_worker.runtime.config import RuntimeConfig
from training_worker.runtime.job import Job
from training_worker.runtime.progress import Progress

__all__ = ["CommandHandler", "ControlLink", "Whereabouts"]

log = logging.getLogger("training_worker")

CommandHandler = Callable[[CheckpointNow | Reconfigure | Stop], None]
#: (generation, rank, world size) a heartbeat reports.
Whereabouts = Callable[[], tuple[int, int, int]]


class ControlLink:
    """This worker's link to the control plane: None of it in standalone runs (no broker)."""

    def __init__(self, config: RuntimeConfig, job: Job, progress: Progress) -> None:
        self._config = config
        self._job = job
        self._progress = progress
        self._channel: ControlChannel | None = None
        self._on_command: CommandHandler | None = None
        self._beating: Future[None] | None = None
        #: When this unplaced worker last said InstanceIdle (None: not yet).
        self._idle_said_at: float | None = None
        self._done = threading.Event()

    @property
    def connected(self) -> bool:
        """Whether the control channel is this process's now (a broker is configured, no child holds it)."""
        return self._channel is not None

    def start(self, on_command: CommandHandler, whereabouts: Whereabouts) -> None:
        """Connects the control channel and starts heartbeats, when a broker is configured."""
        config = self._config
        self._on_command = on_command
        if config.broker_url:
            self._channel = ControlChannel(config.broker_url, self._job.id, config.instance_id, on_command)
            self._channel.start()
            job = f"of job {self._job.id}" if self._job.id else "(not placed on a job yet)"
            print(f"control channel ready: waiting for a Reconfigure {job}", flush=True)
            threading.Thread(target=self._heartbeats, args=(whereabouts,), daemon=True, name="heartbeats").start()

    def detach(self) -> None:
        """Lets go of the control channel while a child process runs its own runtime (one consumer per mailbox)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def reconnect(self) -> None:
        """Takes the control channel back after a child process that had its own (see the agent)."""
        if self._config.broker_url and self._channel is None and self._on_command is not None:
            self._channel = ControlChannel(
                self._config.broker_url, self._job.id, self._config.instance_id, self._on_command
            )
            self._channel.start()

    def stop_beating(self) -> None:
        self._done.set()

    def close(self) -> None:
        self._done.set()
        self.detach()

    def publish(self, message: Message) -> None:
        """Publishes and waits for the broker (CheckpointCompleted, WorkerFailed)."""
        if self._channel is not None:
            try:
                self._channel.publish(message).result(10)
            except Exception:
                log.exception("could not publish %s", message.type)

    def tell(self, message: Message) -> None:
        """Publishes without waiting for the broker; a failure is logged."""
        if self._channel is None:
            return

        def report(future: Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.warning("could not publish %s: %s", message.type, future.exception())

        self._channel.publish(message).add_done_callback(report)

    def _idle(self, every_s: float) -> InstanceIdle | None:
        """While no job is known (an agent booted, or started again after its job ended: nothing of a job runs),
        InstanceIdle at the first beat and every ``every_s`` after: it frees the instance for another job once the
        control plane has seen its last job end (a confirmation that came too early is simply sent again)."""
        now = time.monotonic()
        if self._job.id is not None or (self._idle_said_at is not None and now - self._idle_said_at < every_s):
            return None
        self._idle_said_at = now
        return InstanceIdle(instance_id=self._config.instance_id)

    def _heartbeat(self, whereabouts: Whereabouts, stall_s: float) -> Heartbeat | InstanceIdle | None:
        """The heartbeat (or, unplaced, the idle confirmation) to send now; None while the worker must stay silent."""
        if self._job.id is None:
            return self._idle(stall_s)
        progress = self._progress
        stepped = progress.stepped_at
        if stepped is not None and time.monotonic() - stepped > stall_s:
            return None  # training is stuck: stay silent
        job_id = self._job.id
        if not progress.trained or job_id is None:
            return None  # has not trained in any ring yet: nobody waits for its beats
        # The newest generation known: one that adds members is announced before the ring takes it (when the
        # newcomers are ready), and the control plane counts this worker in it from the announcement on.
        generation, rank, world = whereabouts()
        return Heartbeat(
            job_id=job_id,
            instance_id=self._config.instance_id,
            generation=generation,
            rank=rank,
            world_size=world,
            step=progress.step,
            loss=progress.metrics.get("loss"),
            samples_per_second=progress.metrics.get("samples_per_second", 0.0),
            goodput=progress.goodput.window(time.monotonic()),
        )

    def _heartbeats(self, whereabouts: Whereabouts) -> None:
        """Beats every ``heartbeat_every_s`` from its own thread: while training, and while waiting for or joining a
        generation (a worker between rings is alive, and must not be swept as silent). A worker whose training stops
        making steps stops beating, so a frozen one is found by the heartbeat sweep.

        Publishes without waiting: a broker that is away must not stall anything. One at a time, so an outage does
        not pile them up; the robust connection resumes them once the broker is back.
        """
        config = self._config
        stall_s = max(30.0, 6 * config.heartbeat_every_s)
        while not self._done.wait(config.heartbeat_every_s):
            if self._channel is None or (self._beating is not None and not self._beating.done()):
                continue
            beat = self._heartbeat(whereabouts, stall_s)
            if beat is None:
                continue

            def report(future: Future[None], kind: str = beat.type) -> None:
                if not future.cancelled() and future.exception() is not None:
                    log.warning("could not publish a %s: %s", kind, future.exception())

            self._beating = self._channel.publish(beat)
            self._beating.add_done_callback(report)
