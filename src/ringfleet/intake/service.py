"""Job intake: admits or rejects JobSubmitted, cancels on JobCancelled, starts a rolling upgrade on UpgradeJob; the
shell around quotas and the job record.

Admission is idempotent per message id: a redelivered JobSubmitted finds its job already there (created from the
same message) and changes nothing. The job is created in the same transaction that adds its GPUs and $/h to its
tenant's usage, within the tenant's quota (``ringfleet.intake.quotas``): two submissions racing for the last of a
quota admit one. A rejected submission is recorded as a FAILED job whose incident says why, so
``ringfleet status`` shows the reason; a submission reusing an existing job id is rejected without touching that
job. Only admitted jobs are announced (``Job Admitted``), so nothing rejected ever reaches the scaler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ringfleet.core.commands import stop_command
from ringfleet.core.jobs import Incident, Job, JobState
from ringfleet.core.outbox import Outbox
from ringfleet.core.retirement import RetirementRefused, begin_upgrade
from ringfleet.intake.quotas import (
    TenantRegistry,
    Usage,
    admit_job,
    check_cancel,
    claim_of,
    over_quota,
    unregistered,
)

if TYPE_CHECKING:
    from ringfleet.contracts import AppMessage, JobCancelled, JobSubmitted, UpgradeJob
    from ringfleet.core.ports import Clock, CommandPublisher
    from ringfleet.intake.ports import Admission, IntakeJobRepository
    from ringfleet.intake.quotas import QuotaClaim
    from ringfleet.scaling.catalog import InstanceCatalog

__all__ = ["IntakeOutcome", "IntakeService", "check_instance_types"]

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class IntakeOutcome:
    job_id: str
    #: admitted, duplicate, rejected, cancelled, refused (a sender that may not send it)
    outcome: str
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "outcome": self.outcome, "reason": self.reason}


def check_instance_types(requested: Collection[str], known: Collection[str]) -> str | None:
    """None when the instance catalog lists every instance type asked for; otherwise why not, naming the ones it lists.

    A job whose types no pool offers would stay PENDING for ever: the scaler finds nothing to launch."""
    unknown = [t for t in requested if t not in known]
    if not unknown:
        return None
    offered = ", ".join(sorted(known)) or "none (is the instance catalog empty? see WorkerInstanceTypes)"
    return f"unknown instance type(s) {', '.join(unknown)}: the fleet's instance catalog offers {offered}"


class IntakeService:
    def __init__(
        self,
        *,
        jobs: IntakeJobRepository,
        publisher: CommandPublisher,
        put_events: Callable[[list[dict[str, Any]]], None],
        tenants: TenantRegistry,
        clock: Clock,
        control_user: Callable[[], str | None] | None = None,
        catalog: Callable[[], InstanceCatalog] | None = None,
    ) -> None:
        self.jobs = jobs
        self.publisher = publisher
        self.put_events = put_events
        #: The registered tenants and their quotas: another tenant's jobs are rejected.
        self.tenants = tenants
        self.clock = clock
        #: The instance catalog, read once per submission: the types it lists are the known ones, a job's
        #: min_workers must fit its budget at the cheapest of their on-demand prices, and its GPUs count towards its
        #: tenant's quota as its instances hold them (None: any type, no price check, gpus_per_worker counted).
        self.catalog = catalog
        self.outbox = Outbox(jobs=jobs, publisher=publisher)
        #: The control plane's broker user (may speak for any tenant); None: no such user.
        self.control_user = control_user or (lambda: None)

    def refuse_sender(self, message: AppMessage, user: str | None) -> IntakeOutcome | None:
        """Refuses (and logs) a message that broker user ``user`` may not send; nothing is stored or changed, so a
        forged cancel leaves the other tenant's job as it was. None when the sender may send it."""
        from ringfleet.intake.senders import check_sender

        reason = check_sender(message.tenant, user, self.control_user())
        if reason is None:
            return None
        log.warning("refused %s of job %s from broker user %r: %s", message.type, message.job_id, user, reason)
        return IntakeOutcome(message.job_id, "refused", reason)

    def _reject(self, message: JobSubmitted, reason: str, *, record: bool) -> IntakeOutcome:
        """Rejects a submission: ``Job Rejected`` on the bus and, with ``record``, a FAILED job whose incident says
        why (what ``ringfleet status`` shows)."""
        from ringfleet.contracts import JobRejectedDetail, control_event_entry

        if record:
            rejected = Job(
                job_id=message.job_id,
                tenant=message.tenant,
                state=JobState.FAILED,
                spec=message,
                failure=reason,
                incidents=(Incident(at=self.clock.now(), cause="rejected", generation=0, detail=reason),),
            )
            self.jobs.create(rejected)
        log.warning("rejected job %s of tenant %s: %s", message.job_id, message.tenant, reason)
        detail = JobRejectedDetail(tenant=message.tenant, job_id=message.job_id, reason=reason[:2048])
        self.put_events([control_event_entry(detail)])
        return IntakeOutcome(message.job_id, "rejected", reason)

    def on_submitted(self, message: JobSubmitted) -> IntakeOutcome:
        """Admits the job, or rejects it: a tenant not registered gets nothing stored (it has no jobs to list), a
        job id taken leaves that job alone, any other reason is recorded as a FAILED job."""
        from ringfleet.contracts import JobAdmittedDetail, control_event_entry

        quota = self.tenants.of(message.tenant)
        if quota is None:
            return self._reject(message, unregistered(message.tenant), record=False)
        existing = self.jobs.get(message.job_id)
        if existing is not None:
            if existing.tenant == message.tenant and existing.spec.message_id == message.message_id:
                return IntakeOutcome(message.job_id, "duplicate", "already handled this message")
            return self._reject(message, f"job id {message.job_id!r} is already taken", record=False)
        catalog = self.catalog() if self.catalog is not None else None
        reason = self._check(message, catalog)
        if reason is not None:
            return self._reject(message, reason, record=True)
        job = Job(
            job_id=message.job_id,
            tenant=message.tenant,
            state=JobState.PENDING,
            spec=message,
            incidents=(Incident(at=self.clock.now(), cause="admitted", generation=0),),
        )
        claim = claim_of(message, quota, catalog)
        admission = self._create_within_quota(job, claim)
        if admission.outcome == "exists":
            return self.on_submitted(message)  # a concurrent delivery of the same message won the create
        if admission.outcome == "over-quota":
            # Nothing was written by the refused transaction: the tenant's usage is as it was.
            return self._reject(message, over_quota(claim, admission.usage or Usage()), record=True)
        detail = JobAdmittedDetail(
            tenant=message.tenant,
            job_id=message.job_id,
            min_workers=message.min_workers,
            max_workers=message.max_workers,
        )
        self.put_events([control_event_entry(detail)])
        return IntakeOutcome(message.job_id, "admitted")

    def _create_within_quota(self, job: Job, claim: QuotaClaim) -> Admission:
        """The job stored with its share of the tenant's quota, or why not; a transaction that met another on the
        tenant's usage at the same moment is tried again."""
        for _ in range(MAX_ATTEMPTS):
            admission = self.jobs.create_within_quota(job, claim)
            if admission.outcome != "conflict":
                return admission
        raise RuntimeError(f"job {job.job_id}: {MAX_ATTEMPTS} conflicting admissions in a row; retry later")

    def _check(self, message: JobSubmitted, catalog: InstanceCatalog | None) -> str | None:
        """Why the job, on its own, cannot be admitted (unknown instance types, over its tenant's whole quota, a
        minimum its budget cannot pay for); None when it may be, as far as the tenant's other jobs leave room."""
        reason = check_instance_types(message.instance_types, catalog.names()) if catalog is not None else None
        return reason or admit_job(message, self.tenants, catalog)

    def on_cancelled(self, message: JobCancelled) -> IntakeOutcome:
        """Cancels the job: saved CANCELLED with a Stop for its workers in its outbox, the Stop published, the
        scaler told (``Job Finished``). A redelivered cancel is a duplicate; a Stop a crashed run left unpublished
        in the outbox goes out with the next read (``ringfleet.core.outbox``)."""
        from ringfleet.contracts import JobFinishedDetail, control_event_entry

        for _ in range(MAX_ATTEMPTS):
            read = self.jobs.get(message.job_id)
            job = self.outbox.flush(read, now=self.clock.now()) if read is not None else None
            if read is not None and job is None:
                continue  # the job moved while its leftover commands were cleared: read it again
            reason = check_cancel(message, job)
            if job is not None and job.tenant == message.tenant and job.state == JobState.CANCELLED:
                return IntakeOutcome(message.job_id, "duplicate", "already cancelled")
            if reason is not None or job is None:
                return IntakeOutcome(message.job_id, "rejected", reason or "")
            now = self.clock.now()
            cancelled = replace(job.moved_to(JobState.CANCELLED), replacements_wanted=0).with_incident(
                Incident(at=now, cause="cancelled", generation=job.generation, detail=message.reason)
            )
            stop = stop_command(job, f"cancelled: {message.reason}", now)
            if not self.outbox.commit(cancelled, decided_from=job, commands=[stop]):
                continue
            detail = JobFinishedDetail(tenant=job.tenant, job_id=job.job_id, state="CANCELLED")
            self.put_events([control_event_entry(detail)])
            return IntakeOutcome(message.job_id, "cancelled")
        raise RuntimeError(f"job {message.job_id}: {MAX_ATTEMPTS} conflicting writers in a row; retry later")

    def on_upgrade(self, message: UpgradeJob) -> IntakeOutcome:
        """Starts a rolling upgrade (``ringfleet.core.retirement``): the job saved with its members to retire and
        the new program, then ``Upgrade Started`` and ``Capacity Wanted`` (the scaler launches the first replacement
        now). Refused, with the reason and nothing changed, for another tenant's job or one not RUNNING; a
        redelivered message finds its upgrade already started (a duplicate)."""
        from ringfleet.contracts import CapacityWantedDetail, UpgradeDetail, control_event_entry

        for _ in range(MAX_ATTEMPTS):
            job = self.jobs.get(message.job_id)
            if job is None or job.tenant != message.tenant:
                return IntakeOutcome(message.job_id, "rejected", f"tenant {message.tenant} has no job {message.job_id}")
            if any(i.cause == "upgrade-started" and i.detail.endswith(str(message.message_id)) for i in job.incidents):
                return IntakeOutcome(message.job_id, "duplicate", "this upgrade already started")
            entrypoint = tuple(message.entrypoint or job.spec.entrypoint)
            try:
                upgraded = begin_upgrade(job, message.image, entrypoint, self.clock.now(), reference=message.message_id)
            except RetirementRefused as exc:
                return IntakeOutcome(message.job_id, "rejected", str(exc))
            if not self.jobs.save(upgraded, decided_from=job):
                continue
            started = upgraded.incidents[-1].detail
            self.put_events(
                [
                    control_event_entry(
                        UpgradeDetail(tenant=job.tenant, job_id=job.job_id, phase="Started", detail=started)
                    ),
                    control_event_entry(
                        CapacityWantedDetail(tenant=job.tenant, job_id=job.job_id, replacements=1, cause="upgrade")
                    ),
                ]
            )
            return IntakeOutcome(message.job_id, "upgrading", started)
        raise RuntimeError(f"job {message.job_id}: {MAX_ATTEMPTS} conflicting writers in a row; retry later")
