"""The instance catalog's adapters: GPUs from EC2 DescribeInstanceTypes, on-demand prices from the Pricing API, and
the catalog stored as one DynamoDB item (the catalog table)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import ClientError

from ringfleet.scaling.catalog import (
    ON_DEMAND_ATTRIBUTES,
    GpuSpec,
    InstanceCatalog,
    gpu_specs_from_pages,
    on_demand_prices_from_price_list,
)

__all__ = ["DynamoDbInstanceCatalogStore", "Ec2InstanceTypes", "PricingOnDemandPrices"]

#: The Pricing API answers from a few regions only; us-east-1's endpoint serves every region's prices.
PRICING_REGION = "us-east-1"
_KEY = {"name": "instance-types"}


class Ec2InstanceTypes:
    """``InstanceTypeGateway`` on EC2 DescribeInstanceTypes."""

    def __init__(self, *, ec2_client: Any | None = None) -> None:
        self.ec2: Any = ec2_client or boto3.client("ec2")

    def gpu_specs(self, instance_types: Sequence[str]) -> dict[str, GpuSpec]:
        # EC2 refuses the whole call (InvalidInstanceType) when one type does not exist: a typo in the stack's
        # WorkerInstanceTypes fails the refresh loudly rather than vanish from the catalog.
        pages = self.ec2.get_paginator("describe_instance_types").paginate(InstanceTypes=list(instance_types))
        return gpu_specs_from_pages(pages)


class PricingOnDemandPrices:
    """``OnDemandPriceGateway`` on the Pricing API (GetProducts of AmazonEC2, one instance type at a time)."""

    def __init__(self, *, region: str | None = None, pricing_client: Any | None = None) -> None:
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.pricing: Any = pricing_client or boto3.client("pricing", region_name=PRICING_REGION)

    def on_demand_prices(self, instance_types: Sequence[str]) -> dict[str, float]:
        prices: dict[str, float] = {}
        for instance_type in instance_types:
            filters = {"instanceType": instance_type, "regionCode": self.region, **ON_DEMAND_ATTRIBUTES}
            pages = self.pricing.get_paginator("get_products").paginate(
                ServiceCode="AmazonEC2",
                FormatVersion="aws_v1",
                Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
            )
            entries = [entry for page in pages for entry in page.get("PriceList", [])]
            prices.update(on_demand_prices_from_price_list(entries, self.region))
        return prices


class DynamoDbInstanceCatalogStore:
    """``InstanceCatalogStore``: one item (``name = instance-types``) holding the catalog as JSON and when it was
    refreshed; a save never replaces a catalog refreshed later (a late tick)."""

    def __init__(self, table_name: str, *, boto3_resource: Any | None = None) -> None:
        self._table: Any = (boto3_resource or boto3.resource("dynamodb")).Table(table_name)

    def load(self) -> InstanceCatalog | None:
        item = self._table.get_item(Key=_KEY, ConsistentRead=True).get("Item")
        return InstanceCatalog.from_json(str(item["catalog"])) if item else None

    def save(self, catalog: InstanceCatalog) -> bool:
        if catalog.refreshed_at is None:
            raise ValueError("a catalog is stored with the time it was refreshed")
        at = catalog.refreshed_at.timestamp()
        try:
            self._table.put_item(
                Item={**_KEY, "catalog": catalog.to_json(), "refreshed_at": _decimal(at)},
                ConditionExpression="attribute_not_exists(#name) OR refreshed_at <= :at",
                ExpressionAttributeNames={"#name": "name"},
                ExpressionAttributeValues={":at": _decimal(at)},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True


def _decimal(value: float) -> Any:
    from decimal import Decimal

    return Decimal(str(round(value, 6)))
