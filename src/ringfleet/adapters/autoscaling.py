"""InstanceLifecycle on AWS: lifecycle hooks' heartbeat and completion (Auto Scaling), instance states (EC2)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from ringfleet.core.nodes import LifecycleHook

__all__ = ["AutoScalingLifecycle"]

log = logging.getLogger(__name__)


class AutoScalingLifecycle:
    """Heartbeats and completes terminate lifecycle actions; tells which instances no longer run.

    A call that fails is logged, not raised: the hook then runs into its timeout and Auto Scaling applies its
    default result, which is what a completion would have done a little later (moto, locally, knows no lifecycle
    actions at all). Raising would only redeliver an event whose decision is already saved.
    """

    def __init__(self, *, autoscaling_client: Any | None = None, ec2_client: Any | None = None) -> None:
        self._client = autoscaling_client or boto3.client("autoscaling")
        self._ec2 = ec2_client

    def not_running(self, instance_ids: Collection[str]) -> set[str]:
        ids = sorted(set(instance_ids))
        if not ids:
            return set()
        self._ec2 = self._ec2 or boto3.client("ec2")
        running: set[str] = set()
        for start in range(0, len(ids), 200):
            # A filter, not InstanceIds: an id EC2 no longer knows is then simply absent instead of an error.
            pages = self._ec2.get_paginator("describe_instances").paginate(
                Filters=[
                    {"Name": "instance-id", "Values": ids[start : start + 200]},
                    {"Name": "instance-state-name", "Values": ["pending", "running"]},
                ]
            )
            running |= {i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]}
        return set(ids) - running

    def heartbeat_lifecycle_action(self, hook: LifecycleHook) -> None:
        self._call("record_lifecycle_action_heartbeat", hook)

    def complete_lifecycle_action(self, hook: LifecycleHook, result: str = "CONTINUE") -> None:
        self._call("complete_lifecycle_action", hook, LifecycleActionResult=result)

    def _call(self, operation: str, hook: LifecycleHook, **extra: Any) -> None:
        try:
            getattr(self._client, operation)(
                AutoScalingGroupName=hook.auto_scaling_group,
                LifecycleHookName=hook.hook_name,
                LifecycleActionToken=hook.token,
                InstanceId=hook.instance_id,
                **extra,
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("%s for %s failed: %s", operation, hook.instance_id, exc)
        except Exception as exc:  # an endpoint that lacks the API (moto) answers with errors botocore cannot model
            log.warning("%s for %s failed: %s: %s", operation, hook.instance_id, type(exc).__name__, exc)
