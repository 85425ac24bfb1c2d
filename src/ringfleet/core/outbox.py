"""The job's outbox: a decision and the commands it sends are saved together, then published, then cleared.

A use case that decides commands for a job's workers (recovery, intake's cancel, the scaler's job start) cannot
save the job and publish to the broker atomically. So the commands go into the job record itself (``Job.outbox``)
in the decision's own conditional save; once that save holds, they are published and then removed. A crash between
the two leaves them in the outbox, and ``flush`` — run by whoever reads the job next — publishes them.

Two rules keep a command from going out twice while another writer is still at work:

- ``flush`` publishes only an outbox untouched for OUTBOX_GRACE (a publish takes milliseconds: a younger outbox
  belongs to a writer that is publishing it now);
- ``commit`` clears only the ids it just published, leaving any other writer's commands in place.

A command published twice anyway (a writer crashed after publishing, before clearing) carries the same message id,
which the workers drop as a duplicate.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ringfleet.core.ports import Saved

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointNow, Reconfigure, Stop
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node
    from ringfleet.core.ports import CommandPublisher, JobRepository

__all__ = ["MAX_ATTEMPTS", "OUTBOX_GRACE", "Committed", "Outbox", "backoff"]

log = logging.getLogger(__name__)

#: An outbox older than this was left by a writer that crashed before clearing it (a publish takes milliseconds).
OUTBOX_GRACE = timedelta(seconds=30)
#: Conditional saves lost to concurrent writers before giving up.
MAX_ATTEMPTS = 8
#: Full-jitter backoff between attempts after a lost race: up to BACKOFF_BASE * 2**attempt, at most BACKOFF_CAP
#: (at most ~1.3 s over all attempts, so a contended job still decides inside one invocation).
BACKOFF_BASE = 0.01
BACKOFF_CAP = 0.32


def backoff(attempt: int) -> float:
    """Seconds to pause before retry ``attempt`` (full jitter: concurrent losers spread out instead of colliding
    again at once)."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def _is_this_decision(current: Job | None, decided: Job) -> bool:
    """Whether the stored job is ``decided`` as saved (its time stamp aside)."""
    return current is not None and replace(current, updated_at=None) == replace(decided, updated_at=None)


@dataclass(frozen=True)
class Committed:
    """What ``Outbox.commit`` did: truthy when the decision was saved (and its commands published)."""

    #: The job as saved (its next revision, the commands in its outbox as saved); None when another writer won.
    stored: Job | None
    #: The job as the other writer left it, when the failed write returned it: decide again from it.
    current: Job | None = None
    #: Whether the nodes passed along were written in the job's transaction (else they are the caller's to write).
    nodes_written: bool = False

    def __bool__(self) -> bool:
        return self.stored is not None


class Outbox:
    """Saves decisions with their commands, publishes them, and clears what it published (see the module)."""

    def __init__(
        self,
        *,
        jobs: JobRepository,
        publisher: CommandPublisher,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.jobs = jobs
        self.publisher = publisher
        self.sleep = sleep

    def commit(
        self,
        decided: Job,
        *,
        decided_from: Job,
        commands: Sequence[CheckpointNow | Reconfigure | Stop] = (),
        nodes: Sequence[Node] = (),
    ) -> Committed:
        """Saves ``decided`` conditionally on ``decided_from`` with ``commands`` added to the outbox it read (and
        ``nodes`` in the same transaction where the repository can); once saved, publishes them and clears them.

        Falsy, nothing published, when another writer moved the job first: the decision is stale.
        """
        decided = replace(decided, outbox=(*decided_from.outbox, *(c.model_dump(mode="json") for c in commands)))
        stored = replace(decided, revision=decided_from.revision + 1)
        saved = self.jobs.save(decided, decided_from=decided_from, nodes=nodes)
        if not saved and _is_this_decision(saved.current, stored):
            # The SDK retried a write that timed out but had landed: the "other writer" is this run's own write
            # (its nodes are then the caller's to write again: the same values).
            saved = Saved(True)
        if not saved:
            return Committed(None, current=saved.current)
        if commands:
            self.publisher.publish(commands)
            self._clear(stored, {str(c.message_id) for c in commands})
        return Committed(stored, nodes_written=saved.nodes_written)

    def flush(self, job: Job, *, now: datetime) -> Job | None:
        """``job`` with the commands a crashed writer left in its outbox published and cleared; ``job`` itself when
        there are none, or they are younger than OUTBOX_GRACE as of ``now`` (their writer is publishing them now);
        None when the job moved meanwhile (read it again)."""
        if not job.outbox or (job.updated_at and now - job.updated_at < OUTBOX_GRACE):
            return job
        from ringfleet.contracts import parse_message

        commands = [parse_message(c) for c in job.outbox]
        log.warning("publishing %d command(s) left in job %s's outbox", len(commands), job.job_id)
        self.publisher.publish(commands)  # type: ignore[arg-type]
        cleared = replace(job, outbox=())
        if not self.jobs.save(cleared, decided_from=job):
            return None
        return replace(cleared, revision=job.revision + 1)

    def _clear(self, saved: Job, published: set[str]) -> None:
        """Removes the commands just published from the job's outbox, leaving any other writer's in place.

        The first try writes over ``saved`` (the job as just saved) without reading it again: the save is
        conditional on that revision, so it only goes through if nobody has written since. A clear that keeps
        losing is left: a later reader publishes those commands again, under the same message ids.
        """
        job: Job | None = saved
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.sleep(backoff(attempt))
            if job is None:
                return
            left = tuple(c for c in job.outbox if str(c.get("message_id")) not in published)
            if left == tuple(job.outbox):
                return
            result = self.jobs.save(replace(job, outbox=left), decided_from=job)
            if result:
                return
            job = result.current if result.current is not None else self.jobs.get(saved.job_id)
        log.warning("job %s: could not clear its outbox; a later reader publishes those commands again", saved.job_id)
