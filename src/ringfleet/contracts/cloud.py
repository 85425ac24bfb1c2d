"""Cloud events the control plane consumes, shaped as AWS sends them, on top of Powertools' parser models.

EventBridge events (EC2 spot warnings, rebalance recommendations, state changes, Auto Scaling lifecycle hooks,
CloudWatch alarms, schedules, S3 "Object Created", and the control plane's own job events) parse into one
discriminated union, ``CloudEvent``, chosen by ``detail-type``. S3 notifications arrive directly or as SQS bodies.

AWS adds fields to its events over time, so models of AWS events ignore fields they do not know; only the
control plane's own events (``source: ringfleet.control``) reject them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.parser.models import (
    EventBridgeModel,
    S3EventNotificationEventBridgeModel,
    S3Model,
    S3RecordModel,
    SqsModel,
    SqsRecordModel,
)
from pydantic import BaseModel, ConfigDict, Field, Json, StringConstraints, TypeAdapter, model_validator

from ringfleet.contracts.scalars import InstanceId, JobId, TenantId

__all__ = [
    "CONTROL_SOURCE",
    "SPOT_INTERRUPTION_NOTICE",
    "AlarmState",
    "AlarmStateChange",
    "AlarmStateChangeDetail",
    "CapacityWanted",
    "CapacityWantedDetail",
    "CloudEvent",
    "CloudEventSqsModel",
    "CloudEventSqsRecord",
    "ControlDetail",
    "CreatedObject",
    "InstanceState",
    "InstanceStateChange",
    "InstanceStateChangeDetail",
    "JobAdmitted",
    "JobAdmittedDetail",
    "JobFinished",
    "JobFinishedDetail",
    "JobRejectedDetail",
    "LifecycleTerminateAction",
    "LifecycleTerminateActionDetail",
    "NodeEvent",
    "RebalanceRecommendation",
    "RebalanceRecommendationDetail",
    "S3ObjectCreated",
    "S3ObjectCreatedNotification",
    "S3ObjectCreatedRecord",
    "S3ObjectCreatedSqsModel",
    "S3ObjectCreatedSqsRecord",
    "S3TestEvent",
    "ScheduledEvent",
    "SpotInterruptionWarning",
    "SpotInterruptionWarningDetail",
    "UpgradeDetail",
    "control_event_entry",
    "parse_cloud_event",
    "parse_s3_notification",
]

#: EC2 interrupts a spot instance this long after its interruption warning (hibernation starts at once).
SPOT_INTERRUPTION_NOTICE = timedelta(minutes=2)
#: ``source`` of the events the control plane puts on EventBridge itself.
CONTROL_SOURCE = "ringfleet.control"

_AWS_DETAIL = ConfigDict(defer_build=True, populate_by_name=True, frozen=True)
_OWN_DETAIL = ConfigDict(defer_build=True, extra="forbid", frozen=True)


# -- EC2 ------------------------------------------------------------------------------------------------------------


class SpotInterruptionWarningDetail(BaseModel):
    model_config = _AWS_DETAIL

    instance_id: InstanceId = Field(alias="instance-id")
    instance_action: Literal["hibernate", "stop", "terminate"] = Field(alias="instance-action")


class SpotInterruptionWarning(EventBridgeModel):
    """EC2 will interrupt a spot instance in two minutes: the notice to checkpoint at once."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Spot Instance Interruption Warning"] = Field(alias="detail-type")
    detail: SpotInterruptionWarningDetail

    @property
    def instance_id(self) -> str:
        return self.detail.instance_id

    @property
    def interruption_at(self) -> datetime:
        """When the instance goes away: two minutes after the warning, or at once when it hibernates."""
        if self.detail.instance_action == "hibernate":
            return self.time
        return self.time + SPOT_INTERRUPTION_NOTICE


class RebalanceRecommendationDetail(BaseModel):
    model_config = _AWS_DETAIL

    instance_id: InstanceId = Field(alias="instance-id")


class RebalanceRecommendation(EventBridgeModel):
    """A spot instance is at elevated risk of interruption: checkpoint early, start a replacement."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance Rebalance Recommendation"] = Field(alias="detail-type")
    detail: RebalanceRecommendationDetail

    @property
    def instance_id(self) -> str:
        return self.detail.instance_id


InstanceState = Literal["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]


class InstanceStateChangeDetail(BaseModel):
    model_config = _AWS_DETAIL

    instance_id: InstanceId = Field(alias="instance-id")
    state: InstanceState


class InstanceStateChange(EventBridgeModel):
    """An instance changed state: ``running`` is new capacity, the leaving states a node lost without notice."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance State-change Notification"] = Field(alias="detail-type")
    detail: InstanceStateChangeDetail

    @property
    def instance_id(self) -> str:
        return self.detail.instance_id

    @property
    def state(self) -> InstanceState:
        return self.detail.state

    @property
    def is_leaving(self) -> bool:
        """The instance is stopping or terminating: it can no longer train."""
        return self.detail.state in {"stopping", "stopped", "shutting-down", "terminated"}


# -- Auto Scaling ---------------------------------------------------------------------------------------------------


class LifecycleTerminateActionDetail(BaseModel):
    model_config = _AWS_DETAIL

    lifecycle_action_token: str = Field(alias="LifecycleActionToken", min_length=1)
    auto_scaling_group_name: str = Field(alias="AutoScalingGroupName", min_length=1)
    lifecycle_hook_name: str = Field(alias="LifecycleHookName", min_length=1)
    instance_id: InstanceId = Field(alias="EC2InstanceId")
    lifecycle_transition: Literal["autoscaling:EC2_INSTANCE_TERMINATING"] = Field(alias="LifecycleTransition")
    notification_metadata: str | None = Field(default=None, alias="NotificationMetadata")
    #: ``AutoScalingGroup`` to ``EC2`` (terminated) or ``WarmPool`` (returned to the warm pool).
    origin: str | None = Field(default=None, alias="Origin")
    destination: str | None = Field(default=None, alias="Destination")


class LifecycleTerminateAction(EventBridgeModel):
    """Auto Scaling holds an instance in Terminating:Wait until the lifecycle action completes (or times out)."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["aws.autoscaling"]
    detail_type: Literal["EC2 Instance-terminate Lifecycle Action"] = Field(alias="detail-type")
    detail: LifecycleTerminateActionDetail

    @property
    def instance_id(self) -> str:
        return self.detail.instance_id


# -- CloudWatch and schedules ---------------------------------------------------------------------------------------


class AlarmState(BaseModel):
    model_config = _AWS_DETAIL

    value: Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
    reason: str = ""
    #: JSON text with the datapoints that decided the state.
    reason_data: str | None = Field(default=None, alias="reasonData")
    timestamp: datetime


class AlarmStateChangeDetail(BaseModel):
    model_config = _AWS_DETAIL

    alarm_name: str = Field(alias="alarmName", min_length=1)
    state: AlarmState
    #: Absent on the first evaluation of a new alarm.
    previous_state: AlarmState | None = Field(default=None, alias="previousState")
    #: The alarm's metrics or rule; its shape depends on the kind of alarm.
    configuration: dict[str, Any] = Field(default_factory=dict)


class AlarmStateChange(EventBridgeModel):
    """A CloudWatch alarm changed state (the backlog alarm tells the scaler that demand waits)."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["aws.cloudwatch"]
    detail_type: Literal["CloudWatch Alarm State Change"] = Field(alias="detail-type")
    detail: AlarmStateChangeDetail

    @property
    def alarm_name(self) -> str:
        return self.detail.alarm_name

    @property
    def in_alarm(self) -> bool:
        return self.detail.state.value == "ALARM"


class ScheduledEvent(EventBridgeModel):
    """A schedule fired: an EventBridge rule (``aws.events``) or EventBridge Scheduler (``aws.scheduler``)."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    #: EventBridge always sends "0"; `sam local generate-event cloudwatch scheduled-event` leaves it out, and that is
    #: what `sam local invoke` users feed the schedule handlers.
    version: str = "0"
    source: Literal["aws.events", "aws.scheduler"]
    detail_type: Literal["Scheduled Event"] = Field(alias="detail-type")
    detail: dict[str, Any]

    @property
    def rule_arn(self) -> str | None:
        """The ARN of the rule or schedule that fired."""
        return self.resources[0] if self.resources else None


# -- the control plane's own events ---------------------------------------------------------------------------------


class JobAdmittedDetail(BaseModel):
    """A job passed admission; the scaler now counts its workers in the demand."""

    model_config = _OWN_DETAIL

    schema_version: Literal[1] = 1
    tenant: TenantId
    job_id: JobId
    min_workers: Annotated[int, Field(strict=True, ge=1, le=1024)]
    max_workers: Annotated[int, Field(strict=True, ge=1, le=1024)]

    @model_validator(mode="after")
    def _max_workers_at_least_min(self) -> JobAdmittedDetail:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) is less than min_workers ({self.min_workers})")
        return self


class JobAdmitted(EventBridgeModel):
    """Put on EventBridge by job_intake once a job is admitted; the fleet scaler re-evaluates demand."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["ringfleet.control"]
    detail_type: Literal["Job Admitted"] = Field(alias="detail-type")
    detail: JobAdmittedDetail


class JobFinishedDetail(BaseModel):
    """A job reached a final state; its workers no longer count in the demand."""

    model_config = _OWN_DETAIL

    schema_version: Literal[1] = 1
    tenant: TenantId
    job_id: JobId
    state: Literal["SUCCEEDED", "FAILED", "CANCELLED"]


class JobRejectedDetail(BaseModel):
    """A submitted job was not admitted (tenant not registered, over its quota, unknown instance types, a job id
    taken): for whoever watches the bus (no rule of the control plane acts on it)."""

    model_config = _OWN_DETAIL

    schema_version: Literal[1] = 1
    tenant: TenantId
    job_id: JobId
    reason: Annotated[str, Field(min_length=1, max_length=2048)]


class JobFinished(EventBridgeModel):
    """Put on EventBridge when a job ends; the fleet scaler releases its capacity."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["ringfleet.control"]
    detail_type: Literal["Job Finished"] = Field(alias="detail-type")
    detail: JobFinishedDetail


class CapacityWantedDetail(BaseModel):
    """A running job lost (or is about to lose) workers and wants replacements now, not at the scaler's next tick."""

    model_config = _OWN_DETAIL

    schema_version: Literal[1] = 1
    tenant: TenantId
    job_id: JobId
    replacements: Annotated[int, Field(strict=True, ge=1, le=1024)]
    cause: Annotated[str, Field(min_length=1, max_length=64)]


class CapacityWanted(EventBridgeModel):
    """Put on EventBridge by the recovery use case when a job wants replacement capacity; the scaler reconciles."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["ringfleet.control"]
    detail_type: Literal["Capacity Wanted"] = Field(alias="detail-type")
    detail: CapacityWantedDetail


class UpgradeDetail(BaseModel):
    """A rolling upgrade of a running job moved on: ``Upgrade Started``, ``Upgrade Progressed`` (one worker
    replaced), ``Upgrade Completed`` or ``Upgrade RolledBack`` (a new-version worker failed; the old ones run on).
    Put for whoever watches the bus (no rule of the control plane acts on it); ``ringfleet events`` shows the same
    steps from the job's record."""

    model_config = _OWN_DETAIL

    schema_version: Literal[1] = 1
    tenant: TenantId
    job_id: JobId
    phase: Literal["Started", "Progressed", "Completed", "RolledBack"]
    detail: Annotated[str, Field(max_length=2048)] = ""


ControlDetail = JobAdmittedDetail | JobRejectedDetail | JobFinishedDetail | CapacityWantedDetail | UpgradeDetail

_CONTROL_DETAIL_TYPES: dict[type[BaseModel], str] = {
    JobAdmittedDetail: "Job Admitted",
    JobRejectedDetail: "Job Rejected",
    JobFinishedDetail: "Job Finished",
    CapacityWantedDetail: "Capacity Wanted",
}


def control_event_entry(detail: ControlDetail, *, resources: list[str] | None = None) -> dict[str, Any]:
    """The ``put_events`` entry that publishes one of the control plane's own events."""
    kind = f"Upgrade {detail.phase}" if isinstance(detail, UpgradeDetail) else _CONTROL_DETAIL_TYPES[type(detail)]
    return {
        "Source": CONTROL_SOURCE,
        "DetailType": kind,
        "Detail": detail.model_dump_json(),
        "Resources": list(resources or []),
    }


# -- S3 -------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedObject:
    """An object S3 reports created, whichever way the report came (notification or EventBridge)."""

    bucket: str
    #: The key as S3 stores it (URL-decoded), ready for get_object.
    key: str
    size: int | None
    etag: str | None
    #: Orders the events of one key: the greater sequencer is the later event.
    sequencer: str | None
    version_id: str | None = None

    @property
    def sequence(self) -> int | None:
        """The sequencer as a number; S3 sequencers of different lengths compare correctly this way."""
        return int(self.sequencer, 16) if self.sequencer else None


class S3ObjectCreated(S3EventNotificationEventBridgeModel):
    """S3 "Object Created" through EventBridge (a bucket with EventBridge notifications turned on)."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    source: Literal["aws.s3"]
    detail_type: Literal["Object Created"] = Field(alias="detail-type")

    @property
    def object(self) -> CreatedObject:
        obj = self.detail.object
        return CreatedObject(
            bucket=self.detail.bucket.name,
            # EventBridge carries the key as stored, not form-encoded as S3 notifications do.
            key=obj.key,
            size=int(obj.size) if obj.size is not None else None,
            etag=obj.etag or None,
            sequencer=obj.sequencer,
            version_id=obj.version_id,
        )


class S3ObjectCreatedRecord(S3RecordModel):
    """One record of an S3 event notification, restricted to ``ObjectCreated:*`` events."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    eventName: Annotated[str, StringConstraints(pattern=r"^ObjectCreated:")]

    @property
    def created(self) -> CreatedObject:
        obj = self.s3.object
        assert obj is not None  # ObjectCreated events always name their object
        return CreatedObject(
            bucket=self.s3.bucket.name,
            key=unquote_plus(obj.key),  # S3 form-encodes keys in notifications ("a b" arrives as "a+b")
            size=int(obj.size) if obj.size is not None else None,
            etag=obj.eTag,
            sequencer=obj.sequencer,
            version_id=obj.versionId,
        )


class S3ObjectCreatedNotification(S3Model):
    """An S3 event notification of created objects (the event a direct S3 trigger passes to Lambda)."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    Records: list[S3ObjectCreatedRecord] = Field(min_length=1)  # type: ignore[assignment]

    def objects(self) -> list[CreatedObject]:
        return [r.created for r in self.Records]


class S3TestEvent(BaseModel):
    """What S3 sends once when a notification is configured; it announces nothing and is acknowledged."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    Service: Literal["Amazon S3"]
    Event: Literal["s3:TestEvent"]
    Time: datetime
    Bucket: str
    RequestId: str | None = None
    HostId: str | None = None


def parse_s3_notification(body: Mapping[str, Any] | str | bytes) -> S3ObjectCreatedNotification | S3TestEvent:
    """An S3 notification (an SQS record's body for S3 -> SQS -> Lambda): created objects or S3's test event."""
    data = json.loads(body) if isinstance(body, str | bytes) else dict(body)
    if isinstance(data, dict) and data.get("Event") == "s3:TestEvent":
        return S3TestEvent.model_validate(data)
    return S3ObjectCreatedNotification.model_validate(data)


# -- the union, and SQS events carrying it --------------------------------------------------------------------------

#: The events about one instance that recovery acts on.
NodeEvent = SpotInterruptionWarning | RebalanceRecommendation | InstanceStateChange | LifecycleTerminateAction

CloudEvent = Annotated[
    SpotInterruptionWarning
    | RebalanceRecommendation
    | InstanceStateChange
    | LifecycleTerminateAction
    | AlarmStateChange
    | ScheduledEvent
    | S3ObjectCreated
    | JobAdmitted
    | JobFinished
    | CapacityWanted,
    Field(discriminator="detail_type"),
]

_CLOUD_EVENT: TypeAdapter[CloudEvent] = TypeAdapter(CloudEvent, config=ConfigDict(defer_build=True, title="CloudEvent"))


def parse_cloud_event(data: Mapping[str, Any] | str | bytes) -> CloudEvent:
    """An EventBridge event, chosen by ``detail-type``; raises pydantic's ValidationError naming the field."""
    if isinstance(data, str | bytes):
        return _CLOUD_EVENT.validate_json(data)
    return _CLOUD_EVENT.validate_python(dict(data))


class CloudEventSqsRecord(SqsRecordModel):
    """An SQS record whose body is an EventBridge event (an EventBridge rule with an SQS target)."""

    body: Json[CloudEvent]


class CloudEventSqsModel(SqsModel):
    """The SQS event Lambda passes for a queue that EventBridge rules feed."""

    Records: list[CloudEventSqsRecord]


class S3ObjectCreatedSqsRecord(SqsRecordModel):
    """An SQS record whose body is an S3 event notification (S3 -> SQS -> Lambda)."""

    body: Json[S3ObjectCreatedNotification]


class S3ObjectCreatedSqsModel(SqsModel):
    """The SQS event Lambda passes for a queue that S3 notifications feed."""

    Records: list[S3ObjectCreatedSqsRecord]
