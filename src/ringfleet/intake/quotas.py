"""admit_job / check_cancel: the tenant registry, per-tenant quotas and ownership, decided before anything reaches
the scaler.

A tenant's jobs are admitted only once it is registered, with its quotas, in the ``TenantRegistry``: the stack's
``TenantRegistry`` parameter, which template.yaml hands job intake as ``TENANT_REGISTRY`` (JSON, read at cold
start). It lives in the function's environment, where the quotas always lived, rather than in a DynamoDB table:
registering a tenant is an operator's act that also needs the tenant's broker user (README, "Broker users"), both
are deployed and reviewed together, a change is in the stack's history, and intake reads no table per message.
Its limit is the parameter's 4 KB (about fifty tenants); a platform with more tenants, or whose tenants sign up
themselves, wants a table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringfleet.contracts import JobCancelled, JobSubmitted
    from ringfleet.core.jobs import Job

__all__ = ["REGISTRY_ENV", "TenantQuota", "TenantRegistry", "admit_job", "check_cancel", "unregistered"]

#: The environment variable of job intake that carries the registry (template.yaml: the TenantRegistry parameter).
REGISTRY_ENV = "TENANT_REGISTRY"


@dataclass(frozen=True)
class TenantQuota:
    """What one tenant's active jobs may hold at most, all together."""

    max_gpus: int = 64
    max_usd_per_hour: float = 200.0


@dataclass(frozen=True)
class TenantRegistry:
    """The registered tenants and the quota of each; a tenant not listed has no jobs admitted."""

    tenants: Mapping[str, TenantQuota] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantQuota | None:
        """``tenant``'s quota; None when it is not registered."""
        return self.tenants.get(tenant)

    @classmethod
    def register(cls, *tenants: str, quota: TenantQuota | None = None) -> TenantRegistry:
        """``tenants``, each with ``quota`` (default: TenantQuota's)."""
        return cls({t: quota or TenantQuota() for t in tenants})

    @classmethod
    def from_json(cls, text: str | None) -> TenantRegistry:
        """``{"acme": {"max_gpus": 64, "max_usd_per_hour": 200}, "globex": {}}``: each registered tenant with its
        quotas (a quota left out is TenantQuota's default). Empty: nobody is registered. Raises ValueError naming
        what is wrong, so a bad registry fails the cold start instead of admitting anyone."""
        if not text or not text.strip():
            return cls()
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{REGISTRY_ENV} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f'{REGISTRY_ENV} must map each tenant to its quotas, e.g. {{"acme": {{"max_gpus": 8}}}}')
        return cls({str(t): _quota(str(t), q) for t, q in data.items()})

    def to_json(self) -> str:
        return json.dumps({t: asdict(q) for t, q in sorted(self.tenants.items())}, separators=(",", ":"))


def _quota(tenant: str, fields: Any) -> TenantQuota:
    import re

    from ringfleet.contracts.scalars import JOB_ID_PATTERN

    if not re.fullmatch(JOB_ID_PATTERN, tenant):
        raise ValueError(
            f"{REGISTRY_ENV}: {tenant!r} is no tenant name (lower-case letters, digits and '-', as job ids)"
        )
    if not isinstance(fields, dict):
        raise ValueError(f"{REGISTRY_ENV}: tenant {tenant!r} needs an object of quotas ({{}} for the defaults)")
    try:
        quota = TenantQuota(**fields)
    except TypeError as exc:
        raise ValueError(f"{REGISTRY_ENV}: tenant {tenant!r}: {exc} (quotas: max_gpus, max_usd_per_hour)") from exc
    if not isinstance(quota.max_gpus, int) or quota.max_gpus < 0:
        raise ValueError(f"{REGISTRY_ENV}: tenant {tenant!r}: max_gpus must be a whole number >= 0")
    if not isinstance(quota.max_usd_per_hour, int | float) or quota.max_usd_per_hour < 0:
        raise ValueError(f"{REGISTRY_ENV}: tenant {tenant!r}: max_usd_per_hour must be a number >= 0")
    return quota


def unregistered(tenant: str) -> str:
    """Why a job of unregistered ``tenant`` is rejected, with how to register it."""
    return (
        f"tenant {tenant!r} is not registered: an operator registers it with its quotas in the stack's "
        f'TenantRegistry parameter ({REGISTRY_ENV}, e.g. {{"{tenant}": {{"max_gpus": 8, "max_usd_per_hour": 20}}}}) '
        f"and redeploys; locally, `ringfleet local up --tenant {tenant}`"
    )


def _gpus(spec: JobSubmitted) -> int:
    # A job holds up to max_workers workers; one with no GPUs still takes a machine, counted as one.
    return spec.max_workers * max(1, spec.gpus_per_worker)


def admit_job(submitted: JobSubmitted, active_jobs: Sequence[Job], registry: TenantRegistry) -> str | None:
    """None when the job may be admitted; otherwise why not, in words for the tenant."""
    quota = registry.of(submitted.tenant)
    if quota is None:
        return unregistered(submitted.tenant)
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
