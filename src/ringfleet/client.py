"""The ringfleet client for apps: submit and cancel jobs (validated, then published with publisher confirms), and
read their state back.

Messages are checked against their contract before they leave, so a job asking for 100,000 workers or a negative
budget is refused here with the reason, and never reaches the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from ringfleet.contracts import JOBS_QUEUE, JobCancelled, JobSubmitted, encode_message

if TYPE_CHECKING:
    from ringfleet.domain.jobs import Job
    from ringfleet.ports import JobRepository

__all__ = ["Rejected", "RingfleetClient", "load_job_file", "validation_reason"]


class Rejected(ValueError):
    """A message refused before it was sent (or a job the tenant may not touch), with the reason."""


def validation_reason(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())


def load_job_file(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise Rejected(f"{path}: a job file is a YAML mapping of JobSubmitted fields (see examples/digits/job.yaml)")
    return data


@dataclass
class RingfleetClient:
    """Publishes app messages to the broker; reads jobs through a JobRepository when one is given."""

    broker_url: str
    jobs: JobRepository | None = None

    def submit(self, fields: Mapping[str, Any]) -> JobSubmitted:
        try:
            message = JobSubmitted.model_validate({k: v for k, v in fields.items() if k != "type"})
        except ValidationError as exc:
            raise Rejected(f"job rejected before sending: {validation_reason(exc)}") from None
        self._publish(message)
        return message

    def cancel(self, tenant: str, job_id: str, reason: str = "cancelled by its tenant") -> JobCancelled:
        try:
            message = JobCancelled(tenant=tenant, job_id=job_id, reason=reason)
        except ValidationError as exc:
            raise Rejected(f"cancel rejected before sending: {validation_reason(exc)}") from None
        if self.jobs is not None:
            from ringfleet.domain.quotas import check_cancel

            why = check_cancel(message, self.jobs.get(job_id))
            if why is not None:
                raise Rejected(f"cancel rejected: {why}")
        self._publish(message)
        return message

    def job(self, tenant: str, job_id: str) -> Job | None:
        """The tenant's job; another tenant's job reads as no job."""
        job = self._repo().get(job_id)
        return job if job is not None and job.tenant == tenant else None

    def list_jobs(self, tenant: str) -> list[Job]:
        return sorted(self._repo().list_by_tenant(tenant), key=lambda j: (j.created_at is None, j.created_at, j.job_id))

    def _repo(self) -> JobRepository:
        if self.jobs is None:
            raise RuntimeError("this client was built without access to the jobs table")
        return self.jobs

    def _publish(self, message: JobSubmitted | JobCancelled) -> None:
        from ringfleet.adapters.rabbitmq import publish

        asyncio.run(
            publish(
                self.broker_url,
                encode_message(message),
                queue=JOBS_QUEUE,
                message_id=str(message.message_id),
                headers={"type": message.type},
            )
        )
