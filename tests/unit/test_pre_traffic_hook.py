"""The pre-traffic hook (services/pre_traffic) fails a deployment whose new version rejects a sample event.

CodeDeploy and Lambda are botocore clients with a Stubber: every request the hook makes is checked against the
service's API model, and answered as the service would.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

DEPLOYMENT = "d-ABCDEF123"
HOOK_EXECUTION = "hook-execution-0001"
FUNCTIONS = {
    "job_intake": "ringfleet-JobIntakeFunction-a1",
    "worker_events": "ringfleet-WorkerEventsFunction-b2",
    "node_recovery": "ringfleet-NodeRecoveryFunction-c3",
    "fleet_scaler": "ringfleet-FleetScalerFunction-d4",
    "checkpoint_backup": "ringfleet-CheckpointBackupFunction-e5",
    "heartbeat_sweep": "ringfleet-HeartbeatSweepFunction-f6",
    "instance_catalog": "ringfleet-InstanceCatalogFunction-g7",
}
CONTEXT = SimpleNamespace(
    function_name="CodeDeployHook_ringfleet-pre-traffic",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:CodeDeployHook_ringfleet-pre-traffic",
    aws_request_id="0f0e0d0c-0000-4000-8000-000000000000",
)


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ringfleet")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "pre_traffic")
    for service, name in FUNCTIONS.items():
        monkeypatch.setenv(f"{service.upper()}_FUNCTION", name)
    spec = importlib.util.spec_from_file_location("pre_traffic_app", ROOT / "services" / "pre_traffic" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.__dict__["_codedeploy"] = boto3.client("codedeploy")
    module.__dict__["_lambda"] = boto3.client("lambda")
    yield module
    sys.modules.pop(spec.name, None)


def appspec(function: str, version: str) -> str:
    # the AppSpec CloudFormation gives CodeDeploy for a Lambda alias update
    return json.dumps(
        {
            "version": 0.0,
            "Resources": [
                {
                    "JobIntakeFunction": {
                        "Type": "AWS::Lambda::Function",
                        "Properties": {
                            "Name": function,
                            "Alias": "live",
                            "CurrentVersion": "6",
                            "TargetVersion": version,
                        },
                    }
                }
            ],
        }
    )


def deployment(function: str, version: str) -> dict[str, Any]:
    return {
        "deploymentInfo": {
            "deploymentId": DEPLOYMENT,
            "computePlatform": "Lambda",
            "revision": {"revisionType": "AppSpecContent", "appSpecContent": {"content": appspec(function, version)}},
        }
    }


def invoked(payload: Any, *, error: str | None = None) -> dict[str, Any]:
    raw = json.dumps(payload).encode()
    response: dict[str, Any] = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(raw), len(raw))}
    if error:
        response["FunctionError"] = error
    return response


#: An answer of ``run``: Lambda refused the invocation for the function's concurrency (it never ran).
THROTTLED: dict[str, Any] = {"throttled": True}


def run(
    hook: ModuleType, function: str, answers: list[dict[str, Any]], expected_status: str, *, why: str = ""
) -> list[dict[str, Any]]:
    """Runs the hook for a deployment of ``function`` (version 7) whose invocations get ``answers``, in order."""
    sent: list[dict[str, Any]] = []
    with Stubber(hook._codedeploy) as codedeploy, Stubber(hook._lambda) as lambda_:
        codedeploy.add_response("get_deployment", deployment(function, "7"), {"deploymentId": DEPLOYMENT})
        expected = {"FunctionName": function, "Qualifier": "7", "InvocationType": "RequestResponse", "Payload": ANY}
        for answer in answers:
            if answer is THROTTLED:
                lambda_.add_client_error(
                    "invoke", "TooManyRequestsException", http_status_code=429, expected_params=expected
                )
            else:
                lambda_.add_response("invoke", answer, expected)
        codedeploy.add_response(
            "put_lifecycle_event_hook_execution_status",
            {"lifecycleEventHookExecutionId": HOOK_EXECUTION},
            {"deploymentId": DEPLOYMENT, "lifecycleEventHookExecutionId": HOOK_EXECUTION, "status": expected_status},
        )
        real_invoke = hook._lambda.invoke

        def spy(**kwargs: Any) -> Any:
            sent.append(json.loads(kwargs["Payload"]))
            return real_invoke(**kwargs)

        hook._lambda.invoke = spy
        result = hook.handler({"DeploymentId": DEPLOYMENT, "LifecycleEventHookExecutionId": HOOK_EXECUTION}, CONTEXT)
        codedeploy.assert_no_pending_responses()
        lambda_.assert_no_pending_responses()
    assert result["status"] == expected_status
    assert why in " ".join(result["problems"]), result["problems"]
    return sent


def test_a_version_that_accepts_every_sample_is_let_through(hook: ModuleType) -> None:
    # given a node_recovery version that handles each SQS batch without a failed record
    answers = [invoked({"batchItemFailures": []}) for _ in hook.PROBES["node_recovery"]]
    # when the hook checks the deployment, then it reports Succeeded (the stub checks the status sent)
    sent = run(hook, FUNCTIONS["node_recovery"], answers, "Succeeded")
    # and each sample went out as the queue delivers it, naming only the probe instance, with a fresh event id
    assert len(sent) == 3
    for event, probe in zip(sent, hook.PROBES["node_recovery"], strict=True):
        (record,) = event["Records"]
        body = json.loads(record["body"])
        assert body["detail-type"] == json.loads((ROOT / "events" / probe.sample).read_text())["detail-type"]
        assert body["detail"]["instance-id"] == hook.PROBE_INSTANCE
        assert body["id"] != json.loads((ROOT / "events" / probe.sample).read_text())["id"]


def test_a_handler_that_raises_on_a_sample_fails_the_deployment(hook: ModuleType) -> None:
    # given a job_intake version that raises on the sample (Lambda answers with FunctionError)
    error = {"errorMessage": "1 validation error for JobCancelled", "errorType": "ValidationError"}
    # when the hook checks it, then it reports Failed: CodeDeploy stops and the alias stays on the old version
    sent = run(
        hook,
        FUNCTIONS["job_intake"],
        [invoked(error, error="Unhandled")],
        "Failed",
        why="rejected mq_job_cancelled.json",
    )
    # and the message it sent names the probe job and a fresh message id, never the sample's own
    (messages,) = sent[0]["rmqMessagesByQueue"].values()
    body = json.loads(base64.b64decode(messages[0]["data"]))
    assert body["job_id"] == hook.PROBE_JOB
    assert body["message_id"] == messages[0]["basicProperties"]["messageId"] != "1c8a7d2f-3e4b-4c6d-9e0f-1a2b3c4d5e6f"


def test_a_batch_item_failure_fails_the_deployment(hook: ModuleType) -> None:
    # given a checkpoint_backup version that reports the sample record as failed (it would go back to the queue)
    failed = invoked({"batchItemFailures": [{"itemIdentifier": "b8f3e1a2"}]})
    run(
        hook, FUNCTIONS["checkpoint_backup"], [failed], "Failed", why="rejected s3_test_event.json: batch item failures"
    )


def test_one_rejected_sample_among_accepted_ones_fails_the_deployment(hook: ModuleType) -> None:
    # given a fleet_scaler version whose schedule run works and whose queue run fails its record
    answers = [invoked({"scaling": {}}), invoked({"batchItemFailures": [{"itemIdentifier": "x"}]})]
    run(hook, FUNCTIONS["fleet_scaler"], answers, "Failed", why="rejected control_job_admitted.json")


def test_a_throttled_probe_is_sent_again_and_the_deploy_goes_on(
    hook: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the fleet scaler (reserved concurrency 1) busy with its schedule: the first invoke of its new version is
    # throttled, which means it never ran
    monkeypatch.setattr(hook.time, "sleep", lambda s: None)
    answers = [THROTTLED, THROTTLED, invoked({"scaling": {}}), invoked({"batchItemFailures": []})]
    # when the hook checks the deployment, then the same sample goes out again and the deploy succeeds
    sent = run(hook, FUNCTIONS["fleet_scaler"], answers, "Succeeded")
    assert sent[0] == sent[1] == sent[2]


def test_a_probe_throttled_every_time_fails_the_deployment(hook: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hook.time, "sleep", lambda s: None)
    run(hook, FUNCTIONS["fleet_scaler"], [THROTTLED] * (len(hook.THROTTLE_PAUSES) + 1), "Failed", why="TooManyRequests")


@pytest.mark.parametrize("service", sorted(FUNCTIONS))
def test_every_handler_passes_when_it_accepts_its_samples(hook: ModuleType, service: str) -> None:
    answers = [invoked({"batchItemFailures": []}) for _ in hook.PROBES[service]]
    run(hook, FUNCTIONS[service], answers, "Succeeded")


def test_a_function_the_hook_does_not_know_fails_the_deployment_without_invoking_it(hook: ModuleType) -> None:
    # no probes means no check: an unchecked version must not get traffic
    run(hook, "someone-elses-function", [], "Failed", why="has no pre-traffic probes")
