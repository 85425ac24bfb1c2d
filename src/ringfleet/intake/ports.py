"""Intake's port: the jobs table that creates a job and takes its share of the tenant's quota in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from ringfleet.core.ports import JobRepository

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.intake.quotas import QuotaClaim, Usage

__all__ = ["Admission", "IntakeJobRepository", "QuotaLedger"]


@dataclass(frozen=True)
class Admission:
    """What ``create_within_quota`` did.

    admitted: the job is stored and holds its share. exists: a job with its id was already stored, nothing changed.
    over-quota: the tenant's usage (``usage``, as the refused write found it) leaves no room, nothing changed.
    conflict: another transaction on the same items at the same moment, nothing changed: try again.
    """

    outcome: Literal["admitted", "exists", "over-quota", "conflict"]
    usage: Usage | None = None


class QuotaLedger(Protocol):
    def create_within_quota(self, job: Job, claim: QuotaClaim) -> Admission:
        """Stores ``job`` if no job has its id, adding ``claim.wants`` to its tenant's usage if the usage stays within
        ``claim.quota``, both or neither. The share is given back, once, by the save that moves the job from an active
        state to a final one."""
        ...


class IntakeJobRepository(JobRepository, QuotaLedger, Protocol):
    """The jobs table as intake uses it: the shared repository and the quota ledger, one table, one transaction."""
