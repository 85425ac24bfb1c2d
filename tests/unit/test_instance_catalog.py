"""The instance catalog's pure part: DescribeInstanceTypes pages and Pricing API price lists become catalog entries,
and the codebase holds one price table at most (the local cloud's stand-in for the Pricing API)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from ringfleet_local.catalog import LOCAL_ON_DEMAND_PRICES, get_products, local_catalog
from ringfleet_local.spot_market import LOCAL_SPOT_MARKET, market_pools

from ringfleet.intake.service import check_instance_types
from ringfleet.scaling.catalog import (
    GpuSpec,
    InstanceCatalog,
    catalog_from_aws,
    gpu_specs_from_pages,
    on_demand_prices_from_price_list,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 2, 14, 31, tzinfo=UTC)


def described(name: str, gpus: list[tuple[str, int, int]] | None) -> dict[str, Any]:
    """An InstanceTypes entry as DescribeInstanceTypes returns it (the fields around GpuInfo trimmed)."""
    entry: dict[str, Any] = {"InstanceType": name, "MemoryInfo": {"SizeInMiB": 16384}, "VCpuInfo": {"DefaultVCpus": 4}}
    if gpus is not None:
        entry["GpuInfo"] = {
            "Gpus": [
                {"Name": model, "Manufacturer": "NVIDIA", "Count": count, "MemoryInfo": {"SizeInMiB": memory}}
                for model, count, memory in gpus
            ],
            "TotalGpuMemoryInMiB": sum(count * memory for _, count, memory in gpus),
        }
    return entry


def price_list_entry(instance_type: str, usd: str, **attributes: str) -> str:
    """A GetProducts PriceList entry in the Pricing API's aws_v1 format (JSON text, as the API returns it)."""
    attrs = {
        "instanceType": instance_type,
        "regionCode": "us-east-1",
        "location": "US East (N. Virginia)",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
        **attributes,
    }
    return json.dumps(
        {
            "product": {"productFamily": "Compute Instance", "attributes": attrs, "sku": "ABC123"},
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    "ABC123.JRTCKXETXF": {
                        "priceDimensions": {
                            "ABC123.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": usd},
                                "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                            }
                        },
                        "sku": "ABC123",
                        "effectiveDate": "2025-06-01T00:00:00Z",
                    }
                }
            },
        }
    )


def test_describe_instance_types_pages_give_gpu_count_and_memory_per_gpu() -> None:
    pages = [
        {"InstanceTypes": [described("p4d.24xlarge", [("A100", 8, 40960)]), described("c5.xlarge", None)]},
        {"InstanceTypes": [described("g5.12xlarge", [("A10G", 4, 22888)])], "NextToken": None},
    ]
    specs = gpu_specs_from_pages(pages)
    # then the GPU types are there with their count and one GPU's memory; a type with no GPUs is not
    assert specs == {"p4d.24xlarge": GpuSpec(8, 40960, "A100"), "g5.12xlarge": GpuSpec(4, 22888, "A10G")}


def test_an_instance_with_two_gpu_models_counts_them_all_and_takes_the_smaller_memory() -> None:
    specs = gpu_specs_from_pages([{"InstanceTypes": [described("x.big", [("A", 2, 16384), ("B", 1, 8192)])]}])
    assert specs == {"x.big": GpuSpec(3, 8192, "A+B")}


def test_a_price_list_gives_the_hourly_on_demand_linux_price_of_the_region() -> None:
    entries = [
        price_list_entry("g5.xlarge", "1.0060000000"),
        # other regions, operating systems, reservations and $0 entries are not the on-demand price
        price_list_entry("g5.xlarge", "1.2120000000", regionCode="eu-west-1"),
        price_list_entry("g5.xlarge", "1.8000000000", operatingSystem="Windows"),
        price_list_entry("g5.xlarge", "0.0000000000", capacitystatus="AllocatedCapacityReservation"),
        price_list_entry("p4d.24xlarge", "0.0000000000"),
        price_list_entry("p3.2xlarge", "3.0600000000"),
    ]
    assert on_demand_prices_from_price_list(entries, "us-east-1") == {"g5.xlarge": 1.006, "p3.2xlarge": 3.06}


def test_the_catalog_lists_the_asked_types_with_gpus_and_a_price_and_says_why_it_left_out_the_others() -> None:
    gpus = {"p4d.24xlarge": GpuSpec(8, 40960, "A100"), "g5.12xlarge": GpuSpec(4, 22888, "A10G")}
    prices = {"p4d.24xlarge": 32.7726, "c5.xlarge": 0.17}
    catalog = catalog_from_aws(["p4d.24xlarge", "g5.12xlarge", "c5.xlarge"], gpus, prices, NOW)
    assert catalog.names() == ["p4d.24xlarge"]
    assert (catalog.gpus("p4d.24xlarge"), catalog.on_demand("p4d.24xlarge")) == (8, 32.7726)
    assert set(catalog.left_out) == {"g5.12xlarge", "c5.xlarge"}
    assert "price" in catalog.left_out["g5.12xlarge"] and "GPUs" in catalog.left_out["c5.xlarge"]
    # and it is stored and read back as it was
    assert InstanceCatalog.from_json(catalog.to_json()) == catalog


def test_an_unknown_type_is_refused_naming_the_catalog_s_types() -> None:
    catalog = local_catalog(["g5.12xlarge", "p4d.24xlarge"])
    why = check_instance_types(["p9.mega"], catalog.names())
    assert why is not None and "p9.mega" in why and "g5.12xlarge, p4d.24xlarge" in why


def test_the_local_pricing_api_answers_in_the_pricing_api_s_own_format() -> None:
    # given a GetProducts request as PricingOnDemandPrices sends it
    filters = {"instanceType": "g5.12xlarge", "regionCode": "us-east-1", "operatingSystem": "Linux"}
    request = {
        "ServiceCode": "AmazonEC2",
        "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
    }
    answer = get_products(request)
    # then the runtime's parser reads the local table's price out of it
    assert on_demand_prices_from_price_list(answer["PriceList"], "us-east-1") == {"g5.12xlarge": 5.672}
    assert get_products({**request, "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "mars-1"}]}) == {
        "FormatVersion": "aws_v1",
        "PriceList": [],
    }


def test_the_local_catalog_has_the_gpus_aws_describes_and_fills_only_what_moto_lacks() -> None:
    catalog = local_catalog()
    assert {t: catalog.gpus(t) for t in ("p4d.24xlarge", "g5.12xlarge", "g5.xlarge", "p3.2xlarge")} == {
        "p4d.24xlarge": 8,
        "g5.12xlarge": 4,
        "g5.xlarge": 1,
        "p3.2xlarge": 1,  # moto has no p3 any more: the local cloud's fill
    }
    assert catalog.names() == sorted(LOCAL_ON_DEMAND_PRICES) and not catalog.left_out


def test_the_local_market_sells_on_demand_at_the_catalog_s_price_with_the_catalog_s_gpus() -> None:
    catalog = local_catalog()
    on_demand = {(p.instance_type, p.price_per_hour, p.gpus) for p in LOCAL_SPOT_MARKET if p.market == "on-demand"}
    assert on_demand == {(t, catalog.on_demand(t), catalog.gpus(t)) for t in catalog.names()}
    # a type the catalog does not list has no pool, whatever the market's spot table says
    assert market_pools(local_catalog(["g5.xlarge"]), {"p4d.24xlarge", "g5.xlarge"})[0].instance_type == "g5.xlarge"
    assert {p.instance_type for p in market_pools(local_catalog(["g5.xlarge"]), {"p4d.24xlarge"})} == set()


#: A price keyed by an instance type name, as a table writes it: ``"g5.xlarge": 1.006``.
_TABLE_ENTRY = re.compile(r"""["'][a-z][a-z0-9-]*\.[a-z0-9]+["']\s*:\s*[0-9]""")


def test_one_price_table_at_most_and_it_is_the_local_cloud_s_stand_in_for_the_pricing_api() -> None:
    table = ROOT / "tools" / "ringfleet_local" / "catalog.py"
    writers = [
        str(path.relative_to(ROOT))
        for folder in ("src", "tools", "bench", "services", "training_worker")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != table and _TABLE_ENTRY.search(path.read_text())
    ]
    assert writers == [], "read the instance catalog (or ringfleet_local.catalog on the local cloud) instead"
