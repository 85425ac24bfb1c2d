"""The local cloud's EC2 Fleet gateway on moto.

``MotoSpotFleetGateway`` is the local cloud's stand-in: moto implements CreateFleet and DeleteFleets but not
ModifyFleet, ignores the zone override and does not tag the instances it launches. It grows a pool by creating
one more fleet for the difference, shrinks it by terminating the named instances, and tags what it launches as
EC2 would; a pool's target there is the instances it has live (moto fills every request at once).

Given a ``capacity`` (the local cloud's ``--spot-traces`` replay), a spot launch beyond what the pool has now is
refused as EC2 Fleet refuses it (``InsufficientInstanceCapacity``, logged): only what fits is launched, and the
pool's target stays at what was asked, its shortfall remembered, so that the scaler sees the pool short of its
target (as a ``maintain`` fleet reports it) until it sets that pool's target again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from ringfleet.adapters.ec2_fleet import POOL_TAG, STACK_TAG, Ec2SpotFleetGateway
from ringfleet.scaling.ports import FleetSnapshot, PriceSource

__all__ = ["CapacityGrant", "MotoSpotFleetGateway", "SpotCapacity", "local_fleet"]

log = logging.getLogger(__name__)
#: Every emulated instance's worker runs on this machine.
LOCAL_HOST = "127.0.0.1"


class CapacityGrant(Protocol):
    @property
    def granted(self) -> int: ...

    @property
    def error_code(self) -> str | None: ...


class SpotCapacity(Protocol):
    """What a pool can launch now (the local cloud's trace replay): ``asked`` more where ``held`` already run."""

    def launch(self, pool: str, held: int, asked: int) -> CapacityGrant: ...


class MotoSpotFleetGateway(Ec2SpotFleetGateway):
    """The local cloud's gateway: ModifyFleet emulated with CreateFleet / TerminateInstances (see the module)."""

    def __init__(
        self,
        *,
        stack: str,
        launch_template: str,
        ec2_client: Any | None = None,
        capacity: SpotCapacity | None = None,
    ) -> None:
        super().__init__(stack=stack, launch_template=launch_template, ec2_client=ec2_client)
        self.capacity = capacity
        #: pool -> instances asked for and refused (the target EC2 would keep above what it launched).
        self.shortfall: dict[str, int] = {}

    def snapshot(self) -> FleetSnapshot:
        by_pool, instances = self._read()
        live = {pool: sum(1 for i in instances if i.pool == pool) for pool in by_pool}
        targets = {pool: live.get(pool, 0) + n for pool, n in self.shortfall.items() if n > 0}
        targets = {**live, **targets}
        # Every emulated instance's worker runs on this machine: moto's private IPs exist nowhere, and a ring
        # must never try to reach them.
        local = tuple(dataclasses.replace(i, host=LOCAL_HOST) for i in instances)
        return FleetSnapshot(targets=targets, fulfilled={p: live.get(p, 0) for p in targets}, instances=local)

    def set_targets(self, targets: dict[str, int], *, release: Sequence[str] = ()) -> None:
        by_pool, instances = self._read()
        live = Counter(i.pool for i in instances)
        for pool, target in sorted(targets.items()):
            self.shortfall.pop(pool, None)
            count = self._granted(pool, live[pool], target - live[pool]) if target > live[pool] else 0
            if count > 0:
                self._launch(pool, count)
        if release:
            self.ec2.terminate_instances(InstanceIds=list(release))
        released = set(release)
        for pool, fleets in by_pool.items():
            if targets.get(pool, 1) == 0 and all(i.instance_id in released for i in instances if i.pool == pool):
                self.ec2.delete_fleets(FleetIds=[f["FleetId"] for f in fleets], TerminateInstances=False)

    def _granted(self, pool: str, held: int, count: int) -> int:
        """How many of ``count`` more instances the pool launches now: all of them, unless the replayed traces'
        capacity refuses some (spot only); the refused ones are remembered as the pool's shortfall."""
        if self.capacity is None or not pool.startswith("spot:"):
            return count
        grant = self.capacity.launch(pool, held, count)
        if grant.granted < count:
            # What EC2 Fleet reports in CreateFleet's Errors: the fleet stays short, the scaler sees it.
            log.warning(
                "fleet %s: %s: %d of %d instances refused (no capacity in the pool now)",
                pool,
                grant.error_code or "InsufficientInstanceCapacity",
                count - grant.granted,
                count,
            )
            self.shortfall[pool] = count - grant.granted
        return grant.granted

    def _launch(self, pool: str, count: int) -> None:
        self._ensure_launch_template()
        before = {f["FleetId"] for f in self._fleets()}
        self._create(pool, count)
        for fleet in self._fleets():
            if fleet["FleetId"] in before:
                continue
            ids = self._fleet_instance_ids(fleet["FleetId"])
            if ids:
                # EC2 would apply the instance TagSpecification; moto does not.
                self.ec2.create_tags(
                    Resources=ids, Tags=[{"Key": STACK_TAG, "Value": self.stack}, {"Key": POOL_TAG, "Value": pool}]
                )

    def _ensure_launch_template(self) -> None:
        # Deploying the stack presupposes the worker launch template (a parameter); the local cloud has none yet.
        found = self.ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [self.launch_template]}]
        )["LaunchTemplates"]
        if not found:
            self.ec2.create_launch_template(
                LaunchTemplateName=self.launch_template, LaunchTemplateData={"ImageId": "ami-12c6146b"}
            )


def local_fleet(stack: str, launch_template: str) -> tuple[MotoSpotFleetGateway, PriceSource]:
    """The scaler's fleet and prices in the local cloud (``bootstrap.provide_fleet``): moto's spot prices are one
    made-up number and it lacks ModifyFleet, so the local market and this gateway stand in. Under ``local up
    --spot-traces DIR`` launches beyond what the replayed traces have now are refused, and the traced type's pools
    are the traces' zones."""
    from ringfleet_local.spot_market import LocalSpotMarket
    from ringfleet_local.spot_traces import TracePriceSource, replay_from_environment

    replay = replay_from_environment(os.environ)
    if replay is not None:
        gateway = MotoSpotFleetGateway(stack=stack, launch_template=launch_template, capacity=replay)
        return gateway, TracePriceSource(replay.market)
    return MotoSpotFleetGateway(stack=stack, launch_template=launch_template), LocalSpotMarket()
