"""The fleet scaler's shell: gather jobs, fleet and prices -> plan_reconcile and plan_assignments -> apply them.

Every trigger (a job admitted or finished, an instance running, the backlog alarm, the minute's tick) runs the
same reconciliation, so a lost or duplicated signal costs at most a minute: each run decides from what is, not
from what the signal said.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ringfleet.core.nodes import Node, NodeState
from ringfleet.scaling.decisions import ScalingPolicy
from ringfleet.scaling.reconcile import instance_types_in_play, plan_assignments, plan_reconcile

if TYPE_CHECKING:
    from ringfleet.core.ports import CommandPublisher, JobRepository, NodeRepository
    from ringfleet.scaling.catalog import InstanceCatalog
    from ringfleet.scaling.ports import PriceSource, ScalingStateStore, SpotFleetGateway
    from ringfleet.scaling.reconcile import Handover, PlannedStart, ScalingReport

__all__ = ["ScalerService", "policy_from_env"]

log = logging.getLogger(__name__)


def policy_from_env(env: Mapping[str, str] | None = None) -> ScalingPolicy:
    """The policy with any of SCALING_MAX_POOL_SHARE, SCALING_FLEET_MAX_WORKERS, SCALING_TENANT_MAX_WORKERS,
    SCALING_IDLE_TIMEOUT_SECONDS, SCALING_COOLDOWN_SECONDS, SCALING_CAPACITY_GRACE_SECONDS,
    SCALING_REFUSAL_BACKOFF_SECONDS overriding its defaults."""
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
        capacity_grace=timedelta(seconds=num("SCALING_CAPACITY_GRACE_SECONDS", base.capacity_grace.total_seconds())),
        refusal_backoff=timedelta(seconds=num("SCALING_REFUSAL_BACKOFF_SECONDS", base.refusal_backoff.total_seconds())),
    )


class ScalerService:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        nodes: NodeRepository,
        fleet: SpotFleetGateway,
        prices: PriceSource,
        catalog: Callable[[], InstanceCatalog],
        state: ScalingStateStore,
        publisher: CommandPublisher,
        on_capacity_arrived: Callable[[str, Node], object] | None = None,
        on_retire: Callable[[str, str], object] | None = None,
        policy: ScalingPolicy | None = None,
    ) -> None:
        self.jobs = jobs
        self.nodes = nodes
        self.fleet = fleet
        self.prices = prices
        #: The instance catalog (GPUs and on-demand prices per type), read once per run.
        self.catalog = catalog
        self.state = state
        self.publisher = publisher
        #: Tells a job's recovery that an instance was placed on it (the job's id and the instance's node as placed:
        #: its host and slots, which the ring's next Reconfigure needs).
        self.on_capacity_arrived = on_capacity_arrived
        #: Tells a job's recovery to replace an on-demand member with a spot worker (``plan.retire``).
        self.on_retire = on_retire
        self.policy = policy or ScalingPolicy()

    def reconcile(self, now: datetime) -> ScalingReport:
        snapshot = self.fleet.snapshot()
        active = self.jobs.list_active()
        nodes = {i.instance_id: n for i in snapshot.instances if (n := self.nodes.get(i.instance_id)) is not None}
        types = instance_types_in_play(active, snapshot)
        pools = self.prices.pools(self.catalog(), types) if types else []
        remembered, revision = self.state.load()
        plan = plan_reconcile(
            snapshot=snapshot, jobs=active, nodes=nodes, pools=pools, remembered=remembered, now=now, policy=self.policy
        )
        # The decision is saved before it is applied, and applied only by the run that saved it: two runs at once
        # (a retry overlapping, the local cloud's concurrent triggers) never apply two decisions. A failed apply
        # after the save is decided again by the next run, which reads the fleet's targets as they are.
        if not self.state.save(plan.state, revision=revision, report=plan.report()):
            log.warning(
                "scaler run refused: another run saved the scaler's state since this one read it (revision %d); "
                "its decision stands, this run changes nothing (the next trigger or tick decides from what is)",
                revision,
            )
            return replace(plan_assignments(plan, snapshot).report(()), replacements=())
        if plan.changes_fleet:
            self.fleet.set_targets(plan.targets, release=plan.release)
        work = plan_assignments(plan, self.fleet.snapshot() if plan.rereads_fleet else snapshot)
        started = [s.start.job.job_id for s in work.starts if self._start(s, nodes)]
        for handover in work.handovers:
            self._hand_over(handover, nodes.get(handover.node.instance_id))
        if self.on_retire is not None:
            for job_id, instance in plan.retire:
                self.on_retire(job_id, instance)
        return work.report(started)

    def _hand_over(self, handover: Handover, read: Node | None) -> None:
        """Places the instance on its job if its node is still as this run ``read`` it, then tells the job's
        recovery that capacity arrived."""
        if not self.nodes.place(handover.node, over=read):
            log.warning(
                "placement refused: instance %s changed since this run read it (placed by another run?); "
                "not handed to job %s",
                handover.node.instance_id,
                handover.job_id,
            )
            return
        if self.on_capacity_arrived is not None:
            self.on_capacity_arrived(handover.job_id, handover.node)

    def _start(self, planned: PlannedStart, read: Mapping[str, Node]) -> bool:
        """Applies one job start; False when an instance was placed elsewhere meanwhile or the job moved (cancelled?).

        Its instances are claimed first (a PLACED node each, written only if still as this run ``read`` it), the job
        saved after: a job never starts on an instance another run placed. A start refused releases what it
        claimed (LOST, free for the next run's placement).
        """
        start = planned.start
        job_id = start.job.job_id
        claimed: list[Node] = []
        for claim in start.claims:
            if not self.nodes.place(claim, over=read.get(claim.instance_id)):
                log.warning("start of job %s refused: instance %s was placed by another run", job_id, claim.instance_id)
                break
            claimed.append(claim)
        else:
            if self.jobs.save(start.job, decided_from=start.before):
                for node in planned.nodes:
                    self.nodes.put(node)
                self.publisher.publish([start.command])
                self.jobs.save(replace(planned.saved, outbox=()), decided_from=planned.saved)
                return True
            log.info("job %s moved since this run read it: not started here", job_id)
        for claim in claimed:
            self.nodes.place(replace(claim, state=NodeState.LOST), over=claim)
        return False
