"""The instance catalog's shell: ask EC2 and the Pricing API about the fleet's instance types -> catalog_from_aws ->
store it; and read it back for intake, the scaler and the CLI.

The catalog function refreshes it on a schedule. A reader that finds none stored yet (a stack deployed minutes
ago, a fresh local cloud) refreshes it once itself, so no job is refused for want of a first scheduled run.
Refreshing is safe to repeat: the same answers make the same catalog, and a refresh never replaces a newer one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ringfleet.scaling.catalog import InstanceCatalog, catalog_from_aws

if TYPE_CHECKING:
    from datetime import datetime

    from ringfleet.core.ports import Clock
    from ringfleet.scaling.ports import InstanceCatalogStore, InstanceTypeGateway, OnDemandPriceGateway

__all__ = ["InstanceCatalogService", "instance_types_from_env"]

log = logging.getLogger(__name__)

#: The instance types the fleet may launch, comma-separated (template.yaml: the WorkerInstanceTypes parameter, the
#: same list the fleet scaler's IAM policy allows to launch).
INSTANCE_TYPES_ENV = "WORKER_INSTANCE_TYPES"


def instance_types_from_env(value: str | None) -> tuple[str, ...]:
    """The instance types of ``WORKER_INSTANCE_TYPES``; none is a configuration error that says where to set them."""
    types = tuple(sorted({t.strip() for t in (value or "").split(",") if t.strip()}))
    if not types:
        raise RuntimeError(f"{INSTANCE_TYPES_ENV} is not set: the WorkerInstanceTypes parameter of template.yaml")
    return types


class InstanceCatalogService:
    def __init__(
        self,
        *,
        instance_types: Sequence[str],
        ec2: InstanceTypeGateway,
        pricing: OnDemandPriceGateway,
        store: InstanceCatalogStore,
        clock: Clock,
    ) -> None:
        #: The types the catalog covers: the ones the fleet may launch.
        self.instance_types = tuple(instance_types)
        self.ec2 = ec2
        self.pricing = pricing
        self.store = store
        self.clock = clock

    def refresh(self, now: datetime) -> InstanceCatalog:
        """Reads the instance types' GPUs and on-demand prices from AWS and stores the catalog as of ``now``.

        A newer catalog already stored (a later tick's) stays, and is what this returns."""
        gpus = self.ec2.gpu_specs(self.instance_types)
        prices = self.pricing.on_demand_prices(sorted(gpus))
        catalog = catalog_from_aws(self.instance_types, gpus, prices, now)
        for name, why in catalog.left_out.items():
            log.warning("instance type %s is left out of the catalog: %s", name, why)
        if not self.store.save(catalog):
            log.info("a catalog newer than %s is stored; it stays", now.isoformat())
            return self.store.load() or catalog
        return catalog

    def current(self) -> InstanceCatalog:
        """The stored catalog, refreshed now if none is stored yet."""
        return self.store.load() or self.refresh(self.clock.now())
