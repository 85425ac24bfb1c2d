"""plan_recovery: what to do about a lost, leaving or new node, a failed job script, or a finished checkpoint — a
pure decision.

Recovery in order of preference (DESIGN.md): with notice, checkpoint now and re-form the ring with a replacement
once both are there; without notice, the survivors re-form the ring at once; with nothing left, restart from the
newest durable checkpoint. A failure of the job's own script is not a lost node: the same members run it again in a
new generation, up to the job's ``max_restarts`` times, after which the job ends FAILED and its workers are stopped.

Every decision is made from one read of the job and returns the job as it should be saved; the caller saves it
conditionally on the generation and revision it was decided from, so a duplicated or reordered signal decides
nothing new: the signal finds its effect already there and the plan is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from ringfleet.core.commands import command_message_id, reconfigure_command, stop_command
from ringfleet.core.jobs import Incident, Job, JobState, PendingRecovery, Retirement
from ringfleet.core.nodes import LifecycleHook, Node, NodeState
from ringfleet.core.retirement import RetirementRefused, begin_move_back

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointNow, Reconfigure, Stop
    from ringfleet.core.jobs import DurableCheckpoint

__all__ = [
    "CapacityArrived",
    "CheckpointTaken",
    "NodeLost",
    "NoticeGiven",
    "RecoveryPlan",
    "RetireRequested",
    "ScriptFailed",
    "Signal",
    "lost_instances",
    "plan_node_updates",
    "plan_recovery",
]

NoticeCause = Literal["spot-interruption", "rebalance", "lifecycle-terminate"]
LossCause = Literal["instance-stopped", "heartbeat-lost", "worker-failed"]


@dataclass(frozen=True)
class NoticeGiven:
    """An instance will go: spot interruption warning, rebalance recommendation or ASG terminate hook."""

    instance_id: str
    cause: NoticeCause
    at: datetime
    deadline: datetime | None = None
    lifecycle_hook: LifecycleHook | None = None


@dataclass(frozen=True)
class NodeLost:
    """An instance is gone without notice: stopped or terminated, silent, or its worker failed."""

    instance_id: str
    cause: LossCause
    at: datetime
    #: The generation a worker reported its failure at; None for cloud events, which carry none.
    generation: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class CheckpointTaken:
    """Rank 0 reported a checkpoint in S3 (CheckpointCompleted)."""

    generation: int
    step: int
    at: datetime
    emergency: bool = False
    #: The job's last step: the job is done.
    final: bool = False


@dataclass(frozen=True)
class CapacityArrived:
    """An instance was placed on the job and is running: a replacement or spare the ring can take in."""

    instance_id: str
    at: datetime
    host: str | None = None


@dataclass(frozen=True)
class ScriptFailed:
    """The job's own script failed on a member (raised, exited non-zero, never called init(), no entrypoint).

    The instance is fine: its agent waits for the next Reconfigure to run the script again.
    """

    instance_id: str
    #: The generation the script ran in.
    generation: int
    at: datetime
    #: What the worker reported: the failure, ending with the last lines of its traceback.
    reason: str
    step: int | None = None


@dataclass(frozen=True)
class RetireRequested:
    """The fleet scaler found spot room for a job's on-demand member: replace it with a spot worker."""

    instance_id: str
    at: datetime


Signal = NoticeGiven | NodeLost | CheckpointTaken | CapacityArrived | ScriptFailed | RetireRequested


@dataclass(frozen=True)
class RecoveryPlan:
    """What to save and send. ``job is before`` (identity) when the signal changes nothing."""

    before: Job
    job: Job
    commands: tuple[CheckpointNow | Reconfigure | Stop, ...] = ()
    #: Why, in words, for the log.
    outcome: str = ""
    #: Metric name -> value (seconds or counts) for the handler to emit once the plan is saved.
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: What started the recovery this plan completes (set when it reconfigures).
    cause: str | None = None

    @property
    def changed(self) -> bool:
        return self.job is not self.before

    @property
    def reconfigured(self) -> bool:
        return self.job.generation > self.before.generation


def _unchanged(job: Job, outcome: str) -> RecoveryPlan:
    return RecoveryPlan(before=job, job=job, outcome=outcome)


def plan_recovery(job: Job, nodes: Sequence[Node], signal: Signal) -> RecoveryPlan:
    """The job after ``signal`` and the commands to send; ``nodes`` are the job's nodes (for hosts and last steps)."""
    if job.state not in (JobState.RUNNING, JobState.RECOVERING):
        return _unchanged(job, f"ignored: job is {job.state}")
    if isinstance(signal, NoticeGiven):
        return _on_notice(job, nodes, signal)
    if isinstance(signal, NodeLost):
        return _on_lost(job, nodes, signal)
    if isinstance(signal, CheckpointTaken):
        return _on_checkpoint(job, nodes, signal)
    if isinstance(signal, ScriptFailed):
        return _on_script_failed(job, nodes, signal)
    if isinstance(signal, RetireRequested):
        return _on_retire_requested(job, signal)
    return _on_capacity(job, nodes, signal)


def _on_retire_requested(job: Job, signal: RetireRequested) -> RecoveryPlan:
    """Marks one on-demand member to retire; at most one retirement per job, never while it recovers."""
    if job.recovery is not None or job.state is not JobState.RUNNING:
        return _unchanged(job, "ignored: the job is recovering")
    try:
        after = begin_move_back(job, signal.instance_id, signal.at)
    except RetirementRefused as exc:
        return _unchanged(job, f"ignored: {exc}")
    return RecoveryPlan(before=job, job=after, outcome=f"move back to spot: {signal.instance_id} to be replaced")


def _on_notice(job: Job, nodes: Sequence[Node], signal: NoticeGiven) -> RecoveryPlan:
    instance = signal.instance_id
    incident = Incident(at=signal.at, cause=signal.cause, generation=job.generation, instance_id=instance)
    if instance in job.spares:
        after = replace(job, spares=tuple(s for s in job.spares if s != instance)).with_incident(incident)
        return RecoveryPlan(before=job, job=after, outcome="spare leaving: dropped from spares")
    if instance not in job.members:
        return _unchanged(job, "ignored: instance is not a member of the job's current generation")
    recovery = job.recovery
    if recovery is not None and (instance in recovery.leaving or instance in recovery.lost):
        return _unchanged(job, "ignored: notice already being handled")
    if signal.cause == "rebalance" and job.spares:
        # Spare capacity is already there: migrate the rank now, before any interruption.
        migrating = _recovery_with(job, signal, leaving=(instance,), awaiting_checkpoint=False)
        after = replace(job, recovery=migrating).with_incident(incident)
        plan = _try_reconfigure(after, nodes, signal.at)
        return replace(plan, before=job, outcome="rebalance: rank migrated to a spare")
    taken = _emergency_checkpoint_taken(job)
    if recovery is None and taken is not None:
        # The workers saw the notice first (instance metadata) and their emergency checkpoint is already in: no
        # CheckpointNow, only the replacement to wait for.
        ready = replace(
            _recovery_with(job, signal, leaving=(instance,), awaiting_checkpoint=False), checkpoint_step=taken
        )
        after = replace(
            job.moved_to(JobState.RECOVERING), recovery=ready, replacements_wanted=job.replacements_wanted + 1
        ).with_incident(incident)
        plan = _try_reconfigure(after, nodes, signal.at)
        return replace(plan, before=job, outcome=f"notice: checkpoint already taken at step {taken}, {plan.outcome}")
    asking = recovery is None or not recovery.awaiting_checkpoint
    new_recovery = _recovery_with(job, signal, leaving=(instance,), awaiting_checkpoint=True)
    after = replace(
        job.moved_to(JobState.RECOVERING),
        recovery=new_recovery,
        replacements_wanted=job.replacements_wanted + 1,
    ).with_incident(incident)
    commands: tuple[CheckpointNow | Reconfigure, ...] = ()
    if asking:
        commands = (_checkpoint_now(job, signal),)
    outcome = "notice: checkpoint requested, replacement wanted" if asking else "notice: checkpoint already requested"
    return RecoveryPlan(before=job, job=after, commands=commands, outcome=outcome)


def _emergency_checkpoint_taken(job: Job) -> int | None:
    """The step of an emergency checkpoint the current generation reported before any notice reached the job."""
    steps = [
        i.step
        for i in job.incidents
        if i.cause == "emergency-checkpoint" and i.generation == job.generation and i.step is not None
    ]
    return max(steps) if steps else None


def _on_lost(job: Job, nodes: Sequence[Node], signal: NodeLost) -> RecoveryPlan:
    instance = signal.instance_id
    if signal.generation is not None and signal.generation < job.generation:
        return _unchanged(job, f"ignored: report of generation {signal.generation} < {job.generation}")
    incident = Incident(
        at=signal.at, cause=signal.cause, generation=job.generation, instance_id=instance, detail=signal.detail
    )
    if instance in job.spares:
        after = replace(job, spares=tuple(s for s in job.spares if s != instance)).with_incident(incident)
        return RecoveryPlan(before=job, job=after, outcome="spare lost: dropped from spares")
    if instance not in job.members:
        return _unchanged(job, "ignored: instance is not a member of the job's current generation")
    recovery = job.recovery
    if recovery is not None and instance in recovery.lost:
        return _unchanged(job, "ignored: loss already being handled")
    base = recovery or PendingRecovery(cause=signal.cause, started_at=signal.at, leaving=())
    lost_recovery = replace(
        base,
        leaving=tuple(i for i in base.leaving if i != instance),
        lost=(*base.lost, instance),
        last_step=base.last_step if base.last_step is not None else _last_step(nodes, job.members),
    )
    wanted = job.replacements_wanted + (0 if instance in base.leaving else 1)
    after = replace(
        job.moved_to(JobState.RECOVERING), recovery=lost_recovery, replacements_wanted=wanted
    ).with_incident(incident)
    plan = _try_reconfigure(after, nodes, signal.at)
    return replace(plan, before=job, outcome=f"lost without notice: {plan.outcome}")


def _on_checkpoint(job: Job, nodes: Sequence[Node], signal: CheckpointTaken) -> RecoveryPlan:
    recovery = job.recovery
    # A final checkpoint ends the job whichever generation reports it: workers take a generation that adds members
    # only once the newcomers are ready, so the ring that trained the last step may be the one before a growth the
    # control plane announced to a replacement that never got ready.
    if signal.generation != job.generation and not signal.final:
        return _unchanged(job, f"ignored: checkpoint of generation {signal.generation}, job is at {job.generation}")
    if signal.final:
        finished = Incident(at=signal.at, cause="finished", generation=job.generation, detail=f"step {signal.step}")
        after = replace(job.moved_to(JobState.SUCCEEDED), recovery=None, replacements_wanted=0, spares=())
        return RecoveryPlan(
            before=job, job=after.with_incident(finished), outcome=f"finished: final checkpoint at step {signal.step}"
        )
    if recovery is None and _replacement_ran(job):
        plan = _retire_one(job, nodes, signal.at)
        return replace(plan, outcome=f"checkpoint at step {signal.step} with the replacement: {plan.outcome}")
    if recovery is None or not recovery.awaiting_checkpoint:
        if not signal.emergency or recovery is not None:
            return _unchanged(job, "checkpoint noted: no recovery waits for it")
        if _emergency_checkpoint_taken(job) is not None:
            return _unchanged(job, "emergency checkpoint already noted")
        # The workers saw a notice (instance metadata, SIGTERM) before the control plane did: remembered, so that
        # the notice, when it arrives, does not wait for a checkpoint that will not come again.
        noted = Incident(
            at=signal.at, cause="emergency-checkpoint", generation=job.generation, detail="", step=signal.step
        )
        return RecoveryPlan(
            before=job, job=job.with_incident(noted), outcome="emergency checkpoint noted before its notice"
        )
    after = replace(job, recovery=replace(recovery, awaiting_checkpoint=False, checkpoint_step=signal.step))
    plan = _try_reconfigure(after, nodes, signal.at)
    return replace(plan, before=job, outcome=f"emergency checkpoint at step {signal.step}: {plan.outcome}")


def _on_capacity(job: Job, nodes: Sequence[Node], signal: CapacityArrived) -> RecoveryPlan:
    instance = signal.instance_id
    if instance in job.members or instance in job.spares:
        return _unchanged(job, "ignored: instance already serves the job")
    after = replace(
        job, spares=(*job.spares, instance), replacements_wanted=max(0, job.replacements_wanted - 1)
    ).with_incident(Incident(at=signal.at, cause="capacity-arrived", generation=job.generation, instance_id=instance))
    known = [*nodes, Node(instance_id=instance, job_id=job.job_id, host=signal.host)]
    if after.recovery is None:
        room = job.worker_room
        if job.state is JobState.RUNNING and room > 0:
            # Running below max_workers (survivors of a loss re-formed without a replacement), or a retiring member
            # waits for its replacement: grow the ring. A membership change at a step boundary, not a failure:
            # nothing is lost.
            joining = after.spares[:room]
            plan = _reconfigure(after, known, list(job.members), joining, signal.at, restore=False, cause="grown")
            grown = _with_replacement(plan.job, joining)
            return replace(plan, before=job, job=grown, outcome=f"capacity arrived: {plan.outcome}")
        return RecoveryPlan(before=job, job=after, outcome="spare added: no recovery waits for it")
    plan = _try_reconfigure(after, known, signal.at)
    return replace(plan, before=job, outcome=f"capacity arrived: {plan.outcome}")


def _on_script_failed(job: Job, nodes: Sequence[Node], signal: ScriptFailed) -> RecoveryPlan:
    """Counts the failure once per generation; restarts the script on the same members, or fails the job."""
    if signal.generation != job.generation:
        # Every rank of a failed generation may report it, late or twice; the job has moved on since the first.
        return _unchanged(job, f"ignored: script failure of generation {signal.generation}, job is at {job.generation}")
    if job.script_failed_generation == job.generation:
        return _unchanged(job, f"ignored: generation {job.generation}'s script failure is already counted")
    if signal.instance_id not in job.members:
        return _unchanged(job, "ignored: instance is not a member of the job's current generation")
    if _is_upgrade_replacement(job, signal.instance_id):
        return _roll_back(job, nodes, signal)
    failures = job.script_failures + 1
    allowed = job.spec.max_restarts
    incident = Incident(
        at=signal.at,
        cause="script-failed",
        generation=job.generation,
        instance_id=signal.instance_id,
        detail=f"failure {failures} (max_restarts {allowed}): {signal.reason}",
        step=signal.step,
    )
    counted = replace(job, script_failures=failures, script_failed_generation=job.generation).with_incident(incident)
    metrics = {"ScriptFailures": 1.0}
    if failures > allowed:
        return _fail(job, counted, signal, f"script failed {failures} times (max_restarts {allowed})", metrics)
    if counted.recovery is not None:
        # A recovery is already re-forming the ring; its Reconfigure runs the script again. The failed script will
        # not take the emergency checkpoint the recovery may be waiting for: stop waiting for it.
        recovering = replace(counted, recovery=replace(counted.recovery, awaiting_checkpoint=False))
        plan = _try_reconfigure(recovering, nodes, signal.at)
        outcome = f"script failed ({failures} of {allowed} restarts) while recovering: {plan.outcome}"
        return replace(plan, before=job, outcome=outcome, metrics={**plan.metrics, **metrics})
    # The same members run the script again in a new generation; they keep what they hold in memory and sync it,
    # as survivors do (checkpoint None): a failed script is no reason to lose their progress.
    plan = _reconfigure(counted, nodes, list(job.members), [], signal.at, restore=False, cause="script-restarted")
    outcome = f"script failed ({failures} of {allowed} restarts): {plan.outcome}"
    return replace(plan, before=job, outcome=outcome, metrics=metrics, cause="script-failed")


def _fail(job: Job, counted: Job, signal: ScriptFailed, why: str, metrics: Mapping[str, float]) -> RecoveryPlan:
    """The job ends FAILED: its workers get Stop, and the reason stays on the record for ``ringfleet status``."""
    after = replace(
        counted.moved_to(JobState.FAILED),
        recovery=None,
        replacements_wanted=0,
        spares=(),
        failure=signal.reason,
    ).with_incident(Incident(at=signal.at, cause="failed", generation=job.generation, detail=why))
    stop = stop_command(job, f"failed: {why}", signal.at)
    return RecoveryPlan(before=job, job=after, commands=(stop,), outcome=f"job failed: {why}", metrics=metrics)


def _retirement_in(job: Job) -> Retirement | None:
    """``job``'s retirement as its new ring has it: members lost meanwhile no longer retire, a replacement lost is
    wanted again; None once nothing is left to do."""
    retirement = job.retirement
    if retirement is None:
        return None
    retiring = tuple(i for i in retirement.retiring if i in job.members)
    replacement = retirement.replacement if retirement.replacement in job.members else None
    if not retiring:
        return None
    joined = retirement.joined_generation if replacement is not None else None
    return replace(retirement, retiring=retiring, replacement=replacement, joined_generation=joined)


def _with_replacement(job: Job, joining: Sequence[str]) -> Job:
    """The grown ``job`` with the newcomer that replaces the next retiring member (when one waits for it)."""
    retirement = job.retirement
    if retirement is None or retirement.replacement is not None or not joining:
        return job
    return replace(job, retirement=replace(retirement, replacement=joining[-1], joined_generation=job.generation))


def _replacement_ran(job: Job) -> bool:
    """The ring that includes the retirement's replacement is the job's (and just checkpointed): one retiring
    member may leave."""
    retirement = job.retirement
    return (
        retirement is not None
        and retirement.replacement in job.members
        and retirement.joined_generation is not None
        and job.generation >= retirement.joined_generation
    )


def _retire_one(job: Job, nodes: Sequence[Node], at: datetime) -> RecoveryPlan:
    """The ring without its next retiring member (the leave-out shrink: the others train on at the next step
    boundary, it stops and its instance is released); the retirement goes on with the rest, or is complete."""
    retirement = job.retirement
    assert retirement is not None
    leaving = next((i for i in retirement.retiring if i in job.members and i != retirement.replacement), None)
    survivors = [i for i in job.members if i != leaving]
    if leaving is None or len(survivors) < job.min_workers:
        return _unchanged(job, "no retiring member can leave without going below min_workers")
    plan = _reconfigure(job, nodes, survivors, [], at, restore=False, cause="retired")
    rest = tuple(i for i in retirement.retiring if i != leaving and i in plan.job.members)
    replaced = retirement.replaced + 1
    if rest:
        kept = replace(
            retirement,
            retiring=rest,
            replacement=None,
            joined_generation=None,
            replaced=replaced,
            retired=(*retirement.retired, leaving),
        )
        phase, detail = "progressed", f"{replaced} worker(s) replaced, {len(rest)} left"
    else:
        kept, phase, detail = None, "completed", f"{replaced} worker(s) replaced"
    incident = Incident(
        at=at, cause=f"{retirement.kind}-{phase}", generation=plan.job.generation, instance_id=leaving, detail=detail
    )
    after = replace(plan.job, retirement=kept).with_incident(incident)
    return replace(plan, job=after, outcome=f"{leaving} retired: {plan.outcome}")


def _is_upgrade_replacement(job: Job, instance_id: str) -> bool:
    retirement = job.retirement
    return retirement is not None and retirement.kind == "upgrade" and retirement.replacement == instance_id


def _roll_back(job: Job, nodes: Sequence[Node], signal: ScriptFailed) -> RecoveryPlan:
    """A new-version worker failed: the upgrade stops. The job's program goes back to the old one, the ring goes on
    without the failed replacement (whose instance is released), and the failure does not count against
    ``max_restarts``: the old workers never stopped, the job did not fail."""
    retirement = job.retirement
    assert retirement is not None and retirement.previous_image is not None
    spec = job.spec.model_copy(
        update={"image": retirement.previous_image, "entrypoint": list(retirement.previous_entrypoint)}
    )
    restored = replace(job, spec=spec, retirement=None)
    survivors = [i for i in job.members if i != signal.instance_id]
    plan = _reconfigure(restored, nodes, survivors, [], signal.at, restore=False, cause="rolled-back")
    incident = Incident(
        at=signal.at,
        cause="upgrade-rolled-back",
        generation=plan.job.generation,
        instance_id=signal.instance_id,
        detail=f"the new version failed on {signal.instance_id}: {signal.reason}",
        step=signal.step,
    )
    return replace(
        plan, before=job, job=plan.job.with_incident(incident), outcome=f"upgrade rolled back: {plan.outcome}"
    )


def _try_reconfigure(job: Job, nodes: Sequence[Node], at: datetime) -> RecoveryPlan:
    """Re-forms the ring when the recovery has what it waits for; otherwise the job as given, waiting."""
    recovery = job.recovery
    assert recovery is not None
    gone = set(recovery.leaving) | set(recovery.lost)
    survivors = [i for i in job.members if i not in gone]  # _reconfigure keeps their rank order
    spares = list(job.spares)
    if recovery.lost:
        # The ring is broken: re-form now with whoever is there, without waiting for a checkpoint.
        if survivors:
            joining = spares[: max(0, job.max_workers - len(survivors))]
            if len(survivors) + len(joining) >= job.min_workers:
                return _reconfigure(job, nodes, survivors, joining, at, restore=False)
        elif len(spares) >= job.min_workers:
            return _reconfigure(job, nodes, [], spares[: job.max_workers], at, restore=True)
        shortfall = job.min_workers - len(survivors) - len(spares)
        return RecoveryPlan(
            before=job,
            job=replace(job, replacements_wanted=max(job.replacements_wanted, shortfall)),
            outcome=f"waiting for {shortfall} more instance(s) to reach min_workers",
        )
    if recovery.awaiting_checkpoint:
        return RecoveryPlan(before=job, job=job, outcome="waiting for the emergency checkpoint")
    if len(spares) < len(recovery.leaving):
        return RecoveryPlan(before=job, job=job, outcome="checkpoint done; waiting for replacement capacity")
    return _reconfigure(job, nodes, survivors, spares[: len(recovery.leaving)], at, restore=False)


def _reconfigure(
    job: Job,
    nodes: Sequence[Node],
    survivors: Sequence[str],
    joining: Sequence[str],
    at: datetime,
    *,
    restore: bool,
    cause: str | None = None,
) -> RecoveryPlan:
    """The next generation: ``survivors`` keep their order (rank 0 first), ``joining`` spares follow."""
    survivors = sorted(survivors, key=lambda i: job.members[i])
    ranks = {instance: rank for rank, instance in enumerate([*survivors, *joining])}
    checkpoint = job.durable_checkpoint if restore else None
    after = replace(
        job.reconfigured(ranks, spares=tuple(s for s in job.spares if s not in ranks)),
        restoring_step=checkpoint.step if checkpoint else None,
    )
    after = replace(after, retirement=_retirement_in(after))
    command = reconfigure_command(after, {n.instance_id: n.host for n in nodes}, at, checkpoint=checkpoint)
    cause = cause or ("restarted" if restore else "reconfigured")
    detail = f"world {len(ranks)}" + (f", from step {checkpoint.step}" if checkpoint else "")
    after = after.with_incident(Incident(at=at, cause=cause, generation=after.generation, detail=detail))
    outcome = f"{cause} at generation {after.generation} ({detail})"
    recovery = job.recovery
    if recovery is None:
        return RecoveryPlan(before=job, job=after, commands=(command,), outcome=outcome)
    metrics = _recovery_metrics(recovery, at, checkpoint, restore=restore)
    return RecoveryPlan(
        before=job, job=after, commands=(command,), outcome=outcome, metrics=metrics, cause=recovery.cause
    )


def _recovery_metrics(
    recovery: PendingRecovery, at: datetime, checkpoint: DurableCheckpoint | None, *, restore: bool
) -> dict[str, float]:
    """How long the recovery took, and the steps it lost: back to the checkpoint a restart loads, at most one for
    survivors of a loss (their last in-memory commit), none when notice let them checkpoint first."""
    if restore:
        reached = recovery.last_step if recovery.last_step is not None else 0
        lost = float(max(0, reached - (checkpoint.step if checkpoint else 0)))
    elif recovery.lost and recovery.checkpoint_step is None:
        lost = 1.0
    else:
        lost = 0.0
    return {"TimeToRecover": max(0.0, (at - recovery.started_at).total_seconds()), "StepsLost": lost}


def _recovery_with(
    job: Job, signal: NoticeGiven, *, leaving: tuple[str, ...], awaiting_checkpoint: bool
) -> PendingRecovery:
    current = job.recovery
    if current is None:
        return PendingRecovery(
            cause=signal.cause,
            started_at=signal.at,
            leaving=leaving,
            awaiting_checkpoint=awaiting_checkpoint,
            deadline=signal.deadline,
        )
    deadlines = [d for d in (current.deadline, signal.deadline) if d is not None]
    return replace(
        current,
        leaving=(*current.leaving, *leaving),
        awaiting_checkpoint=current.awaiting_checkpoint or awaiting_checkpoint,
        deadline=min(deadlines) if deadlines else None,
    )


def _checkpoint_now(job: Job, signal: NoticeGiven) -> CheckpointNow:
    from ringfleet.contracts import CheckpointNow

    return CheckpointNow(
        job_id=job.job_id,
        generation=job.generation,
        reason=signal.cause,
        deadline=signal.deadline,
        message_id=command_message_id(job.job_id, job.generation, f"CheckpointNow:{signal.instance_id}"),
        sent_at=signal.at,
    )


def _last_step(nodes: Iterable[Node], members: Mapping[str, int]) -> int | None:
    steps = [n.last_step for n in nodes if n.instance_id in members and n.last_step is not None]
    return max(steps) if steps else None


def lost_instances(job: Job, signal: Signal) -> tuple[str, ...]:
    """The instance a loss reports, unless ``job`` (as decided) still counts it: a stale generation's failure
    report does not mark a member of the current ring lost."""
    if not isinstance(signal, NodeLost):
        return ()
    instance = signal.instance_id
    return () if instance in job.members or instance in job.spares else (instance,)


def plan_node_updates(
    job: Job,
    nodes: Sequence[Node],
    at: datetime,
    *,
    lost: Iterable[str] = (),
    hooks: Mapping[str, LifecycleHook] | None = None,
) -> tuple[list[Node], list[LifecycleHook]]:
    """Nodes whose stored record disagrees with ``job``, and lifecycle hooks to complete.

    Derived from the job alone (plus the instances a signal reports ``lost`` and the ``hooks`` a lifecycle notice
    brought), so running it again after a crash changes nothing more. A hook is completed once its instance is no
    longer needed: it left the ring, or its emergency checkpoint is done.
    """
    if job.is_final:
        # The job is over: its instances no longer serve it (the fleet scaler frees them, the sweep ignores them).
        done = [replace(n, state=NodeState.LOST, rank=None, updated_at=at) for n in nodes if n.state != NodeState.LOST]
        return done, [n.lifecycle_hook for n in nodes if n.lifecycle_hook is not None]
    recovery = job.recovery
    gone = set(lost) | (set(recovery.lost) if recovery else set())
    checkpoint_pending = bool(recovery and recovery.awaiting_checkpoint)
    updates: list[Node] = []
    release: list[LifecycleHook] = []
    for node in nodes:
        want = _wanted_node(job, node, gone, (hooks or {}).get(node.instance_id))
        hook = want.lifecycle_hook
        if hook is not None and (
            want.state is NodeState.LOST or (want.state is NodeState.LEAVING and not checkpoint_pending)
        ):
            release.append(hook)
            want = replace(want, lifecycle_hook=None)
        if want != node:
            updates.append(replace(want, updated_at=at))
    return updates, release


def _wanted_node(job: Job, node: Node, gone: set[str], hook: LifecycleHook | None) -> Node:
    """``node`` as ``job`` (not final) has it, holding ``hook`` (a lifecycle notice about it) unless it is lost."""
    instance = node.instance_id
    leaving = job.recovery.leaving if job.recovery else ()
    want = node
    if hook is not None and node.state is not NodeState.LOST:
        want = replace(want, lifecycle_hook=hook)
    if instance in gone:
        return replace(want, state=NodeState.LOST, rank=None)
    if instance in leaving:
        return replace(want, state=NodeState.LEAVING)
    if instance in job.members:
        return replace(want, state=NodeState.ACTIVE, rank=job.members[instance], generation=job.generation)
    if instance in job.spares:
        return replace(want, state=NodeState.PLACED, rank=None)
    if node.state in (NodeState.ACTIVE, NodeState.LEAVING):
        # Was in the ring, is not any more (reconfigured out after its notice): it is no longer the job's.
        return replace(want, state=NodeState.LOST, rank=None)
    # A PLACED node the job does not list yet was placed after this read; the fleet scaler brings it in.
    return want
