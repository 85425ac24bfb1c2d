"""plan_reconcile: what one run of the fleet scaler does, decided from what it read — a pure decision.

The shell (``ScalerService.reconcile``) reads the fleet, the active jobs, the nodes of the fleet's instances, the
pools' prices and the scaler's remembered state. ``plan_reconcile`` turns them into the fleet's targets, the idle
instances to release and the state to remember; ``plan_assignments`` then puts the instances that run free to work:
the PENDING jobs it starts (their Reconfigure, their nodes) and the instances handed to running or recovering jobs.
They are two calls because launching may fill at once (the local cloud does): when the targets changed, the shell
reads the fleet again between them, so that what just launched is placed in the same run.

Instances leaving with notice (an interruption warning) still run, finishing their emergency checkpoint, but are
not capacity: they are left out of the decision and added back to the targets applied, so that their replacements
launch now. An instance serving a job is never released; a shrinking pool gives up only idle ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ringfleet.core.jobs import RUN_STARTS, Job, JobState
from ringfleet.core.nodes import Node, NodeState, plan_node_updates
from ringfleet.core.retirement import retired_at
from ringfleet.scaling.decisions import (
    FleetState,
    JobDemand,
    Pool,
    ScalingDecision,
    ScalingPolicy,
    decide_scaling,
    is_on_demand,
    observe_fleet,
)
from ringfleet.scaling.fairness import fair_order
from ringfleet.scaling.placement import FreeInstance, JobStart, plan_placement

if TYPE_CHECKING:
    from ringfleet.scaling.ports import FleetInstance, FleetSnapshot

__all__ = [
    "Assignments",
    "Handover",
    "PlannedStart",
    "ReconcilePlan",
    "ScalingReport",
    "instance_types_in_play",
    "move_backs",
    "plan_assignments",
    "plan_reconcile",
    "remaining_hours",
]


@dataclass(frozen=True)
class ScalingReport:
    decision: ScalingDecision
    started: tuple[str, ...] = ()
    replacements: tuple[tuple[str, str], ...] = ()
    #: Workers wanted by jobs but not yet running for them (the backlog alarm's metric).
    pending_workers: int = 0
    running_by_pool: dict[str, int] = field(default_factory=dict)
    #: job -> $ per hour of the instances serving it when the run began (the dashboard's cost per job).
    cost_per_hour_by_job: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "targets": dict(d.targets),
            "wanted": d.wanted,
            "reason": d.reason,
            "cost": {
                "c_base": d.cost.c_base,
                "c_adjust": d.cost.c_adjust,
                "delta_r": d.cost.delta_r,
                "c": d.cost.total,
            },
            "started": list(self.started),
            "replacements": [list(r) for r in self.replacements],
            "pending_workers": self.pending_workers,
            "cost_per_hour_by_job": dict(self.cost_per_hour_by_job),
        }


def remaining_hours(job: Job, step: int | None, now: datetime) -> float | None:
    """Hours of training ``job`` has left at ``max_workers``, estimated from what the control plane knows: the
    job's ``total_steps`` (its spec's), the newest step its workers reported (heartbeats) or checkpointed, and its
    pace, scaled from the workers it has to its maximum.

    The pace counts from the job's newest start or restore from a durable checkpoint (its incidents, ``RUN_STARTS``),
    not from its admission: counted from admission it took in the hours a job waited for capacity and the steps a
    rollback undid, and the estimate ran hours long (towards on-demand early, and never back: issue 25). A job that
    has trained nothing since then (it just restarted) falls back to the pace since admission, which errs long.
    None when there is no honest estimate: no ``total_steps``, no step reported yet, or no admission time; the
    deadline then does not steer the job (it takes on-demand when spot is short, as a job without a deadline)."""
    total = job.spec.total_steps
    if total is None or job.created_at is None:
        return None
    done = max(step or 0, job.durable_checkpoint.step if job.durable_checkpoint is not None else 0)
    if done <= 0:
        return None
    if done >= total:
        return 0.0
    hours_per_step = _hours_per_step(job, job.created_at, done, now)
    if hours_per_step is None:
        return None
    workers = max(1, len(job.members))
    return (total - done) * hours_per_step * workers / max(workers, job.spec.max_workers)


def _hours_per_step(job: Job, admitted_at: datetime, done: int, now: datetime) -> float | None:
    """The job's pace since its newest (re)start, else since its admission; None before it trained a step."""
    starts = [(i.at, i.step) for i in job.incidents if i.cause in RUN_STARTS and i.step is not None]
    for since, from_step in (*starts[-1:], (admitted_at, 0)):
        hours = (now - since).total_seconds() / 3600
        if done > from_step and hours > 0:
            return hours / (done - from_step)
    return None


def instance_types_in_play(jobs: Sequence[Job], snapshot: FleetSnapshot) -> set[str]:
    """The instance types whose pools the scaler prices: every active job's, and every pool the fleet targets (so
    that a pool no job wants any more is still known, and emptied)."""
    return {t for j in jobs for t in j.spec.instance_types} | {k.split(":")[1] for k in snapshot.targets}


@dataclass(frozen=True)
class ReconcilePlan:
    """The fleet's side of one run: what to set on the fleet and what to remember."""

    decision: ScalingDecision
    #: pool -> target capacity to set: the decision's, plus the instances leaving with notice in that pool.
    targets: dict[str, int]
    #: Idle instances to terminate (a shrinking pool's surplus; never one serving a job).
    release: tuple[str, ...]
    #: instance -> the active job it serves (leaving ones included): not free for placement.
    busy: Mapping[str, str]
    #: The active jobs (placement gives free instances to the PENDING, RUNNING and RECOVERING ones).
    jobs: tuple[Job, ...]
    now: datetime
    #: (job id, on-demand member) to move back to spot: a spot pool has room for it (``move_backs``).
    retire: tuple[tuple[str, str], ...] = ()
    #: Retired instances in their grace period (``RETIRE_GRACE``): neither placed nor released yet.
    held: frozenset[str] = frozenset()
    #: Instances whose job ended but whose agent has not yet confirmed it runs nothing of it (``InstanceIdle``):
    #: never placed until it does (they may be released).
    unconfirmed: frozenset[str] = frozenset()
    #: job -> $ per hour of the instances serving it now.
    cost_per_hour_by_job: Mapping[str, float] = field(default_factory=dict)
    #: instance type -> slots of an instance of it (its GPUs: the pools' figures, which are the catalog's); what an
    #: instance placed by ``plan_assignments`` brings to its node. A type no pool offers (the catalog dropped it)
    #: counts one.
    slots_of_type: Mapping[str, int] = field(default_factory=dict)
    #: instance -> the tenant it served, for the free instances that served one (``Node.tenant``): placed on that
    #: tenant's jobs only.
    tenant_of: Mapping[str, str] = field(default_factory=dict)

    @property
    def changes_fleet(self) -> bool:
        return self.decision.changed or bool(self.release)

    @property
    def rereads_fleet(self) -> bool:
        """Targets changed: what just launched may already run, and is placed in this same run."""
        return self.decision.changed

    @property
    def state(self) -> FleetState:
        """What to remember for the next run (saved only if no other run saved meanwhile)."""
        return self.decision.state

    def report(self) -> dict[str, Any]:
        """The decision as saved beside the state (before any job is started)."""
        return ScalingReport(self.decision).as_dict()


@dataclass(frozen=True)
class _Occupancy:
    """What the fleet's instances serve, from their nodes."""

    #: instance -> active job it serves.
    busy: dict[str, str]
    #: instance -> pool, for the busy instances leaving with notice.
    leaving: dict[str, str]
    #: job -> newest step its workers reported in their heartbeats (its progress, for its deadline).
    steps: dict[str, int]

    def placed(self, pool_of: Mapping[str, str]) -> dict[str, dict[str, int]]:
        """job -> pool -> its workers there that stay (leaving ones are not capacity)."""
        out: dict[str, dict[str, int]] = {}
        for instance, job_id in self.busy.items():
            if instance not in self.leaving:
                mine = out.setdefault(job_id, {})
                mine[pool_of[instance]] = mine.get(pool_of[instance], 0) + 1
        return out


def _occupancy(
    snapshot: FleetSnapshot, nodes: Mapping[str, Node], active: set[str], lost: Collection[str]
) -> _Occupancy:
    busy: dict[str, str] = {}
    leaving: dict[str, str] = {}
    steps: dict[str, int] = {}
    for inst in snapshot.instances:
        node = nodes.get(inst.instance_id)
        if node is None or node.state == NodeState.LOST or node.job_id not in active or inst.instance_id in lost:
            continue
        busy[inst.instance_id] = node.job_id
        if node.last_step is not None:
            steps[node.job_id] = max(steps.get(node.job_id, 0), node.last_step)
        if node.state == NodeState.LEAVING:
            leaving[inst.instance_id] = inst.pool
    return _Occupancy(busy, leaving, steps)


def _demand(job: Job, placed: Mapping[str, int], step: int | None, now: datetime) -> JobDemand:
    """What ``job`` asks of the fleet: its min..max workers, one more while it replaces a retiring member (the
    replacement joins before the old worker leaves)."""
    spec = job.spec
    deadline = None
    if spec.deadline_hours is not None and job.created_at is not None:
        deadline = job.created_at + timedelta(hours=spec.deadline_hours)
    return JobDemand(
        job.job_id,
        job.tenant,
        spec.min_workers,
        spec.max_workers + int(job.retirement is not None),
        spec.gpus_per_worker,
        tuple(spec.instance_types),
        spec.budget_usd_per_hour,
        placed,
        deadline=deadline,
        remaining_hours=remaining_hours(job, step, now) if deadline else None,
    )


def _observed(
    remembered: FleetState,
    snapshot: FleetSnapshot,
    leaving: Mapping[str, str],
    now: datetime,
    retiring: Mapping[str, str] | None = None,
) -> FleetState:
    """The remembered state with the fleet as it is, less what is leaving; interruption rates are learned per pool,
    every notice counted once (an instance's notice is seen on several runs), over the pool-hours run meanwhile."""
    going = Counter(leaving.values()) + Counter((retiring or {}).values())
    present = {i.instance_id for i in snapshot.instances}
    new_notices = [i for i in leaving if i not in remembered.noticed]
    return observe_fleet(
        replace(
            remembered,
            targets={k: max(0, n - going[k]) for k, n in snapshot.targets.items()},
            fulfilled={k: max(0, n - going[k]) for k, n in snapshot.fulfilled.items()},
            noticed=frozenset(i for i in remembered.noticed | set(leaving) if i in present),
        ),
        now,
        running=snapshot.fulfilled,
        interrupted=Counter(leaving[i] for i in new_notices),
    )


#: How long a retired instance is kept (unplaced) before it is released: its worker leaves the ring at the next step
#: boundary, and terminating it before would break the survivors' shrink.
RETIRE_GRACE = timedelta(seconds=10)


def _retired(jobs: Sequence[Job], now: datetime) -> tuple[set[str], set[str]]:
    """Instances a job retired (a rolling upgrade, a move back to spot): (those to release now, whatever the
    targets; those still in their grace period, placed on nothing). The grace counts from the retirement's
    incident, the Reconfigure that left the retiree out (not from its node's last update, and for the last retiree
    of a completed retirement too: released at once, it broke the survivors' last step)."""
    retired = {i: at for j in jobs for i, at in retired_at(j).items()}
    held = {i for i, at in retired.items() if now - at < RETIRE_GRACE}
    return set(retired) - held, held


def _unconfirmed(snapshot: FleetSnapshot, nodes: Mapping[str, Node], busy: Collection[str]) -> list[str]:
    """The instances that serve no active job but were not confirmed idle: an instance is free only without a node,
    or with a LOST one (its agent said InstanceIdle after its job released it, or it was never started)."""
    return [
        i.instance_id
        for i in snapshot.instances
        if i.instance_id not in busy and (n := nodes.get(i.instance_id)) is not None and n.state is not NodeState.LOST
    ]


def _releasable(
    targets: Mapping[str, int],
    snapshot: FleetSnapshot,
    busy: Collection[str],
    going: Mapping[str, int],
    retired: Collection[str] = (),
) -> list[str]:
    """Per pool, the idle instances beyond its target (those leaving with notice counted apart): oldest listed
    first, and never more than the pool's idle ones; and every idle instance a job retired (the fleet launches a
    fresh one in its place when the target still wants it)."""
    first = [i.instance_id for i in snapshot.instances if i.instance_id in retired and i.instance_id not in busy]
    release = list(first)
    for pool, target in targets.items():
        in_pool = [i.instance_id for i in snapshot.instances if i.pool == pool and i.instance_id not in first]
        idle = [i for i in in_pool if i not in busy]
        excess = len(in_pool) - target - going.get(pool, 0)
        release += idle[: max(0, excess)]
    return release


def plan_reconcile(
    *,
    snapshot: FleetSnapshot,
    jobs: Sequence[Job],
    nodes: Mapping[str, Node],
    pools: Sequence[Pool],
    remembered: FleetState,
    now: datetime,
    policy: ScalingPolicy,
) -> ReconcilePlan:
    """The fleet's targets and releases for the active ``jobs``, given the fleet's ``snapshot``, the ``nodes`` of its
    instances (by instance id; an instance without one serves no job), the ``pools`` on offer and the state the
    scaler ``remembered`` from its last run."""
    # A member its job lost that still runs (its worker failed, a slot process died, it froze) serves nobody: it is
    # released, and the job's replacement launched, instead of counting as the job's capacity while the job waits
    # for a replacement (below min_workers it would wait for ever).
    lost = {i for j in jobs if j.recovery is not None for i in j.recovery.lost}
    occupancy = _occupancy(snapshot, nodes, {j.job_id for j in jobs}, lost)
    pool_of = {i.instance_id: i.pool for i in snapshot.instances}
    placed = occupancy.placed(pool_of)
    # Served in turn (fair_order): the fleet's room goes round the tenants, whatever their jobs are named.
    ordered = fair_order(jobs)
    demand = [_demand(job, placed.get(job.job_id, {}), occupancy.steps.get(job.job_id), now) for job in ordered]
    retired, held = _retired(jobs, now)
    # A retired instance in its grace period is not capacity either (as one leaving with notice): the job's next
    # replacement launches now, not once it is released; unlike a notice it is no interruption of its pool.
    holding = {i: pool_of[i] for i in held if i in pool_of}
    observed = _observed(remembered, snapshot, occupancy.leaving, now, retiring=holding)
    decision = decide_scaling(demand, pools, observed, now, policy)
    going = Counter(occupancy.leaving.values()) + Counter(holding.values())
    tenant_of, unwanted = _tenants_instances(snapshot, nodes, occupancy.busy, jobs)
    release = retired | lost | unwanted
    return ReconcilePlan(
        decision=decision,
        targets={k: n + going[k] for k, n in decision.targets.items()},
        release=tuple(_releasable(decision.targets, snapshot, {*occupancy.busy, *holding}, going, release)),
        held=frozenset(held),
        unconfirmed=frozenset(_unconfirmed(snapshot, nodes, occupancy.busy)),
        busy=occupancy.busy,
        jobs=tuple(jobs),
        now=now,
        retire=move_backs(jobs, decision, placed, pool_of),
        cost_per_hour_by_job=cost_per_hour_by_job(occupancy.busy, pool_of, pools),
        slots_of_type={p.instance_type: p.gpus for p in pools},
        tenant_of=tenant_of,
    )


def _served(node: Node | None, instance: FleetInstance, busy: Collection[str]) -> str | None:
    """The tenant a free instance served (its node LOST: its agent confirmed idle), or None."""
    if instance.instance_id in busy or node is None or node.state is not NodeState.LOST:
        return None
    return node.tenant


def _tenants_instances(
    snapshot: FleetSnapshot, nodes: Mapping[str, Node], busy: Collection[str], jobs: Sequence[Job]
) -> tuple[dict[str, str], set[str]]:
    """The free instances that served a tenant (their job ended, their agent confirmed it runs nothing of it), and
    those of them to release now.

    An instance is never handed from one tenant to another (its disk holds the tenant's checkpoints and data, its
    last job's code ran there): it serves its tenant's next job, if one wants an instance of its type now, or it is
    released, and the fleet launches a fresh one for whoever else needs the capacity. Held idle instead, it would
    count as capacity that the other tenants' jobs can never use."""
    tenant_of = {
        i.instance_id: tenant for i in snapshot.instances if (tenant := _served(nodes.get(i.instance_id), i, busy))
    }
    wanting = {
        (job.tenant, t)
        for job in jobs
        if job.state is JobState.PENDING or job.instances_wanted > 0
        for t in job.spec.instance_types
    }
    type_of = {i.instance_id: i.instance_type for i in snapshot.instances}
    unwanted = {i for i, tenant in tenant_of.items() if (tenant, type_of[i]) not in wanting}
    return tenant_of, unwanted


def cost_per_hour_by_job(
    busy: Mapping[str, str], pool_of: Mapping[str, str], pools: Sequence[Pool]
) -> dict[str, float]:
    """What each job's instances cost per hour at their pools' prices (an instance of a pool not on offer any more
    is counted at its type's on-demand price, the most it can cost)."""
    price = {p.key: p.price_per_hour for p in pools}
    on_demand = {p.instance_type: p.price_per_hour for p in pools if p.market == "on-demand"}
    cost: dict[str, float] = {}
    for instance, job_id in busy.items():
        pool = pool_of.get(instance, "")
        fallback = on_demand.get(pool.split(":")[1], 0.0) if pool.count(":") == 2 else 0.0
        cost[job_id] = round(cost.get(job_id, 0.0) + price.get(pool, fallback), 4)
    return cost


def move_backs(
    jobs: Sequence[Job],
    decision: ScalingDecision,
    placed: Mapping[str, Mapping[str, int]],
    pool_of: Mapping[str, str],
) -> tuple[tuple[str, str], ...]:
    """(job, member) for each RUNNING job (not recovering, not already replacing a member) that holds an on-demand
    worker while the decision gives it more spot workers than it runs: that spot pool has room, so one on-demand
    member retires and a spot worker replaces it through the ring (one per job at a time; the next on a later run)."""
    out = []
    for job in jobs:
        if job.state is not JobState.RUNNING or job.recovery is not None or job.retirement is not None:
            continue
        mine, given = placed.get(job.job_id, {}), decision.placements.get(job.job_id, {})
        spot_room = any(n > mine.get(k, 0) for k, n in given.items() if k.startswith("spot:"))
        on_demand = sorted(i for i in job.members if is_on_demand(pool_of.get(i, "")))
        if spot_room and on_demand:
            out.append((job.job_id, on_demand[0]))
    return tuple(out)


@dataclass(frozen=True)
class PlannedStart:
    """A PENDING job to start: save ``start.job`` from ``start.before``; once saved, put ``nodes``, publish
    ``start.command`` and clear the outbox of ``saved`` (the job as stored)."""

    start: JobStart
    saved: Job
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class Handover:
    """A free instance placed on a running or recovering job: its node, then the job's recovery told."""

    job_id: str
    node: Node


@dataclass(frozen=True)
class Assignments:
    """The work the free instances get, and what to report once it was applied."""

    decision: ScalingDecision
    starts: tuple[PlannedStart, ...]
    handovers: tuple[Handover, ...]
    #: Instances already serving jobs when the run began.
    serving: int
    running_by_pool: dict[str, int]
    cost_per_hour_by_job: dict[str, float] = field(default_factory=dict)

    def report(self, started: Collection[str]) -> ScalingReport:
        """The run's report, ``started`` being the jobs whose start was saved (one that moved meanwhile was not)."""
        done = [s for s in self.starts if s.start.job.job_id in started]
        serving = self.serving + sum(len(s.start.job.members) for s in done)
        return ScalingReport(
            self.decision,
            started=tuple(s.start.job.job_id for s in done),
            replacements=tuple((h.job_id, h.node.instance_id) for h in self.handovers),
            pending_workers=max(0, self.decision.wanted - serving),
            running_by_pool=dict(self.running_by_pool),
            cost_per_hour_by_job=dict(self.cost_per_hour_by_job),
        )


def _planned_start(start: JobStart, now: datetime) -> PlannedStart:
    saved = replace(start.job, revision=start.before.revision + 1)
    updates, _ = plan_node_updates(saved, start.claims, now, lost=(), hooks=None)
    return PlannedStart(start, saved, tuple(updates))


def _on_demand_bought(plan: ReconcilePlan, snapshot: FleetSnapshot) -> dict[str, dict[str, int]]:
    """job id -> on-demand pool -> the instances the decision placed the job on there that it does not run yet."""
    pool_of = {i.instance_id: i.pool for i in snapshot.instances}
    running = Counter((job_id, pool_of.get(i, "")) for i, job_id in plan.busy.items())
    return {
        job_id: {k: n - running[(job_id, k)] for k, n in pools.items() if is_on_demand(k)}
        for job_id, pools in plan.decision.placements.items()
    }


def plan_assignments(plan: ReconcilePlan, snapshot: FleetSnapshot) -> Assignments:
    """Places the plan's jobs on the instances of ``snapshot`` (the fleet as read after the plan was applied) that
    run, serve no job and are not being released."""
    free = [
        FreeInstance(
            i.instance_id,
            i.instance_type,
            i.pool,
            i.host,
            plan.slots_of_type.get(i.instance_type, 1),
            plan.tenant_of.get(i.instance_id),
        )
        for i in snapshot.instances
        if i.state == "running"
        and i.instance_id not in plan.busy
        and i.instance_id not in plan.release
        and i.instance_id not in plan.held
        and i.instance_id not in plan.unconfirmed
    ]
    placement = plan_placement(plan.jobs, free, plan.now, _on_demand_bought(plan, snapshot))
    job_of = {j.job_id: j for j in plan.jobs}
    return Assignments(
        decision=plan.decision,
        starts=tuple(_planned_start(s, plan.now) for s in placement.starts),
        handovers=tuple(Handover(job_id, i.claimed_by(job_of[job_id])) for job_id, i in placement.replacements),
        serving=len(plan.busy),
        running_by_pool=dict(snapshot.fulfilled),
        cost_per_hour_by_job=dict(plan.cost_per_hour_by_job),
    )
