"""Scaling's ports: the spot and on-demand fleets (EC2 Fleet), their prices, the scaler's remembered state, and the
instance catalog with the AWS APIs it is read from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ringfleet.scaling.catalog import GpuSpec, InstanceCatalog
    from ringfleet.scaling.decisions import FleetState, Pool

__all__ = [
    "FleetInstance",
    "FleetSnapshot",
    "InstanceCatalogStore",
    "InstanceTypeGateway",
    "OnDemandPriceGateway",
    "PriceSource",
    "ScalingStateStore",
    "SpotFleetGateway",
]


@dataclass(frozen=True)
class FleetInstance:
    """A running (or launching) instance of the stack's fleets."""

    instance_id: str
    instance_type: str
    #: ``spot:g5.xlarge:us-east-1a`` (see ringfleet.scaling.decisions.pool_key).
    pool: str
    state: str
    host: str | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    """The stack's fleets as EC2 reports them: target and launched capacity per pool, and the instances."""

    targets: dict[str, int]
    fulfilled: dict[str, int]
    instances: tuple[FleetInstance, ...]


class SpotFleetGateway(Protocol):
    def snapshot(self) -> FleetSnapshot: ...

    def set_targets(self, targets: dict[str, int], *, release: Sequence[str] = ()) -> None:
        """Sets each pool's target capacity (EC2 Fleet ``maintain``); ``release`` names idle instances to terminate
        when a pool shrinks, so that a shrinking fleet never takes a busy worker."""
        ...


class PriceSource(Protocol):
    def pools(self, catalog: InstanceCatalog, instance_types: set[str]) -> list[Pool]:
        """Spot and on-demand pools offering those of these instance types the catalog lists, with prices and
        interruption rates; each pool's GPUs and on-demand price are the catalog's."""
        ...


class ScalingStateStore(Protocol):
    def load(self) -> tuple[FleetState, int]:
        """The scaler's remembered state and its revision (0 when none was saved)."""
        ...

    def save(self, state: FleetState, *, revision: int, report: dict[str, object]) -> bool:
        """Stores the state at ``revision + 1`` if still at ``revision``; False when another scaler run won."""
        ...


class InstanceTypeGateway(Protocol):
    def gpu_specs(self, instance_types: Sequence[str]) -> dict[str, GpuSpec]:
        """The GPUs of each of these instance types that has any (EC2 DescribeInstanceTypes); an instance type EC2
        does not know raises."""
        ...


class OnDemandPriceGateway(Protocol):
    def on_demand_prices(self, instance_types: Sequence[str]) -> dict[str, float]:
        """On-demand Linux $ per instance-hour in the fleet's region of those types that have one (Pricing API)."""
        ...


class InstanceCatalogStore(Protocol):
    def load(self) -> InstanceCatalog | None:
        """The stored catalog; None before its first refresh."""
        ...

    def save(self, catalog: InstanceCatalog) -> bool:
        """Stores the catalog unless a newer one (a later ``refreshed_at``) is stored; False then."""
        ...
