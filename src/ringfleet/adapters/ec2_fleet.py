"""SpotFleetGateway and PriceSource on EC2: one EC2 Fleet (type ``maintain``) per pool, spot prices from EC2 (GPUs
and on-demand prices from the instance catalog).

Each pool (market x instance type x zone) is one fleet, tagged ``ringfleet:stack`` and ``ringfleet:pool``, whose
target capacity is the scaler's decision for that pool: CreateFleet the first time, ModifyFleet after. Fleets are
modified with ``ExcessCapacityTerminationPolicy=no-termination`` and shrink by terminating the idle instances the
scaler names, so EC2 never picks a busy worker to go.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3

from ringfleet.scaling.decisions import Pool, pool_key
from ringfleet.scaling.ports import FleetInstance, FleetSnapshot

if TYPE_CHECKING:
    from ringfleet.scaling.catalog import InstanceCatalog

__all__ = [
    "DEFAULT_INTERRUPTIONS_PER_HOUR",
    "Ec2SpotFleetGateway",
    "Ec2SpotPriceSource",
]

log = logging.getLogger(__name__)

STACK_TAG = "ringfleet:stack"
POOL_TAG = "ringfleet:pool"
_LIVE = ("pending", "running")
#: When nothing better is known (the Spot Advisor's buckets are monthly and not an API): a cautious GPU default.
DEFAULT_INTERRUPTIONS_PER_HOUR = 0.05


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


class Ec2SpotFleetGateway:
    """``SpotFleetGateway`` on EC2 Fleet."""

    def __init__(
        self,
        *,
        stack: str,
        launch_template: str,
        launch_template_version: str = "$Latest",
        ec2_client: Any | None = None,
    ) -> None:
        self.stack = stack
        self.launch_template = launch_template
        #: The deployed scaler's is pinned (WorkerLaunchTemplateVersion): a new AMI or user data reaches the fleet
        #: only through a deploy that names its version.
        self.launch_template_version = launch_template_version
        self.ec2: Any = ec2_client or boto3.client("ec2")

    # -- reading ------------------------------------------------------------------------------------------------------
    def _fleets(self) -> list[dict[str, Any]]:
        fleets: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self.ec2.describe_fleets(**kwargs)
            fleets += [
                f
                for f in page.get("Fleets", [])
                if _tags(f).get(STACK_TAG) == self.stack
                and POOL_TAG in _tags(f)
                and not str(f.get("FleetState", "")).startswith("deleted")
            ]
            if not page.get("NextToken"):
                return fleets
            kwargs["NextToken"] = page["NextToken"]

    def _fleet_instance_ids(self, fleet_id: str) -> list[str]:
        ids: list[str] = []
        kwargs: dict[str, Any] = {"FleetId": fleet_id}
        while True:
            page = self.ec2.describe_fleet_instances(**kwargs)
            ids += [i["InstanceId"] for i in page.get("ActiveInstances", [])]
            if not page.get("NextToken"):
                return ids
            kwargs["NextToken"] = page["NextToken"]

    def _describe(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 200):
            pages = self.ec2.get_paginator("describe_instances").paginate(InstanceIds=list(ids[start : start + 200]))
            for page in pages:
                for reservation in page["Reservations"]:
                    for inst in reservation["Instances"]:
                        out[inst["InstanceId"]] = inst
        return out

    def _read(self) -> tuple[dict[str, list[dict[str, Any]]], list[FleetInstance]]:
        by_pool: dict[str, list[dict[str, Any]]] = {}
        owner: dict[str, str] = {}
        for fleet in self._fleets():
            pool = _tags(fleet)[POOL_TAG]
            by_pool.setdefault(pool, []).append(fleet)
            for iid in self._fleet_instance_ids(fleet["FleetId"]):
                owner[iid] = pool
        details = self._describe(sorted(owner))
        instances = [
            FleetInstance(
                instance_id=iid,
                instance_type=d["InstanceType"],
                pool=owner[iid],
                state=d["State"]["Name"],
                host=d.get("PrivateIpAddress"),
            )
            for iid, d in sorted(details.items())
            if d["State"]["Name"] in _LIVE
        ]
        return by_pool, instances

    def snapshot(self) -> FleetSnapshot:
        by_pool, instances = self._read()
        targets = {
            pool: sum(int(f["TargetCapacitySpecification"]["TotalTargetCapacity"]) for f in fleets)
            for pool, fleets in by_pool.items()
        }
        fulfilled = {pool: sum(1 for i in instances if i.pool == pool) for pool in targets}
        return FleetSnapshot(targets=targets, fulfilled=fulfilled, instances=tuple(instances))

    # -- changing -----------------------------------------------------------------------------------------------------
    def set_targets(self, targets: dict[str, int], *, release: Sequence[str] = ()) -> None:
        by_pool, _ = self._read()
        for pool, target in sorted(targets.items()):
            fleets = by_pool.get(pool, [])
            if not fleets:
                if target > 0:
                    self._create(pool, target)
                continue
            current = sum(int(f["TargetCapacitySpecification"]["TotalTargetCapacity"]) for f in fleets)
            if current != target:
                self._modify(pool, fleets, target)
        if release:
            self.ec2.terminate_instances(InstanceIds=list(release))

    def _create(self, pool: str, target: int) -> list[str]:
        market, instance_type, zone = pool.split(":")
        tags = [{"Key": STACK_TAG, "Value": self.stack}, {"Key": POOL_TAG, "Value": pool}]
        response = self.ec2.create_fleet(
            Type="maintain",
            LaunchTemplateConfigs=[
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateName": self.launch_template,
                        "Version": self.launch_template_version,
                    },
                    "Overrides": [{"InstanceType": instance_type, "AvailabilityZone": zone}],
                }
            ],
            TargetCapacitySpecification={"TotalTargetCapacity": target, "DefaultTargetCapacityType": market},
            SpotOptions={"AllocationStrategy": "price-capacity-optimized"},
            ExcessCapacityTerminationPolicy="no-termination",
            ReplaceUnhealthyInstances=False,
            TagSpecifications=[{"ResourceType": "fleet", "Tags": tags}, {"ResourceType": "instance", "Tags": tags}],
        )
        for error in response.get("Errors", []):
            # Usually InsufficientInstanceCapacity: the fleet stays short and the scaler's next decision sees it.
            log.warning("fleet %s: %s: %s", pool, error.get("ErrorCode"), error.get("ErrorMessage"))
        return [iid for group in response.get("Instances", []) for iid in group.get("InstanceIds", [])]

    def _modify(self, pool: str, fleets: list[dict[str, Any]], target: int) -> None:
        self.ec2.modify_fleet(
            FleetId=fleets[0]["FleetId"],
            TargetCapacitySpecification={"TotalTargetCapacity": target},
            ExcessCapacityTerminationPolicy="no-termination",
        )


class Ec2SpotPriceSource:
    """``PriceSource``: the newest spot price per instance type and zone from EC2; GPUs and on-demand prices from
    the instance catalog (on-demand offered in every zone that has a spot price)."""

    def __init__(
        self,
        *,
        ec2_client: Any | None = None,
        interruptions_per_hour: dict[str, float] | None = None,
    ) -> None:
        self.ec2: Any = ec2_client or boto3.client("ec2")
        self.interruptions = interruptions_per_hour or {}

    def pools(self, catalog: InstanceCatalog, instance_types: set[str]) -> list[Pool]:
        known = sorted(t for t in instance_types if t in catalog)
        if not known:
            return []
        newest: dict[tuple[str, str], tuple[datetime, float]] = {}
        pages = self.ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=known, ProductDescriptions=["Linux/UNIX"], StartTime=datetime.now(UTC)
        )
        for page in pages:
            for entry in page["SpotPriceHistory"]:
                key = (entry["InstanceType"], entry["AvailabilityZone"])
                stamp = entry["Timestamp"]
                if key not in newest or stamp > newest[key][0]:
                    newest[key] = (stamp, float(entry["SpotPrice"]))
        pools = [
            Pool(
                t,
                zone,
                "spot",
                price,
                self.interruptions.get(pool_key("spot", t, zone), DEFAULT_INTERRUPTIONS_PER_HOUR),
                catalog.gpus(t),
            )
            for (t, zone), (_, price) in sorted(newest.items())
        ]
        zones = sorted({z for _, z in newest})
        pools += [Pool(t, z, "on-demand", catalog.on_demand(t), 0.0, catalog.gpus(t)) for t in known for z in zones]
        return pools
