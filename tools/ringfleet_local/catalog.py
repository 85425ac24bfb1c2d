"""The local cloud's answers about instance types where moto has none: GPUs of the types it lacks, and the Pricing API.

The control plane reads its instance catalog from EC2's DescribeInstanceTypes and the Pricing API's GetProducts
(``ringfleet.scaling.catalog``). moto answers the first from AWS's own data, but that data has no p3 instances
any more (retired from the region it was taken from), and moto does not implement the Pricing API. The local moto
server (``ringfleet_local.moto_server``) therefore adds ``LOCAL_GPU_INSTANCE_TYPES`` to moto's instance types and
answers GetProducts from ``LOCAL_ON_DEMAND_PRICES``, in the Pricing API's own price list format, so the runtime's
code runs unchanged. ``local_catalog`` is the catalog a refresh on the local cloud stores, built without one (for
the local spot market's defaults, the trace replay and ``bench/fleet_cost.py``).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from ringfleet.scaling.catalog import (
    ON_DEMAND_ATTRIBUTES,
    InstanceCatalog,
    catalog_from_aws,
    gpu_specs_from_pages,
    on_demand_prices_from_price_list,
)

__all__ = [
    "LOCAL_GPU_INSTANCE_TYPES",
    "LOCAL_ON_DEMAND_PRICES",
    "LOCAL_REGION",
    "get_products",
    "local_catalog",
    "moto_instance_types",
]

LOCAL_REGION = "us-east-1"

#: The one on-demand price table in the codebase, standing in for the Pricing API on the local cloud: $ per
#: instance-hour of Linux on-demand instances in us-east-1, from AWS's public price list, for the instance types of
#: template.yaml's WorkerInstanceTypes (a type asked for that has no price here is left out of the catalog).
LOCAL_ON_DEMAND_PRICES: Mapping[str, float] = {
    "g4dn.xlarge": 0.526,
    "g5.xlarge": 1.006,
    "g5.12xlarge": 5.672,
    "g6.xlarge": 0.8048,
    "p3.2xlarge": 3.06,
    "p4d.24xlarge": 32.7726,
}

#: GPU instance types moto's data lacks, as DescribeInstanceTypes describes them (the fields ringfleet reads).
LOCAL_GPU_INSTANCE_TYPES: Mapping[str, Mapping[str, Any]] = {
    name: {
        "InstanceType": name,
        "CurrentGeneration": True,
        "SupportedUsageClasses": ["on-demand", "spot"],
        "VCpuInfo": {"DefaultVCpus": vcpus},
        "MemoryInfo": {"SizeInMiB": memory_mib},
        "GpuInfo": {
            "Gpus": [
                {"Name": "V100", "Manufacturer": "NVIDIA", "Count": gpus, "MemoryInfo": {"SizeInMiB": 16384}},
            ],
            "TotalGpuMemoryInMiB": gpus * 16384,
        },
    }
    for name, vcpus, memory_mib, gpus in (("p3.2xlarge", 8, 62464, 1),)
}


@lru_cache(maxsize=1)
def moto_instance_types() -> Mapping[str, Mapping[str, Any]]:
    """moto's own DescribeInstanceTypes data (read from its package, without importing its EC2 backend)."""
    raw = resources.files("moto").joinpath("ec2/resources/instance_types.json.gz").read_bytes()
    data: dict[str, Mapping[str, Any]] = json.loads(gzip.decompress(raw))
    return data


def _price_list_entry(instance_type: str, price: float, region: str) -> str:
    """One GetProducts PriceList entry (format aws_v1) of an instance type's on-demand Linux price."""
    sku = f"LOCAL{zlib.crc32(f'{instance_type}/{region}'.encode()):010d}"
    term = f"{sku}.JRTCKXETXF"
    entry = {
        "product": {
            "productFamily": "Compute Instance",
            "sku": sku,
            "attributes": {"instanceType": instance_type, "regionCode": region, **ON_DEMAND_ATTRIBUTES},
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                term: {
                    "sku": sku,
                    "offerTermCode": "JRTCKXETXF",
                    "priceDimensions": {
                        f"{term}.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "pricePerUnit": {"USD": f"{price:.10f}"},
                            "description": f"${price} per On Demand Linux {instance_type} Instance Hour",
                        }
                    },
                }
            }
        },
        "version": "local",
    }
    return json.dumps(entry)


def get_products(request: Mapping[str, Any]) -> dict[str, Any]:
    """The Pricing API's GetProducts answer to ``request`` (its JSON body) from ``LOCAL_ON_DEMAND_PRICES``: every
    TERM_MATCH filter on a product attribute the entries carry must match; one page, no NextToken."""
    if request.get("ServiceCode") != "AmazonEC2":
        return {"FormatVersion": "aws_v1", "PriceList": []}
    wanted = {f["Field"]: f["Value"] for f in request.get("Filters", []) if f.get("Type") == "TERM_MATCH"}
    region = wanted.get("regionCode", LOCAL_REGION)
    entries = []
    for name, price in sorted(LOCAL_ON_DEMAND_PRICES.items()):
        attributes = {"instanceType": name, "regionCode": LOCAL_REGION, **ON_DEMAND_ATTRIBUTES}
        if all(attributes.get(k, v) == v for k, v in wanted.items()) and region == LOCAL_REGION:
            entries.append(_price_list_entry(name, price, region))
    return {"FormatVersion": "aws_v1", "PriceList": entries}


def local_catalog(instance_types: Sequence[str] | None = None) -> InstanceCatalog:
    """The catalog a refresh on the local cloud stores for ``instance_types`` (default: every priced type), built
    from the same answers the local moto server gives, through the runtime's own parsing."""
    return _local_catalog(tuple(sorted(instance_types if instance_types is not None else LOCAL_ON_DEMAND_PRICES)))


@lru_cache(maxsize=16)
def _local_catalog(asked: tuple[str, ...]) -> InstanceCatalog:
    described = {**moto_instance_types(), **LOCAL_GPU_INSTANCE_TYPES}
    pages = [{"InstanceTypes": [described[t] for t in asked if t in described]}]
    entries = get_products({"ServiceCode": "AmazonEC2"})["PriceList"]
    prices = on_demand_prices_from_price_list(entries, LOCAL_REGION)
    return catalog_from_aws(asked, gpu_specs_from_pages(pages), prices, datetime(2025, 1, 1, tzinfo=UTC))
