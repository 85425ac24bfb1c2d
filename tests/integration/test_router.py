"""The router delivers every event source type as Lambda would: shapes, batch failures, retries, DLQs, schedules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from ringfleet_local.clock import ManualClock
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.router import Delivery, decode_rmq

from ringfleet.adapters.rabbitmq import publish
from ringfleet.contracts.broker import JOBS_QUEUE, dead_letter_queue
from tests.conftest import ROOT, purge_queue

pytestmark = pytest.mark.integration

TEMPLATE = ROOT / "tests" / "fixtures" / "router_template.yaml"


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def cloud(broker_url: str, clock: ManualClock) -> Iterator[LocalCloud]:
    purge_queue(broker_url, JOBS_QUEUE)
    purge_queue(broker_url, dead_letter_queue(JOBS_QUEUE))
    with LocalCloud(TEMPLATE, broker_url=broker_url, clock=clock) as c:
        yield c


def bodies_of(deliveries: list[Delivery], function: str) -> list[str]:
    return [r["body"] for d in deliveries if d.function == function for r in d.event["Records"]]


def test_an_eventbridge_event_reaches_the_function_its_rule_feeds_in_the_sqs_shape(cloud: LocalCloud) -> None:
    # given a rule in the template that sends "Thing Happened" events to the PartialFunction's queue
    # when an app puts such an event on the default bus
    detail = {"thing": "first"}
    cloud.client("events").put_events(
        Entries=[{"Source": "test.app", "DetailType": "Thing Happened", "Detail": json.dumps(detail)}]
    )
    # then PartialFunction receives it as an SQS record whose body is the EventBridge event, fields moto omits filled in
    done = cloud.router.wait_for(lambda ds: any('"first"' in b for b in bodies_of(ds, "PartialFunction")))
    record = next(r for d in done if d.function == "PartialFunction" for r in d.event["Records"])
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].endswith(":ringfleet-InputQueue")
    assert set(record["attributes"]) >= {"ApproximateReceiveCount", "SentTimestamp", "SenderId"}
    event = json.loads(record["body"])
    assert event["detail"] == detail
    assert event["account"] == "123456789012"  # moto leaves it out; AWS sends it
    assert event["detail-type"] == "Thing Happened"


def test_only_the_reported_batch_item_failure_is_redelivered_then_dead_lettered(cloud: LocalCloud) -> None:
    # given one good and one poison message on a queue whose function reports batch item failures
    sqs = cloud.client("sqs")
    url = cloud.ctx.resolve({"Ref": "InputQueue"})
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "good-1"}, {"Id": "b", "MessageBody": "poison-1"}]
    )
    dlq = cloud.ctx.resolve({"Ref": "InputDLQ"})
    # when the router has delivered them until the poison one is in the DLQ
    dead: list[str] = []
    for _ in range(60):
        got = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1, MaxNumberOfMessages=10).get("Messages", [])
        dead += [m["Body"] for m in got]
        if dead:
            break
    # then the good message was delivered exactly once, the poison one twice (maxReceiveCount) and is in the DLQ
    bodies = bodies_of(cloud.router.deliveries, "PartialFunction")
    assert dead == ["poison-1"]
    assert bodies.count("good-1") == 1
    assert bodies.count("poison-1") == 2


def test_a_handler_that_raises_gets_its_message_into_the_dlq_after_max_receive_count(cloud: LocalCloud) -> None:
    # given a function that always raises, fed by a queue with maxReceiveCount 2
    sqs = cloud.client("sqs")
    sqs.send_message(QueueUrl=cloud.ctx.resolve({"Ref": "RaiseQueue"}), MessageBody="doomed")
    dlq = cloud.ctx.resolve({"Ref": "RaiseDLQ"})
    # when the router keeps delivering it
    dead: list[str] = []
    for _ in range(60):
        dead += [m["Body"] for m in sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1).get("Messages", [])]
        if dead:
            break
    # then it was tried twice, each failure recorded with the handler's error, and it now sits in the DLQ
    tries = [d for d in cloud.router.deliveries if d.function == "RaisingFunction"]
    assert dead == ["doomed"]
    assert len(tries) == 2
    assert all(not d.result.ok and d.result.error_message == "this handler always fails" for d in tries)
    assert "RuntimeError" in tries[0].result.logs


def test_a_broker_message_arrives_as_an_aws_rmq_event(cloud: LocalCloud, broker_url: str) -> None:
    # given the MQ event source on ringfleet.jobs
    # when an app publishes a message there
    asyncio.run(publish(broker_url, b'{"hello": "mq"}', queue=JOBS_QUEUE, message_id="m-1"))
    # then MqFunction receives an aws:rmq event with the base64 body and the AMQP properties
    done = cloud.router.wait_for(lambda ds: any(d.function == "MqFunction" for d in ds))
    event = next(d for d in done if d.function == "MqFunction").event
    assert event["eventSource"] == "aws:rmq"
    assert list(event["rmqMessagesByQueue"]) == [f"{JOBS_QUEUE}::/"]
    message = event["rmqMessagesByQueue"][f"{JOBS_QUEUE}::/"][0]
    assert message["basicProperties"]["messageId"] == "m-1"
    assert message["basicProperties"]["contentType"] == "application/json"
    assert decode_rmq(event) == [b'{"hello": "mq"}']


def test_a_poison_broker_message_is_dead_lettered_after_the_delivery_limit(cloud: LocalCloud, broker_url: str) -> None:
    # given a function that fails on a poison message
    before = len([d for d in cloud.router.deliveries if d.function == "MqFunction"])
    # when one is published
    asyncio.run(publish(broker_url, b"poison", queue=JOBS_QUEUE))

    # then it is retried and then dead-lettered to ringfleet.jobs.dlq by the broker
    async def dead_letters() -> list[bytes]:
        from ringfleet.adapters.rabbitmq import connect

        conn = await connect(broker_url)
        async with conn:
            ch = await conn.channel()
            q = await ch.get_queue(dead_letter_queue(JOBS_QUEUE))
            out = []
            for _ in range(300):
                msg = await q.get(fail=False)
                if msg is not None:
                    await msg.ack()
                    out.append(msg.body)
                    break
                await asyncio.sleep(0.1)
            return out

    assert asyncio.run(dead_letters()) == [b"poison"]
    tries = [d for d in cloud.router.deliveries if d.function == "MqFunction"][before:]
    assert len(tries) >= 2
    assert all(not d.result.ok for d in tries)


def test_schedules_fire_on_the_injected_clock(cloud: LocalCloud, clock: ManualClock) -> None:
    # given a rate(5 minutes) schedule and a clock that only moves when told
    def ticks() -> list[Delivery]:
        return [d for d in cloud.router.deliveries if d.function == "TickFunction"]

    assert ticks() == []
    # when the clock moves 10 minutes
    clock.advance(600)
    # then the function ran twice, with scheduled events, and the template's environment resolved
    cloud.router.wait_for(lambda ds: len([d for d in ds if d.function == "TickFunction"]) == 2)
    first = ticks()[0]
    assert first.event["detail-type"] == "Scheduled Event"
    assert first.event["source"] == "aws.events"
    assert first.result.result["input_queue_url"].endswith("/123456789012/ringfleet-InputQueue")
    assert "echo" in first.result.logs and "ringfleet-us-east-1" in first.result.logs


def s3_events_of(deliveries: list[Delivery], key: str) -> list[str]:
    """The eventName of every S3 notification about ``key`` that reached UploadFunction, in delivery order (the
    s3:TestEvent S3 sends when the notification is configured has no records)."""
    records = [json.loads(body).get("Records", []) for body in bodies_of(deliveries, "UploadFunction")]
    return [r["eventName"] for rs in records for r in rs if r["s3"]["object"]["key"] == key]


def test_one_multipart_upload_reaches_the_function_once_as_complete_multipart_upload(cloud: LocalCloud) -> None:
    # given a bucket that notifies a queue of every ObjectCreated, the queue feeding UploadFunction
    s3, sqs = cloud.client("s3"), cloud.client("sqs")
    bucket = str(cloud.ctx.resolve({"Ref": "UploadBucket"}))
    queue = cloud.ctx.resolve({"Ref": "UploadQueue"})
    key = "jobs/j1/ckpt-00000010/shard-0.bin"
    # when a file goes up as one multipart upload of two parts (moto 5.2 notifies ObjectCreated:Put from inside
    # complete_multipart_upload, then ObjectCreated:CompleteMultipartUpload; S3 sends only the second)
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=body)["ETag"],
        }
        for n, body in ((1, b"a" * (5 << 20)), (2, b"tail"))
    ]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    # and then a plain PutObject of another file
    s3.put_object(Bucket=bucket, Key="jobs/j1/manifest.json", Body=b"{}")
    # then, once the queue is drained, the upload arrived exactly once, as S3 sends it, and the PutObject as a Put
    cloud.router.wait_for(lambda ds: s3_events_of(ds, "jobs/j1/manifest.json") != [])

    def drained() -> bool:
        attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        return attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"] == "0"

    deadline = time.monotonic() + 30
    while not drained() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert drained()
    assert s3_events_of(cloud.router.deliveries, key) == ["ObjectCreated:CompleteMultipartUpload"]
    assert s3_events_of(cloud.router.deliveries, "jobs/j1/manifest.json") == ["ObjectCreated:Put"]
