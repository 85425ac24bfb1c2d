"""The job's own script failed on a member (ScriptFailed): the same members run it again in a new generation, up to
the job's ``max_restarts`` times, after which the job ends FAILED and its workers are stopped — pure.

A failed script is not a lost node: the instance is fine, and nothing it holds in memory is lost. A failure of an
upgrade's new version rolls the upgrade back instead (``ringfleet.recovery.rolling.roll_back``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ringfleet.core.commands import stop_command
from ringfleet.core.jobs import Incident, JobState
from ringfleet.recovery.plan import RecoveryPlan, unchanged
from ringfleet.recovery.ring import reconfigure, try_reconfigure
from ringfleet.recovery.rolling import is_upgrade_replacement, roll_back

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node
    from ringfleet.recovery.plan import ScriptFailed

__all__ = ["on_script_failed"]


def on_script_failed(job: Job, nodes: Sequence[Node], signal: ScriptFailed) -> RecoveryPlan:
    """Counts the failure once per generation; restarts the script on the same members, or fails the job."""
    if signal.generation != job.generation:
        # Every rank of a failed generation may report it, late or twice; the job has moved on since the first.
        return unchanged(job, f"ignored: script failure of generation {signal.generation}, job is at {job.generation}")
    if job.script_failed_generation == job.generation:
        return unchanged(job, f"ignored: generation {job.generation}'s script failure is already counted")
    if signal.instance_id not in job.members:
        return unchanged(job, "ignored: instance is not a member of the job's current generation")
    if is_upgrade_replacement(job, signal.instance_id):
        return roll_back(job, nodes, signal)
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
        plan = try_reconfigure(recovering, nodes, signal.at)
        outcome = f"script failed ({failures} of {allowed} restarts) while recovering: {plan.outcome}"
        return replace(plan, before=job, outcome=outcome, metrics={**plan.metrics, **metrics})
    # The same members run the script again in a new generation; they keep what they hold in memory and sync it,
    # as survivors do (checkpoint None): a failed script is no reason to lose their progress.
    plan = reconfigure(counted, nodes, list(job.members), [], signal.at, restore=False, cause="script-restarted")
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
