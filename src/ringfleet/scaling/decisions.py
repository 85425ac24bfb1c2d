"""decide_scaling: how many workers each spot (or on-demand) pool should run for the admitted jobs — a pure decision.

Demand is what admitted jobs want (each within its min..max workers, its budget and its tenant's bound, all within
the fleet's bound). Supply is spread over pools (instance type x availability zone x market), cheapest expected
cost per useful GPU-hour first: a spot pool's price is divided by the share of each hour that is not lost to
recovering from its interruptions, at the interruption rate the fleet has observed in that pool (interruptions per
pool-hour, starting from the market's quote). New workers are spread so that no spot pool holds more than
``max_pool_share`` of the fleet while another has room; past that, shares follow what each zone supplies: a spot
pool takes more until it falls short of what it was asked (then it is refused for a while, keeping what it
gave), and a pool that just reclaimed instances is the last choice for their replacements.

Jobs with a deadline (Can't Be Late, NSDI '24): while the job's slack (time to its deadline less the training it
has left) allows, it runs on spot only and waits when spot is short; once the slack falls to ``deadline_safety``
it takes on-demand for what spot cannot give; whenever spot has room again and the slack is above
``spot_return_slack`` (enough for one more interruption), its on-demand workers move back (the spot ones launch
first; the on-demand ones are released once replaced, at a step boundary). Jobs without a deadline take on-demand
when no spot pool can supply, and move back to spot the same way. Capacity is added at once; spot surplus is
released only after it has lasted ``idle_timeout`` and the last change is ``scale_in_cooldown`` old, so the fleet
scales to zero once idle; on-demand surplus is released at once.

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
    "is_on_demand",
    "learned_rate",
    "observe_fleet",
    "pool_key",
    "slack_hours",
    "useful_fraction",
    "with_fulfilled",
]

Market = Literal["spot", "on-demand"]

#: An interruption can never cost more than this share of an hour in the model (keeps the cost finite).
_MAX_LOST_FRACTION = 0.95


def pool_key(market: str, instance_type: str, zone: str) -> str:
    """``spot:g5.xlarge:us-east-1a``: how a pool is named in decisions, fleet tags and metrics."""
    return f"{market}:{instance_type}:{zone}"


def is_on_demand(key: str) -> bool:
    """Whether the pool named ``key`` (``pool_key``) is on-demand."""
    return key.startswith("on-demand:")


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
    #: pool key -> workers of this job running there now.
    placed: Mapping[str, int] = field(default_factory=dict)
    #: When the job must be done by (None: no deadline).
    deadline: datetime | None = None
    #: Hours of training the job has left at ``max_workers`` (None: unknown; the deadline then cannot steer it).
    remaining_hours: float | None = None


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
    #: A job with a deadline takes on-demand for what spot cannot give once its slack is down to this.
    deadline_safety: timedelta = timedelta(hours=1)
    #: Its on-demand workers move back to spot (when a spot pool has room) while its slack is above this: enough
    #: to absorb another interruption and the switch back.
    spot_return_slack: timedelta = timedelta(minutes=30)
    #: Instance-hours the market's quoted interruption rate counts for before observations take over.
    prior_pool_hours: float = 20.0
    #: A spot pool that reclaimed instances this recently is the last choice for new workers.
    reclaim_memory: timedelta = timedelta(minutes=30)


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
    #: spot pool key -> instance-hours observed there, and interruptions observed in them.
    pool_hours: Mapping[str, float] = field(default_factory=dict)
    pool_interruptions: Mapping[str, int] = field(default_factory=dict)
    #: spot pool key -> when it last reclaimed an instance.
    reclaimed_at: Mapping[str, datetime] = field(default_factory=dict)
    #: When pool-hours were last counted.
    observed_at: datetime | None = None
    #: Jobs with a deadline running on on-demand because their slack ran low.
    on_demand_jobs: frozenset[str] = frozenset()
    #: Instances whose interruption notice has been counted already (a notice is seen on several runs).
    noticed: frozenset[str] = frozenset()

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
    #: job id -> pool key -> workers of that job the targets provide there (running ones, new ones, and the spot
    #: ones replacing its on-demand workers): which job a new instance is for.
    placements: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

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
    pools = [replace(p, interruptions_per_hour=learned_rate(p, fleet, policy)) for p in pools]
    by_key = {p.key: p for p in pools}
    refused = _refusals(fleet, by_key, now, policy)
    allotted = _allot(demand, by_key, policy)
    wanted = sum(allotted.values())
    on_demand_jobs = _on_demand_jobs(demand, now, policy)
    avoid = {k for k, at in fleet.reclaimed_at.items() if now - at < policy.reclaim_memory}
    # A refused pool keeps what it gave: instances launched there and not yet placed still serve new workers.
    given = {k: fleet.fulfilled.get(k, 0) for k in refused}
    placed_targets, unplaceable, placements = _place(
        demand, allotted, pools, refused, given, on_demand_jobs, avoid, now, policy
    )
    if sum(placed_targets.values()) < policy.fleet_min_workers:
        placed_targets = _keep_warm(placed_targets, pools, refused, policy)

    current = {k: n for k, n in fleet.targets.items() if n > 0}
    targets, surplus_since, reason = _scale_in(fleet, current, placed_targets, refused, now, policy)
    cost = _elastic_cost(targets, current, by_key, policy)
    state = replace(
        fleet,
        targets=dict(targets),
        fulfilled=dict(fleet.fulfilled),
        last_scaled_at=now if cost.delta_r else fleet.last_scaled_at,
        surplus_since=surplus_since,
        refused_until=refused,
        on_demand_jobs=frozenset(on_demand_jobs),
    )
    return ScalingDecision(
        targets=dict(targets),
        allotted=allotted,
        wanted=wanted,
        cost=cost,
        state=state,
        reason=_explained(reason, refused, on_demand_jobs),
        unplaceable=tuple(unplaceable),
        placements=placements,
    )


def _elastic_cost(
    targets: Mapping[str, int], current: Mapping[str, int], by_key: Mapping[str, Pool], policy: ScalingPolicy
) -> ElasticCost:
    """What ``targets`` cost an hour at their pools' prices, and how many workers change from ``current``."""
    return ElasticCost(
        c_base=sum(n * by_key[k].price_per_hour for k, n in targets.items() if k in by_key),
        c_adjust=policy.adjust_cost_per_worker,
        delta_r=sum(abs(targets.get(k, 0) - current.get(k, 0)) for k in {*targets, *current}),
    )


def _scale_in(
    fleet: FleetState,
    current: Mapping[str, int],
    placed: Mapping[str, int],
    refused: Mapping[str, datetime],
    now: datetime,
    policy: ScalingPolicy,
) -> tuple[dict[str, int], datetime | None, str]:
    """The targets from the placed ones and what runs (``current``), the surplus's start and why: a spot surplus
    is held until it has lasted ``idle_timeout`` past the cooldown, an on-demand one released at once."""
    surplus = _spot_surplus(current, placed, refused)
    surplus_since = (fleet.surplus_since or now) if surplus else None
    if surplus_since is not None and not _may_release(fleet, surplus_since, now, policy):
        targets = _held(current, placed, refused, policy)
        held = sum(targets.values()) - sum(placed.values())
        reason = f"holding {held} surplus worker(s) until idle for {policy.idle_timeout}"
    else:
        targets = {k: placed.get(k, 0) for k in {*current, *placed}}
        reason = "released surplus" if surplus else "matched demand"
        surplus_since = None
    return {k: n for k, n in targets.items() if n > 0 or k in current}, surplus_since, reason


def _spot_surplus(current: Mapping[str, int], placed: Mapping[str, int], refused: Mapping[str, datetime]) -> bool:
    """A spot pool that is not refused runs more than is placed on it."""
    return any(placed.get(k, 0) < n for k, n in current.items() if k not in refused and not is_on_demand(k))


def _held(
    current: Mapping[str, int], placed: Mapping[str, int], refused: Mapping[str, datetime], policy: ScalingPolicy
) -> dict[str, int]:
    """Hold what runs on spot (a job may come back for it), adding only what is missing within the fleet's bound;
    on-demand surplus goes at once: its pools stay in the targets (at what is placed) so that it is released."""
    targets = _hold({k: n for k, n in current.items() if not is_on_demand(k)}, placed, refused, policy)
    targets.update({k: placed.get(k, 0) for k in current if is_on_demand(k)})
    return targets


def _explained(reason: str, refused: Mapping[str, datetime], on_demand_jobs: set[str]) -> str:
    if refused:
        reason += f"; spot refused in {', '.join(sorted(refused))}"
    if on_demand_jobs:
        reason += f"; on-demand for deadline of {', '.join(sorted(on_demand_jobs))}"
    return reason


def slack_hours(job: JobDemand, now: datetime) -> float | None:
    """Hours to the job's deadline beyond the training it has left (None: no deadline or unknown work)."""
    if job.deadline is None or job.remaining_hours is None:
        return None
    return (job.deadline - now).total_seconds() / 3600 - job.remaining_hours


def _on_demand_jobs(demand: Sequence[JobDemand], now: datetime, policy: ScalingPolicy) -> set[str]:
    """Jobs whose slack no longer allows waiting for spot."""
    safety = policy.deadline_safety.total_seconds() / 3600
    return {j.job_id for j in demand if (slack := slack_hours(j, now)) is not None and slack <= safety}


def _stays_on_demand(job: JobDemand, now: datetime, policy: ScalingPolicy) -> bool:
    """Whether the job's on-demand workers stay there: its slack is too small to risk spot again."""
    slack = slack_hours(job, now)
    return slack is not None and slack <= policy.spot_return_slack.total_seconds() / 3600


def learned_rate(pool: Pool, fleet: FleetState, policy: ScalingPolicy) -> float:
    """Interruptions per instance-hour: the market's quote as a prior worth ``prior_pool_hours``, then what the
    fleet observed in the pool."""
    if pool.market != "spot":
        return 0.0
    hours = fleet.pool_hours.get(pool.key, 0.0)
    seen = fleet.pool_interruptions.get(pool.key, 0)
    prior = policy.prior_pool_hours
    return (pool.interruptions_per_hour * prior + seen) / (prior + hours)


def observe_fleet(
    state: FleetState, now: datetime, running: Mapping[str, int], interrupted: Mapping[str, int]
) -> FleetState:
    """The state with the spot pool-hours run since the last observation and the interruptions seen meanwhile."""
    hours = dict(state.pool_hours)
    if state.observed_at is not None and now > state.observed_at:
        elapsed = (now - state.observed_at).total_seconds() / 3600
        for key, n in running.items():
            if n > 0 and key.startswith("spot:"):
                hours[key] = hours.get(key, 0.0) + n * elapsed
    counts = dict(state.pool_interruptions)
    reclaimed = dict(state.reclaimed_at)
    for key, n in interrupted.items():
        if n > 0:
            counts[key] = counts.get(key, 0) + n
            reclaimed[key] = now
    return replace(state, pool_hours=hours, pool_interruptions=counts, reclaimed_at=reclaimed, observed_at=now)


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
    given: Mapping[str, int],
    on_demand_jobs: set[str],
    avoid: set[str],
    now: datetime,
    policy: ScalingPolicy,
) -> tuple[dict[str, int], list[str], dict[str, dict[str, int]]]:
    """Pool targets for the allotted workers: running spot workers where they are; on-demand ones kept until spot
    replaces them (or while the job needs on-demand); new ones spread over spot pools cheapest-first, then onto
    whichever spot pool still supplies, then on-demand when the job may not wait. Every job keeps what runs before
    any job gets new workers."""
    placer = _Placer(pools, refused, given, on_demand_jobs, avoid, now, policy, sum(allotted.values()))
    todo = [(job, *placer.keep_running(job, allotted.get(job.job_id, 0))) for job in demand]
    unplaceable = [
        job.job_id
        for job, want, movable in todo
        if not placer.place_new(job, allotted.get(job.job_id, 0), want, movable)
    ]
    return placer.targets, sorted(set(unplaceable)), placer.placements


class _Placer:
    """The targets and each job's share of them, built up by ``_place`` one worker at a time."""

    def __init__(
        self,
        pools: Sequence[Pool],
        refused: Mapping[str, datetime],
        given: Mapping[str, int],
        on_demand_jobs: set[str],
        avoid: set[str],
        now: datetime,
        policy: ScalingPolicy,
        total: int,
    ) -> None:
        self.pools = pools
        self.known = {p.key for p in pools}
        self.refused = refused
        self.given = given
        self.on_demand_jobs = on_demand_jobs
        self.avoid = avoid
        self.now = now
        self.policy = policy
        #: No spot pool takes more than this while another has room.
        self.cap = max(1, math.ceil(policy.max_pool_share * total))
        self.targets: dict[str, int] = {}
        #: job id -> pool key -> its workers there.
        self.placements: dict[str, dict[str, int]] = {}

    def add(self, job: JobDemand, key: str, n: int = 1) -> None:
        self.targets[key] = self.targets.get(key, 0) + n
        mine = self.placements.setdefault(job.job_id, {})
        mine[key] = mine.get(key, 0) + n

    def keep_running(self, job: JobDemand, want: int) -> tuple[int, int]:
        """Keeps the job's running workers (spot first) up to ``want``: the workers it still wants, and how many of
        those kept are on-demand ones that may move back to spot."""
        movable = 0
        for key, n in sorted(job.placed.items(), key=lambda kv: (is_on_demand(kv[0]), kv[0])):
            keep = min(n, want)
            if keep <= 0 or key not in self.known:
                continue
            self.add(job, key, keep)
            want -= keep
            if is_on_demand(key) and not _stays_on_demand(job, self.now, self.policy):
                movable += keep
        return want, movable

    def eligible(self, job: JobDemand, world: int) -> list[Pool]:
        """The pools that offer the job's workers, best first: not just reclaimed, then cheapest per useful hour for
        a ring of ``world`` workers."""

        def rank(p: Pool) -> tuple[bool, float, str]:
            cost = p.price_per_hour / useful_fraction(p, self.policy.recovery_overhead_hours, world)
            return (p.key in self.avoid, cost, p.key)

        fits = (p for p in self.pools if p.instance_type in job.instance_types and p.gpus >= job.gpus_per_worker)
        return sorted(fits, key=rank)

    def place_new(self, job: JobDemand, world: int, want: int, movable: int) -> bool:
        """Places the job's ``want`` new workers and the spot ones replacing its ``movable`` on-demand workers.
        False when it cannot have them: no pool offers its types, or it may not wait and nothing supplies."""
        eligible = self.eligible(job, world)
        if want > 0 and not eligible:
            return False
        # A refused spot pool is asked only for what it already gave.
        spot = [
            p for p in eligible if p.market == "spot" and (p.key not in self.refused or self.given.get(p.key, 0) > 0)
        ]
        # On-demand workers to move to spot: asked of spot now, released once the spot ones replace them.
        for _ in range(movable):
            pool = _spot_pool(spot, self.targets, self.cap, self.given)
            if pool is None:
                break
            self.add(job, pool.key)
        return self.add_new(job, want, spot, next((p for p in eligible if p.market == "on-demand"), None))

    def add_new(self, job: JobDemand, want: int, spot: Sequence[Pool], on_demand: Pool | None) -> bool:
        """Slack down to deadline_safety: spot where it has room, on-demand for the rest (no more waiting); down to
        spot_return_slack: on-demand only (another interruption would cost the deadline). False when the job may
        not wait and nothing supplies."""
        urgent = _stays_on_demand(job, self.now, self.policy)
        waits = job.deadline is not None and job.remaining_hours is not None and job.job_id not in self.on_demand_jobs
        for _ in range(want):
            pool = None if urgent else _spot_pool(spot, self.targets, self.cap, self.given)
            if pool is None and not waits:
                pool = on_demand
            if pool is None:
                return waits
            self.add(job, pool.key)
        return True


def _spot_pool(spot: Sequence[Pool], targets: Mapping[str, int], cap: int, given: Mapping[str, int]) -> Pool | None:
    """Instances a refused pool already gave first (they run or boot: nothing to launch); then spread (the cheapest
    pool under its share); past every share, the cheapest pool still supplying."""
    ready = next((p for p in spot if p.key in given and targets.get(p.key, 0) < given[p.key]), None)
    if ready is not None:
        return ready
    asked = [p for p in spot if p.key not in given]
    return next((p for p in asked if targets.get(p.key, 0) < cap), None) or (asked[0] if asked else None)


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
    targets = {k: max(wanted.get(k, 0), 0 if k in refused else current.get(k, 0)) for k in {*current, *wanted}}
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
