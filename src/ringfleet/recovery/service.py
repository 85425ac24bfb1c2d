"""The recovery use case: read the job, plan_recovery, save conditionally, publish, sync nodes — shared by handlers.

``RecoveryService`` is the imperative shell around ``ringfleet.recovery.decisions`` (what to do) and
``ringfleet.recovery.signals`` (what a report amounts to): it gathers the facts those decide from (the job, its
nodes, which instances EC2 still runs) and applies what they decide. One signal is applied as:

1. read the job (and publish any commands a crashed run left in its outbox: ``ringfleet.core.outbox``);
2. decide with the pure ``plan_recovery``;
3. save the decision conditionally on the generation and revision it was decided from, with its commands in the
   job's outbox and the nodes it changes, in one transaction — a stale decision is dropped and re-made from the job
   the failed write returned (the generation fence; no re-read), after a short jittered pause;
4. publish the commands (message ids derived from job, generation and kind), then clear them from the outbox;
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ringfleet.core.nodes import plan_node_updates
from ringfleet.core.outbox import MAX_ATTEMPTS, Outbox, backoff
from ringfleet.core.retirement import retirement_events
from ringfleet.recovery.decisions import plan_recovery
from ringfleet.recovery.loss import lost_instances
from ringfleet.recovery.plan import (
    CapacityArrived,
    CheckpointTaken,
    NodeLost,
    NoticeGiven,
    RecoveryPlan,
    RetireRequested,
    Signal,
)
from ringfleet.recovery.signals import failure_signal, lost_in_ring, reporter_refusal, ring_suspects, signal_of

if TYPE_CHECKING:
    from ringfleet.contracts import (
        CheckpointCompleted,
        ControlDetail,
        Heartbeat,
        InstanceIdle,
        NodeEvent,
        WorkerFailed,
    )
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import LifecycleHook, Node
    from ringfleet.core.ports import Clock, CommandPublisher, JobRepository, NodeRepository
    from ringfleet.recovery.ports import InstanceLifecycle

__all__ = ["RecoveryOutcome", "RecoveryService", "StaleDecision", "UnknownJob"]

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _Retry:
    """A conditional save lost to another writer: decide again from ``job`` (None: read it again)."""

    job: Job | None


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
        self.outbox = Outbox(jobs=jobs, publisher=publisher, sleep=sleep)

    # -- entry points -------------------------------------------------------------------------------------------------

    def on_node_event(self, event: NodeEvent) -> RecoveryOutcome:
        """A spot warning, rebalance recommendation, leaving state change or terminate lifecycle action."""
        signal = signal_of(event)
        detect = max(0.0, (self.clock.now() - event.time).total_seconds())
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

    def on_heartbeat(self, message: Heartbeat, received_at: datetime | None = None) -> RecoveryOutcome:
        """Records that a worker is alive at its step (what the sweep judges silence by); ``received_at`` defaults
        to now.

        Dated no later than received: a sender's clock (or a forged message) cannot make a node look alive ahead.
        """
        at = min(message.sent_at, received_at or self.clock.now())
        seen = self.nodes.record_heartbeat(
            message.instance_id, job_id=message.job_id, generation=message.generation, step=message.step, at=at
        )
        if seen:
            return RecoveryOutcome(message.job_id, "recorded")
        # Mostly a late heartbeat of a node recovery already gave up on; a forged one reads the same.
        log.info("heartbeat of %s for job %s ignored: not a live node of it", message.instance_id, message.job_id)
        return RecoveryOutcome(message.job_id, "ignored: not a live node of this job at this generation")

    def on_instance_idle(self, message: InstanceIdle) -> RecoveryOutcome:
        """An agent runs no job: its instance, released by a job that ended, is free for another from now on
        (``ringfleet.core.nodes.release_idle``). Safe to apply twice: a free instance stays free."""
        from ringfleet.core.nodes import release_idle

        node = self.nodes.get(message.instance_id)
        job = self.jobs.get(node.job_id) if node is not None else None
        freed = release_idle(node, job, self.clock.now())
        if node is None or freed is None:
            why = "unknown instance" if node is None else f"node is {node.state.value} for job {node.job_id}"
            return RecoveryOutcome(node.job_id if node else None, f"nothing to release ({why})")
        if not self.nodes.place(freed, over=node):
            return RecoveryOutcome(node.job_id, "nothing to release (the node changed since it was read)")
        log.info("instance %s confirmed idle after job %s: free for another job", node.instance_id, node.job_id)
        return RecoveryOutcome(node.job_id, "released")

    def on_checkpoint_completed(self, message: CheckpointCompleted) -> RecoveryOutcome:
        """A checkpoint the job's ring wrote; ignored (and logged) unless a member of the job reports it."""
        job = self._known(message.job_id)
        refused = self._refuse(job, message, member=True)
        if refused is not None:
            return refused
        signal = CheckpointTaken(
            message.generation, message.step, message.sent_at, emergency=message.emergency, final=message.final
        )
        return self.apply(message.job_id, signal, read=job, known=True)

    def on_worker_failed(self, message: WorkerFailed) -> RecoveryOutcome:
        """A worker's own failure (``scope`` self: it is the lost node), its ring's (``ring``: a peer is gone), or
        its job script's (``script``: the instance is fine; counted against the job's ``max_restarts``).

        For a ring's failure the shell asks EC2 which of the reporter's peers it no longer runs; which members that
        makes lost is ``lost_in_ring``'s decision (none when every member still runs: the heartbeat sweep decides).
        """
        job = self._known(message.job_id)
        refused = self._refuse(job, message, member=False)
        if refused is not None:
            return refused
        detect = max(0.0, (self.clock.now() - message.sent_at).total_seconds())
        if message.scope != "ring":
            signal = failure_signal(message)
            return replace(self.apply(message.job_id, signal, read=job, known=True), time_to_detect=detect)
        ring = lost_in_ring(job, message, self.fleet.not_running(ring_suspects(job, message)))
        if not ring.lost:
            return RecoveryOutcome(message.job_id, ring.outcome)
        outcomes = [self.apply(message.job_id, ring.lost[0], read=job)]  # the job as just read serves the first
        outcomes += [self.apply(message.job_id, signal) for signal in ring.lost[1:]]
        return replace(outcomes[-1], time_to_detect=detect)

    def retire(self, job_id: str, instance_id: str) -> RecoveryOutcome:
        """The fleet scaler found spot room for the job's on-demand member ``instance_id``: a spot worker replaces
        it through the ring (at most one retirement per job at a time; none while it recovers)."""
        return self.apply(job_id, RetireRequested(instance_id, self.clock.now()))

    def on_capacity_arrived(
        self, job_id: str, instance_id: str, host: str | None = None, *, slots: int = 1
    ) -> RecoveryOutcome:
        """An instance placed on the job is running (called by the fleet scaler once it placed it), with its worker's
        ``host`` and its ``slots``."""
        return self.apply(job_id, CapacityArrived(instance_id, self.clock.now(), host=host, slots=slots))

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

    def _refuse(self, job: Job, message: CheckpointCompleted | WorkerFailed, *, member: bool) -> RecoveryOutcome | None:
        """An "ignored" outcome, logged, when ``message``'s instance may not speak for its job (``reporter_refusal``:
        one worker user serves every job, so the broker cannot tell whose worker sent it); None when it may."""
        node = self.nodes.get(message.instance_id)
        reason = reporter_refusal(job, node, message.instance_id, message.generation, member=member)
        if reason is None:
            return None
        log.warning("refused %s of job %s: %s", message.type, message.job_id, reason)
        return RecoveryOutcome(message.job_id, f"ignored: {reason}")

    def _known(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"job_id {job_id!r} names no job")
        return job

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
        job = read if read is not None else self.jobs.get(job_id)
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.sleep(backoff(attempt))
            if job is None:
                if known:
                    raise UnknownJob(f"job_id {job_id!r} names no job")
                return RecoveryOutcome(job_id, "ignored: no such job")
            flushed = self.outbox.flush(job, now=self.clock.now())
            if flushed is not None and only_generation is not None and flushed.generation != only_generation:
                # A sweep's silence was judged at an older generation; the ring changed since: judge again later.
                return RecoveryOutcome(job_id, "ignored: node's generation is no longer the job's")
            done = self._decide(flushed, signal, hooks, notified) if flushed is not None else _Retry(None)
            if isinstance(done, RecoveryOutcome):
                return done
            job = done.job if done.job is not None else self.jobs.get(job_id)
        raise StaleDecision(f"job {job_id}: {MAX_ATTEMPTS} conflicting writers in a row; retry later")

    def _decide(
        self, job: Job, signal: Signal, hooks: Mapping[str, LifecycleHook] | None, notified: Node | None
    ) -> RecoveryOutcome | _Retry:
        """One attempt: decide from ``job``, save the decision with its commands, publish them, sync the nodes."""
        nodes = [notified] if notified is not None else self.nodes.list_by_job(job.job_id)
        plan = plan_recovery(job, nodes, signal)
        if notified is not None and (plan.reconfigured or not plan.changed):
            nodes = self.nodes.list_by_job(job.job_id)
            plan = plan_recovery(job, nodes, signal)
        updates, release = plan_node_updates(
            plan.job, nodes, self.clock.now(), lost=lost_instances(plan.job, signal), hooks=hooks
        )
        outcome = RecoveryOutcome(job.job_id, plan.outcome, plan=plan, metrics=dict(plan.metrics))
        if not plan.changed:
            self._apply_node_updates(updates, release, hooks, written=False)
            return outcome
        # Commands another writer is still publishing stay in the outbox, for it to clear (or, should it have
        # crashed, for the first reader after OUTBOX_GRACE to publish).
        committed = self.outbox.commit(plan.job, decided_from=job, commands=plan.commands, nodes=updates)
        if committed.stored is None:
            # Another writer moved the job: decide again from what it wrote (returned by the failed write).
            return _Retry(committed.current)
        if isinstance(signal, NoticeGiven | NodeLost) and job.recovery is None:
            self._want_capacity(committed.stored, signal)
        if committed.stored.is_final:
            self._announce_finished(committed.stored)
        self._announce_retirement(job, committed.stored)
        self._apply_node_updates(updates, release, hooks, written=committed.nodes_written)
        return outcome

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

    def _announce_retirement(self, before: Job, job: Job) -> None:
        """``Upgrade Progressed/Completed/RolledBack`` for what this decision did to a rolling upgrade, and
        ``Capacity Wanted`` when a retiring member now waits for its replacement (the scaler launches it now, not at
        its next tick)."""
        from ringfleet.contracts import CapacityWantedDetail, UpgradeDetail

        for phase, detail in retirement_events(before, job):
            self._announce(UpgradeDetail(tenant=job.tenant, job_id=job.job_id, phase=phase, detail=detail[:2048]))
        retirement = job.retirement
        if retirement is not None and retirement.replacement is None and job.instances_wanted > 0:
            waited = before.retirement is not None and before.retirement.replacement is None
            if not waited:
                self._announce(
                    CapacityWantedDetail(tenant=job.tenant, job_id=job.job_id, replacements=1, cause=retirement.kind)
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
