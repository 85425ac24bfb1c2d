"""The local cloud's moto server: moto's own, with DynamoDB's requests handled one at a time, atomic as in AWS.

moto answers each request on a thread of its own and, for a conditional write, checks the condition and then
writes, with nothing held in between: two writes conditional on the same revision can both go through. DynamoDB
applies each write to an item atomically, and the generation fence relies on it; one lock around DynamoDB's
requests gives the same here (they are CPU-bound under one GIL anyway). Other services keep answering in parallel:
the router's SQS long polls would otherwise hold everything up.

moto's ``TransactWriteItems`` deep-copies every table it touches before it writes, to put the copy back if an
action fails: its cost grows with the table (≈ 1,000 node rows plus their indexes per call in the recovery burst),
not with the transaction. :func:`transact_write_items` replaces it with the same checks and writes but a copy of
only the items the transaction touches, put back in reverse order if any action fails: all or nothing as before,
each condition checked against the item as it stands, at a cost that does not grow with the table. (A rolled-back
transaction's writes stay in the table's stream, if it has one; ringfleet's tables have none.)

moto knows no p3 instance types any more and does not implement the Pricing API, both of which the instance catalog
reads (``ringfleet.scaling.catalog``): :func:`install_local_instance_types` adds the GPU instance types moto lacks,
and the Pricing API's GetProducts is answered from the local price table (``ringfleet_local.catalog``).

Run as ``python -m ringfleet_local.moto_server -H 127.0.0.1 -p PORT`` (the arguments of ``moto.server``).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from typing import Any

from moto import server
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

__all__ = [
    "AtomicDynamoDbApplication",
    "install_item_level_transactions",
    "install_local_instance_types",
    "main",
    "transact_write_items",
]

_PRICING_TARGET = "AWSPriceListService."


class AtomicDynamoDbApplication(DomainDispatcherApplication):
    """moto's WSGI application, one DynamoDB request at a time."""

    _dynamodb = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if target.startswith(_PRICING_TARGET):
            return _pricing(target, environ, start_response)
        if not target.startswith("DynamoDB_"):
            return super().__call__(environ, start_response)
        with self._dynamodb:
            return super().__call__(environ, start_response)


def _restore(table: Table, hash_value: DynamoType, range_value: DynamoType | None, before: Item | None) -> None:
    """Put one item back as it was before the transaction: the copy taken then, or no item."""
    if before is None:
        table.delete_item(hash_value, range_value)
    elif range_value is not None:
        table.items[hash_value][range_value] = before
    else:
        table.items[hash_value] = before  # type: ignore[assignment]


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """moto's ``transact_write_items`` (5.x), rolling back the touched items instead of whole tables."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    transaction = _ItemTransaction(self)
    errors = [transaction.attempt(item) for item in transact_items]  # [(Code, Message, Item), ..]
    if any(code is not None for code, _, _ in errors):
        transaction.rollback()
        raise TransactionCanceledException(errors)


_Error = tuple[str, str, dict[str, Any] | None] | tuple[None, None, None]


class _ItemTransaction:
    """One TransactWriteItems: its actions applied in order, each touched item copied first to be put back."""

    def __init__(self, backend: DynamoDBBackend) -> None:
        self.backend = backend
        # (table, hash, range, the item before this transaction wrote it), in the order written
        self.touched: list[tuple[Table, DynamoType, DynamoType | None, Item | None]] = []
        self.targets: set[tuple[str, str]] = set()

    def rollback(self) -> None:
        for table, hash_value, range_value, before in reversed(self.touched):
            _restore(table, hash_value, range_value, before)

    def attempt(self, item: dict[str, Any]) -> _Error:
        """Applies one action; its error as moto reports it (all None when it went through). A second action on
        the same item, or an invalid expression, cancels the whole transaction at once, as in moto."""
        if len(list(item.keys())) > 1:
            raise TransactWriteSingleOpException
        original_item: dict[str, Any] | None = None
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in _WRITES and op_type != "ConditionCheck":
                raise ValueError("Unsupported transaction operation")
            table = self.backend.get_table(op["TableName"])
            key = _key_of(table, op_type, op)
            self._check_unicity(op["TableName"], key)
            current = self.backend.get_item(op["TableName"], key)
            if not _condition_holds(op, current):
                if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                    original_item = current.to_json()["Attributes"]
                raise ConditionalCheckFailed(item=original_item)
            if op_type != "ConditionCheck":
                self._remember(table, key, current)
                _WRITES[op_type](self.backend, op, key)
            return (None, None, None)
        except (MultipleTransactionsException, MockValidationException):
            self.rollback()
            raise
        except ConditionalCheckFailed as e:
            return ("ConditionalCheckFailed", str(e.message), original_item)
        except Exception as e:  # moto reports any other failure per action, as here
            return (type(e).__name__, str(e), original_item)

    def _check_unicity(self, table_name: str, key: dict[str, Any]) -> None:
        target = (str(table_name), str(dict(sorted(key.items()))))
        if target in self.targets:
            raise MultipleTransactionsException()
        self.targets.add(target)

    def _remember(self, table: Table, key: dict[str, Any], current: Item | None) -> None:
        # An update changes the stored item in place: keep a copy of it, not a reference.
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr is not None else None
        self.touched.append((table, hash_value, range_value, copy.deepcopy(current)))


def _key_of(table: Table, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    if op_type != "Put":
        given: dict[str, Any] = op["Key"]
        return given
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def _condition_holds(op: dict[str, Any], current: Item | None) -> bool:
    expression = op.get("ConditionExpression")
    if expression is None:
        return True
    condition = get_filter_expression(
        expression, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
    )
    return bool(condition.expr(current))


def _condition_arguments(op: dict[str, Any]) -> dict[str, Any]:
    return {
        "condition_expression": op.get("ConditionExpression"),
        "expression_attribute_names": op.get("ExpressionAttributeNames"),
        "expression_attribute_values": op.get("ExpressionAttributeValues"),
    }


def _put(backend: DynamoDBBackend, op: dict[str, Any], key: dict[str, Any]) -> None:
    backend.put_item(op["TableName"], op["Item"], **_condition_arguments(op))


def _delete(backend: DynamoDBBackend, op: dict[str, Any], key: dict[str, Any]) -> None:
    backend.delete_item(op["TableName"], key, **_condition_arguments(op))


def _update(backend: DynamoDBBackend, op: dict[str, Any], key: dict[str, Any]) -> None:
    backend.update_item(op["TableName"], key, update_expression=op["UpdateExpression"], **_condition_arguments(op))


#: The actions that write, by name (ConditionCheck only checks).
_WRITES: dict[str, Callable[[DynamoDBBackend, dict[str, Any], dict[str, Any]], None]] = {
    "Put": _put,
    "Delete": _delete,
    "Update": _update,
}


def install_item_level_transactions() -> None:
    """Make every moto DynamoDB backend in this process roll back transactions item by item."""
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _pricing(target: str, environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The Pricing API as the local cloud answers it: GetProducts from the local price table; nothing else."""
    from ringfleet_local.catalog import get_products

    length = int(environ.get("CONTENT_LENGTH") or 0)
    request = json.loads(environ["wsgi.input"].read(length) or b"{}")
    if target == f"{_PRICING_TARGET}GetProducts":
        status, body = "200 OK", get_products(request)
    else:
        status = "400 Bad Request"
        body = {"__type": "InvalidParameterException", "Message": f"{target} is not emulated by the local cloud"}
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(data)))])
    return [data]


def install_local_instance_types() -> None:
    """Adds the GPU instance types moto's data lacks (``ringfleet_local.catalog.LOCAL_GPU_INSTANCE_TYPES``) to what
    its DescribeInstanceTypes answers."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES, InstanceType, InstanceTypeBackend

    from ringfleet_local.catalog import LOCAL_GPU_INSTANCE_TYPES

    for name, described in LOCAL_GPU_INSTANCE_TYPES.items():
        if name not in INSTANCE_TYPES:
            INSTANCE_TYPES[name] = dict(described)
            InstanceTypeBackend.instance_types.append(InstanceType(name))


def main() -> None:
    install_item_level_transactions()
    install_local_instance_types()
    server.DomainDispatcherApplication = AtomicDynamoDbApplication  # type: ignore[misc]
    server.main()


if __name__ == "__main__":
    main()
