"""admit_job / check_cancel: the tenant registry, per-tenant quotas and ownership, decided before anything reaches
the scaler.

A tenant's jobs are admitted only once it is registered, with its quotas, in the ``TenantRegistry``: the stack's
``TenantRegistry`` parameter, which template.yaml hands job intake as ``TENANT_REGISTRY`` (JSON, read at cold
start). It lives in the function's environment, where the quotas always lived, rather than in a DynamoDB table:
registering a tenant is an operator's act that also needs the tenant's broker user (README, "Broker users"), both
are deployed and reviewed together, a change is in the stack's history, and intake reads no table per message.
Its limit is the parameter's 4 KB (about fifty tenants); a platform with more tenants, or whose tenants sign up
themselves, wants a table.

A tenant's usage (the GPUs and $/h its active jobs hold) is never summed from a read of its jobs: the job's put and
the tenant's usage count change in one transaction, conditional on the count staying within the quota
(``QuotaClaim``, ``ringfleet.intake.ports.QuotaLedger``), so a burst of submissions admits exactly up to the quota.
The job gives its share back in the write that moves it to a final state, whichever use case ends it: exactly once,
since that write is fenced on the job's generation and revision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringfleet.contracts import JobCancelled, JobSubmitted
    from ringfleet.core.jobs import Job
    from ringfleet.scaling.catalog import InstanceCatalog

__all__ = [
    "REGISTRY_ENV",
    "QuotaClaim",
    "TenantQuota",
    "TenantRegistry",
    "Usage",
    "admit_job",
    "check_cancel",
    "check_min_workers_budget",
    "claim_of",
    "gpus_per_instance",
    "held_by",
    "over_quota",
    "unregistered",
]

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


def gpus_per_instance(spec: JobSubmitted, catalog: InstanceCatalog | None) -> int:
    """The GPUs one of the job's instances holds at most: the most of any of its instance types the ``catalog``
    lists, at least ``gpus_per_worker``, and one (a machine without GPUs still counts).

    An instance serves one job whole: its every GPU trains a slot, or stays idle where ``slots_per_instance`` runs
    fewer, and serves no other job either way. Without a catalog (or for types it does not list): gpus_per_worker."""
    listed = [catalog.gpus(t) for t in spec.instance_types if t in catalog] if catalog is not None else []
    return max(1, spec.gpus_per_worker, *listed)


@dataclass(frozen=True)
class Usage:
    """GPUs and $/h: what one admitted job holds of its tenant's quota, or what all of a tenant's active jobs hold."""

    gpus: int = 0
    usd_per_hour: float = 0.0


def held_by(spec: JobSubmitted, catalog: InstanceCatalog | None = None) -> Usage:
    """What a job holds of its tenant's quota from admission until it ends: its most GPUs (max_workers instances of
    ``gpus_per_instance``) and its whole budget. Stored with the job when it is admitted and given back as stored, so
    a catalog that changes meanwhile never gives back another count than was taken."""
    return Usage(spec.max_workers * gpus_per_instance(spec, catalog), spec.budget_usd_per_hour)


@dataclass(frozen=True)
class QuotaClaim:
    """A job's share of its tenant's quota, taken in the transaction that creates the job: admitted only while the
    tenant's usage plus ``wants`` stays within ``quota`` (``ringfleet.intake.ports.QuotaLedger``)."""

    tenant: str
    job_id: str
    wants: Usage
    quota: TenantQuota

    @property
    def gpus_room(self) -> int:
        """The most GPUs the tenant's other active jobs may hold for this one to be admitted."""
        return self.quota.max_gpus - self.wants.gpus

    @property
    def usd_room(self) -> float:
        """The most $/h the tenant's other active jobs may budget for this one to be admitted."""
        return self.quota.max_usd_per_hour - self.wants.usd_per_hour


def claim_of(submitted: JobSubmitted, quota: TenantQuota, catalog: InstanceCatalog | None = None) -> QuotaClaim:
    return QuotaClaim(submitted.tenant, submitted.job_id, held_by(submitted, catalog), quota)


def check_min_workers_budget(submitted: JobSubmitted, on_demand: Mapping[str, float]) -> str | None:
    """None when the job's ``min_workers`` fit its $/h budget at the cheapest on-demand price of its instance types
    (``on_demand``: $/h per instance type, from the instance catalog); otherwise why not, naming both numbers.

    The scaler grants a job its minimum whatever it costs and falls back to on-demand when spot is short: a minimum
    the budget cannot pay for on demand would spend past the budget, and so past the tenant's $/h quota."""
    priced = sorted((on_demand[t], t) for t in submitted.instance_types if t in on_demand)
    if not priced:
        return None  # no type of the job is priced: check_instance_types says so
    price, cheapest = priced[0]
    floor = submitted.min_workers * price
    if floor <= submitted.budget_usd_per_hour:
        return None
    return (
        f"budget: min_workers {submitted.min_workers} cost at least ${floor:.2f}/h on demand "
        f"({submitted.min_workers} x ${price:.2f}/h for {cheapest}, the cheapest of its instance types), more than "
        f"the job's budget of ${submitted.budget_usd_per_hour:.2f}/h: raise budget_usd_per_hour or lower min_workers"
    )


def admit_job(submitted: JobSubmitted, registry: TenantRegistry, catalog: InstanceCatalog | None = None) -> str | None:
    """None when the job, on its own, may be admitted; otherwise why not, in words for the tenant. ``catalog``: the
    GPUs of its instance types (what it holds) and their on-demand prices (what its minimum costs); None: neither.

    What the tenant's other active jobs hold is not read here: it is counted in the transaction that creates the job
    (``QuotaClaim``), so that submissions at the same moment never admit past the quota together."""
    quota = registry.of(submitted.tenant)
    if quota is None:
        return unregistered(submitted.tenant)
    wants = held_by(submitted, catalog)
    if wants.gpus > quota.max_gpus:
        return (
            f"quota: the job asks for up to {wants.gpus} GPUs ({submitted.max_workers} workers x "
            f"{gpus_per_instance(submitted, catalog)}); tenant {submitted.tenant} may hold at most {quota.max_gpus}"
        )
    if wants.usd_per_hour > quota.max_usd_per_hour:
        return (
            f"quota: the job budgets ${wants.usd_per_hour:.2f}/h; tenant {submitted.tenant} may budget at most "
            f"${quota.max_usd_per_hour:.2f}/h"
        )
    on_demand = {n: catalog.on_demand(n) for n in catalog.names()} if catalog is not None else {}
    return check_min_workers_budget(submitted, on_demand)


def over_quota(claim: QuotaClaim, usage: Usage) -> str:
    """Why the transaction refused ``claim``, given the tenant's ``usage`` it found (its other active jobs)."""
    gpus = usage.gpus + claim.wants.gpus
    if gpus > claim.quota.max_gpus:
        return f"quota: tenant {claim.tenant} would hold {gpus} GPUs with this job; its quota is {claim.quota.max_gpus}"
    spend = usage.usd_per_hour + claim.wants.usd_per_hour
    return (
        f"quota: tenant {claim.tenant}'s jobs would budget ${spend:.2f}/h with this one; "
        f"its quota is ${claim.quota.max_usd_per_hour:.2f}/h"
    )


def check_cancel(cancelled: JobCancelled, job: Job | None) -> str | None:
    """None when the tenant may cancel the job; otherwise why not. Another tenant's job reads as unknown, so a
    cancel cannot be used to learn which job ids exist."""
    if job is None or job.tenant != cancelled.tenant:
        return f"no job {cancelled.job_id!r} of tenant {cancelled.tenant!r}"
    if job.is_final:
        return f"job {cancelled.job_id!r} already ended {job.state.value}"
    return None
