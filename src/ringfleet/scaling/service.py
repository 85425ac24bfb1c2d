"""The fleet scaler's shell: gather jobs, fleet and prices -> decide_scaling and plan_placement -> apply them.

Every trigger (a job admitted or finished, an instance running, the backlog alarm, the minute's tick) runs the
same reconciliation, so a lost or duplicated signal costs at most a minute: each run decides from what is, not
from what the signal said.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ringfleet.core.jobs import JobState
from ringfleet.core.nodes import Node, NodeState
from ringfleet.recovery.decisions import plan_node_updates
from ringfleet.scaling.decisions import JobDemand, ScalingDecision, ScalingPolicy, decide_scaling, observe_fleet
from ringfleet.scaling.placement import FreeInstance, plan_placement

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.core.ports import CommandPublisher, JobRepository, NodeRepository
    from ringfleet.scaling.ports import PriceSource, ScalingStateStore, SpotFleetGateway

__all__ = ["ScalerService", "ScalingReport", "policy_from_env", "remaining_hours"]

log = logging.getLogger(__name__)


def policy_from_env(env: Mapping[str, str] | None = None) -> ScalingPolicy:
    """The policy with any of SCALING_MAX_POOL_SHARE, SCALING_FLEET_MAX_WORKERS, SCALING_TENANT_MAX_WORKERS,
    SCALING_IDLE_TIMEOUT_SECONDS, SCALING_COOLDOWN_SECONDS overriding its defaults."""
    env = os.environ if env is None else env
    base = ScalingPolicy()

    def num(name: str, default: float) -> float:
        return float(env.get(name) or default)

    return replace(
        base,
        max_pool_share=num("SCALING_MAX_POOL_SHARE", base.max_pool_share),
        fleet_max_workers=int(num("SCALING_FLEET_MAX_WORKERS", base.fleet_max_workers)),
        tenant_max_workers=int(num("SCALING_TENANT_MAX_WORKERS", base.tenant_max_workers)),
        idle_timeout=timedelta(seconds=num("SCALING_IDLE_TIMEOUT_SECONDS", base.idle_timeout.total_seconds())),
        scale_in_cooldown=timedelta(seconds=num("SCALING_COOLDOWN_SECONDS", base.scale_in_cooldown.total_seconds())),
    )


def remaining_hours(job: Job, step: int | None, now: datetime) -> float | None:
    """Hours of training ``job`` has left at ``max_workers``, estimated from what the control plane knows: the
    total in its ``steps`` hyperparameter (the convention of the examples' scripts), the newest step its workers
    reported (heartbeats) or checkpointed, and the pace since it was admitted, scaled from the workers it has to
    its maximum. Counting from admission includes provisioning, so the pace is understated and the estimate errs
    long (towards on-demand, towards the deadline). None when there is no honest estimate: no ``steps`` total, no
    step reported yet, or no admission time; the deadline then does not steer the job (it takes on-demand when spot
    is short, as a job without a deadline)."""
    total = job.spec.hyperparameters.get("steps")
    if isinstance(total, bool) or not isinstance(total, int | float) or total <= 0 or job.created_at is None:
        return None
    done = max(step or 0, job.durable_checkpoint.step if job.durable_checkpoint is not None else 0)
    elapsed = (now - job.created_at).total_seconds() / 3600
    if done <= 0 or elapsed <= 0:
        return None
    if done >= total:
        return 0.0
    workers = max(1, len(job.members))
    return (total - done) * elapsed / done * workers / max(workers, job.spec.max_workers)


@dataclass(frozen=True)
class ScalingReport:
    decision: ScalingDecision
    started: tuple[str, ...] = ()
    replacements: tuple[tuple[str, str], ...] = ()
    #: Workers wanted by jobs but not yet running for them (the backlog alarm's metric).
    pending_workers: int = 0
    running_by_pool: dict[str, int] = field(default_factory=dict)

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
        }


class ScalerService:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        nodes: NodeRepository,
        fleet: SpotFleetGateway,
        prices: PriceSource,
        state: ScalingStateStore,
        publisher: CommandPublisher,
        on_capacity_arrived: Callable[[str, str, str | None], object] | None = None,
        policy: ScalingPolicy | None = None,
    ) -> None:
        self.jobs = jobs
        self.nodes = nodes
        self.fleet = fleet
        self.prices = prices
        self.state = state
        self.publisher = publisher
        self.on_capacity_arrived = on_capacity_arrived
        self.policy = policy or ScalingPolicy()

    def reconcile(self, now: datetime) -> ScalingReport:
        snapshot = self.fleet.snapshot()
        active = self.jobs.list_active()
        active_ids = {j.job_id for j in active}
        busy: dict[str, str] = {}
        # Instances leaving with notice still run (finishing their emergency checkpoint) but are not capacity: they
        # are left out of the decision and added back when applying it, so that their replacements launch now.
        leaving: dict[str, str] = {}  # instance -> pool
        # The newest step each job's workers reported in their heartbeats: its progress, for its deadline.
        steps: dict[str, int] = {}
        for inst in snapshot.instances:
            node = self.nodes.get(inst.instance_id)
            if node is not None and node.state != NodeState.LOST and node.job_id in active_ids:
                busy[inst.instance_id] = node.job_id
                if node.last_step is not None:
                    steps[node.job_id] = max(steps.get(node.job_id, 0), node.last_step)
                if node.state == NodeState.LEAVING:
                    leaving[inst.instance_id] = inst.pool
        pool_of = {i.instance_id: i.pool for i in snapshot.instances}
        demand = []
        for job in active:
            placed: dict[str, int] = {}
            for iid, jid in busy.items():
                if jid == job.job_id and iid not in leaving:
                    placed[pool_of[iid]] = placed.get(pool_of[iid], 0) + 1
            spec = job.spec
            deadline = None
            if spec.deadline_hours is not None and job.created_at is not None:
                deadline = job.created_at + timedelta(hours=spec.deadline_hours)
            demand.append(
                JobDemand(
                    job.job_id,
                    job.tenant,
                    spec.min_workers,
                    spec.max_workers,
                    spec.gpus_per_worker,
                    tuple(spec.instance_types),
                    spec.budget_usd_per_hour,
                    placed,
                    deadline=deadline,
                    remaining_hours=remaining_hours(job, steps.get(job.job_id), now) if deadline else None,
                )
            )
        types = {t for j in active for t in j.spec.instance_types} | {k.split(":")[1] for k in snapshot.targets}
        pools = self.prices.pools(types) if types else []
        remembered, revision = self.state.load()
        going = Counter(leaving.values())
        # Interruption rates are learned per pool: every notice counted once, over the pool-hours run meanwhile.
        new_notices = [i for i in leaving if i not in remembered.noticed]
        fleet_state = observe_fleet(
            replace(
                remembered,
                targets={k: max(0, n - going[k]) for k, n in snapshot.targets.items()},
                fulfilled={k: max(0, n - going[k]) for k, n in snapshot.fulfilled.items()},
                noticed=frozenset(i for i in remembered.noticed | set(leaving) if i in pool_of),
            ),
            now,
            running=snapshot.fulfilled,
            interrupted=Counter(leaving[i] for i in new_notices),
        )
        decision = decide_scaling(demand, pools, fleet_state, now, self.policy)
        release: list[str] = []
        for pool, target in decision.targets.items():
            idle = [i.instance_id for i in snapshot.instances if i.pool == pool and i.instance_id not in busy]
            excess = sum(1 for i in snapshot.instances if i.pool == pool) - target - going[pool]
            release += idle[: max(0, excess)]
        if decision.changed or release:
            applied = {k: n + going[k] for k, n in decision.targets.items()}
            self.fleet.set_targets(applied, release=release)
        report_base = ScalingReport(decision)
        if not self.state.save(decision.state, revision=revision, report=report_base.as_dict()):
            log.info("another scaler run saved first; its decision stands and this one's targets were the same input")

        if decision.changed:
            # What just launched may already run (the local cloud fills at once): place it in this same run.
            snapshot = self.fleet.snapshot()
        free = [
            FreeInstance(i.instance_id, i.instance_type, i.pool, i.host)
            for i in snapshot.instances
            if i.state == "running" and i.instance_id not in busy and i.instance_id not in release
        ]
        placement = plan_placement([j for j in active if j.state is not JobState.PROVISIONING], free, now)
        started = []
        for start in placement.starts:
            if not self.jobs.save(start.job, decided_from=start.before):
                continue  # the job moved meanwhile (cancelled?): its instances stay free for the next run
            stored = replace(start.job, revision=start.before.revision + 1)
            known = [Node(i, start.job.job_id, host=h) for i, h in start.hosts.items()]
            updates, _ = plan_node_updates(stored, known, now, lost=(), hooks=None)
            for node in updates:
                self.nodes.put(node)
            self.publisher.publish([start.command])
            self.jobs.save(replace(stored, outbox=()), decided_from=stored)
            started.append(start.job.job_id)
        for job_id, free_instance in placement.replacements:
            self.nodes.put(Node(free_instance.instance_id, job_id, state=NodeState.PLACED, host=free_instance.host))
            if self.on_capacity_arrived is not None:
                self.on_capacity_arrived(job_id, free_instance.instance_id, free_instance.host)
        running = {p: n for p, n in snapshot.fulfilled.items()}
        serving = len(busy) + sum(len(s.job.members) for s in placement.starts if s.job.job_id in started)
        return ScalingReport(
            decision,
            started=tuple(started),
            replacements=tuple((j, i.instance_id) for j, i in placement.replacements),
            pending_workers=max(0, decision.wanted - serving),
            running_by_pool=running,
        )
