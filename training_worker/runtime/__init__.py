"""The runtime beside a user's training script: one ``Runtime`` per process, composed of parts with one owner each.

A user's script sees only the public API (``training_worker.init()``, ``DistributedOptimizer``,
``elastic.TorchState``, ``@elastic.run``, ...); everything operational lives here (Horovod keeps the same kind of
global behind ``hvd.init()``). It is configured from environment variables, so the same script runs under the
instance agent (which sets them and starts the runtime before the script), under torchrun-style variables
(``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) or ``RINGFLEET_STATIC_WORLD``, or alone (a ring of one).

The parts, each in its own module:

- ``config``: ``RuntimeConfig``, frozen, read from the environment;
- ``job``: the job this worker serves (configured, or named by the first Reconfigure);
- ``progress``: the step count, reported metrics, the batch share, progress lines, goodput;
- ``flags``: the step-boundary flags, raised from any thread;
- ``link``: the control channel and the heartbeats;
- ``ring``: memberships, joining and leaving rings, shrinking and healing them, failure reports;
- ``tiers``: checkpoints, when they are taken, where they go, and reading them back;
- ``boundary``: what every rank does together at ``state.commit()``;
- ``notices``: commands, spot notices and SIGTERM, turned into flags;
- ``errors`` and ``state``: what ends a step, and what the runtime needs of a script's state.

Callers reach the part that owns what they ask for (``runtime.ring.require_membership()``,
``runtime.progress.step``); ``Runtime`` itself holds only what spans parts: starting, serving a job, finishing,
running the script again, closing.
"""

from __future__ import annotations

import atexit
from collections.abc import Mapping

from ringfleet.contracts.training import TrainingFinished
from training_worker.events import EventLog
from training_worker.runtime.boundary import StepBoundary
from training_worker.runtime.config import RuntimeConfig, cache_dir, parse_static
from training_worker.runtime.errors import CollectiveError, HostsUpdatedInterrupt, Stopped, collective
from training_worker.runtime.flags import Flags
from training_worker.runtime.job import Job
from training_worker.runtime.link import ControlLink
from training_worker.runtime.notices import Notices
from training_worker.runtime.progress import Progress
from training_worker.runtime.ring import UNPLACED_WAIT_S, Healed, Ring
from training_worker.runtime.state import TrainingState
from training_worker.runtime.tiers import CheckpointTiers

__all__ = [
    "UNPLACED_WAIT_S",
    "CollectiveError",
    "Healed",
    "HostsUpdatedInterrupt",
    "Runtime",
    "RuntimeConfig",
    "Stopped",
    "TrainingState",
    "cache_dir",
    "collective",
    "current",
    "install",
    "parse_static",
]


class Runtime:
    """One per process: the ring this worker is in, and everything the script must never see."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.job = Job(config.job_id)
        #: The typed events tools read (RINGFLEET_EVENTS_FILE); the log lines beside them are for people.
        self.events = EventLog.from_env(config.instance_id, job=lambda: self.job.id)
        self.flags = Flags()
        self.progress = Progress(config.log_every, self.events)
        self.link = ControlLink(config, self.job, self.progress)
        self.ring = Ring(config, self.job, self.progress, self.flags, self.link, self.events)
        self.tiers = CheckpointTiers(config, self.job, self.link)
        self.boundary = StepBoundary(self.ring, self.flags, self.progress, self.tiers, self.events)
        self.notices = Notices(config, self.job, self.flags, self.ring, self.serve)
        if config.job_id is not None:
            self.serve(config.job_id)
        self._initialized = False
        self._started = False

    @property
    def initialized(self) -> bool:
        """Whether the script called ``training_worker.init()`` (or a child process ran it with its own runtime)."""
        return self._initialized

    def mark_initialized(self) -> None:
        self._initialized = True

    def serve(self, job_id: str) -> None:
        """From now on this worker trains ``job_id``: its checkpoints and messages are that job's."""
        self.job.serve(job_id)
        self.tiers.serve(job_id)

    def start(self) -> None:
        """Connects the control channel, watches for notices and SIGTERM, and starts heartbeats (once)."""
        if self._started:
            return
        self._started = True
        # Notices first: once the control channel says it is ready, SIGTERM must already be handled (a SIGTERM in
        # between ended the process with the signal's default action, status -15, instead of leaving cleanly).
        self.notices.watch()
        self.link.start(self.notices.on_command, self.ring.whereabouts)
        # A script run without the agent ends without calling close(): its process group and threads are still
        # ended in order (gloo's threads torn down at exit abort the process).
        atexit.register(self.close)

    def report(self, metrics: Mapping[str, float]) -> None:
        """What the script reported (``training_worker.report``)."""
        self.progress.reported(metrics, self.ring.membership)

    def finish(self, state: TrainingState) -> None:
        """The training function returned: the last step's checkpoint is the job's result, reported as final."""
        membership = self.ring.require_membership()
        self.tiers.finish(state, membership, self.progress.step)
        self.progress.finished(self.ring.generation)

    def stopped(self) -> None:
        """The script ended at a step boundary because this worker left or was stopped: what it says of that."""
        step = self.progress.step
        print(f"finished: stopped at step {step}\n", end="", flush=True)
        self.events.emit(TrainingFinished, generation=max(self.ring.generation, 0), outcome="stopped", step=step)

    def reset_for_rerun(self) -> None:
        """The script failed and will run again in this process: it starts from a fresh state and in a generation
        newer than every one known now (the control plane's restart), never in the one it failed in."""
        self.ring.restart()
        self._initialized = False
        self.progress.restart()

    def close(self) -> None:
        self.link.stop_beating()
        self.ring.leave_group()
        self.tiers.wait()
        self.link.close()
        self.notices.close()  # last: a close that hangs after a Stop still ends the process (Notices.on_command)


_runtime: Runtime | None = None


def install(runtime: Runtime) -> Runtime:
    """Makes ``runtime`` this process's runtime (the agent does, before it runs the script)."""
    global _runtime
    _runtime = runtime
    return runtime


def current() -> Runtime:
    """This process's runtime, built from the environment the first time it is asked for (a script run without the
    agent: alone, under torchrun's variables, or the agent's child process or container)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(RuntimeConfig.from_env())
    return _runtime
