"""The one price table: the instance types the fleet can run on, their on-demand price and their GPUs.

The scaler prices EC2's spot pools against it (``adapters.ec2_fleet``), intake admits only jobs whose instance
types it lists, and the local cloud's spot market and ``ringfleet submit --dry-run`` read it too. Pure data.
"""

from __future__ import annotations

__all__ = ["INSTANCE_GPUS", "ON_DEMAND_PRICES"]

#: On-demand $ per instance-hour in us-east-1 (the Pricing API is global and slow; these change a few times a year).
ON_DEMAND_PRICES: dict[str, float] = {"g4dn.xlarge": 0.526, "g5.xlarge": 1.006, "g6.xlarge": 0.805, "p3.2xlarge": 3.06}
#: GPUs per instance.
INSTANCE_GPUS: dict[str, int] = {"g4dn.xlarge": 1, "g5.xlarge": 1, "g6.xlarge": 1, "p3.2xlarge": 1}
