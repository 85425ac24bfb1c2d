"""FleetGateway on Auto Scaling: the terminate lifecycle hook's heartbeat and completion."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from ringfleet.domain.nodes import LifecycleHook

__all__ = ["AutoScalingFleetGateway"]

log = logging.getLogger(__name__)


class AutoScalingFleetGateway:
    """Heartbeats and completes terminate lifecycle actions.

    A call that fails is logged, not raised: the hook then runs into its timeout and Auto Scaling applies its
    default result, which is what a completion would have done a little later (moto, locally, knows no lifecycle
    actions at all). Raising would only redeliver an event whose decision is already saved.
    """

    def __init__(self, *, autoscaling_client: Any | None = None) -> None:
        self._client = autoscaling_client or boto3.client("autoscaling")

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
