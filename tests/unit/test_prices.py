"""One price table: the scaler on EC2, intake, the local spot market and `ringfleet submit --dry-run` read the same
on-demand prices and GPU counts (``ringfleet.scaling.prices``), and no other module writes its own."""

from __future__ import annotations

import re

import pytest
from ringfleet_local.spot_market import LOCAL_SPOT_MARKET

from ringfleet.scaling.prices import INSTANCE_GPUS, ON_DEMAND_PRICES
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

#: A price or GPU count keyed by an instance type name, as a table writes it: ``"g5.xlarge": 1.006``.
_TABLE_ENTRY = re.compile(r"""["'][a-z][a-z0-9-]*\.[a-z0-9]+["']\s*:\s*[0-9]""")


def test_every_priced_instance_type_has_its_gpus() -> None:
    assert set(ON_DEMAND_PRICES) == set(INSTANCE_GPUS)
    assert all(price > 0 for price in ON_DEMAND_PRICES.values())
    assert all(gpus >= 1 for gpus in INSTANCE_GPUS.values())


def test_the_local_market_sells_the_table_s_instance_types_on_demand_at_the_table_s_price() -> None:
    on_demand = {(p.instance_type, p.price_per_hour, p.gpus) for p in LOCAL_SPOT_MARKET if p.market == "on-demand"}
    assert on_demand == {(t, price, INSTANCE_GPUS[t]) for t, price in ON_DEMAND_PRICES.items()}
    assert {p.instance_type for p in LOCAL_SPOT_MARKET} == set(ON_DEMAND_PRICES)


def test_no_other_module_writes_a_price_table_of_its_own() -> None:
    table = ROOT / "src" / "ringfleet" / "scaling" / "prices.py"
    writers = [
        str(path.relative_to(ROOT))
        for folder in ("src", "tools", "bench", "services", "training_worker")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != table and _TABLE_ENTRY.search(path.read_text())
    ]
    assert writers == [], "import ringfleet.scaling.prices instead"
