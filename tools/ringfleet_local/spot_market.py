"""The local cloud's spot market: a price and interruption table per pool, since moto's spot prices are fake.

moto answers ``describe_spot_price_history`` with one made-up price for every instance type and zone, and never
interrupts anything, so the scaler would have nothing to choose between. This table stands in for the real market
(spot prices in the shape of us-east-1's GPU spot prices, a little more volatile than the Spot Advisor's monthly
buckets suggest for GPUs; on-demand ones from the one price table, ``ringfleet.scaling.prices``); the fleet scaler
reads it through the same ``PriceSource`` port it reads EC2 with, and ``bench/fleet_cost.py`` simulates a day on it.
Pure data: no moto, no boto3.
"""

from __future__ import annotations

from ringfleet.scaling.decisions import Pool
from ringfleet.scaling.prices import INSTANCE_GPUS, ON_DEMAND_PRICES

__all__ = ["LOCAL_SPOT_MARKET", "LocalSpotMarket"]

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
    ("g6.xlarge", "us-east-1a"): (0.262, 0.05),
    ("g6.xlarge", "us-east-1b"): (0.281, 0.03),
    ("g6.xlarge", "us-east-1c"): (0.275, 0.08),
    ("p3.2xlarge", "us-east-1a"): (0.918, 0.06),
    ("p3.2xlarge", "us-east-1b"): (0.975, 0.03),
    ("p3.2xlarge", "us-east-1c"): (1.010, 0.02),
}


def _pools() -> tuple[Pool, ...]:
    pools = [Pool(t, z, "spot", price, rate, INSTANCE_GPUS[t]) for (t, z), (price, rate) in sorted(_SPOT.items())]
    pools += [
        Pool(t, z, "on-demand", ON_DEMAND_PRICES[t], 0.0, INSTANCE_GPUS[t])
        for t in sorted(ON_DEMAND_PRICES)
        for z in ZONES
    ]
    return tuple(pools)


#: Every pool of the local market: spot and on-demand, each instance type in each zone.
LOCAL_SPOT_MARKET: tuple[Pool, ...] = _pools()


class LocalSpotMarket:
    """``PriceSource`` over the table: the pools offering the instance types asked for."""

    def __init__(self, pools: tuple[Pool, ...] = LOCAL_SPOT_MARKET) -> None:
        self._pools = pools

    def pools(self, instance_types: set[str]) -> list[Pool]:
        return [p for p in self._pools if p.instance_type in instance_types]
