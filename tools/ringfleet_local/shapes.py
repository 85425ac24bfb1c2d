"""Lambda event shapes the router hands to handlers, and the fields moto leaves out that real AWS sends."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

__all__ = [
    "complete_body",
    "complete_eventbridge_event",
    "complete_s3_notification",
    "not_sent_by_aws",
    "rmq_event",
    "scheduled_event",
    "sqs_event",
]


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def complete_eventbridge_event(event: dict[str, Any], *, account: str, region: str) -> dict[str, Any]:
    """Adds what moto's EventBridge leaves out of a delivered event (``account``, at times ``version``)."""
    out = dict(event)
    out.setdefault("version", "0")
    out.setdefault("id", str(uuid.uuid4()))
    out.setdefault("account", account)
    out.setdefault("time", _iso(datetime.now(UTC)))
    out.setdefault("region", region)
    out.setdefault("resources", [])
    out.setdefault("detail", {})
    return out


def complete_s3_notification(body: dict[str, Any]) -> dict[str, Any]:
    """Fills an S3 event notification the way S3 sends it.

    moto omits the request fields and the object's sequencer, and percent-encodes ``/`` in keys, which S3
    leaves alone (S3 form-encodes keys: spaces become ``+``, slashes stay).
    """
    records = []
    for record in body.get("Records", []):
        rec = json.loads(json.dumps(record))
        rec.setdefault("eventVersion", "2.1")
        rec.setdefault("userIdentity", {"principalId": "AWS:AIDAEXAMPLELOCAL"})
        rec.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
        request_id = uuid.uuid4().hex[:16].upper()
        rec.setdefault("responseElements", {"x-amz-request-id": request_id, "x-amz-id-2": request_id * 4})
        s3 = rec.setdefault("s3", {})
        s3.setdefault("s3SchemaVersion", "1.0")
        bucket = s3.setdefault("bucket", {})
        bucket.setdefault("ownerIdentity", {"principalId": "AEXAMPLELOCAL"})
        if "name" in bucket:
            bucket.setdefault("arn", f"arn:aws:s3:::{bucket['name']}")
        obj = s3.setdefault("object", {})
        if "key" in obj:
            obj["key"] = quote_plus(unquote_plus(obj["key"]), safe="/")
        obj.setdefault("sequencer", f"{int(datetime.now(UTC).timestamp() * 1e6):016X}")
        records.append(rec)
    return {**body, "Records": records}


#: The ETag of an object made by a multipart upload: the MD5 of its parts' MD5s, a dash, the number of parts.
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-[0-9]+$")


def _moto_only_record(record: Any) -> bool:
    """moto's ``complete_multipart_upload`` stores the object with its own ``put_object``, which notifies
    ``ObjectCreated:Put`` before the real ``ObjectCreated:CompleteMultipartUpload``. A PutObject never makes a
    multipart ETag, so a Put carrying one is that extra notification."""
    if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
        return False
    etag = str(record.get("s3", {}).get("object", {}).get("eTag", ""))
    return record.get("eventName") == "ObjectCreated:Put" and _MULTIPART_ETAG.match(etag) is not None


def not_sent_by_aws(body: str) -> bool:
    """Whether an SQS message body is a notification moto sends and AWS does not (so the local cloud drops it)."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    records = data.get("Records") if isinstance(data, dict) else None
    return isinstance(records, list) and bool(records) and all(_moto_only_record(r) for r in records)


def complete_body(body: str, *, account: str, region: str) -> str:
    """Completes an SQS message body that carries an EventBridge event or an S3 notification; others pass as-is."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    if "detail-type" in data and "source" in data:
        return json.dumps(complete_eventbridge_event(data, account=account, region=region))
    records = data.get("Records")
    if (
        isinstance(records, list)
        and records
        and isinstance(records[0], dict)
        and records[0].get("eventSource") == "aws:s3"
    ):
        return json.dumps(complete_s3_notification(data))
    return body


def sqs_event(messages: list[dict[str, Any]], *, queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda's SQS poller passes for a batch from ``receive_message``."""
    records = []
    for m in messages:
        attrs = m.get("Attributes", {})
        msg_attrs = {
            name: {
                "stringValue": v.get("StringValue"),
                "binaryValue": base64.b64encode(v["BinaryValue"]).decode() if "BinaryValue" in v else None,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": v.get("DataType", "String"),
            }
            for name, v in m.get("MessageAttributes", {}).items()
        }
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attrs.get("SentTimestamp", "0"),
                    "SenderId": attrs.get("SenderId", "AIDAEXAMPLELOCAL"),
                    "ApproximateFirstReceiveTimestamp": attrs.get("ApproximateFirstReceiveTimestamp", "0"),
                },
                "messageAttributes": msg_attrs,
                "md5OfBody": hashlib.md5(m["Body"].encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def rmq_event(
    messages: list[tuple[str, bytes, dict[str, Any], bool]], *, broker_arn: str, vhost: str = "/"
) -> dict[str, Any]:
    """The ``aws:rmq`` event of Lambda's Amazon MQ (RabbitMQ) poller: (queue, body, properties, redelivered)."""
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for queue, body, props, redelivered in messages:
        by_queue.setdefault(f"{queue}::{vhost}", []).append(
            {
                "basicProperties": {
                    "contentType": props.get("content_type"),
                    "contentEncoding": props.get("content_encoding"),
                    "headers": props.get("headers") or {},
                    "deliveryMode": props.get("delivery_mode"),
                    "priority": props.get("priority"),
                    "correlationId": props.get("correlation_id"),
                    "replyTo": props.get("reply_to"),
                    "expiration": props.get("expiration"),
                    "messageId": props.get("message_id"),
                    "timestamp": props.get("timestamp"),
                    "type": props.get("type"),
                    "userId": props.get("user_id"),
                    "appId": props.get("app_id"),
                    "clusterId": props.get("cluster_id"),
                    "bodySize": len(body),
                },
                "redelivered": redelivered,
                "data": base64.b64encode(body).decode(),
            }
        )
    return {"eventSource": "aws:rmq", "eventSourceArn": broker_arn, "rmqMessagesByQueue": by_queue}


def scheduled_event(rule_arn: str, when: datetime, *, account: str, region: str) -> dict[str, Any]:
    """What EventBridge Scheduler-less schedule rules (``rate(...)``) deliver to a function."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": _iso(when),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }
