"""The instance catalog: the GPUs and on-demand price of each instance type the fleet may launch, read from AWS.

GPU count and memory come from EC2's ``DescribeInstanceTypes`` (``GpuInfo``), on-demand prices from the Pricing
API's ``GetProducts`` (its price list entries, one JSON document each); spot prices stay live, per zone, in the
scaler's ``PriceSource``. ``catalog_from_aws`` turns those answers into an ``InstanceCatalog``, which the catalog
function stores on a schedule and intake (which types exist), the scaler (slots and $/h per instance) and
``ringfleet submit --dry-run`` read. Pure: no boto3, nothing but the pages AWS returned.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "GpuSpec",
    "InstanceCatalog",
    "InstanceType",
    "catalog_from_aws",
    "gpu_specs_from_pages",
    "on_demand_prices_from_price_list",
]

#: The price list entries that are the plain on-demand price of an instance type: Linux, shared tenancy, no
#: pre-installed software, capacity actually used (not a reservation's). The same filters go to GetProducts.
ON_DEMAND_ATTRIBUTES: Mapping[str, str] = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
}


@dataclass(frozen=True)
class GpuSpec:
    """What ``DescribeInstanceTypes`` says of an instance type's GPUs."""

    gpus: int
    #: Memory of one GPU (MiB).
    gpu_memory_mib: int
    gpu_name: str = ""


@dataclass(frozen=True)
class InstanceType:
    """One instance type of the catalog: a slot per GPU, and what an instance-hour costs on demand."""

    name: str
    gpus: int
    gpu_memory_mib: int
    on_demand_per_hour: float
    gpu_name: str = ""


@dataclass(frozen=True)
class InstanceCatalog:
    """The instance types the fleet can launch and price, as of ``refreshed_at``."""

    types: Mapping[str, InstanceType] = field(default_factory=dict)
    refreshed_at: datetime | None = None
    #: Asked-for types left out, each with why (no GPUs, no on-demand price): said in the refresh's log.
    left_out: Mapping[str, str] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def names(self) -> list[str]:
        return sorted(self.types)

    def gpus(self, name: str) -> int:
        """GPUs (slots) of an instance of ``name``; KeyError for a type the catalog does not list."""
        return self.types[name].gpus

    def on_demand(self, name: str) -> float:
        return self.types[name].on_demand_per_hour

    def to_json(self) -> str:
        return json.dumps(
            {
                "refreshed_at": self.refreshed_at.isoformat() if self.refreshed_at else None,
                "types": {
                    t.name: {
                        "gpus": t.gpus,
                        "gpu_memory_mib": t.gpu_memory_mib,
                        "gpu_name": t.gpu_name,
                        "on_demand_per_hour": t.on_demand_per_hour,
                    }
                    for t in sorted(self.types.values(), key=lambda t: t.name)
                },
                "left_out": dict(sorted(self.left_out.items())),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> InstanceCatalog:
        data = json.loads(text)
        at = data.get("refreshed_at")
        return cls(
            types={
                name: InstanceType(
                    name=name,
                    gpus=int(t["gpus"]),
                    gpu_memory_mib=int(t["gpu_memory_mib"]),
                    on_demand_per_hour=float(t["on_demand_per_hour"]),
                    gpu_name=str(t.get("gpu_name", "")),
                )
                for name, t in data.get("types", {}).items()
            },
            refreshed_at=datetime.fromisoformat(at) if at else None,
            left_out=dict(data.get("left_out", {})),
        )


def gpu_specs_from_pages(pages: Iterable[Mapping[str, Any]]) -> dict[str, GpuSpec]:
    """The GPUs of every instance type in ``DescribeInstanceTypes`` pages; a type without ``GpuInfo`` (or with
    none counted) is absent. Several GPU models in one instance add up; their memory is the smallest one's."""
    specs: dict[str, GpuSpec] = {}
    for page in pages:
        for described in page.get("InstanceTypes", []):
            gpus = (described.get("GpuInfo") or {}).get("Gpus") or []
            count = sum(int(g.get("Count", 0)) for g in gpus)
            if count <= 0:
                continue
            memory = min(int((g.get("MemoryInfo") or {}).get("SizeInMiB", 0)) for g in gpus)
            names = sorted({str(g.get("Name", "")) for g in gpus} - {""})
            specs[described["InstanceType"]] = GpuSpec(count, memory, "+".join(names))
    return specs


def _hourly_usd(terms: Mapping[str, Any]) -> float | None:
    """The on-demand $ per hour of one price list entry's ``terms``, or None when it has no positive hourly price."""
    prices = [
        float(dimension["pricePerUnit"]["USD"])
        for term in (terms.get("OnDemand") or {}).values()
        for dimension in (term.get("priceDimensions") or {}).values()
        if dimension.get("unit") in ("Hrs", "Hours") and "USD" in (dimension.get("pricePerUnit") or {})
    ]
    positive = [p for p in prices if p > 0]
    return min(positive) if positive else None


def on_demand_prices_from_price_list(entries: Iterable[str | Mapping[str, Any]], region: str) -> dict[str, float]:
    """On-demand $ per instance-hour in ``region`` from the Pricing API's ``GetProducts`` ``PriceList`` entries
    (JSON text, as the API returns them, or already parsed). Entries for another region, operating system,
    tenancy, pre-installed software or capacity status are ignored; of two that still match, the lower price."""
    prices: dict[str, float] = {}
    for entry in entries:
        data = json.loads(entry) if isinstance(entry, str) else entry
        attributes = (data.get("product") or {}).get("attributes") or {}
        name = attributes.get("instanceType")
        if not name or attributes.get("regionCode", region) != region:
            continue
        if any(attributes.get(k, v) != v for k, v in ON_DEMAND_ATTRIBUTES.items()):
            continue
        price = _hourly_usd(data.get("terms") or {})
        if price is not None:
            prices[name] = min(price, prices.get(name, price))
    return prices


def catalog_from_aws(
    asked: Iterable[str], gpus: Mapping[str, GpuSpec], prices: Mapping[str, float], now: datetime
) -> InstanceCatalog:
    """The catalog of the ``asked`` instance types that have GPUs and an on-demand price; the rest are left out,
    each with the reason (the scaler could neither count its slots nor price it)."""
    types: dict[str, InstanceType] = {}
    left_out: dict[str, str] = {}
    for name in sorted(set(asked)):
        spec = gpus.get(name)
        if spec is None:
            left_out[name] = "EC2 describes no GPUs for it"
        elif name not in prices:
            left_out[name] = "the Pricing API has no on-demand Linux price for it in this region"
        else:
            types[name] = InstanceType(name, spec.gpus, spec.gpu_memory_mib, prices[name], spec.gpu_name)
    return InstanceCatalog(types=types, refreshed_at=now, left_out=left_out)
