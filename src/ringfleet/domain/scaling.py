"""decide_scaling: how many workers each spot (or on-demand) pool should run for the admitted jobs — a pure decision.

Demand is what admitted jobs want (each within its min..max workers, its budget and its tenant's bound, all within
the fleet's bound). Supply is spread over pools (instance type x availability zone x market), cheapest expected
cost per useful GPU-hour first: a spot pool's price is divided by the share of each hour that is not lost to
recovering from its interruptions. No spot pool takes more than ``max_pool_share`` of the fleet, so one pool's
interruption wave cannot take the whole fleet; what the spot pools cannot take goes to on-demand. Workers already
running stay where they are. Capacity is added at once and released only after a surplus has lasted
``idle_timeout`` and the last change is ``scale_in_cooldown`` old, so the fleet scales to zero once idle.

Every decision reports the elastic cost model C = C_base + C_adjust x dR: C_base the $/h of the fleet decided,
dR the workers launched or released, C_adjust what one such change costs (boot and ring re-formation time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

__all__ = [
    "ElasticCost",
    "FleetState",
    "JobDemand",
    "Market",
    "Pool",
    "ScalingDecision",
    "ScalingPolicy",
    "decide_scaling",
    "pool_key",
    "useful_fraction",
    "with_fulfilled",
]

Market = Literal["spot", "on-demand"]

#: An interruption can never cost more than this share of an hour in the model (keeps the cost finite).
_MAX_LOST_FRACTION = 0.95


def pool_key(market: str, instance_type: str, zone: str) -> str:
    """``spot:g5.xlarge:us-east-1a``: how a pool is named in decisions, fleet tags and metrics."""
    return f"{market}:{instance_type}:{zone}"


@dataclass(frozen=True)
class Pool:
    """Where workers can run: one instance type in one availability zone, on spot or on-demand."""

    instance_type: str
    zone: str
    market: Market
    #: $ per instance-hour (the newest spot price, or the on-demand price).
    price_per_hour: float
    #: Expected interruptions per instance-hour (0 for on-demand).
    interruptions_per_hour: float
    gpus: int

    @property
    def key(self) -> str:
        return pool_key(self.market, self.instance_type, self.zone)


def useful_fraction(pool: Pool, recovery_overhead_hours: float, world_size: int = 1) -> float:
    """Share of an instance-hour that trains. An interruption of any one worker stalls the whole ring for the
    recovery overhead, so a job of ``world_size`` workers in this pool loses ``world_size`` times as much."""
    lost = min(_MAX_LOST_FRACTION, pool.interruptions_per_hour * recovery_overhead_hours * max(1, world_size))
    return 1.0 - lost


@dataclass(frozen=True)
class JobDemand:
    """What one admitted job asks of the fleet, and where its workers already run."""

    job_id: str
    tenant: str
    min_workers: int
    max_workers: int
    gpus_per_worker: int
    instance_types: tuple[str, ...]
    budget_usd_per_hour: float
    #: pool key -> workers of this job running there now (they stay put).
    placed: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScalingPolicy:
    """The bounds and timers of scaling; the defaults suit GPU training jobs that checkpoint every few minutes."""

    #: No spot pool holds more than this share of the fleet (rounded up, at least one worker).
    max_pool_share: float = 0.4
    fleet_min_workers: int = 0
    fleet_max_workers: int = 256
    tenant_max_workers: int = 64
    #: Hours a job's ring stalls per interruption: notice, emergency checkpoint, replacement, ring re-formed.
    recovery_overhead_hours: float = 0.1
    #: C_adjust: $ per worker launched or released (about ten minutes of a GPU instance booting and re-forming).
    adjust_cost_per_worker: float = 0.2
    scale_in_cooldown: timedelta = timedelta(minutes=5)
    #: A surplus is released once it has lasted this long (an idle fleet goes to zero).
    idle_timeout: timedelta = timedelta(minutes=10)
    #: A spot pool that has not filled its target this long after a change is taken as refusing capacity...
    capacity_grace: timedelta = timedelta(minutes=3)
    #: ...and is left alone for this long.
    refusal_backoff: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class FleetState:
    """What the fleet is (targets, what launched) and what the scaler remembers between decisions."""

    #: pool key -> target capacity (workers).
    targets: Mapping[str, int] = field(default_factory=dict)
    #: pool key -> instances running or launching; a spot pool below its target is short of capacity.
    fulfilled: Mapping[str, int] = field(default_factory=dict)
    last_scaled_at: datetime | None = None
    #: Since when the fleet has been larger than the demand.
    surplus_since: datetime | None = None
    #: pool key -> until when the pool is not asked for capacity (spot capacity refused).
    refused_until: Mapping[str, datetime] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.targets.values())


@dataclass(frozen=True)
class ElasticCost:
    """C = C_base + C_adjust x dR for one decision."""

    #: $/h of the fleet as decided.
    c_base: float
    #: $ per worker launched or released.
    c_adjust: float
    #: Workers launched plus workers released.
    delta_r: int

    @property
    def total(self) -> float:
        return self.c_base + self.c_adjust * self.delta_r


@dataclass(frozen=True)
class ScalingDecision:
    """Targets for every pool (zero for pools to empty), the workers each job gets, and why."""

    targets: Mapping[str, int]
    #: job id -> workers allotted (0: the job waits: it does not fit its tenant's or the fleet's bound).
    allotted: Mapping[str, int]
    #: Workers the jobs want, after every bound.
    wanted: int
    cost: ElasticCost
    #: What to remember for the next decision.
    state: FleetState
    reason: str
    #: Jobs none of whose instance types any pool offers.
    unplaceable: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.targets.values())

    @property
    def changed(self) -> bool:
        return self.cost.delta_r > 0

    def pools_in_use(self) -> list[str]:
        return sorted(k for k, n in self.targets.items() if n > 0)


def decide_scaling(
    demand: Sequence[JobDemand],
    pools: Sequence[Pool],
    fleet: FleetState,
    now: datetime,
    policy: ScalingPolicy | None = None,
) -> ScalingDecision:
    """The pool targets for ``demand`` given the pools on offer and the fleet as it is at ``now``."""
    policy = policy or ScalingPolicy()
    by_key = {p.key: p for p in pools}
    refused = _refusals(fleet, by_key, now, policy)
    allotted = _allot(demand, by_key, policy)
    wanted = sum(allotted.values())
    placed_targets, unplaceable = _place(demand, allotted, pools, refused, policy)
    if sum(placed_targets.values()) < policy.fleet_min_workers:
        placed_targets = _keep_warm(placed_targets, pools, refused, policy)

    current = {k: n for k, n in fleet.targets.items() if n > 0}
    new_total = sum(placed_targets.values())
    surplus = any(placed_targets.get(k, 0) < n for k, n in current.items() if k not in refused)
    surplus_since = (fleet.surplus_since or now) if surplus else None
    release = surplus_since is not None and _may_release(fleet, surplus_since, now, policy)
    if surplus and not release:
        # Hold what runs (a job may come back for it); add only what is missing, within the fleet's bound.
        targets = _hold(current, placed_targets, refused, policy)
        reason = f"holding {sum(targets.values()) - new_total} surplus worker(s) until idle for {policy.idle_timeout}"
    else:
        targets = {k: placed_targets.get(k, 0) for k in {*current, *placed_targets}}
        reason = "released surplus" if surplus else "matched demand"
        if surplus:
            surplus_since = None
    targets = {k: n for k, n in targets.items() if n > 0 or k in current}
    delta = sum(abs(targets.get(k, 0) - current.get(k, 0)) for k in {*targets, *current})
    last_scaled_at = now if delta else fleet.last_scaled_at
    cost = ElasticCost(
        c_base=sum(n * by_key[k].price_per_hour for k, n in targets.items() if k in by_key),
        c_adjust=policy.adjust_cost_per_worker,
        delta_r=delta,
    )
    state = FleetState(
        targets=dict(targets),
        fulfilled=dict(fleet.fulfilled),
        last_scaled_at=last_scaled_at,
        surplus_since=surplus_since,
        refused_until=refused,
    )
    if refused:
        reason += f"; spot refused in {', '.join(sorted(refused))}"
    return ScalingDecision(
        targets=dict(targets),
        allotted=allotted,
        wanted=wanted,
        cost=cost,
        state=state,
        reason=reason,
        unplaceable=tuple(unplaceable),
    )


def _refusals(
    fleet: FleetState, pools: Mapping[str, Pool], now: datetime, policy: ScalingPolicy
) -> dict[str, datetime]:
    """Spot pools not to ask: refused before and still backing off, or short of their target past the grace."""
    refused = {k: until for k, until in fleet.refused_until.items() if until > now}
    settled = fleet.last_scaled_at is None or now - fleet.last_scaled_at >= policy.capacity_grace
    for key, target in fleet.targets.items():
        pool = pools.get(key)
        if pool is None or pool.market != "spot" or key in refused:
            continue
        if settled and fleet.fulfilled.get(key, target) < target:
            refused[key] = now + policy.refusal_backoff
    return refused


def _cheapest_price(job: JobDemand, pools: Mapping[str, Pool], policy: ScalingPolicy) -> float | None:
    prices = [
        p.price_per_hour / useful_fraction(p, policy.recovery_overhead_hours)
        for p in pools.values()
        if p.instance_type in job.instance_types and p.gpus >= job.gpus_per_worker
    ]
    return min(prices) if prices else None


def _allot(demand: Sequence[JobDemand], pools: Mapping[str, Pool], policy: ScalingPolicy) -> dict[str, int]:
    """Workers per job: every job's minimum first (in order; a job gets its minimum or waits with none), then
    more up to its maximum and budget, all within the tenant's and the fleet's bounds."""
    room = policy.fleet_max_workers
    tenant_room: dict[str, int] = {}
    allotted: dict[str, int] = {}
    ceilings: dict[str, int] = {}
    for job in demand:
        price = _cheapest_price(job, pools, policy)
        if price is None:
            allotted[job.job_id] = 0
            ceilings[job.job_id] = 0
            continue
        affordable = math.floor(job.budget_usd_per_hour / price) if price > 0 else job.max_workers
        ceilings[job.job_id] = max(job.min_workers, min(job.max_workers, affordable))
        left = tenant_room.setdefault(job.tenant, policy.tenant_max_workers)
        fits = job.min_workers <= min(room, left)
        allotted[job.job_id] = job.min_workers if fits else 0
        if fits:
            room -= job.min_workers
            tenant_room[job.tenant] = left - job.min_workers
    for job in demand:
        if allotted.get(job.job_id, 0) == 0:
            continue
        more = min(ceilings[job.job_id] - allotted[job.job_id], room, tenant_room[job.tenant])
        allotted[job.job_id] += more
        room -= more
        tenant_room[job.tenant] -= more
    return allotted


def _place(
    demand: Sequence[JobDemand],
    allotted: Mapping[str, int],
    pools: Sequence[Pool],
    refused: Mapping[str, datetime],
    policy: ScalingPolicy,
) -> tuple[dict[str, int], list[str]]:
    """Pool targets for the allotted workers: running ones where they are, new ones cheapest-first within caps."""
    total = sum(allotted.values())
    cap = max(1, math.ceil(policy.max_pool_share * total))
    known = {p.key for p in pools}
    targets: dict[str, int] = {}
    unplaceable: list[str] = []
    todo: list[tuple[JobDemand, int]] = []
    for job in demand:
        want = allotted.get(job.job_id, 0)
        for key, n in sorted(job.placed.items()):
            keep = min(n, want)
            if keep > 0 and key in known:
                targets[key] = targets.get(key, 0) + keep
                want -= keep
        todo.append((job, want))

    for job, want in todo:
        world = allotted.get(job.job_id, 0)

        def rank(p: Pool, world: int = world) -> tuple[float, str]:
            return (p.price_per_hour / useful_fraction(p, policy.recovery_overhead_hours, world), p.key)

        eligible = sorted(
            (p for p in pools if p.instance_type in job.instance_types and p.gpus >= job.gpus_per_worker), key=rank
        )
        if want > 0 and not eligible:
            unplaceable.append(job.job_id)
            continue
        spot = [p for p in eligible if p.market == "spot" and p.key not in refused]
        on_demand = [p for p in eligible if p.market == "on-demand"]
        for _ in range(want):
            pool = next((p for p in spot if targets.get(p.key, 0) < cap), None)
            if pool is None:
                pool = on_demand[0] if on_demand else None
            if pool is None:
                unplaceable.append(job.job_id)
                break
            targets[pool.key] = targets.get(pool.key, 0) + 1
    return targets, sorted(set(unplaceable))


def _keep_warm(
    targets: Mapping[str, int], pools: Sequence[Pool], refused: Mapping[str, datetime], policy: ScalingPolicy
) -> dict[str, int]:
    """Tops the fleet up to its minimum in the cheapest spot pools (on-demand when no spot pool is left)."""
    out = dict(targets)
    missing = policy.fleet_min_workers - sum(out.values())
    cap = max(1, math.ceil(policy.max_pool_share * policy.fleet_min_workers))
    spot = sorted((p for p in pools if p.market == "spot" and p.key not in refused), key=lambda p: p.price_per_hour)
    on_demand = sorted((p for p in pools if p.market == "on-demand"), key=lambda p: p.price_per_hour)
    while missing > 0:
        pool = next((p for p in spot if out.get(p.key, 0) < cap), None) or (on_demand[0] if on_demand else None)
        if pool is None:
            break
        out[pool.key] = out.get(pool.key, 0) + 1
        missing -= 1
    return out


def _may_release(fleet: FleetState, surplus_since: datetime, now: datetime, policy: ScalingPolicy) -> bool:
    idle_long_enough = now - surplus_since >= policy.idle_timeout
    cooled_down = fleet.last_scaled_at is None or now - fleet.last_scaled_at >= policy.scale_in_cooldown
    return idle_long_enough and cooled_down


def _hold(
    current: Mapping[str, int],
    wanted: Mapping[str, int],
    refused: Mapping[str, datetime],
    policy: ScalingPolicy,
) -> dict[str, int]:
    """Every pool at least at its current target (refused pools excepted), trimmed to the fleet's bound."""
    targets = {k: max(wanted.get(k, 0), 0 if k in refused else n) for k, n in {**current, **wanted}.items()}
    excess = sum(targets.values()) - max(policy.fleet_max_workers, sum(wanted.values()))
    for key in sorted(targets, key=lambda k: targets[k] - wanted.get(k, 0), reverse=True):
        if excess <= 0:
            break
        cut = min(excess, targets[key] - wanted.get(key, 0))
        targets[key] -= cut
        excess -= cut
    return targets


def with_fulfilled(state: FleetState, fulfilled: Mapping[str, int]) -> FleetState:
    """The remembered state with what the fleet reports as launched now."""
    return replace(state, fulfilled=dict(fulfilled))
