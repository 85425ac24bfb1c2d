"""`ringfleet local emit`: puts an event into the local cloud through the path AWS would use."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import unquote_plus

from ringfleet.adapters.rabbitmq import publish
from ringfleet.contracts.broker import COMMANDS_EXCHANGE, JOBS_QUEUE, WORKER_EVENTS_QUEUE, command_routing_key
from ringfleet_local.context import CloudContext

__all__ = ["MAX_EVENT_BYTES", "MAX_SQS_MESSAGE_BYTES", "EmitError", "apply_overrides", "emit", "entry_size"]

_APP = {"JobSubmitted", "JobCancelled", "UpgradeJob"}
_WORKER = {"Heartbeat", "CheckpointCompleted", "WorkerFailed"}
_COMMANDS = {"CheckpointNow", "Reconfigure", "Stop"}


#: The most EventBridge takes in one PutEvents entry, and SQS in one message (body and attributes): 256 KiB.
MAX_EVENT_BYTES = 256 * 1024
MAX_SQS_MESSAGE_BYTES = 256 * 1024


class EmitError(ValueError):
    """The file is not an event the local cloud knows how to deliver; the message says what to do instead."""


def apply_overrides(event: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``path.to.field=value`` overrides (list items by index; values parsed as JSON when they parse)."""
    out = json.loads(json.dumps(event))
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise EmitError(f"--set {item!r}: expected PATH=VALUE, e.g. detail.instance-id=i-0abc1234def567890")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node: Any = out
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return out


def emit(ctx: CloudContext, event: dict[str, Any], *, body: bytes | None = None) -> list[str]:
    """Delivers ``event`` the way AWS or an app would; returns one line per action taken."""
    if "detail-type" in event and "source" in event:
        _check_entry_size(event)
        return _put_event(ctx, event, body)
    source, records = _records(event)
    if source == "aws:s3":
        return [
            _put_object(ctx, r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"]), body) for r in records
        ]
    if source == "aws:sqs":
        _check_sqs_sizes(records)
        return _send_sqs(ctx, records)
    if event.get("eventSource") == "aws:rmq":
        return _publish_rmq(ctx, event.get("rmqMessagesByQueue", {}))
    if "schema_version" in event and "type" in event:
        return [_publish_message(ctx, event)]
    raise EmitError(
        "not an event the local cloud delivers: expected an EventBridge event, an S3 or SQS event "
        "(Records), an aws:rmq event, or a ringfleet message (schema_version, type)"
    )


def _records(event: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """An S3 or SQS event's source (its first record's) and records; (None, []) when it has no records."""
    records = event.get("Records")
    if not isinstance(records, list) or not records:
        return None, []
    source = records[0].get("eventSource") or records[0].get("EventSource")
    return (str(source) if source else None), records


def _check_sqs_sizes(records: list[dict[str, Any]]) -> None:
    for i, r in enumerate(records):
        size = len(str(r.get("body", "")).encode())
        if size > MAX_SQS_MESSAGE_BYTES:
            raise EmitError(
                f"Records.{i}.body is {size} bytes; SQS refuses a message over {MAX_SQS_MESSAGE_BYTES} bytes "
                "(256 KiB): put large payloads in S3 and send their key"
            )


def _publish_rmq(ctx: CloudContext, by_queue: dict[str, list[dict[str, Any]]]) -> list[str]:
    """An aws:rmq event's messages, each published to its queue; refused whole when a queue is wired to no
    function."""
    wired = _wired_rmq_queues(ctx)
    for queue_vhost in by_queue:
        if queue_vhost.split("::", 1)[0] not in wired:
            raise EmitError(
                f"queue {queue_vhost.split('::', 1)[0]!r} is wired to no function in the template (an MQ event "
                f"source's Queues), so Lambda would never deliver it; wired queues: {', '.join(sorted(wired))}"
            )
    actions = []
    for queue_vhost, messages in by_queue.items():
        queue = queue_vhost.split("::", 1)[0]
        for m in messages:
            data = base64.b64decode(m["data"])
            asyncio.run(
                publish(ctx.broker_url, data, queue=queue, message_id=m.get("basicProperties", {}).get("messageId"))
            )
            actions.append(f"published {len(data)} bytes to RabbitMQ queue {queue}")
    return actions


def entry_size(event: dict[str, Any]) -> int:
    """A PutEvents entry's size as EventBridge counts it: 14 bytes for Time, then Source, DetailType, Detail and
    each Resource in UTF-8."""
    detail = event.get("detail", {})
    parts = [
        event.get("source", ""),
        event.get("detail-type", ""),
        detail if isinstance(detail, str) else json.dumps(detail),
    ]
    return 14 + sum(len(str(p).encode()) for p in [*parts, *event.get("resources", [])])


def _check_entry_size(event: dict[str, Any]) -> None:
    size = entry_size(event)
    if size > MAX_EVENT_BYTES:
        raise EmitError(
            f"the event is {size} bytes as a PutEvents entry; EventBridge refuses an entry over {MAX_EVENT_BYTES} "
            "bytes (256 KiB)"
        )


def _wired_rmq_queues(ctx: CloudContext) -> set[str]:
    queues: set[str] = set()
    for lid, fn in ctx.functions.items():
        for ev in fn.events:
            if ev.type == "MQ":
                props = ctx.resolve(dict(ev.properties), f"{lid}.{ev.name}")
                queues.update(str(q) for q in props.get("Queues", []))
    return queues


def _put_event(ctx: CloudContext, event: dict[str, Any], body: bytes | None) -> list[str]:
    if event["source"] == "aws.s3" and event["detail-type"] == "Object Created":
        detail = event["detail"]
        return [_put_object(ctx, detail["bucket"]["name"], detail["object"]["key"], body)]
    if event["detail-type"] == "Scheduled Event":
        raise EmitError(
            "schedules fire from the router's clock; to run a scheduled function now use "
            "`ringfleet invoke <FunctionLogicalId> --event events/scheduled_event.json`"
        )
    entry = {
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Detail": json.dumps(event.get("detail", {})),
        "Resources": list(event.get("resources", [])),
    }
    out = ctx.client("events").put_events(Entries=[entry])
    if out.get("FailedEntryCount"):
        raise EmitError(f"EventBridge refused the event: {out['Entries']}")
    return [f"put_events {event['detail-type']!r} from {event['source']} (event id {out['Entries'][0]['EventId']})"]


def _put_object(ctx: CloudContext, bucket: str, key: str, body: bytes | None) -> str:
    s3 = ctx.client("s3")
    buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    if bucket not in buckets:
        raise EmitError(
            f"bucket {bucket!r} is not in the local cloud (it has: {', '.join(buckets)}); "
            "change it with --set Records.0.s3.bucket.name=NAME"
        )
    s3.put_object(Bucket=bucket, Key=key, Body=body or b"")
    return f"put_object s3://{bucket}/{key} ({len(body or b'')} bytes)"


def _send_sqs(ctx: CloudContext, records: list[dict[str, Any]]) -> list[str]:
    sqs = ctx.client("sqs")
    actions = []
    for r in records:
        name = str(r["eventSourceARN"]).rsplit(":", 1)[-1]
        url = ctx.queue_url_for_arn(str(r["eventSourceARN"]))
        existing = sqs.list_queues().get("QueueUrls", [])
        if url not in existing:
            raise EmitError(
                f"queue {name!r} is not in the local cloud; set Records.N.eventSourceARN to one of: "
                + ", ".join(u.rsplit("/", 1)[-1] for u in existing)
            )
        sqs.send_message(QueueUrl=url, MessageBody=r["body"])
        actions.append(f"send_message to {name}")
    return actions


def _publish_message(ctx: CloudContext, message: dict[str, Any]) -> str:
    from ringfleet.contracts import encode_message, parse_message

    parsed = parse_message(message)  # refuse to send what the contracts reject: the error names the field
    body = encode_message(parsed)
    kind = str(message["type"])
    if kind in _APP:
        asyncio.run(publish(ctx.broker_url, body, queue=JOBS_QUEUE, message_id=str(parsed.message_id)))
        return f"published {kind} to {JOBS_QUEUE}"
    if kind in _WORKER:
        asyncio.run(publish(ctx.broker_url, body, queue=WORKER_EVENTS_QUEUE, message_id=str(parsed.message_id)))
        return f"published {kind} to {WORKER_EVENTS_QUEUE}"
    if kind in _COMMANDS:
        key = command_routing_key(str(message["job_id"]))
        asyncio.run(
            publish(
                ctx.broker_url,
                body,
                exchange=COMMANDS_EXCHANGE,
                routing_key=key,
                message_id=str(parsed.message_id),
            )
        )
        return f"published {kind} to exchange {COMMANDS_EXCHANGE} ({key})"
    raise EmitError(f"unknown message type {kind!r}")
