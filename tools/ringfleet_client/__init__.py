"""The ringfleet client for apps: submit and cancel jobs (validated, then published with publisher confirms), and
read their state back.

Messages are checked against their contract before they leave, so a job asking for 100,000 workers or a negative
budget is refused here with the reason, and never reaches the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from ringfleet.contracts import APPS_EXCHANGE, JOBS_QUEUE, JobCancelled, JobSubmitted, UpgradeJob, encode_message

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.core.ports import JobRepository

__all__ = ["Rejected", "RingfleetClient", "apply_job_overrides", "check_job", "load_job_file", "validation_reason"]


class Rejected(ValueError):
    """A message refused before it was sent (or a job the tenant may not touch), with the reason."""


def validation_reason(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())


def load_job_file(path: str | Path) -> dict[str, Any]:
    """The job file's fields; a missing file or malformed YAML is refused with where (line and column) and why."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise Rejected(f"{path}: no such file (examples/digits/job.yaml is one to copy)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Rejected(f"{path}: cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise Rejected(f"{path}{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise Rejected(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise Rejected(f"{path}: a job file is a YAML mapping of JobSubmitted fields (see examples/digits/job.yaml)")
    return data


def apply_job_overrides(fields: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` overrides, values read as YAML (``4``, ``0.5``, ``[g5.xlarge, g6.xlarge]``, ``true``) and
    kept as text when they are not YAML (``name=2fast:run``); ``hyperparameters.lr=0.1`` sets one key inside."""
    out = dict(fields)
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise Rejected(f"--set {item!r}: expected FIELD=VALUE, e.g. --set job_id=digits-2 or --set max_workers=4")
        try:
            value: Any = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str | int | float | bool | list | dict) or value is None:
            pass
        else:  # dates and the like: the contracts want text
            value = raw
        node: dict[str, Any] = out
        *parents, last = path.strip().split(".")
        for key in parents:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise Rejected(f"--set {item!r}: {key!r} is not a mapping, so it has no field {last!r}")
            else:
                child = node[key] = dict(child)
            node = child
        node[last] = value
    return out


def check_job(fields: Mapping[str, Any], known_instance_types: Collection[str] | None = None) -> JobSubmitted:
    """The JobSubmitted the fields make, checked offline as job intake will: the contract, and instance types the
    market knows when ``known_instance_types`` is given. Raises Rejected with every reason."""
    try:
        message = JobSubmitted.model_validate({k: v for k, v in fields.items() if k != "type"})
    except ValidationError as exc:
        raise Rejected(f"job rejected before sending: {validation_reason(exc)}") from None
    if known_instance_types is not None:
        from ringfleet.intake.service import check_instance_types

        why = check_instance_types(message.instance_types, known_instance_types)
        if why is not None:
            raise Rejected(f"job rejected before sending: {why}")
    return message


@dataclass
class RingfleetClient:
    """Publishes app messages to the broker; reads jobs through a JobRepository when one is given."""

    broker_url: str
    jobs: JobRepository | None = None

    def submit(self, fields: Mapping[str, Any]) -> JobSubmitted:
        message = check_job(fields)
        self._publish(message)
        return message

    def cancel(self, tenant: str, job_id: str, reason: str = "cancelled by its tenant") -> JobCancelled:
        try:
            message = JobCancelled(tenant=tenant, job_id=job_id, reason=reason)
        except ValidationError as exc:
            raise Rejected(f"cancel rejected before sending: {validation_reason(exc)}") from None
        if self.jobs is not None:
            from ringfleet.intake.quotas import check_cancel

            why = check_cancel(message, self.jobs.get(job_id))
            if why is not None:
                raise Rejected(f"cancel rejected: {why}")
        self._publish(message)
        return message

    def upgrade(self, tenant: str, job_id: str, image: str, entrypoint: list[str] | None = None) -> UpgradeJob:
        """Asks for a rolling upgrade of a running job; refused here (nothing sent) when the message is invalid or
        the job, when readable, is not the tenant's or not RUNNING."""
        try:
            message = UpgradeJob(tenant=tenant, job_id=job_id, image=image, entrypoint=entrypoint)
        except ValidationError as exc:
            raise Rejected(f"upgrade rejected before sending: {validation_reason(exc)}") from None
        if self.jobs is not None:
            job = self.jobs.get(job_id)
            if job is None or job.tenant != tenant:
                raise Rejected(f"upgrade rejected: tenant {tenant} has no job {job_id}")
            if job.state.value != "RUNNING":
                raise Rejected(f"upgrade rejected: job {job_id} is {job.state.value}; only a RUNNING job is upgraded")
            if job.retirement is not None:
                raise Rejected(
                    f"upgrade rejected: job {job_id} is already replacing its workers ({job.retirement.kind})"
                )
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

    def _publish(self, message: JobSubmitted | JobCancelled | UpgradeJob) -> None:
        from ringfleet.adapters.rabbitmq import publish

        asyncio.run(
            publish(
                self.broker_url,
                encode_message(message),
                exchange=APPS_EXCHANGE,
                routing_key=JOBS_QUEUE,
                message_id=str(message.message_id),
                headers={"type": message.type},
            )
        )
