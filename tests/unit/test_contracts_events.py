"""Every sample in events/ parses with its contract, and the cloud-event contracts reject what AWS would never send."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from ringfleet_local.shapes import complete_s3_notification, rmq_event, scheduled_event

from ringfleet.contracts import (
    MESSAGE_TYPES,
    AlarmStateChange,
    CapacityWanted,
    CloudEventSqsModel,
    CreatedObject,
    InstanceStateChange,
    JobAdmitted,
    JobAdmittedDetail,
    JobFinished,
    LifecycleTerminateAction,
    RabbitMqEvent,
    RebalanceRecommendation,
    S3ObjectCreated,
    S3ObjectCreatedNotification,
    S3ObjectCreatedSqsModel,
    S3TestEvent,
    ScheduledEvent,
    SpotInterruptionWarning,
    control_event_entry,
    parse_cloud_event,
    parse_message,
    parse_rmq_messages,
    parse_s3_notification,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

EVENTS = ROOT / "events"

#: The bare message samples, by file name, and the aws:rmq samples that carry the app and worker ones.
MESSAGE_SAMPLES = {
    "job_submitted": "JobSubmitted",
    "job_cancelled": "JobCancelled",
    "upgrade_job": "UpgradeJob",
    "heartbeat": "Heartbeat",
    "checkpoint_completed": "CheckpointCompleted",
    "worker_failed": "WorkerFailed",
    "instance_idle": "InstanceIdle",
    "checkpoint_now": "CheckpointNow",
    "reconfigure": "Reconfigure",
    "stop": "Stop",
}
MQ_SAMPLES = ("job_submitted", "job_cancelled", "heartbeat", "checkpoint_completed", "worker_failed")

#: What `sam local generate-event cloudwatch scheduled-event` prints, as is: no top-level ``version``.
SAM_SCHEDULED_EVENT = "scheduled_event_sam_local.json"

#: file (relative to events/) -> (the parser a handler uses, what it must parse into)
PARSERS: dict[str, tuple[Callable[[Any], Any], type]] = {
    "ec2_spot_interruption_warning.json": (parse_cloud_event, SpotInterruptionWarning),
    "ec2_rebalance_recommendation.json": (parse_cloud_event, RebalanceRecommendation),
    "ec2_instance_state_change.json": (parse_cloud_event, InstanceStateChange),
    "autoscaling_lifecycle_terminate.json": (parse_cloud_event, LifecycleTerminateAction),
    "cloudwatch_alarm_state_change.json": (parse_cloud_event, AlarmStateChange),
    "scheduled_event.json": (parse_cloud_event, ScheduledEvent),
    SAM_SCHEDULED_EVENT: (parse_cloud_event, ScheduledEvent),
    "s3_object_created_eventbridge.json": (parse_cloud_event, S3ObjectCreated),
    "control_job_admitted.json": (parse_cloud_event, JobAdmitted),
    "control_capacity_wanted.json": (parse_cloud_event, CapacityWanted),
    "control_job_finished.json": (parse_cloud_event, JobFinished),
    "s3_object_created.json": (S3ObjectCreatedNotification.model_validate, S3ObjectCreatedNotification),
    "s3_object_created_sqs.json": (S3ObjectCreatedSqsModel.model_validate, S3ObjectCreatedSqsModel),
    # what S3 sends once when the notification is configured (the pre-traffic hook's harmless backup probe)
    "s3_test_event.json": (parse_s3_notification, S3TestEvent),
    "sqs_spot_interruption_warning.json": (CloudEventSqsModel.model_validate, CloudEventSqsModel),
    **{f"mq_{name}.json": (RabbitMqEvent.model_validate, RabbitMqEvent) for name in MQ_SAMPLES},
    **{f"messages/{name}.json": (parse_message, MESSAGE_TYPES[cls]) for name, cls in MESSAGE_SAMPLES.items()},
}

EVENTBRIDGE_SAMPLES = [
    name for name, (parser, _) in PARSERS.items() if parser is parse_cloud_event and name != SAM_SCHEDULED_EVENT
]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(exc.value)


def test_every_sample_event_has_a_contract() -> None:
    # given the files in events/
    files = {p.relative_to(EVENTS).as_posix() for p in EVENTS.rglob("*.json")}
    # then each is mapped to the contract that parses it, and each mapped file exists
    assert files == set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_sample_event_parses_with_its_contract(name: str) -> None:
    # given a sample as AWS (or a ringfleet app or worker) sends it
    parser, expected = PARSERS[name]
    # when its contract parses it
    parsed = parser(load(name))
    # then it becomes the expected model
    assert isinstance(parsed, expected)


@pytest.mark.parametrize("name", sorted(EVENTBRIDGE_SAMPLES))
def test_eventbridge_samples_carry_the_envelope_fields_aws_sends(name: str) -> None:
    event = load(name)
    assert {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"} <= set(event)
    assert event["account"] == "123456789012" and event["region"] == "us-east-1"


def test_s3_samples_carry_the_fields_moto_leaves_out() -> None:
    record = load("s3_object_created.json")["Records"][0]
    assert {"responseElements", "requestParameters", "userIdentity", "eventVersion"} <= set(record)
    assert {"sequencer", "eTag", "size"} <= set(record["s3"]["object"])
    assert record["s3"]["bucket"]["name"] == "ringfleet-checkpoints-123456789012-us-east-1"
    assert record["s3"]["object"]["key"] == "jobs/digits-demo/ckpt/000000000120/manifest.json"


@pytest.mark.parametrize("name", ["s3_object_created_sqs.json", "sqs_spot_interruption_warning.json"])
def test_sqs_samples_checksum_their_bodies_like_sqs(name: str) -> None:
    record = load(name)["Records"][0]
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode(), usedforsecurity=False).hexdigest()


@pytest.mark.parametrize("name", [n for n in PARSERS if n.startswith("mq_")])
def test_mq_samples_carry_the_bare_message_sample(name: str) -> None:
    # given an aws:rmq sample and the bare message sample of the same type
    event = load(name)
    [message] = [m for ms in event["rmqMessagesByQueue"].values() for m in ms]
    body = base64.b64decode(message["data"])
    # then its body is that message, its size is the body's, and its AMQP message id is the message's
    assert json.loads(body) == load(f"messages/{name.removeprefix('mq_')}")
    assert message["basicProperties"]["bodySize"] == len(body)
    assert message["basicProperties"]["messageId"] == json.loads(body)["message_id"]


def test_the_sqs_sample_body_is_the_eventbridge_sample() -> None:
    # given the warning as EventBridge -> SQS -> Lambda delivers it
    parsed = CloudEventSqsModel.model_validate(load("sqs_spot_interruption_warning.json"))
    # then its body is the same event EventBridge delivers directly
    assert parsed.Records[0].body == parse_cloud_event(load("ec2_spot_interruption_warning.json"))


# -- what the handlers read -------------------------------------------------------------------------------------------


def test_spot_warning_gives_the_instance_and_when_it_goes_away() -> None:
    warning = parse_cloud_event(load("ec2_spot_interruption_warning.json"))
    assert isinstance(warning, SpotInterruptionWarning)
    assert warning.instance_id == "i-0abcd1234ef567891"
    assert warning.interruption_at == datetime(2025, 6, 2, 14, 7, 31, tzinfo=UTC)


def test_a_hibernating_spot_instance_goes_away_at_once() -> None:
    event = load("ec2_spot_interruption_warning.json")
    event["detail"]["instance-action"] = "hibernate"
    warning = parse_cloud_event(event)
    assert isinstance(warning, SpotInterruptionWarning)
    assert warning.interruption_at == warning.time


@pytest.mark.parametrize(
    ("state", "leaving"),
    [("pending", False), ("running", False), ("stopping", True), ("shutting-down", True), ("terminated", True)],
)
def test_state_change_says_whether_the_instance_is_leaving(state: str, leaving: bool) -> None:
    event = load("ec2_instance_state_change.json")
    event["detail"]["state"] = state
    change = parse_cloud_event(event)
    assert isinstance(change, InstanceStateChange)
    assert change.is_leaving is leaving


def test_lifecycle_hook_gives_what_complete_lifecycle_action_needs() -> None:
    action = parse_cloud_event(load("autoscaling_lifecycle_terminate.json"))
    assert isinstance(action, LifecycleTerminateAction)
    assert action.instance_id == "i-0abcd1234ef567890"
    assert action.detail.auto_scaling_group_name == "ringfleet-workers"
    assert action.detail.lifecycle_hook_name and action.detail.lifecycle_action_token


def test_alarm_state_change_says_whether_the_alarm_fires() -> None:
    alarm = parse_cloud_event(load("cloudwatch_alarm_state_change.json"))
    assert isinstance(alarm, AlarmStateChange)
    assert alarm.alarm_name == "ringfleet-backlog" and alarm.in_alarm
    assert alarm.detail.previous_state is not None and alarm.detail.previous_state.value == "OK"


def test_all_three_s3_shapes_name_the_same_created_manifest() -> None:
    # given the same put_object reported directly, through SQS and through EventBridge
    direct = S3ObjectCreatedNotification.model_validate(load("s3_object_created.json")).objects()
    via_sqs = S3ObjectCreatedSqsModel.model_validate(load("s3_object_created_sqs.json")).Records[0].body.objects()
    eventbridge = parse_cloud_event(load("s3_object_created_eventbridge.json"))
    assert isinstance(eventbridge, S3ObjectCreated)
    # then each names the same bucket, key, size and sequencer
    assert direct == via_sqs
    assert [(o.bucket, o.key, o.size, o.sequencer) for o in direct] == [
        (
            eventbridge.object.bucket,
            eventbridge.object.key,
            eventbridge.object.size,
            eventbridge.object.sequencer,
        )
    ]


def test_s3_notification_keys_are_decoded_for_get_object() -> None:
    # given a key S3 form-encoded in its notification
    event = load("s3_object_created.json")
    event["Records"][0]["s3"]["object"]["key"] = "jobs/digits-demo/notes/run+1%2B2.txt"
    # then the created object names the key as stored
    [obj] = S3ObjectCreatedNotification.model_validate(event).objects()
    assert obj.key == "jobs/digits-demo/notes/run 1+2.txt"


def test_sequencers_of_different_lengths_order_by_value() -> None:
    # S3 says: left-pad the shorter one with zeros, then compare
    earlier = CreatedObject("b", "k", 1, "e", sequencer="FF", version_id=None)
    later = CreatedObject("b", "k", 1, "e", sequencer="0100", version_id=None)
    assert earlier.sequence is not None and later.sequence is not None
    assert earlier.sequence < later.sequence


def test_s3_test_event_is_told_apart_from_a_notification() -> None:
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2025-06-02T12:00:00.000Z",
        "Bucket": "ringfleet-checkpoints-123456789012-us-east-1",
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    }
    assert isinstance(parse_s3_notification(json.dumps(test_event)), S3TestEvent)
    assert isinstance(parse_s3_notification(load("s3_object_created.json")), S3ObjectCreatedNotification)


def test_the_same_event_delivered_twice_parses_to_the_same_id() -> None:
    # given an event EventBridge delivered twice (at-least-once)
    first = parse_cloud_event(load("ec2_rebalance_recommendation.json"))
    second = parse_cloud_event(json.dumps(load("ec2_rebalance_recommendation.json")))
    # then both parse to equal values with the same id, the key idempotency uses
    assert first == second and first.id == second.id


def test_a_control_event_put_on_eventbridge_parses_back() -> None:
    # given the entry the control plane puts on EventBridge
    detail = JobAdmittedDetail(tenant="acme", job_id="digits-demo", min_workers=2, max_workers=4)
    entry = control_event_entry(detail)
    # when EventBridge delivers it
    delivered = {
        "version": "0",
        "id": "0f0e0d0c-0b0a-4908-8706-050403020100",
        "detail-type": entry["DetailType"],
        "source": entry["Source"],
        "account": "123456789012",
        "time": "2025-06-02T13:58:01Z",
        "region": "us-east-1",
        "resources": entry["Resources"],
        "detail": json.loads(entry["Detail"]),
    }
    # then it parses into the same detail
    event = parse_cloud_event(delivered)
    assert isinstance(event, JobAdmitted) and event.detail == detail


# -- malformed events -------------------------------------------------------------------------------------------------


def test_a_warning_without_instance_id_names_the_field() -> None:
    event = load("ec2_spot_interruption_warning.json")
    del event["detail"]["instance-id"]
    with pytest.raises(ValidationError) as exc:
        parse_cloud_event(event)
    assert "detail.instance-id" in errors_of(exc)


def test_a_malformed_instance_id_names_the_field() -> None:
    event = load("ec2_rebalance_recommendation.json")
    event["detail"]["instance-id"] = "i-XYZ"
    with pytest.raises(ValidationError) as exc:
        parse_cloud_event(event)
    assert "detail.instance-id" in errors_of(exc)


def test_an_unknown_detail_type_names_the_field() -> None:
    event = load("ec2_spot_interruption_warning.json")
    event["detail-type"] = "EC2 Spot Instance Interruption Warnings"
    with pytest.raises(ValidationError) as exc:
        parse_cloud_event(event)
    assert "detail-type" in errors_of(exc)


def test_a_detail_type_from_the_wrong_source_names_the_field() -> None:
    event = load("ec2_spot_interruption_warning.json")
    event["source"] = "ringfleet.control"
    with pytest.raises(ValidationError) as exc:
        parse_cloud_event(event)
    assert "source" in errors_of(exc)


def test_a_state_aws_does_not_send_names_the_field() -> None:
    event = load("ec2_instance_state_change.json")
    event["detail"]["state"] = "exploded"
    with pytest.raises(ValidationError) as exc:
        parse_cloud_event(event)
    assert "detail.state" in errors_of(exc)


def test_fields_aws_adds_later_are_tolerated() -> None:
    # given a warning with fields AWS might add in future
    event = load("ec2_spot_interruption_warning.json")
    event["detail"]["availability-zone"] = "us-east-1b"
    event["new-top-level-field"] = True
    # then it still parses
    assert isinstance(parse_cloud_event(event), SpotInterruptionWarning)


def test_our_own_control_events_reject_unknown_fields() -> None:
    event = load("control_job_finished.json")
    event["detail"]["workers"] = 3
    with pytest.raises(ValidationError) as exc:
        parse_cloud_event(event)
    assert "detail.workers" in errors_of(exc)


def test_an_s3_notification_of_a_deletion_is_not_a_created_object() -> None:
    event = load("s3_object_created.json")
    event["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    with pytest.raises(ValidationError) as exc:
        S3ObjectCreatedNotification.model_validate(event)
    assert "eventName" in errors_of(exc)


# -- the local cloud builds events these contracts accept -------------------------------------------------------------


def test_local_rmq_events_parse_with_the_mq_contract() -> None:
    # given a message published on the jobs queue, as the local router hands it to a function
    body = (EVENTS / "messages" / "job_cancelled.json").read_bytes()
    props = {"content_type": "application/json", "message_id": "m-1", "delivery_mode": 2, "timestamp": None}
    event = rmq_event(
        [("ringfleet.jobs", body, props, False)],
        broker_arn="arn:aws:mq:us-east-1:123456789012:broker:ringfleet-local:b-00000000-0000-0000-0000-000000000000",
    )
    # then it parses, body and all
    [message] = parse_rmq_messages(event)
    assert message == parse_message(body)


def test_local_schedules_and_s3_notifications_parse_with_their_contracts() -> None:
    rule = "arn:aws:events:us-east-1:123456789012:rule/ringfleet-HeartbeatSweepFunction-Tick"
    tick = parse_cloud_event(scheduled_event(rule, datetime.now(UTC), account="123456789012", region="us-east-1"))
    assert isinstance(tick, ScheduledEvent) and tick.rule_arn == rule
    # moto's notification lacks request fields and sequencer, and percent-encodes '/'
    moto_like = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2025-06-02T14:05:58.412Z",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "configurationId": "manifest",
                    "bucket": {"name": "ringfleet-checkpoints-123456789012-us-east-1"},
                    "object": {
                        "key": "jobs%2Fdigits-demo%2Fckpt%2F000000000120%2Fmanifest.json",
                        "size": 2,
                        "eTag": "x",
                    },
                },
            }
        ]
    }
    [obj] = S3ObjectCreatedNotification.model_validate(complete_s3_notification(moto_like)).objects()
    assert obj.key == "jobs/digits-demo/ckpt/000000000120/manifest.json"


def _model_fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_message_samples_list_every_field_of_their_contract() -> None:
    # a sample that omits an optional field would hide it from whoever reads events/ to learn the wire format
    for path in sorted((EVENTS / "messages").glob("*.json")):
        sample = json.loads(path.read_text())
        assert set(sample) == _model_fields(MESSAGE_TYPES[sample["type"]]), path.name


def test_an_admitted_job_wanting_fewer_max_than_min_workers_is_refused() -> None:
    event = load("control_job_admitted.json")
    event["detail"].update(min_workers=4, max_workers=2)
    with pytest.raises(ValidationError) as exc:
        parse_cloud_event(event)
    assert "max_workers" in errors_of(exc)


def test_eventbridge_scheduler_ticks_parse_too() -> None:
    # EventBridge Scheduler (SAM's ScheduleV2) sends its empty detail as the string "{}"
    event = load("scheduled_event.json")
    event.update(source="aws.scheduler", detail="{}")
    tick = parse_cloud_event(event)
    assert isinstance(tick, ScheduledEvent) and tick.detail == {}


def test_the_scheduled_event_sam_local_generates_parses_though_it_has_no_version() -> None:
    # given the output of `sam local generate-event cloudwatch scheduled-event`, which has no top-level version
    event = load(SAM_SCHEDULED_EVENT)
    assert "version" not in event
    # when a schedule handler parses it
    tick = parse_cloud_event(event)
    # then it is a tick like EventBridge's, with the version EventBridge would have sent
    assert isinstance(tick, ScheduledEvent) and tick.version == "0" and tick.id == event["id"]
