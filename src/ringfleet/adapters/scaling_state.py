"""ScalingStateStore on DynamoDB: the fleet scaler's memory between runs (one item, written conditionally)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import boto3
from botocore.exceptions import ClientError

from ringfleet.scaling.decisions import FleetState

__all__ = ["DynamoDbScalingStateStore", "state_from_json", "state_to_json"]

_KEY = {"name": "fleet"}


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def state_to_json(state: FleetState) -> str:
    return json.dumps(
        {
            "targets": dict(state.targets),
            "last_scaled_at": _time(state.last_scaled_at),
            "surplus_since": _time(state.surplus_since),
            "refused_until": {k: v.isoformat() for k, v in state.refused_until.items()},
            "pool_hours": dict(state.pool_hours),
            "pool_interruptions": dict(state.pool_interruptions),
            "reclaimed_at": {k: v.isoformat() for k, v in state.reclaimed_at.items()},
            "observed_at": _time(state.observed_at),
            "on_demand_jobs": sorted(state.on_demand_jobs),
            "noticed": sorted(state.noticed),
        }
    )


def state_from_json(text: str) -> FleetState:
    data = json.loads(text)
    parse = datetime.fromisoformat
    return FleetState(
        targets={k: int(v) for k, v in data.get("targets", {}).items()},
        last_scaled_at=parse(data["last_scaled_at"]) if data.get("last_scaled_at") else None,
        surplus_since=parse(data["surplus_since"]) if data.get("surplus_since") else None,
        refused_until={k: parse(v) for k, v in data.get("refused_until", {}).items()},
        pool_hours={k: float(v) for k, v in data.get("pool_hours", {}).items()},
        pool_interruptions={k: int(v) for k, v in data.get("pool_interruptions", {}).items()},
        reclaimed_at={k: parse(v) for k, v in data.get("reclaimed_at", {}).items()},
        observed_at=parse(data["observed_at"]) if data.get("observed_at") else None,
        on_demand_jobs=frozenset(data.get("on_demand_jobs", [])),
        noticed=frozenset(data.get("noticed", [])),
    )


class DynamoDbScalingStateStore:
    """One item (``name = fleet``) holding the state as JSON, its revision, and the last decision's report."""

    def __init__(self, table_name: str, *, boto3_resource: Any | None = None) -> None:
        self._table: Any = (boto3_resource or boto3.resource("dynamodb")).Table(table_name)

    def load(self) -> tuple[FleetState, int]:
        item = self._table.get_item(Key=_KEY, ConsistentRead=True).get("Item")
        if not item:
            return FleetState(), 0
        return state_from_json(item["state"]), int(item["revision"])

    def save(self, state: FleetState, *, revision: int, report: dict[str, object]) -> bool:
        condition = "attribute_not_exists(#name)" if revision == 0 else "#revision = :revision"
        values: dict[str, Any] = {":revision": revision} if revision else {}
        try:
            self._table.put_item(
                Item={**_KEY, "state": state_to_json(state), "revision": revision + 1, "report": json.dumps(report)},
                ConditionExpression=condition,
                ExpressionAttributeNames={"#name": "name"} if revision == 0 else {"#revision": "revision"},
                **({"ExpressionAttributeValues": values} if values else {}),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True
