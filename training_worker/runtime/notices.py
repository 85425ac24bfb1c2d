"""What reaches a worker from outside its script, on other threads: the control plane's commands (CheckpointNow,
Stop, a Reconfigure), a spot interruption notice from instance metadata, SIGTERM. Each becomes a step-boundary flag
(or a membership offered to the ring), acted on by every rank at the same step."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from ringfleet.contracts.messages import CheckpointNow, Reconfigure, Stop
from training_worker.control import SpotNoticeWatcher, install_sigterm
from training_worker.runtime.config import RuntimeConfig
from training_worker.runtime.flags import STOP, Flags
from training_worker.runtime.job import Job
from training_worker.runtime.ring import Ring

__all__ = ["Notices"]

log = logging.getLogger("training_worker")


class Notices:
    """Turns commands and notices into flags; ``serve`` places the worker on the job the first Reconfigure names."""

    def __init__(self, config: RuntimeConfig, job: Job, flags: Flags, ring: Ring, serve: Callable[[str], None]) -> None:
        self._config = config
        self._job = job
        self._flags = flags
        self._ring = ring
        self._serve = serve
        #: Ends the process when a Stop is not obeyed within ``stop_grace_s`` (see ``on_command``).
        self._overdue: threading.Timer | None = None
        #: Who else hears every command: the instance's other slots (``training_worker.slots``).
        self._forwards: list[Callable[[CheckpointNow | Reconfigure | Stop], None]] = []
        #: Who else hears SIGTERM or a spot notice: the job's container, which the agent started (``on_leave``).
        self._leaving: list[Callable[[str], None]] = []

    def forward(self, to: Callable[[CheckpointNow | Reconfigure | Stop], None]) -> None:
        """Every command this worker gets is passed on to ``to`` first (the agent relays them to its slots)."""
        self._forwards.append(to)

    def on_leave(self, to: Callable[[str], None]) -> None:
        """``to(why)`` is called on SIGTERM or a spot notice too (the agent passes them on to the job's container)."""
        self._leaving.append(to)

    def watch(self) -> None:
        """Watches for a spot interruption notice (with an instance metadata endpoint) and SIGTERM (on the main
        thread)."""
        if self._config.metadata_url:
            SpotNoticeWatcher(self._config.metadata_url, lambda notice: self.leave("spot interruption notice")).start()
        if threading.current_thread() is threading.main_thread():
            install_sigterm(lambda: self.leave("SIGTERM"))

    def on_command(self, command: CheckpointNow | Reconfigure | Stop) -> None:
        for forward in self._forwards:
            forward(command)
        ring = self._ring
        if self._job.id is None:
            # Booted before placement: the first Reconfigure (the control channel lets no other command through
            # before it) names the job. Set up before the membership is offered, so the run finds it ready.
            self._serve(command.job_id)
        if command.generation < ring.generation:
            log.info("ignoring %s of generation %d (now %d)", command.type, command.generation, ring.generation)
            return
        if isinstance(command, Reconfigure):
            # Not a pending flag: each step boundary asks discovery whether a newer generation is known, so the
            # Reconfigure that starts a generation never ends it.
            if ring.commands is not None:
                ring.commands.offer(command)
        elif isinstance(command, CheckpointNow):
            log.info("CheckpointNow (%s): checkpointing at the next step boundary", command.reason)
            self._flags.checkpoint_asked(command.generation)
        else:
            log.info("Stop (%s): stopping at the next step boundary", command.reason)
            self._flags.raise_flag(STOP)
            ring.discovery.close()  # a worker waiting for a membership stops now
            self._end_if_overdue()

    def _end_if_overdue(self) -> None:
        """A script that does not reach a step boundary within ``stop_grace_s`` of a Stop (stuck in a step, or one
        that never commits) is ended with the whole process: its job is over, and the instance must be free of it
        before it serves another (the agent, started again, says InstanceIdle)."""
        if self._overdue is not None:
            return

        def overdue() -> None:
            log.error("the script did not stop within %.0f s of Stop: ending this process", self._config.stop_grace_s)
            logging.shutdown()
            os._exit(1)

        self._overdue = threading.Timer(self._config.stop_grace_s, overdue)
        self._overdue.daemon = True
        self._overdue.start()

    def close(self) -> None:
        """The runtime is closing (the script stopped): no Stop is overdue any more."""
        if self._overdue is not None:
            self._overdue.cancel()

    def leave(self, why: str) -> None:
        """SIGTERM or a spot notice: checkpoint at the next step boundary, then exit.

        The other ranks take the same step boundary, rank 0 writes the checkpoint, and they wait for the control
        plane's next Reconfigure. A worker that is not training (waiting for a membership) exits at once.
        """
        log.warning("%s: checkpointing at the next step boundary, then leaving", why)
        for to in self._leaving:
            to(why)
        self._flags.leave()
        self._ring.discovery.close()
