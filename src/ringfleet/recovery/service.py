"""The recovery use case: read the job, plan_recovery, save conditionally, publish, sync nodes — shared by handlers.

``RecoveryService`` is the imperative shell around ``ringfleet.recovery.decisions``. One signal is applied as:

1. read the job (and publish any commands a crashed run left in its outbox);
2. decide with the pure ``plan_recovery``;
3. save the decision conditionally on the generation and revision it was decided from, with its commands in the
   job's outbox and the nodes it changes, in one transaction — a stale decision is dropped and re-made from the job
   the failed write returned (the generation fence; no re-read), after a short jittered pause;
4. publish the commands (message ids derived from job, generation and kind), then clear the outbox;
5. complete lifecycle hooks no longer needed.

The fence is also what makes a repeated event safe: a notice already applied is "already being handled", a loss
already recorded "already being handled", a stale generation's report ignored. So node_recovery needs no
idempotency record per event (two more round trips each); the handlers whose work is not fenced by the generation
(the backup's copies, intake's admissions, the scaler's fleet changes, the minute's sweep) keep Powertools'.

A crash anywhere leaves either nothing decided, or a decision whose commands are still in the outbox: the retried
event (or the next event of the job) publishes them. Re-running a step that already happened changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ringfleet.core.ports import Saved
from ringfleet.recovery.decisions import (
    CapacityArrived,
    CheckpointTaken,
    NodeLost,
    NoticeGiven,
    RecoveryPlan,
    ScriptFailed,
    Signal,
    plan_node_updates,
    plan_recovery,
)

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointCompleted, ControlDetail, NodeEvent, WorkerFailed
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import LifecycleHook, Node
    from ringfleet.core.ports import Clock, CommandPublisher, JobRepository, NodeRepository
    from ringfleet.recovery.ports import InstanceLifecycle

__all__ = ["RecoveryOutcome", "RecoveryService", "StaleDecision", "UnknownJob", "signal_of"]

log = logging.getLogger(__name__)

#: Conditional saves lost to concurrent writers before giving up (the event is then retried by its queue).
MAX_ATTEMPTS = 8
#: Full-jitter backoff between attempts after a lost race: up to BASE * 2**attempt, at most CAP (at most ~1.3 s
#: over all attempts, so a contended job still decides inside one invocation).
BACKOFF_BASE = 0.01
BACKOFF_CAP = 0.32
#: An outbox older than this was left by a writer that crashed before clearing it (a publish takes milliseconds).
OUTBOX_GRACE = timedelta(seconds=30)


def _is_this_decision(current: Job | None, decided: Job) -> bool:
    """Whether the stored job is ``decided`` as saved (its time stamp aside)."""
    return current is not None and replace(current, updated_at=None) == replace(decided, updated_at=None)


class UnknownJob(ValueError):
    """A worker reported about a job the control plane does not know: a bug or a forgery, never retried into life."""


class StaleDecision(RuntimeError):
    """Every attempt found the job changed under it; the event is retried later."""


@dataclass(frozen=True)
class RecoveryOutcome:
    """What applying one signal did, for the handler's log and metrics."""

    job_id: str | None
    outcome: str
    plan: RecoveryPlan | None = None
    #: Seconds from the event (or the last heartbeat) to its handling.
    time_to_detect: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "job_id": self.job_id,
            "outcome": self.outcome,
            "generation": plan.job.generation if plan else None,
            "commands": [c.type for c in plan.commands] if plan else [],
        }


def signal_of(event: NodeEvent) -> Signal:
    """The recovery signal a cloud event about one instance amounts to."""
    from ringfleet.contracts import (
        InstanceStateChange,
        LifecycleTerminateAction,
        RebalanceRecommendation,
        SpotInterruptionWarning,
    )
    from ringfleet.core.nodes import LifecycleHook

    if isinstance(event, SpotInterruptionWarning):
        return NoticeGiven(event.instance_id, "spot-interruption", event.time, deadline=event.interruption_at)
    if isinstance(event, RebalanceRecommendation):
        return NoticeGiven(event.instance_id, "rebalance", event.time)
    if isinstance(event, LifecycleTerminateAction):
        d = event.detail
        hook = LifecycleHook(d.auto_scaling_group_name, d.lifecycle_hook_name, d.lifecycle_action_token, d.instance_id)
        return NoticeGiven(event.instance_id, "lifecycle-terminate", event.time, lifecycle_hook=hook)
    if isinstance(event, InstanceStateChange):
        if not event.is_leaving:
            raise ValueError(f"state {event.state!r} of {event.instance_id} is not a node leaving")
        return NodeLost(event.instance_id, "instance-stopped", event.time, detail=f"state {event.state}")
    raise TypeError(f"{type(event).__name__} is not a node event")


class RecoveryService:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        nodes: NodeRepository,
        publisher: CommandPublisher,
        fleet: InstanceLifecycle,
        clock: Clock,
        put_events: Callable[[list[dict[str, Any]]], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sleep = sleep
        self.jobs = jobs
        self.nodes = nodes
        self.publisher = publisher
        self.fleet = fleet
        self.clock = clock
        self.put_events = put_events

    # -- entry points -------------------------------------------------------------------------------------------------

    def on_node_event(self, event: NodeEvent) -> RecoveryOutcome:
        """A spot warning, rebalance recommendation, leaving state change or terminate lifecycle action."""
        signal = signal_of(event)
        detect = max(0.0, (self.clock.now() - event.time).total_seconds())
        assert isinstance(signal, NoticeGiven | NodeLost)
        node = self.nodes.get(signal.instance_id)
        hook = signal.lifecycle_hook if isinstance(signal, NoticeGiven) else None
        if node is None:
            if hook is not None:
                # Nothing of ours runs there: let Auto Scaling go ahead instead of waiting for the hook's timeout.
                self.fleet.complete_lifecycle_action(hook)
            return RecoveryOutcome(None, "ignored: instance belongs to no job")  # no recovery: nothing to time
        hooks = {hook.instance_id: hook} if hook else None
        notified = node if isinstance(signal, NoticeGiven) else None
        outcome = self.apply(node.job_id, signal, hooks=hooks, notified=notified)
        return replace(outcome, time_to_detect=detect)

    def on_checkpoint_completed(self, message: CheckpointCompleted) -> RecoveryOutcome:
        signal = CheckpointTaken(
            message.generation, message.step, message.sent_at, emergency=message.emergency, final=message.final
        )
        return self.apply(message.job_id, signal, known=True)

    def on_worker_failed(self, message: WorkerFailed) -> RecoveryOutcome:
        """A worker's own failure (``scope`` self: it is the lost node), its ring's (``ring``: a peer is gone), or
        its job script's (``script``: the instance is fine; counted against the job's ``max_restarts``).

        A failed collective does not say which peer died, so the fleet does: the members of the reported
        generation that EC2 no longer runs are lost. When every member still runs (a crashed process on a live
        instance), nothing is decided here; the heartbeat sweep finds the silent one.
        """
        node = self.nodes.get(message.instance_id)
        if node is None or node.job_id != message.job_id:
            self._known(message.job_id)
            return RecoveryOutcome(message.job_id, "ignored: instance is not a node of this job")
        detect = max(0.0, (self.clock.now() - message.sent_at).total_seconds())
        if message.scope == "script":
            failed = ScriptFailed(
                message.instance_id, message.generation, message.sent_at, message.reason, step=message.step
            )
            return replace(self.apply(message.job_id, failed, known=True), time_to_detect=detect)
        if message.scope == "self":
            signal = NodeLost(
                message.instance_id,
                "worker-failed",
                message.sent_at,
                generation=message.generation,
                detail=message.reason,
            )
            return replace(self.apply(message.job_id, signal, known=True), time_to_detect=detect)
        job = self.jobs.get(message.job_id)
        if job is None:
            raise UnknownJob(f"job_id {message.job_id!r} names no job")
        if job.generation != message.generation:
            return RecoveryOutcome(
                message.job_id, f"ignored: generation {message.generation}'s ring was already re-formed"
            )
        gone = sorted(self.fleet.not_running([i for i in job.members if i != message.instance_id]))
        if not gone:
            return RecoveryOutcome(message.job_id, "ring broken but every member runs: the heartbeat sweep decides")
        outcome = RecoveryOutcome(message.job_id, "ignored: no member lost")
        read: Job | None = job
        for instance in gone:
            detail = f"not running; ring broken at step {message.step}: {message.reason}"
            signal = NodeLost(instance, "worker-failed", message.sent_at, generation=message.generation, detail=detail)
            outcome = self.apply(message.job_id, signal, read=read)
            read = None  # the job as just read serves the first loss only
        return replace(outcome, time_to_detect=detect)

    def on_capacity_arrived(self, job_id: str, instance_id: str, host: str | None = None) -> RecoveryOutcome:
        """An instance placed on the job is running (called by the fleet scaler once it placed it)."""
        return self.apply(job_id, CapacityArrived(instance_id, self.clock.now(), host=host))

    def sweep(self, silence: timedelta, *, now: datetime | None = None) -> list[RecoveryOutcome]:
        """Members silent for longer than ``silence`` (as of ``now``, default the clock's) are lost without notice."""
        now = now or self.clock.now()
        outcomes = []
        for node in self.nodes.list_silent(now - silence):
            last = node.last_heartbeat or node.updated_at or now
            signal = NodeLost(node.instance_id, "heartbeat-lost", now, detail=f"silent since {last.isoformat()}")
            try:
                outcome = self.apply(node.job_id, signal, only_generation=node.generation)
            except Exception as exc:
                # One job's failure (a broker down for its commands, a write that keeps losing) must not keep the
                # other jobs' lost nodes from recovery: it is reported, and the next tick finds its node again.
                log.exception("sweep: job %s, node %s failed", node.job_id, node.instance_id)
                outcome = RecoveryOutcome(node.job_id, f"failed: {type(exc).__name__}: {exc}")
            outcomes.append(replace(outcome, time_to_detect=(now - last).total_seconds()))
        return outcomes

    def _known(self, job_id: str) -> None:
        if self.jobs.get(job_id) is None:
            raise UnknownJob(f"job_id {job_id!r} names no job")

    # -- the shell around plan_recovery -------------------------------------------------------------------------------

    def apply(
        self,
        job_id: str,
        signal: Signal,
        *,
        hooks: Mapping[str, LifecycleHook] | None = None,
        only_generation: int | None = None,
        notified: Node | None = None,
        read: Job | None = None,
        known: bool = False,
    ) -> RecoveryOutcome:
        """Applies one signal to one job (see the module docstring); retries when a concurrent writer won.

        ``notified`` is the node a notice is about, as just read. A notice that changes the job without re-forming
        the ring changes that node alone, so it is decided and synced from that node without reading the job's
        other nodes (a query per event, in a burst of a thousand warnings). A notice that re-forms the ring reads
        them all (the new ring's hosts, the nodes it leaves out), and so does one that changes nothing: it may be
        the retry of a run that died before it completed a lifecycle hook.

        ``read``: the job as the caller just read it (saves the first read). ``known``: the job must exist (a
        worker's report): a missing one raises UnknownJob instead of being ignored.
        """
        lost = (signal.instance_id,) if isinstance(signal, NodeLost) else ()
        job = read if read is not None else self.jobs.get(job_id)
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self._back_off(attempt)
            if job is None:
                if known:
                    raise UnknownJob(f"job_id {job_id!r} names no job")
                return RecoveryOutcome(job_id, "ignored: no such job")
            flushed = self._flush_outbox(job)
            if flushed is None:
                job = self.jobs.get(job_id)
                continue
            job = flushed
            if only_generation is not None and job.generation != only_generation:
                # A sweep's silence was judged at an older generation; the ring changed since: judge again later.
                return RecoveryOutcome(job_id, "ignored: node's generation is no longer the job's")
            nodes = [notified] if notified is not None else self.nodes.list_by_job(job_id)
            plan = plan_recovery(job, nodes, signal)
            if notified is not None and (plan.reconfigured or not plan.changed):
                nodes = self.nodes.list_by_job(job_id)
                plan = plan_recovery(job, nodes, signal)
            now = self.clock.now()
            if not plan.changed:
                gone = tuple(i for i in lost if i not in job.members and i not in job.spares)
                updates, release = plan_node_updates(job, nodes, now, lost=gone, hooks=hooks)
                self._apply_node_updates(updates, release, hooks, written=False)
                return RecoveryOutcome(job_id, plan.outcome, plan=plan, metrics=dict(plan.metrics))
            # Commands another writer is still publishing stay in the outbox, for it to clear (or, should it have
            # crashed, for the first reader after OUTBOX_GRACE to publish).
            commands = tuple(c.model_dump(mode="json") for c in plan.commands)
            decided = replace(plan.job, outbox=(*job.outbox, *commands))
            after = replace(decided, revision=job.revision + 1)
            # A lost instance the job still counts (a stale generation's failure report) is not marked lost.
            gone = tuple(i for i in lost if i not in after.members and i not in after.spares)
            updates, release = plan_node_updates(after, nodes, now, lost=gone, hooks=hooks)
            saved = self.jobs.save(decided, decided_from=job, nodes=updates)
            if not saved and _is_this_decision(saved.current, after):
                # The SDK retried a write that timed out but had landed: the "other writer" is this run's own write
                # (nodes put again below: the same values).
                saved = Saved(True)
            if not saved:
                # Another writer moved the job: decide again from what it wrote (returned by the failed write).
                job = saved.current if saved.current is not None else self.jobs.get(job_id)
                continue
            if plan.commands:
                self.publisher.publish(plan.commands)
                self._clear_outbox(after, {str(c.message_id) for c in plan.commands})
            if isinstance(signal, NoticeGiven | NodeLost) and job.recovery is None:
                self._want_capacity(after, signal)
            if after.is_final:
                self._announce_finished(after)
            self._apply_node_updates(updates, release, hooks, written=saved.nodes_written)
            return RecoveryOutcome(job_id, plan.outcome, plan=plan, metrics=dict(plan.metrics))
        raise StaleDecision(f"job {job_id}: {MAX_ATTEMPTS} conflicting writers in a row; retry later")

    def _back_off(self, attempt: int) -> None:
        """Full jitter: concurrent losers spread out instead of colliding again at once."""
        self.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)))

    def _want_capacity(self, job: Job, signal: NoticeGiven | NodeLost) -> None:
        """Tells the fleet scaler at once that the job wants capacity (``Capacity Wanted`` on EventBridge).

        Once per recovery, when it starts: the scaler reconciles from the jobs as they are, and the instances it
        launches trigger it again when they run, so further losses of the same recovery are seen then (a pool
        reclaimed at once sends one event per job, not one per node).
        """
        from ringfleet.contracts import CapacityWantedDetail

        wanted = max(1, job.instances_wanted)
        self._announce(
            CapacityWantedDetail(tenant=job.tenant, job_id=job.job_id, replacements=wanted, cause=signal.cause)
        )

    def _announce_finished(self, job: Job) -> None:
        """``Job Finished`` on EventBridge (SUCCEEDED or FAILED): the fleet scaler stops counting its workers and
        frees its instances."""
        from ringfleet.contracts import JobFinishedDetail

        state = "FAILED" if job.state.value == "FAILED" else "SUCCEEDED"
        self._announce(JobFinishedDetail(tenant=job.tenant, job_id=job.job_id, state=state))

    def _announce(self, detail: ControlDetail) -> None:
        """Puts one of the control plane's own events for the fleet scaler. Its minute tick would see the change
        too, so a failed put costs at most that minute: logged, not raised (raising would redeliver an event whose
        decision is already saved)."""
        if self.put_events is None:
            return
        from ringfleet.contracts import control_event_entry

        try:
            self.put_events([control_event_entry(detail)])
        except Exception:
            log.exception(
                "could not put %s for job %s; the scaler's tick will see it", type(detail).__name__, detail.job_id
            )

    def _flush_outbox(self, job: Job) -> Job | None:
        """Publishes commands a crashed run decided but did not clear; None when the job moved meanwhile.

        Only an outbox untouched for OUTBOX_GRACE: a younger one belongs to a writer that is publishing it now,
        and publishing it here too would send its commands twice.
        """
        if not job.outbox or (job.updated_at and self.clock.now() - job.updated_at < OUTBOX_GRACE):
            return job
        from ringfleet.contracts import parse_message

        commands = [parse_message(c) for c in job.outbox]
        log.warning("publishing %d command(s) left in job %s's outbox", len(commands), job.job_id)
        self.publisher.publish(commands)  # type: ignore[arg-type]
        cleared = replace(job, outbox=())
        if not self.jobs.save(cleared, decided_from=job):
            return None
        return replace(cleared, revision=job.revision + 1)

    def _clear_outbox(self, saved: Job, published: set[str]) -> None:
        """Removes the commands just published from the job's outbox, leaving any other writer's in place.

        The first try writes over ``saved`` (the job as this run just saved it) without reading it again: the save
        is conditional on that revision, so it only goes through if nobody has written since.
        """
        job: Job | None = saved
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self._back_off(attempt)
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

    def _apply_node_updates(
        self,
        updates: Sequence[Node],
        release: Sequence[LifecycleHook],
        hooks: Mapping[str, LifecycleHook] | None,
        *,
        written: bool,
    ) -> None:
        """Writes the node updates the job's save did not (``written``), and settles lifecycle hooks."""
        for hook in release:
            self.fleet.complete_lifecycle_action(hook)
        if not written:
            for update in updates:
                self.nodes.put(update)
        kept = {n.instance_id: n for n in updates}
        for instance, hook in (hooks or {}).items():
            held = kept.get(instance)
            if held is not None and held.lifecycle_hook == hook:
                # The emergency checkpoint is still running: keep Auto Scaling waiting for it.
                self.fleet.heartbeat_lifecycle_action(hook)
