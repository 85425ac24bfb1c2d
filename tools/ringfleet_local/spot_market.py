"""The local cloud's spot market: a spot price and interruption table per pool, since moto's spot prices are fake.

moto answers ``describe_spot_price_history`` with one made-up price for every instance type and zone, and never
interrupts anything, so the scaler would have nothing to choose between. This table stands in for the real spot
market (prices in the shape of us-east-1's GPU spot prices, a little more volatile than the Spot Advisor's monthly
buckets suggest for GPUs); GPUs and on-demand prices are the instance catalog's, as on EC2. The fleet scaler reads
it through the same ``PriceSource`` port it reads EC2 with, and ``bench/fleet_cost.py`` simulates a day on it.
No moto server, no boto3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ringfleet.scaling.decisions import Pool
from ringfleet_local.catalog import local_catalog

if TYPE_CHECKING:
    from ringfleet.scaling.catalog import InstanceCatalog

__all__ = ["LOCAL_SPOT_MARKET", "LocalSpotMarket", "market_pools"]

ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")


#: (instance type, zone) -> (spot $ per hour, interruptions per instance-hour). The cheapest pools are the
#: most contended and so the most interrupted, as on the real market.
_SPOT = {
    ("g4dn.xlarge", "us-east-1a"): (0.158, 0.20),
    ("g4dn.xlarge", "us-east-1b"): (0.171, 0.04),
    ("g4dn.xlarge", "us-east-1c"): (0.189, 0.02),
    ("g5.xlarge", "us-east-1a"): (0.312, 0.12),
    ("g5.xlarge", "us-east-1b"): (0.338, 0.03),
    ("g5.xlarge", "us-east-1c"): (0.352, 0.02),
    ("g5.12xlarge", "us-east-1a"): (1.871, 0.08),
    ("g5.12xlarge", "us-east-1b"): (2.042, 0.04),
    ("g5.12xlarge", "us-east-1c"): (2.215, 0.03),
    ("g6.xlarge", "us-east-1a"): (0.262, 0.05),
    ("g6.xlarge", "us-east-1b"): (0.281, 0.03),
    ("g6.xlarge", "us-east-1c"): (0.275, 0.08),
    ("p3.2xlarge", "us-east-1a"): (0.918, 0.06),
    ("p3.2xlarge", "us-east-1b"): (0.975, 0.03),
    ("p3.2xlarge", "us-east-1c"): (1.010, 0.02),
    ("p4d.24xlarge", "us-east-1a"): (11.57, 0.15),
    ("p4d.24xlarge", "us-east-1b"): (12.98, 0.08),
    ("p4d.24xlarge", "us-east-1c"): (14.41, 0.05),
}


def market_pools(catalog: InstanceCatalog, instance_types: Iterable[str]) -> list[Pool]:
    """The local market's pools of those ``instance_types`` the catalog lists: spot ones from the table (a type it
    has no row for has none), on-demand ones in every zone at the catalog's price; GPUs are the catalog's."""
    wanted = {t for t in instance_types if t in catalog}
    pools = [
        Pool(t, z, "spot", price, rate, catalog.gpus(t))
        for (t, z), (price, rate) in sorted(_SPOT.items())
        if t in wanted
    ]
    pools += [
        Pool(t, z, "on-demand", catalog.on_demand(t), 0.0, catalog.gpus(t)) for t in sorted(wanted) for z in ZONES
    ]
    return pools


#: Every pool of the local market, with the local cloud's catalog: spot and on-demand, each type in each zone.
LOCAL_SPOT_MARKET: tuple[Pool, ...] = tuple(market_pools(local_catalog(), local_catalog().names()))


class LocalSpotMarket:
    """``PriceSource`` over the table: the pools offering the instance types asked for."""

    def pools(self, catalog: InstanceCatalog, instance_types: set[str]) -> list[Pool]:
        return market_pools(catalog, instance_types)
