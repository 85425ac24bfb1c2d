"""pre_traffic: CodeDeploy's BeforeAllowTraffic hook for every function deployed through its ``live`` alias.

Each function's DeploymentPreference names this hook. CodeDeploy invokes it with a deployment id and a hook
execution id before it shifts any traffic; the hook reads the deployment's AppSpec (the function and its new
version), invokes that version with the samples from ``events/`` the function is wired for (packaged next to this
file in ``samples/``: see ``PROBES``), and reports ``Succeeded`` or ``Failed``. ``Failed`` stops the deployment
and the alias stays on the old version. A sample is rejected when the invocation ends in a function error or
reports batch item failures (the SQS consumers), exactly what would send a real message back to its queue.

The probes run against the live stack, so they are made harmless before they are sent: every event and message id
is fresh (an idempotency record of an earlier deploy must not answer in the new version's place), and the job and
instances they name are ones that cannot exist (``PROBE_JOB``, ``PROBE_INSTANCE``). What each probe does in AWS:
a cancel for an unknown job (rejected, nothing written), a heartbeat of an unknown instance (ignored), spot
warnings, rebalance recommendations and state changes of an unknown instance (ignored), S3's test notification
(acknowledged), a heartbeat sweep as of the sample's time (reads only), one fleet reconciliation (the same as
its every-minute tick) and one instance catalog refresh (the same as its schedule's; an older tick's catalog never
replaces a newer one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import boto3
import yaml
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

logger = Logger()
tracer = Tracer()
metrics = Metrics()

SAMPLES = Path(__file__).resolve().parent / "samples"
#: The SQS record the queue-fed functions receive their samples in (its body replaced by each sample).
SQS_ENVELOPE = "sqs_spot_interruption_warning.json"
#: The job and instance every probe names instead of the samples' own (digits-demo may well be a real job).
PROBE_JOB = "ringfleet-pre-traffic-probe"
PROBE_INSTANCE = "i-00000000000000000"
SAMPLE_JOB = "digits-demo"
_INSTANCE_ID = re.compile(r"\bi-[0-9a-f]{8,17}\b")


@dataclass(frozen=True)
class Probe:
    sample: str
    #: "direct": the sample is the event (Amazon MQ, schedule); "sqs": it arrives as an SQS record's body.
    via: Literal["direct", "sqs"] = "direct"


#: POWERTOOLS_SERVICE_NAME of each function -> what its new version is invoked with.
PROBES: dict[str, tuple[Probe, ...]] = {
    "job_intake": (Probe("mq_job_cancelled.json"),),
    "worker_events": (Probe("mq_heartbeat.json"),),
    "node_recovery": (
        Probe("ec2_spot_interruption_warning.json", "sqs"),
        Probe("ec2_rebalance_recommendation.json", "sqs"),
        Probe("ec2_instance_state_change.json", "sqs"),
    ),
    "fleet_scaler": (Probe("scheduled_event.json"), Probe("control_job_admitted.json", "sqs")),
    "checkpoint_backup": (Probe("s3_test_event.json", "sqs"),),
    "heartbeat_sweep": (Probe("scheduled_event.json"),),
    "instance_catalog": (Probe("scheduled_event.json"),),
}

#: Functions this hook checks: the template gives it each one's name as <SERVICE>_FUNCTION.
TARGET_VARIABLE = "{service}_FUNCTION"

_codedeploy: Any = None
_lambda: Any = None


def codedeploy() -> Any:
    global _codedeploy
    if _codedeploy is None:
        _codedeploy = boto3.client("codedeploy")
    return _codedeploy


def lambda_client() -> Any:
    # Never retried (a retry would run a sample twice), and read for as long as the slowest function may run.
    global _lambda
    if _lambda is None:
        _lambda = boto3.client(
            "lambda", config=Config(read_timeout=330, connect_timeout=10, retries={"total_max_attempts": 1})
        )
    return _lambda


@dataclass(frozen=True)
class Target:
    function: str
    version: str


def targets_of(deployment: dict[str, Any]) -> list[Target]:
    """The functions and new versions a deployment shifts traffic to, from its AppSpec (JSON or YAML)."""
    revision = deployment["deploymentInfo"]["revision"]
    content = (revision.get("appSpecContent") or revision.get("string") or {}).get("content", "")
    appspec = yaml.safe_load(content) if content else None
    if not isinstance(appspec, dict):
        raise ValueError(f"deployment has no AppSpec content (revision type {revision.get('revisionType')!r})")
    out = []
    for resource in appspec.get("Resources", []):
        for spec in resource.values():
            if spec.get("Type") == "AWS::Lambda::Function":
                props = spec["Properties"]
                out.append(Target(str(props["Name"]), str(props["TargetVersion"])))
    if not out:
        raise ValueError("the AppSpec names no Lambda function")
    return out


def service_of(function: str) -> str:
    name = function.rsplit(":", 1)[-1] if function.startswith("arn:") else function
    for service in PROBES:
        if os.environ.get(TARGET_VARIABLE.format(service=service.upper())) == name:
            return service
    raise ValueError(f"function {name!r} has no pre-traffic probes (not one of this stack's handlers)")


def load_sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return data


def _neutralize(text: str) -> str:
    return _INSTANCE_ID.sub(PROBE_INSTANCE, text.replace(SAMPLE_JOB, PROBE_JOB))


def probe_event(probe: Probe) -> dict[str, Any]:
    """The sample as the function would receive it, naming only the probe job and instance, with fresh ids."""
    event = json.loads(_neutralize((SAMPLES / probe.sample).read_text()))
    if "id" in event and "detail-type" in event:  # EventBridge
        event["id"] = str(uuid.uuid4())
    for messages in event.get("rmqMessagesByQueue", {}).values():  # Amazon MQ
        for message in messages:
            message_id = str(uuid.uuid4())
            message["basicProperties"]["messageId"] = message_id
            body = json.loads(_neutralize(base64.b64decode(message["data"]).decode()))
            body["message_id"] = message_id
            message["data"] = base64.b64encode(json.dumps(body).encode()).decode()
    if probe.via == "direct":
        return event
    (record,) = load_sample(SQS_ENVELOPE)["Records"]
    body = json.dumps(event, separators=(",", ":"))
    record = {
        **record,
        "messageId": str(uuid.uuid4()),
        "body": body,
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
    }
    return {"Records": [record]}


def rejection(response: dict[str, Any]) -> str | None:
    """Why an invocation's response means the sample was rejected; None when it was accepted."""
    payload = response["Payload"].read()
    if response.get("FunctionError"):
        return f"{response['FunctionError']} error: {payload.decode(errors='replace')[:1000]}"
    try:
        result = json.loads(payload) if payload else None
    except ValueError:
        return None
    if isinstance(result, dict) and result.get("batchItemFailures"):
        return f"batch item failures: {result['batchItemFailures']}"
    return None


#: A throttled invoke never ran (the fleet scaler has reserved concurrency 1, and its schedule may be running): it
#: is the one error retried, after these pauses in seconds, so that a deploy does not fail on a busy minute.
THROTTLE_PAUSES = (1.0, 2.0, 4.0, 8.0, 15.0)


def invoke(target: Target, payload: bytes) -> dict[str, Any]:
    client = lambda_client()
    for pause in (*THROTTLE_PAUSES, None):
        try:
            return dict(
                client.invoke(
                    FunctionName=target.function,
                    Qualifier=target.version,
                    InvocationType="RequestResponse",
                    Payload=payload,
                )
            )
        except client.exceptions.TooManyRequestsException:
            if pause is None:
                raise
            logger.warning("probe throttled, retrying", function=target.function, pause_s=pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def check(target: Target) -> list[str]:
    """Invokes the new version with each of its probes; the problems found (empty: every sample was accepted)."""
    problems = []
    for probe in PROBES[service_of(target.function)]:
        response = invoke(target, json.dumps(probe_event(probe)).encode())
        problem = rejection(response)
        logger.info("probe", function=target.function, version=target.version, sample=probe.sample, rejected=problem)
        if problem:
            problems.append(f"{target.function}:{target.version} rejected {probe.sample}: {problem}")
    return problems


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    deployment_id = event["DeploymentId"]
    logger.set_correlation_id(deployment_id)
    problems: list[str] = []
    try:
        for target in targets_of(codedeploy().get_deployment(deploymentId=deployment_id)):
            problems += check(target)
    except Exception as exc:  # whatever stops the check fails the deployment: an unchecked version gets no traffic
        logger.exception("pre-traffic check could not run")
        problems.append(f"check failed: {exc}")
    status = "Failed" if problems else "Succeeded"
    for problem in problems:
        logger.error("sample rejected", problem=problem)
    metrics.add_metric(name=f"PreTraffic.{status}", unit=MetricUnit.Count, value=1)
    codedeploy().put_lifecycle_event_hook_execution_status(
        deploymentId=deployment_id,
        lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
        status=status,
    )
    return {"status": status, "problems": problems}
