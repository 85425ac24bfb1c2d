"""Contracts: pydantic models of every event the control plane consumes and every message it or a worker sends.

Lambda handlers import this package, so it imports nothing heavier than pydantic and Powertools' parser.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringfleet.contracts.broker import APPS_EXCHANGE as APPS_EXCHANGE
    from ringfleet.contracts.broker import COMMANDS_EXCHANGE as COMMANDS_EXCHANGE
    from ringfleet.contracts.broker import DEAD_LETTER_EXCHANGE as DEAD_LETTER_EXCHANGE
    from ringfleet.contracts.broker import INSTANCE_QUEUE_ARGUMENTS as INSTANCE_QUEUE_ARGUMENTS
    from ringfleet.contracts.broker import JOBS_QUEUE as JOBS_QUEUE
    from ringfleet.contracts.broker import MQ_QUEUES as MQ_QUEUES
    from ringfleet.contracts.broker import WORKER_EVENTS_QUEUE as WORKER_EVENTS_QUEUE
    from ringfleet.contracts.broker import command_routing_key as command_routing_key
    from ringfleet.contracts.broker import dead_letter_queue as dead_letter_queue
    from ringfleet.contracts.broker import instance_queue as instance_queue
    from ringfleet.contracts.broker import instance_routing_keys as instance_routing_keys
    from ringfleet.contracts.checkpoints import MANIFEST_NAME as MANIFEST_NAME
    from ringfleet.contracts.checkpoints import MAX_SHARDS as MAX_SHARDS
    from ringfleet.contracts.checkpoints import CheckpointManifest as CheckpointManifest
    from ringfleet.contracts.checkpoints import ShardEntry as ShardEntry
    from ringfleet.contracts.checkpoints import checkpoint_prefix as checkpoint_prefix
    from ringfleet.contracts.checkpoints import checkpoint_uri as checkpoint_uri
    from ringfleet.contracts.checkpoints import encode_manifest as encode_manifest
    from ringfleet.contracts.checkpoints import manifest_key as manifest_key
    from ringfleet.contracts.checkpoints import parse_checkpoint_uri as parse_checkpoint_uri
    from ringfleet.contracts.checkpoints import parse_manifest as parse_manifest
    from ringfleet.contracts.checkpoints import parse_manifest_key as parse_manifest_key
    from ringfleet.contracts.cloud import CONTROL_SOURCE as CONTROL_SOURCE
    from ringfleet.contracts.cloud import SPOT_INTERRUPTION_NOTICE as SPOT_INTERRUPTION_NOTICE
    from ringfleet.contracts.cloud import AlarmState as AlarmState
    from ringfleet.contracts.cloud import AlarmStateChange as AlarmStateChange
    from ringfleet.contracts.cloud import AlarmStateChangeDetail as AlarmStateChangeDetail
    from ringfleet.contracts.cloud import CapacityWanted as CapacityWanted
    from ringfleet.contracts.cloud import CapacityWantedDetail as CapacityWantedDetail
    from ringfleet.contracts.cloud import CloudEvent as CloudEvent
    from ringfleet.contracts.cloud import CloudEventSqsModel as CloudEventSqsModel
    from ringfleet.contracts.cloud import CloudEventSqsRecord as CloudEventSqsRecord
    from ringfleet.contracts.cloud import ControlDetail as ControlDetail
    from ringfleet.contracts.cloud import CreatedObject as CreatedObject
    from ringfleet.contracts.cloud import InstanceStateChange as InstanceStateChange
    from ringfleet.contracts.cloud import InstanceStateChangeDetail as InstanceStateChangeDetail
    from ringfleet.contracts.cloud import JobAdmitted as JobAdmitted
    from ringfleet.contracts.cloud import JobAdmittedDetail as JobAdmittedDetail
    from ringfleet.contracts.cloud import JobFinished as JobFinished
    from ringfleet.contracts.cloud import JobFinishedDetail as JobFinishedDetail
    from ringfleet.contracts.cloud import JobRejectedDetail as JobRejectedDetail
    from ringfleet.contracts.cloud import LifecycleTerminateAction as LifecycleTerminateAction
    from ringfleet.contracts.cloud import LifecycleTerminateActionDetail as LifecycleTerminateActionDetail
    from ringfleet.contracts.cloud import NodeEvent as NodeEvent
    from ringfleet.contracts.cloud import RebalanceRecommendation as RebalanceRecommendation
    from ringfleet.contracts.cloud import RebalanceRecommendationDetail as RebalanceRecommendationDetail
    from ringfleet.contracts.cloud import S3ObjectCreated as S3ObjectCreated
    from ringfleet.contracts.cloud import S3ObjectCreatedNotification as S3ObjectCreatedNotification
    from ringfleet.contracts.cloud import S3ObjectCreatedRecord as S3ObjectCreatedRecord
    from ringfleet.contracts.cloud import S3ObjectCreatedSqsModel as S3ObjectCreatedSqsModel
    from ringfleet.contracts.cloud import S3ObjectCreatedSqsRecord as S3ObjectCreatedSqsRecord
    from ringfleet.contracts.cloud import S3TestEvent as S3TestEvent
    from ringfleet.contracts.cloud import ScheduledEvent as ScheduledEvent
    from ringfleet.contracts.cloud import SpotInterruptionWarning as SpotInterruptionWarning
    from ringfleet.contracts.cloud import SpotInterruptionWarningDetail as SpotInterruptionWarningDetail
    from ringfleet.contracts.cloud import UpgradeDetail as UpgradeDetail
    from ringfleet.contracts.cloud import control_event_entry as control_event_entry
    from ringfleet.contracts.cloud import parse_cloud_event as parse_cloud_event
    from ringfleet.contracts.cloud import parse_s3_notification as parse_s3_notification
    from ringfleet.contracts.envelopes import RabbitMqEnvelope as RabbitMqEnvelope
    from ringfleet.contracts.messages import DEFAULT_CHECKPOINT_INTERVAL_STEPS as DEFAULT_CHECKPOINT_INTERVAL_STEPS
    from ringfleet.contracts.messages import MESSAGE_TYPES as MESSAGE_TYPES
    from ringfleet.contracts.messages import AppMessage as AppMessage
    from ringfleet.contracts.messages import CheckpointCompleted as CheckpointCompleted
    from ringfleet.contracts.messages import CheckpointNow as CheckpointNow
    from ringfleet.contracts.messages import CheckpointRef as CheckpointRef
    from ringfleet.contracts.messages import Command as Command
    from ringfleet.contracts.messages import Heartbeat as Heartbeat
    from ringfleet.contracts.messages import InstanceIdle as InstanceIdle
    from ringfleet.contracts.messages import JobCancelled as JobCancelled
    from ringfleet.contracts.messages import JobSubmitted as JobSubmitted
    from ringfleet.contracts.messages import Message as Message
    from ringfleet.contracts.messages import MessageBase as MessageBase
    from ringfleet.contracts.messages import Program as Program
    from ringfleet.contracts.messages import Reconfigure as Reconfigure
    from ringfleet.contracts.messages import Stop as Stop
    from ringfleet.contracts.messages import UpgradeJob as UpgradeJob
    from ringfleet.contracts.messages import WorkerFailed as WorkerFailed
    from ringfleet.contracts.messages import WorkerMessage as WorkerMessage
    from ringfleet.contracts.messages import encode_message as encode_message
    from ringfleet.contracts.messages import parse_message as parse_message
    from ringfleet.contracts.messages import split_host_port as split_host_port
    from ringfleet.contracts.mq import RabbitMqBasicProperties as RabbitMqBasicProperties
    from ringfleet.contracts.mq import RabbitMqEvent as RabbitMqEvent
    from ringfleet.contracts.mq import RabbitMqMessage as RabbitMqMessage
    from ringfleet.contracts.mq import parse_rmq_messages as parse_rmq_messages

#: Which module defines each public name. Loaded on first use (PEP 562) so that a handler pays, at cold start, only
#: for the contracts it uses: building ~100 pydantic models and Powertools' envelopes up front doubled import time.
_WHERE = {
    "AlarmState": "cloud",
    "AlarmStateChange": "cloud",
    "AlarmStateChangeDetail": "cloud",
    "AppMessage": "messages",
    "APPS_EXCHANGE": "broker",
    "COMMANDS_EXCHANGE": "broker",
    "INSTANCE_QUEUE_ARGUMENTS": "broker",
    "instance_queue": "broker",
    "instance_routing_keys": "broker",
    "CONTROL_SOURCE": "cloud",
    "CapacityWanted": "cloud",
    "CapacityWantedDetail": "cloud",
    "UpgradeDetail": "cloud",
    "UpgradeJob": "messages",
    "ControlDetail": "cloud",
    "CheckpointCompleted": "messages",
    "CheckpointManifest": "checkpoints",
    "CheckpointNow": "messages",
    "CheckpointRef": "messages",
    "CloudEvent": "cloud",
    "CloudEventSqsModel": "cloud",
    "CloudEventSqsRecord": "cloud",
    "Command": "messages",
    "CreatedObject": "cloud",
    "DEAD_LETTER_EXCHANGE": "broker",
    "DEFAULT_CHECKPOINT_INTERVAL_STEPS": "messages",
    "Heartbeat": "messages",
    "InstanceStateChange": "cloud",
    "InstanceStateChangeDetail": "cloud",
    "JOBS_QUEUE": "broker",
    "JobAdmitted": "cloud",
    "JobAdmittedDetail": "cloud",
    "JobCancelled": "messages",
    "JobFinished": "cloud",
    "JobFinishedDetail": "cloud",
    "JobRejectedDetail": "cloud",
    "JobSubmitted": "messages",
    "LifecycleTerminateAction": "cloud",
    "LifecycleTerminateActionDetail": "cloud",
    "MANIFEST_NAME": "checkpoints",
    "MAX_SHARDS": "checkpoints",
    "MESSAGE_TYPES": "messages",
    "MQ_QUEUES": "broker",
    "Message": "messages",
    "MessageBase": "messages",
    "NodeEvent": "cloud",
    "Program": "messages",
    "RabbitMqBasicProperties": "mq",
    "RabbitMqEnvelope": "envelopes",
    "RabbitMqEvent": "mq",
    "RabbitMqMessage": "mq",
    "RebalanceRecommendation": "cloud",
    "RebalanceRecommendationDetail": "cloud",
    "Reconfigure": "messages",
    "S3ObjectCreated": "cloud",
    "S3ObjectCreatedNotification": "cloud",
    "S3ObjectCreatedRecord": "cloud",
    "S3ObjectCreatedSqsModel": "cloud",
    "S3ObjectCreatedSqsRecord": "cloud",
    "S3TestEvent": "cloud",
    "SPOT_INTERRUPTION_NOTICE": "cloud",
    "ScheduledEvent": "cloud",
    "ShardEntry": "checkpoints",
    "SpotInterruptionWarning": "cloud",
    "SpotInterruptionWarningDetail": "cloud",
    "Stop": "messages",
    "WORKER_EVENTS_QUEUE": "broker",
    "WorkerFailed": "messages",
    "InstanceIdle": "messages",
    "WorkerMessage": "messages",
    "checkpoint_prefix": "checkpoints",
    "checkpoint_uri": "checkpoints",
    "command_routing_key": "broker",
    "control_event_entry": "cloud",
    "dead_letter_queue": "broker",
    "encode_manifest": "checkpoints",
    "encode_message": "messages",
    "manifest_key": "checkpoints",
    "parse_checkpoint_uri": "checkpoints",
    "parse_cloud_event": "cloud",
    "parse_manifest": "checkpoints",
    "parse_manifest_key": "checkpoints",
    "parse_message": "messages",
    "parse_rmq_messages": "mq",
    "parse_s3_notification": "cloud",
    "split_host_port": "messages",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ringfleet.contracts' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ringfleet.contracts.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
