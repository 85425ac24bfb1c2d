"""`ringfleet local emit` refuses what AWS refuses, before anything is sent; the router renders any AMQP header."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from ringfleet_local.context import CloudContext
from ringfleet_local.emit import MAX_EVENT_BYTES, EmitError, emit, entry_size
from ringfleet_local.router import _jsonable

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

# Nothing listens there: a refusal must come before any request.
CONTEXT = CloudContext(ROOT / "template.yaml", endpoint="http://127.0.0.1:9", broker_url="amqp://u:p@127.0.0.1:9/")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return data


def test_an_eventbridge_event_over_256_kib_is_refused_as_put_events_would() -> None:
    # given a spot warning whose detail carries 300 KB
    event = load("ec2_spot_interruption_warning.json")
    event["detail"]["padding"] = "x" * 300_000
    assert entry_size(event) > MAX_EVENT_BYTES
    # when it is emitted, then it is refused with the limit, not "published"
    with pytest.raises(EmitError, match="256 KiB"):
        emit(CONTEXT, event)


def test_an_event_just_under_the_limit_is_measured_as_eventbridge_does() -> None:
    event = load("ec2_spot_interruption_warning.json")
    detail = json.dumps(event["detail"])
    expected = 14 + len(event["source"]) + len(event["detail-type"]) + len(detail) + sum(map(len, event["resources"]))
    assert entry_size(event) == expected


def test_an_sqs_message_over_256_kib_is_refused() -> None:
    event = load("sqs_spot_interruption_warning.json")
    event["Records"][0]["body"] = "y" * (256 * 1024 + 1)
    with pytest.raises(EmitError, match=r"Records\.0\.body is 262145 bytes"):
        emit(CONTEXT, event)


def test_an_rmq_event_for_a_queue_no_function_consumes_is_refused_naming_the_wired_ones() -> None:
    event = load("mq_job_submitted.json")
    event["rmqMessagesByQueue"] = {"ringfleet.nobody::/": event["rmqMessagesByQueue"]["ringfleet.jobs::/"]}
    with pytest.raises(EmitError, match=r"ringfleet\.nobody.*ringfleet\.jobs"):
        emit(CONTEXT, event)


def test_every_amqp_header_value_renders_as_json() -> None:
    # given the values an AMQP 0-9-1 field table may hold
    headers = {
        "decimal": Decimal("1.25"),
        "nan": Decimal("NaN"),
        "bytes": bytearray(b"\x00\x01"),
        "at": datetime(2025, 6, 2, tzinfo=UTC),
        "table": {"list": [Decimal("2"), b"z", None, True, 3]},
    }
    # then the router's rendering is JSON
    rendered = json.loads(json.dumps(_jsonable(headers)))
    assert rendered["decimal"] == 1.25 and rendered["nan"] == "NaN"
    assert rendered["bytes"] == {"bytes": [0, 1]}
    assert rendered["table"]["list"] == [2.0, {"bytes": [122]}, None, True, 3]
