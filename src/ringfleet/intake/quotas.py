"""admit_job / check_cancel: per-tenant quotas and ownership, decided before anything reaches the scaler."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringfleet.contracts import JobCancelled, JobSubmitted
    from ringfleet.core.jobs import Job

__all__ = ["Quotas", "TenantQuota", "admit_job", "check_cancel"]


@dataclass(frozen=True)
class TenantQuota:
    """What one tenant's active jobs may hold at most, all together."""

    max_gpus: int = 64
    max_usd_per_hour: float = 200.0


@dataclass(frozen=True)
class Quotas:
    """Quotas by tenant, with a default for tenants not listed."""

    default: TenantQuota = field(default_factory=TenantQuota)
    tenants: Mapping[str, TenantQuota] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantQuota:
        return self.tenants.get(tenant, self.default)

    @classmethod
    def from_json(cls, text: str | None) -> Quotas:
        """``{"default": {"max_gpus": 64, "max_usd_per_hour": 200}, "tenants": {"acme": {...}}}`` (all optional)."""
        if not text:
            return cls()
        data: dict[str, Any] = json.loads(text)
        default = TenantQuota(**data.get("default", {}))
        return cls(default, {t: TenantQuota(**q) for t, q in data.get("tenants", {}).items()})


def _gpus(spec: JobSubmitted) -> int:
    # A job holds up to max_workers workers; one with no GPUs still takes a machine, counted as one.
    return spec.max_workers * max(1, spec.gpus_per_worker)


def admit_job(submitted: JobSubmitted, active_jobs: Sequence[Job], quotas: Quotas) -> str | None:
    """None when the job may be admitted; otherwise why not, in words for the tenant."""
    quota = quotas.of(submitted.tenant)
    mine = [j for j in active_jobs if j.tenant == submitted.tenant and j.job_id != submitted.job_id]
    gpus = sum(_gpus(j.spec) for j in mine) + _gpus(submitted)
    if _gpus(submitted) > quota.max_gpus:
        return (
            f"quota: the job asks for up to {_gpus(submitted)} GPUs ({submitted.max_workers} workers x "
            f"{max(1, submitted.gpus_per_worker)}); tenant {submitted.tenant} may hold at most {quota.max_gpus}"
        )
    if gpus > quota.max_gpus:
        return f"quota: tenant {submitted.tenant} would hold {gpus} GPUs with this job; its quota is {quota.max_gpus}"
    spend = sum(j.spec.budget_usd_per_hour for j in mine) + submitted.budget_usd_per_hour
    if spend > quota.max_usd_per_hour:
        return (
            f"quota: tenant {submitted.tenant}'s jobs would budget ${spend:.2f}/h with this one; "
            f"its quota is ${quota.max_usd_per_hour:.2f}/h"
        )
    return None


def check_cancel(cancelled: JobCancelled, job: Job | None) -> str | None:
    """None when the tenant may cancel the job; otherwise why not. Another tenant's job reads as unknown, so a
    cancel cannot be used to learn which job ids exist."""
    if job is None or job.tenant != cancelled.tenant:
        return f"no job {cancelled.job_id!r} of tenant {cancelled.tenant!r}"
    if job.is_final:
        return f"job {cancelled.job_id!r} already ended {job.state.value}"
    return None
