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

Run as ``python -m ringfleet_local.moto_server -H 127.0.0.1 -p PORT`` (the arguments of ``moto.server``).
"""

from __future__ import annotations

import copy
import threading
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

__all__ = ["AtomicDynamoDbApplication", "install_item_level_transactions", "main", "transact_write_items"]


class AtomicDynamoDbApplication(DomainDispatcherApplication):
    """moto's WSGI application, one DynamoDB request at a time."""

    _dynamodb = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
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
    # (table, hash, range, the item before this transaction wrote it), in the order written
    touched: list[tuple[Table, DynamoType, DynamoType | None, Item | None]] = []

    def rollback() -> None:
        for table, hash_value, range_value, before in reversed(touched):
            _restore(table, hash_value, range_value, before)

    target_items: set[tuple[str, str]] = set()

    def check_unicity(table_name: str, key: dict[str, Any]) -> None:
        item = (str(table_name), str(dict(sorted(key.items()))))
        if item in target_items:
            raise MultipleTransactionsException()
        target_items.add(item)

    errors: list[tuple[str, str, dict[str, Any]] | tuple[None, None, None]] = []  # [(Code, Message, Item), ..]
    for item in transact_items:
        original_item: dict[str, Any] | None = None
        if len(list(item.keys())) > 1:
            raise TransactWriteSingleOpException
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")

            table_name = op["TableName"]
            condition_expression = op.get("ConditionExpression")
            expression_attribute_names = op.get("ExpressionAttributeNames")
            expression_attribute_values = op.get("ExpressionAttributeValues")
            return_values_on_condition_check_failure = op.get("ReturnValuesOnConditionCheckFailure")

            table = self.get_table(table_name)
            if op_type == "Put":
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]

            check_unicity(table_name, key)

            current = self.get_item(table_name, key)
            if condition_expression is not None:
                condition_op = get_filter_expression(
                    condition_expression, expression_attribute_names, expression_attribute_values
                )
                if not condition_op.expr(current):
                    if return_values_on_condition_check_failure == "ALL_OLD" and current:
                        original_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original_item)

            if op_type != "ConditionCheck":
                # An update changes the stored item in place: keep a copy of it, not a reference.
                hash_value = DynamoType(key[table.hash_key_attr])
                range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr is not None else None
                touched.append((table, hash_value, range_value, copy.deepcopy(current)))

            if op_type == "Put":
                self.put_item(
                    table_name,
                    op["Item"],
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            elif op_type == "Delete":
                self.delete_item(
                    table_name,
                    key,
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            elif op_type == "Update":
                self.update_item(
                    table_name,
                    key,
                    update_expression=op["UpdateExpression"],
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            rollback()
            raise
        except ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))  # type: ignore[arg-type]
        except Exception as e:  # moto reports any other failure per action, as here
            errors.append((type(e).__name__, str(e), original_item))  # type: ignore[arg-type]

    if any(code is not None for code, _, _ in errors):
        rollback()
        raise TransactionCanceledException(errors)


def install_item_level_transactions() -> None:
    """Make every moto DynamoDB backend in this process roll back transactions item by item."""
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def main() -> None:
    install_item_level_transactions()
    server.DomainDispatcherApplication = AtomicDynamoDbApplication  # type: ignore[misc]
    server.main()


if __name__ == "__main__":
    main()
