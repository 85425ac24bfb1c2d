"""plan_recovery: what to do about a lost, leaving or new node, a failed job script, a finished checkpoint or an
on-demand member to move back to spot — a pure decision, made for each signal in a module of its own.

Recovery in order of preference (DESIGN.md): with notice, checkpoint now and re-form the ring with a replacement
once both are there (``notice``); without notice, the survivors re-form the ring at once (``loss``); with nothing
left, restart from the newest durable checkpoint (``ring``). A failure of the job's own script is not a lost node
(``script_failure``). A checkpoint ends a wait, the job or a retiring member's stay (``checkpoint``); a new instance
is a replacement, a spare or room to grow (``capacity``); rolling upgrades and moves back to spot replace members
one at a time (``rolling``).

Every decision is made from one read of the job and returns the job as it should be saved; the caller saves it
conditionally on the generation and revision it was decided from, so a duplicated or reordered signal decides
nothing new: the signal finds its effect already there and the plan is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ringfleet.core.jobs import JobState
from ringfleet.recovery.capacity import on_capacity
from ringfleet.recovery.checkpoint import on_checkpoint
from ringfleet.recovery.loss import on_lost
from ringfleet.recovery.notice import on_notice
from ringfleet.recovery.plan import CheckpointTaken, NodeLost, NoticeGiven, RetireRequested, ScriptFailed, unchanged
from ringfleet.recovery.rolling import on_retire_requested
from ringfleet.recovery.script_failure import on_script_failed

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node
    from ringfleet.recovery.plan import RecoveryPlan, Signal

__all__ = ["plan_recovery"]


def plan_recovery(job: Job, nodes: Sequence[Node], signal: Signal) -> RecoveryPlan:
    """The job after ``signal`` and the commands to send; ``nodes`` are the job's nodes (for hosts and last steps)."""
    if job.state not in (JobState.RUNNING, JobState.RECOVERING):
        return unchanged(job, f"ignored: job is {job.state}")
    if isinstance(signal, NoticeGiven):
        return on_notice(job, nodes, signal)
    if isinstance(signal, NodeLost):
        return on_lost(job, nodes, signal)
    if isinstance(signal, CheckpointTaken):
        return on_checkpoint(job, nodes, signal)
    if isinstance(signal, ScriptFailed):
        return on_script_failed(job, nodes, signal)
    if isinstance(signal, RetireRequested):
        return on_retire_requested(job, signal)
    return on_capacity(job, nodes, signal)
