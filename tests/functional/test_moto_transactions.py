"""The local moto server's TransactWriteItems: all or nothing, conditions checked, without copying whole tables.

moto's own implementation deep-copies every table a transaction touches, so that with the burst bench's 1,000
node rows each decision cost a copy of the fleet; ringfleet_local.moto_server keeps a copy of the touched items only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends
from moto.dynamodb.models.table import Table
from ringfleet_local.moto_server import install_item_level_transactions, transact_write_items

pytestmark = pytest.mark.functional

JOBS, NODES = "jobs", "nodes"
ACCOUNT, REGION = "123456789012", "us-east-1"


@pytest.fixture
def ddb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", DynamoDBBackend.transact_write_items)
    install_item_level_transactions()
    assert DynamoDBBackend.transact_write_items is transact_write_items
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        # moto's in-process backends outlive mock_aws when another test of the session runs a moto server in this
        # process: start from no tables, and leave none behind.
        _drop_tables(client)
        client.create_table(
            TableName=JOBS,
            KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.create_table(
            TableName=NODES,
            KeySchema=[
                {"AttributeName": "job_id", "KeyType": "HASH"},
                {"AttributeName": "instance_id", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "job_id", "AttributeType": "S"},
                {"AttributeName": "instance_id", "AttributeType": "S"},
                {"AttributeName": "state", "AttributeType": "S"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_state",
                    "KeySchema": [{"AttributeName": "state", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        client.put_item(TableName=JOBS, Item={"job_id": {"S": "j1"}, "generation": {"N": "1"}})
        for n in range(3):
            client.put_item(
                TableName=NODES,
                Item={"job_id": {"S": "j1"}, "instance_id": {"S": f"i-{n}"}, "state": {"S": "active"}},
            )
        yield client
        _drop_tables(client)


def _drop_tables(client: Any) -> None:
    for name in (JOBS, NODES):
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            client.delete_table(TableName=name)


def decision(generation: int, *, expected: int) -> list[dict[str, Any]]:
    """A job's new generation, one node draining (an update in place), one node added, one node removed."""
    return [
        {
            "Update": {
                "TableName": JOBS,
                "Key": {"job_id": {"S": "j1"}},
                "UpdateExpression": "SET generation = :g",
                "ConditionExpression": "generation = :expected",
                "ExpressionAttributeValues": {":g": {"N": str(generation)}, ":expected": {"N": str(expected)}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "Update": {
                "TableName": NODES,
                "Key": {"job_id": {"S": "j1"}, "instance_id": {"S": "i-0"}},
                "UpdateExpression": "SET #s = :draining",
                "ExpressionAttributeNames": {"#s": "state"},
                "ExpressionAttributeValues": {":draining": {"S": "draining"}},
            }
        },
        {
            "Put": {
                "TableName": NODES,
                "Item": {"job_id": {"S": "j1"}, "instance_id": {"S": "i-9"}, "state": {"S": "active"}},
                "ConditionExpression": "attribute_not_exists(instance_id)",
            }
        },
        {"Delete": {"TableName": NODES, "Key": {"job_id": {"S": "j1"}, "instance_id": {"S": "i-2"}}}},
    ]


def snapshot(client: Any) -> tuple[list[Any], list[Any], list[str]]:
    jobs = client.scan(TableName=JOBS)["Items"]
    nodes = sorted(client.scan(TableName=NODES)["Items"], key=lambda i: i["instance_id"]["S"])
    active = client.query(
        TableName=NODES,
        IndexName="by_state",
        KeyConditionExpression="#s = :a",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":a": {"S": "active"}},
    )["Items"]
    return jobs, nodes, sorted(i["instance_id"]["S"] for i in active)


def test_a_transaction_whose_condition_holds_writes_every_item(ddb: Any) -> None:
    ddb.transact_write_items(TransactItems=decision(2, expected=1))
    jobs, nodes, active = snapshot(ddb)
    assert jobs[0]["generation"] == {"N": "2"}
    assert [(n["instance_id"]["S"], n["state"]["S"]) for n in nodes] == [
        ("i-0", "draining"),
        ("i-1", "active"),
        ("i-9", "active"),
    ]
    assert active == ["i-1", "i-9"]


def test_a_failed_condition_leaves_every_item_and_index_as_it_was(ddb: Any) -> None:
    before = snapshot(ddb)
    items = decision(3, expected=1)
    items.append(  # the last action fails: the three writes before it already landed in moto, and must go
        {
            "ConditionCheck": {
                "TableName": JOBS,
                "Key": {"job_id": {"S": "j2"}},
                "ConditionExpression": "attribute_exists(job_id)",
            }
        }
    )
    with pytest.raises(ClientError) as failed:
        ddb.transact_write_items(TransactItems=items)
    assert failed.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [r["Code"] for r in failed.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "None", "None", "ConditionalCheckFailed"]
    assert snapshot(ddb) == before


def test_a_transaction_refused_midway_as_invalid_leaves_every_item_as_it_was(ddb: Any) -> None:
    before = snapshot(ddb)
    items = decision(3, expected=1)
    items.append(  # the job again: refused (ValidationException) only when reached, after three writes
        {
            "ConditionCheck": {
                "TableName": JOBS,
                "Key": {"job_id": {"S": "j1"}},
                "ConditionExpression": "attribute_exists(job_id)",
            }
        }
    )
    with pytest.raises(ClientError) as failed:
        ddb.transact_write_items(TransactItems=items)
    assert failed.value.response["Error"]["Code"] == "ValidationException"
    assert snapshot(ddb) == before


def test_a_lost_race_returns_the_winner_and_writes_nothing(ddb: Any) -> None:
    ddb.transact_write_items(TransactItems=decision(2, expected=1))
    after_winner = snapshot(ddb)
    loser = [
        *decision(2, expected=1)[:1],
        {
            "Put": {
                "TableName": NODES,
                "Item": {"job_id": {"S": "j1"}, "instance_id": {"S": "i-7"}, "state": {"S": "active"}},
            }
        },
    ]
    with pytest.raises(ClientError) as failed:
        ddb.transact_write_items(TransactItems=loser)
    first: Any = failed.value.response["CancellationReasons"][0]
    assert first["Code"] == "ConditionalCheckFailed"
    assert first["Item"]["generation"] == {"N": "2"}  # ReturnValuesOnConditionCheckFailure: ALL_OLD
    assert snapshot(ddb) == after_winner


def test_no_table_is_copied_whatever_its_size(ddb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(10, 1010):
        ddb.put_item(
            TableName=NODES,
            Item={"job_id": {"S": f"j{n}"}, "instance_id": {"S": f"i-{n}"}, "state": {"S": "active"}},
        )

    def refuse(self: Table, memo: dict[int, Any]) -> Table:
        raise AssertionError(f"table {self.name} copied whole")

    monkeypatch.setattr(Table, "__deepcopy__", refuse, raising=False)
    tables = dict(dynamodb_backends[ACCOUNT][REGION].tables)
    ddb.transact_write_items(TransactItems=decision(2, expected=1))
    with pytest.raises(ClientError):
        ddb.transact_write_items(TransactItems=decision(3, expected=1))
    assert dynamodb_backends[ACCOUNT][REGION].tables == tables  # the same table objects, restored item by item
    assert all(dynamodb_backends[ACCOUNT][REGION].tables[name] is table for name, table in tables.items())
