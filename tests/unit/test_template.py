"""template.yaml wires every trigger to its handler safely: event sources, DLQs, alarms, rule patterns, storage, IAM."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest
from moto.events.models import EventPattern
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ringfleet_local.context import CloudContext
from ringfleet_local.router import rate_seconds
from ringfleet_local.template import load_template

from ringfleet.contracts.broker import JOBS_QUEUE, WORKER_EVENTS_QUEUE, dead_letter_queue
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

if TYPE_CHECKING:
    from moto.events.utils import EventMessageType

TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES = TEMPLATE.resources
FUNCTIONS = TEMPLATE.functions()
# Names resolved as the local cloud resolves them (stack "ringfleet", account 123456789012, us-east-1): the same
# names the sample events in events/ carry. Nothing is started; the endpoint is never contacted.
LOCAL = CloudContext(TEMPLATE, endpoint="http://127.0.0.1:1")

# function -> (code folder, its event sources as (type, queue / schedule))
WIRING: dict[str, tuple[str, set[tuple[str, str]]]] = {
    "JobIntakeFunction": ("job_intake", {("MQ", JOBS_QUEUE)}),
    "WorkerEventsFunction": ("worker_events", {("MQ", WORKER_EVENTS_QUEUE)}),
    "NodeRecoveryFunction": ("node_recovery", {("SQS", "RecoveryQueue")}),
    "FleetScalerFunction": ("fleet_scaler", {("SQS", "ScalingQueue"), ("Schedule", "rate(1 minute)")}),
    "CheckpointBackupFunction": ("checkpoint_backup", {("SQS", "BackupQueue")}),
    "HeartbeatSweepFunction": ("heartbeat_sweep", {("Schedule", "rate(1 minute)")}),
    "InstanceCatalogFunction": ("instance_catalog", {("Schedule", "rate(6 hours)")}),
    # CodeDeploy invokes it, nothing else: no event source
    "PreTrafficHookFunction": ("pre_traffic", set()),
}
HOOK = "PreTrafficHookFunction"
HANDLERS = sorted(set(WIRING) - {HOOK})

# sample event in events/ -> the only rules that may match it
SAMPLE_RULES: dict[str, set[str]] = {
    "ec2_spot_interruption_warning.json": {"SpotInterruptionRule"},
    "ec2_rebalance_recommendation.json": {"RebalanceRule"},
    "ec2_instance_state_change.json": {"InstanceStoppingRule"},  # its state is "terminated"
    "autoscaling_lifecycle_terminate.json": {"LifecycleTerminateRule"},
    "cloudwatch_alarm_state_change.json": {"BacklogAlarmRule"},  # the alarm it names is ringfleet-backlog
    "control_job_admitted.json": {"JobLifecycleRule"},
    "control_capacity_wanted.json": {"JobLifecycleRule"},
    "control_job_finished.json": {"JobLifecycleRule"},
}

ALLOWED_INTRINSICS = {"Ref", "Fn::GetAtt", "Fn::Sub", "Fn::Join", "Fn::If"}


def of_type(rtype: str) -> dict[str, dict[str, Any]]:
    return TEMPLATE.resources_of(rtype)


def props(logical_id: str) -> dict[str, Any]:
    return dict(RESOURCES[logical_id].get("Properties", {}))


def getatt_target(value: Any, attribute: str = "Arn") -> str:
    """The logical id in ``!GetAtt X.<attribute>``; fails the test for any other shape."""
    assert isinstance(value, dict) and "Fn::GetAtt" in value, f"expected !GetAtt X.{attribute}, got {value!r}"
    target, attr = value["Fn::GetAtt"]
    assert attr == attribute, f"expected !GetAtt {target}.{attribute}, got .{attr}"
    return str(target)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def event_source(ev_type: str, properties: dict[str, Any]) -> set[tuple[str, str]]:
    if ev_type == "MQ":
        return {("MQ", str(q)) for q in properties["Queues"]}
    if ev_type == "SQS":
        return {("SQS", getatt_target(properties["Queue"]))}
    if ev_type == "Schedule":
        return {("Schedule", str(properties["Schedule"]))}
    return {(ev_type, "?")}


def sqs_sources() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for lid, fn in FUNCTIONS.items():
        for ev in fn.events:
            if ev.type == "SQS":
                yield lid, getatt_target(ev.properties["Queue"]), dict(ev.properties)


def redrive_targets() -> dict[str, str]:
    """queue -> its dead-letter queue, for every queue with a redrive policy."""
    return {
        lid: getatt_target(props(lid)["RedrivePolicy"]["deadLetterTargetArn"])
        for lid in of_type("AWS::SQS::Queue")
        if "RedrivePolicy" in props(lid)
    }


def matching_rules(event: dict[str, Any]) -> set[str]:
    """The rules whose pattern, resolved as the local cloud resolves it, matches ``event`` (moto's matcher)."""
    out = set()
    for lid in of_type("AWS::Events::Rule"):
        pattern = LOCAL.resolve(props(lid)["EventPattern"], lid)
        if EventPattern.load(json.dumps(pattern)).matches_event(cast("EventMessageType", event)):
            out.add(lid)
    return out


def architectures_of(logical_id: str) -> list[str]:
    globals_ = TEMPLATE.body.get("Globals", {}).get("Function", {})
    return list(props(logical_id).get("Architectures", globals_.get("Architectures", ["x86_64"])))


def load_sample(name: str) -> dict[str, Any]:
    data = json.loads((ROOT / "events" / name).read_text())
    assert isinstance(data, dict)
    return data


def intrinsics(node: Any) -> Iterator[str]:
    """Intrinsic function names used in ``node`` (an IAM statement's Condition block is not one)."""
    if isinstance(node, dict):
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == "Ref" or key.startswith("Fn::") or (key == "Condition" and isinstance(value, str)):
                yield key
        for value in node.values():
            yield from intrinsics(value)
    elif isinstance(node, list):
        for item in node:
            yield from intrinsics(item)


# -- functions and their triggers -------------------------------------------------------------------------------


def test_the_template_declares_exactly_the_seven_handlers_and_the_pre_traffic_hook() -> None:
    assert set(FUNCTIONS) == set(WIRING)


@pytest.mark.parametrize("logical_id", sorted(WIRING))
def test_each_handler_runs_on_python311_with_the_shared_layer_and_its_triggers(logical_id: str) -> None:
    folder, expected_sources = WIRING[logical_id]
    fn = FUNCTIONS[logical_id]
    assert fn.runtime == "python3.11"
    assert fn.handler == "app.handler"
    assert fn.code_uri == ROOT / "services" / folder
    assert {"Ref": "SharedLayer"} in fn.layers
    assert fn.environment["POWERTOOLS_SERVICE_NAME"] == folder
    sources = set().union(*(event_source(ev.type, dict(ev.properties)) for ev in fn.events))
    assert sources == expected_sources


def test_schedules_are_rates_the_local_cloud_can_fire() -> None:
    # every minute, but the instance catalog's refresh: GPUs never change, on-demand prices a few times a year
    every = {"InstanceCatalogFunction": 6 * 3600}
    for lid, fn in FUNCTIONS.items():
        for ev in fn.events:
            if ev.type == "Schedule":
                assert rate_seconds(str(ev.properties["Schedule"])) == every.get(lid, 60), lid


def test_mq_sources_read_the_broker_given_at_deploy_time_with_its_secret() -> None:
    mq = [(lid, dict(ev.properties)) for lid, fn in FUNCTIONS.items() for ev in fn.events if ev.type == "MQ"]
    assert {lid for lid, _ in mq} == {"JobIntakeFunction", "WorkerEventsFunction"}
    for lid, p in mq:
        assert p["Broker"] == {"Ref": "MqBrokerArn"}, lid
        assert p["SourceAccessConfigurations"] == [{"Type": "BASIC_AUTH", "URI": {"Ref": "MqSecretArn"}}], lid
        assert 1 <= p["BatchSize"] <= 10000, lid


def test_the_shared_layer_is_built_from_src_for_the_functions_runtime_and_architecture() -> None:
    # a layer built for another architecture fails at import time (pydantic_core is compiled)
    layer = RESOURCES["SharedLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "src/"
    assert layer["Metadata"]["BuildMethod"] == "python3.11"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.11"]
    architectures = {a for lid in FUNCTIONS for a in architectures_of(lid)}
    assert architectures == set(layer["Properties"]["CompatibleArchitectures"])
    assert architectures == {layer["Metadata"]["BuildArchitecture"]}


def test_the_layer_requirements_carry_the_control_plane_dependencies_and_nothing_heavy() -> None:
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "src" / "requirements.txt").read_text().splitlines()]
    names = {canonicalize_name(Requirement(line).name) for line in lines if line}
    assert {"aws-lambda-powertools", "pydantic", "aio-pika", "pyyaml"} <= names
    assert not names & {"torch", "numpy", "moto", "matplotlib", "scikit-learn"}


# -- queues, dead letters, alarms -------------------------------------------------------------------------------


SQS_SOURCES = list(sqs_sources())


@pytest.mark.parametrize(("function", "queue", "event"), SQS_SOURCES, ids=[f"{f}-{q}" for f, q, _ in SQS_SOURCES])
def test_every_consumed_queue_reports_partial_failures_and_dead_letters_poison(
    function: str, queue: str, event: dict[str, Any]
) -> None:
    # one bad record must not fail its whole batch, and must not be retried forever
    assert "ReportBatchItemFailures" in event.get("FunctionResponseTypes", [])
    q = props(queue)
    dlq = getatt_target(q["RedrivePolicy"]["deadLetterTargetArn"])
    assert RESOURCES[dlq]["Type"] == "AWS::SQS::Queue"
    assert "RedrivePolicy" not in props(dlq)
    assert 1 <= int(q["RedrivePolicy"]["maxReceiveCount"]) <= 10
    # AWS: a visibility timeout under six times the function timeout redelivers messages still being processed
    assert int(q["VisibilityTimeout"]) >= 6 * FUNCTIONS[function].timeout
    for lid in (queue, dlq):
        assert props(lid).get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props(lid), lid


def test_every_dead_letter_queue_has_an_alarm_on_visible_messages() -> None:
    dlqs = set(redrive_targets().values())
    assert dlqs == {"RecoveryDLQ", "ScalingDLQ", "BackupDLQ"}
    alarmed = set()
    for lid in of_type("AWS::CloudWatch::Alarm"):
        p = props(lid)
        if p.get("Namespace") == "AWS/SQS" and p.get("MetricName") == "ApproximateNumberOfMessagesVisible":
            assert p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0, lid
            alarmed |= {getatt_target(d["Value"], "QueueName") for d in p["Dimensions"] if d["Name"] == "QueueName"}
    assert dlqs <= alarmed


def test_every_function_has_an_errors_alarm() -> None:
    alarmed = set()
    for lid in of_type("AWS::CloudWatch::Alarm"):
        p = props(lid)
        if p.get("Namespace") == "AWS/Lambda" and p.get("MetricName") == "Errors":
            assert p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0, lid
            alarmed |= {d["Value"]["Ref"] for d in p["Dimensions"] if d["Name"] == "FunctionName"}
    assert alarmed == set(FUNCTIONS)


def test_backlog_and_quarantine_alarms_watch_the_metrics_the_handlers_publish() -> None:
    # Powertools Metrics publishes under POWERTOOLS_METRICS_NAMESPACE with a "service" dimension
    namespace = TEMPLATE.body["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    for lid, metric, service in (
        ("BacklogAlarm", "PendingWorkers", "fleet_scaler"),
        ("QuarantineAlarm", "CheckpointsQuarantined", "checkpoint_backup"),
    ):
        p = props(lid)
        assert (p["Namespace"], p["MetricName"]) == (namespace, metric)
        assert p["Dimensions"] == [{"Name": "service", "Value": service}]
        assert p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0


# -- who may send to the queues ---------------------------------------------------------------------------------


def queue_policy_statements(queue: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for lid in of_type("AWS::SQS::QueuePolicy"):
        p = props(lid)
        if {"Ref": queue} in p["Queues"]:
            out += as_list(p["PolicyDocument"]["Statement"])
    return out


def allowed_source_arns(queue: str, service: str) -> list[Any]:
    arns: list[Any] = []
    for st in queue_policy_statements(queue):
        if (
            st["Effect"] == "Allow"
            and st["Principal"] == {"Service": service}
            and "sqs:SendMessage" in as_list(st["Action"])
        ):
            condition = st.get("Condition", {})
            source = condition.get("ArnEquals", condition.get("ArnLike", {})).get("aws:SourceArn")
            assert source is not None, f"{queue}: {service} may send without an aws:SourceArn condition"
            arns += as_list(source)
    return arns


@pytest.mark.parametrize("rule", sorted(of_type("AWS::Events::Rule")))
def test_each_rule_targets_a_consumed_queue_whose_policy_lets_that_rule_send(rule: str) -> None:
    # without the policy EventBridge drops the events silently in AWS (the local cloud does not enforce policies)
    consumed = {queue for _, queue, _ in sqs_sources()}
    targets = props(rule)["Targets"]
    assert targets
    for target in targets:
        queue = getatt_target(target["Arn"])
        assert queue in consumed
        assert {"Fn::GetAtt": [rule, "Arn"]} in allowed_source_arns(queue, "events.amazonaws.com")


def test_manifest_notifications_reach_the_backup_queue_and_only_from_the_checkpoint_bucket() -> None:
    configs = props("CheckpointBucket")["NotificationConfiguration"]["QueueConfigurations"]
    assert len(configs) == 1
    config = configs[0]
    assert config["Event"] == "s3:ObjectCreated:*"
    assert getatt_target(config["Queue"]) == "BackupQueue"
    rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": "jobs/", "suffix": "manifest.json"}
    # the policy names the bucket by a !Sub (a !GetAtt would be circular): it must resolve to the same bucket
    (source,) = allowed_source_arns("BackupQueue", "s3.amazonaws.com")
    assert LOCAL.resolve(source) == LOCAL.resolve({"Fn::GetAtt": ["CheckpointBucket", "Arn"]})


@pytest.mark.parametrize(
    ("key", "backed_up"),
    [
        ("jobs/digits-demo/ckpt/000000000120/manifest.json", True),
        ("jobs/digits-demo/ckpt/000000000120/shard-00000.zst", False),
        ("scratch/manifest.json", False),
    ],
)
def test_only_checkpoint_manifests_trigger_a_backup(key: str, backed_up: bool) -> None:
    (config,) = props("CheckpointBucket")["NotificationConfiguration"]["QueueConfigurations"]
    rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
    assert (key.startswith(rules["prefix"]) and key.endswith(rules["suffix"])) is backed_up


# -- rule patterns against the sample events --------------------------------------------------------------------


@pytest.mark.parametrize("sample", sorted(SAMPLE_RULES))
def test_each_sample_event_matches_exactly_its_rule(sample: str) -> None:
    assert matching_rules(load_sample(sample)) == SAMPLE_RULES[sample]


@pytest.mark.parametrize(
    ("state", "rules"),
    [
        ("pending", set()),
        ("running", {"InstanceRunningRule"}),
        ("stopping", {"InstanceStoppingRule"}),
        ("stopped", set()),
        ("shutting-down", {"InstanceStoppingRule"}),
        ("terminated", {"InstanceStoppingRule"}),
    ],
)
def test_instance_state_changes_go_to_recovery_when_leaving_and_to_scaling_when_running(
    state: str, rules: set[str]
) -> None:
    event = load_sample("ec2_instance_state_change.json")
    event["detail"]["state"] = state
    assert matching_rules(event) == rules


def test_state_changes_of_other_alarms_are_ignored() -> None:
    event = load_sample("cloudwatch_alarm_state_change.json")
    event["detail"]["alarmName"] = "someone-elses-alarm"
    event["resources"] = ["arn:aws:cloudwatch:us-east-1:123456789012:alarm:someone-elses-alarm"]
    assert matching_rules(event) == set()


@pytest.mark.parametrize("detail_type", ["Job Progressed", "Job Submitted"])
def test_other_control_plane_events_do_not_wake_the_scaler(detail_type: str) -> None:
    event = load_sample("control_job_admitted.json")
    event["detail-type"] = detail_type
    assert matching_rules(event) == set()


def test_the_sample_manifest_notification_names_the_checkpoint_bucket_and_passes_its_filter() -> None:
    (record,) = load_sample("s3_object_created.json")["Records"]
    (config,) = props("CheckpointBucket")["NotificationConfiguration"]["QueueConfigurations"]
    rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
    assert record["s3"]["bucket"]["name"] == LOCAL.resolve({"Ref": "CheckpointBucket"})
    key = record["s3"]["object"]["key"]
    assert key.startswith(rules["prefix"]) and key.endswith(rules["suffix"])


# -- storage ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", sorted(of_type("AWS::S3::Bucket")))
def test_buckets_block_public_access_encrypt_and_refuse_plain_http(bucket: str) -> None:
    p = props(bucket)
    assert p["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms", "aws:kms:dsse"}
    policies = [props(lid) for lid in of_type("AWS::S3::BucketPolicy") if props(lid)["Bucket"] == {"Ref": bucket}]
    denies = [
        st
        for policy in policies
        for st in as_list(policy["PolicyDocument"]["Statement"])
        if st["Effect"] == "Deny"
        and st["Principal"] == "*"
        and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert denies, f"{bucket} has no statement denying requests without TLS"
    covered = {json.dumps(r, sort_keys=True) for st in denies for r in as_list(st["Resource"])}
    assert json.dumps({"Fn::GetAtt": [bucket, "Arn"]}, sort_keys=True) in covered
    assert json.dumps({"Fn::Sub": f"${{{bucket}.Arn}}/*"}, sort_keys=True) in covered


def test_bucket_names_are_the_documented_ones() -> None:
    assert LOCAL.resolve({"Ref": "CheckpointBucket"}) == "ringfleet-checkpoints-123456789012-us-east-1"
    assert LOCAL.resolve({"Ref": "BackupBucket"}) == "ringfleet-backups-123456789012-us-east-1"
    assert props("BackupBucket")["VersioningConfiguration"] == {"Status": "Enabled"}


@pytest.mark.parametrize(
    ("table", "keys", "pitr"),
    [
        ("JobsTable", {"job_id": ("HASH", "S")}, True),
        ("NodesTable", {"instance_id": ("HASH", "S")}, False),
        ("CheckpointsTable", {"job_id": ("HASH", "S"), "step": ("RANGE", "N")}, True),
        ("IdempotencyTable", {"id": ("HASH", "S")}, False),
        ("CatalogTable", {"name": ("HASH", "S")}, False),
    ],
)
def test_tables_have_the_keys_the_handlers_use_and_are_encrypted(
    table: str, keys: dict[str, tuple[str, str]], pitr: bool
) -> None:
    p = props(table)
    types = {a["AttributeName"]: a["AttributeType"] for a in p["AttributeDefinitions"]}
    assert {k["AttributeName"]: (k["KeyType"], types[k["AttributeName"]]) for k in p["KeySchema"]} == keys
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert p.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled", False) is pitr


def test_nodes_are_found_by_job_and_by_silence_jobs_by_activity_and_tenant_and_ended_rows_expire() -> None:
    from ringfleet.adapters import dynamodb

    def indexes(table: str) -> dict[str, list[tuple[str, str]]]:
        return {
            i["IndexName"]: [(k["AttributeName"], k["KeyType"]) for k in i["KeySchema"]]
            for i in props(table)["GlobalSecondaryIndexes"]
        }

    assert indexes("NodesTable") == {
        "by-job": [("job_id", "HASH")],
        dynamodb.SILENCE_INDEX: [("watch_shard", "HASH"), ("last_seen", "RANGE")],
    }
    assert indexes("JobsTable") == {
        dynamodb.ACTIVE_JOBS_INDEX: [("active_shard", "HASH"), ("job_id", "RANGE")],
        dynamodb.TENANT_INDEX: [("tenant", "HASH"), ("job_id", "RANGE")],
    }
    assert props("IdempotencyTable")["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    for table in ("NodesTable", "JobsTable"):
        assert props(table)["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_a_retried_spot_warning_still_lands_inside_the_two_minute_notice() -> None:
    timeout = FUNCTIONS["NodeRecoveryFunction"].timeout
    visibility = props("RecoveryQueue")["VisibilityTimeout"]
    # AWS's advice for SQS event sources, and the second attempt's end well inside 120 s
    assert visibility >= 6 * timeout
    assert visibility + timeout <= 90


def reserved(function: str) -> int:
    """A function's reserved concurrency, a parameter's default where it is one (0: none reserved)."""
    value = props(function).get("ReservedConcurrentExecutions", 0)
    if isinstance(value, dict):
        return int(TEMPLATE.parameters[value["Ref"]]["Default"])
    return int(value)


def sqs_maximum_concurrency(function: str) -> int | None:
    (event,) = [ev for ev in FUNCTIONS[function].events if ev.type == "SQS"]
    value = dict(event.properties).get("ScalingConfig", {}).get("MaximumConcurrency")
    if isinstance(value, dict):
        return int(TEMPLATE.parameters[value["Ref"]]["Default"])
    return None if value is None else int(value)


def test_the_backup_is_capped_and_recovery_keeps_concurrency_of_its_own() -> None:
    # the backup, whose manifests any job's workers write, has a cap, and its queue source never runs past it
    # (a throttled batch would count towards its DLQ)
    cap = reserved("CheckpointBackupFunction")
    assert 2 <= cap <= 10
    assert sqs_maximum_concurrency("CheckpointBackupFunction") == cap
    assert props("CheckpointBackupFunction")["ReservedConcurrentExecutions"] == {"Ref": "BackupMaxConcurrency"}
    # the recovery functions keep concurrency reserved, so that a flood of backups (or anything else in the account)
    # cannot starve them; the recovery queue's source stays within it for the same reason as the backup's
    for function in ("NodeRecoveryFunction", "WorkerEventsFunction", "HeartbeatSweepFunction"):
        assert reserved(function) >= 1, function
    assert sqs_maximum_concurrency("NodeRecoveryFunction") == reserved("NodeRecoveryFunction") > cap
    # the scaler stays one run at a time
    assert reserved("FleetScalerFunction") == 1


def test_every_function_is_told_where_the_tables_buckets_and_broker_are() -> None:
    expected = {
        "JOBS_TABLE": {"Ref": "JobsTable"},
        "NODES_TABLE": {"Ref": "NodesTable"},
        "CHECKPOINTS_TABLE": {"Ref": "CheckpointsTable"},
        "IDEMPOTENCY_TABLE": {"Ref": "IdempotencyTable"},
        "CHECKPOINT_BUCKET": {"Ref": "CheckpointBucket"},
        "BACKUP_BUCKET": {"Ref": "BackupBucket"},
        "BROKER_ENDPOINT": {"Ref": "MqEndpoint"},
        "BROKER_SECRET_ARN": {"Ref": "MqSecretArn"},
        "EVENT_BUS_NAME": "default",
        "POWERTOOLS_METRICS_NAMESPACE": "ringfleet",
    }
    for lid, fn in FUNCTIONS.items():
        assert {k: fn.environment.get(k) for k in expected} == expected, lid


# -- IAM --------------------------------------------------------------------------------------------------------


def inline_statements() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every statement a function or role of the template grants itself inline."""
    for lid in FUNCTIONS:
        for policy in props(lid).get("Policies", []):
            if isinstance(policy, dict) and "Statement" in policy:
                for st in as_list(policy["Statement"]):
                    yield lid, st
    for lid in of_type("AWS::IAM::Role"):
        for policy in props(lid).get("Policies", []):
            for st in as_list(policy["PolicyDocument"]["Statement"]):
                yield lid, st


def test_only_actions_without_resource_level_permissions_get_every_resource() -> None:
    for owner, st in inline_statements():
        actions = as_list(st["Action"])
        assert all(a != "*" and not a.endswith(":*") for a in actions), f"{owner} {st.get('Sid')}: wildcard action"
        if "*" in as_list(st["Resource"]):
            # EC2 Describe* actions and the Pricing API cannot be scoped; the statement says so by its name
            assert all(a.startswith("ec2:Describe") or a == "pricing:GetProducts" for a in actions), (
                f"{owner} {st.get('Sid')}: {actions} on *"
            )
            assert str(st.get("Sid", "")).endswith("Unscopable"), f"{owner}: name the unscopable statement"


def test_sam_policy_templates_are_scoped_to_the_templates_own_resources() -> None:
    for lid in FUNCTIONS:
        for policy in props(lid).get("Policies", []):
            assert isinstance(policy, dict), f"{lid}: managed policy {policy!r} instead of a scoped one"
            if "Statement" in policy:
                continue
            ((name, params),) = policy.items()
            for value in params.values():
                assert isinstance(value, dict) and set(value) == {"Ref"}, f"{lid} {name}: {value!r}"
                assert value["Ref"] in RESOURCES or value["Ref"] in TEMPLATE.parameters, f"{lid} {name}"


def test_only_the_fleet_scaler_launches_or_terminates_instances() -> None:
    powerful = {"ec2:CreateFleet", "ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"}
    launchers = {owner for owner, st in inline_statements() if powerful & set(as_list(st["Action"]))}
    assert launchers == {"FleetScalerFunction"}


# -- what the local cloud can reproduce -------------------------------------------------------------------------


def test_the_template_uses_only_intrinsics_the_local_cloud_resolves() -> None:
    assert not [lid for lid, res in RESOURCES.items() if "Condition" in res]
    used = set(intrinsics({k: TEMPLATE.body.get(k, {}) for k in ("Globals", "Resources", "Outputs")}))
    assert used <= ALLOWED_INTRINSICS
    # and every value resolves locally (a Ref to an unknown name or an unsupported attribute raises)
    LOCAL.resolve(TEMPLATE.body["Globals"], "Globals")
    LOCAL.resolve(TEMPLATE.body["Resources"], "Resources")
    LOCAL.resolve(TEMPLATE.body["Outputs"], "Outputs")
    # and the functions run in a VPC only when subnets are given (locally: none)
    assert LOCAL.resolve(TEMPLATE.body["Globals"], "Globals")["Function"]["VpcConfig"] is None


# -- safe deploys and the dashboard -----------------------------------------------------------------------------


def alarms_on(namespace: str, metric: str) -> dict[str, dict[str, Any]]:
    return {
        lid: props(lid)
        for lid in of_type("AWS::CloudWatch::Alarm")
        if (props(lid).get("Namespace"), props(lid).get("MetricName")) == (namespace, metric)
    }


def expected_rollback_alarms(function: str) -> set[str]:
    """The function's own alarms: its errors, and the dead letters of what it consumes from AWS (SQS); never the
    broker's DLQs, which a tenant can fill (an invalid job message, a job's code beside its worker): a tenant must not
    be able to stop every deployment."""
    out = {a for a, p in alarms_on("AWS/Lambda", "Errors").items() if p["Dimensions"][0]["Value"] == {"Ref": function}}
    dlqs = set(redrive_targets().items())
    for ev in FUNCTIONS[function].events:
        if ev.type == "SQS":
            queue = getatt_target(ev.properties["Queue"])
            out |= {
                a
                for a, p in alarms_on("AWS/SQS", "ApproximateNumberOfMessagesVisible").items()
                for q, dlq in dlqs
                if q == queue and p["Dimensions"][0]["Value"] == {"Fn::GetAtt": [dlq, "QueueName"]}
            }
    return out


@pytest.mark.parametrize("function", HANDLERS)
def test_each_handler_is_deployed_gradually_behind_its_alias_checked_first_and_rolled_back_by_its_alarms(
    function: str,
) -> None:
    p = props(function)
    assert p["AutoPublishAlias"] == "live"
    preference = p["DeploymentPreference"]
    assert preference["Type"] == {"Ref": "DeploymentPreferenceType"}
    assert TEMPLATE.parameters["DeploymentPreferenceType"]["Default"].startswith(("Canary", "Linear"))
    assert preference["Hooks"] == {"PreTraffic": {"Ref": HOOK}}
    alarms = {a["Ref"] for a in preference["Alarms"]}
    assert alarms == expected_rollback_alarms(function)
    assert len(alarms) >= 1 + any(ev.type == "SQS" for ev in FUNCTIONS[function].events)
    assert not alarms & {"BrokerJobsDLQAlarm", "BrokerWorkerEventsDLQAlarm"}


def test_the_hook_is_a_function_codedeploy_may_invoke_and_has_no_deployment_of_its_own() -> None:
    p = props(HOOK)
    # the role SAM generates for CodeDeploy (AWSCodeDeployRoleForLambda) invokes CodeDeployHook_* functions only
    assert p["FunctionName"]["Fn::Sub"].startswith("CodeDeployHook_")
    assert "AutoPublishAlias" not in p and "DeploymentPreference" not in p
    assert "DeploymentPreference" not in TEMPLATE.body["Globals"]["Function"]
    # it tells each function apart by name, and may invoke their versions only
    env = FUNCTIONS[HOOK].environment
    services = {WIRING[lid][0]: lid for lid in HANDLERS}
    assert {k: v for k, v in env.items() if k.endswith("_FUNCTION")} == {
        f"{service.upper()}_FUNCTION": {"Ref": lid} for service, lid in services.items()
    }
    statements = [st for policy in p["Policies"] for st in as_list(policy["Statement"])]
    invoke = [st for st in statements if "lambda:InvokeFunction" in as_list(st["Action"])]
    resources = [r["Fn::Sub"] for st in invoke for r in as_list(st["Resource"])]
    assert sorted(resources) == sorted(f"${{{lid}.Arn}}:*" for lid in services.values())
    actions = {a for st in statements for a in as_list(st["Action"])}
    assert actions == {
        "lambda:InvokeFunction",
        "codedeploy:GetDeployment",
        "codedeploy:PutLifecycleEventHookExecutionStatus",
    }


def test_the_hook_has_probes_for_every_handler_and_its_samples_are_the_events_samples() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("pre_traffic_probes", ROOT / "services" / "pre_traffic" / "app.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = hook  # its dataclasses look their module up
    spec.loader.exec_module(hook)
    assert set(hook.PROBES) == {WIRING[lid][0] for lid in HANDLERS}
    packaged = ROOT / "services" / "pre_traffic" / "samples"
    used = {probe.sample for probes in hook.PROBES.values() for probe in probes} | {hook.SQS_ENVELOPE}
    assert {p.name for p in packaged.glob("*.json")} == used
    for name in used:
        # run `make pre-traffic-samples` after changing a sample in events/
        assert (packaged / name).read_bytes() == (ROOT / "events" / name).read_bytes(), name


def test_every_broker_dead_letter_queue_has_an_alarm() -> None:
    consumed = {
        str(q) for fn in FUNCTIONS.values() for ev in fn.events if ev.type == "MQ" for q in ev.properties["Queues"]
    }
    alarmed = {}
    for lid, p in alarms_on("AWS/AmazonMQ", "MessageCount").items():
        dims = {d["Name"]: d["Value"] for d in p["Dimensions"]}
        assert dims["Broker"] == {"Ref": "MqBrokerName"} and dims["VirtualHost"] == "/", lid
        assert p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0, lid
        assert p["AlarmActions"] == [{"Ref": "AlarmTopic"}], lid
        alarmed[dims["Queue"]] = lid
    assert set(alarmed) == {dead_letter_queue(q) for q in consumed}


def dashboard() -> dict[str, Any]:
    body = LOCAL.resolve(props("OperationsDashboard")["DashboardBody"], "OperationsDashboard")
    data: dict[str, Any] = json.loads(body)
    return data


def dashboard_metrics() -> list[list[Any]]:
    return [m for w in dashboard()["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]]


def test_the_dashboard_shows_every_dead_letter_queue_and_every_alarm() -> None:
    metrics = dashboard_metrics()
    sqs = {m[3] for m in metrics if m[:2] == ["AWS/SQS", "ApproximateNumberOfMessagesVisible"]}
    assert sqs == {LOCAL.resolve({"Fn::GetAtt": [dlq, "QueueName"]}) for dlq in set(redrive_targets().values())}
    broker = {m[7] for m in metrics if m[:2] == ["AWS/AmazonMQ", "MessageCount"]}
    assert broker == {
        {d["Name"]: d["Value"] for d in p["Dimensions"]}["Queue"]
        for p in alarms_on("AWS/AmazonMQ", "MessageCount").values()
    }
    (alarm_widget,) = [w for w in dashboard()["widgets"] if w["type"] == "alarm"]
    shown = set(alarm_widget["properties"]["alarms"])
    assert shown == {LOCAL.resolve({"Fn::GetAtt": [lid, "Arn"]}) for lid in of_type("AWS::CloudWatch::Alarm")}


def test_the_dashboard_reads_only_metrics_the_handlers_publish() -> None:
    # Powertools Metrics: namespace ringfleet, dimension service; the names the handlers, observability.py and the
    # batch processors (batch.py: RecordsRejected) add
    import re

    shared = [ROOT / "src" / "ringfleet" / name for name in ("observability.py", "batch.py")]
    sources = [*(ROOT / "services").glob("*/app.py"), *shared]
    text = "\n".join(p.read_text() for p in sources)
    names = set(re.findall(r'name="([A-Za-z]+)"', text)) | set(re.findall(r'"([A-Za-z]+)": MetricUnit', text))
    families = set(re.findall(r'name=f"([A-Za-z]+)\.\{', text))  # Jobs.<outcome>, Recoveries.<cause>, ...
    services = {WIRING[lid][0] for lid in WIRING}
    ours = [m for m in dashboard_metrics() if m[0] == "ringfleet"]
    assert ours
    for metric in ours:
        name = metric[1]
        assert metric[2] == "service" and metric[3] in services, metric
        assert name in names or (name.split(".", 1)[0] in families and "." in name), metric
    # the per-job widgets search a metric set with a job_id dimension: its name is one a handler publishes
    searched = [
        m[0]["expression"]
        for w in dashboard()["widgets"]
        for m in w["properties"].get("metrics", [])
        if isinstance(m[0], dict) and "expression" in m[0]
    ]
    assert searched
    for expression in searched:
        (name,) = re.findall(r'MetricName="([A-Za-z]+)"', expression)
        assert "{ringfleet,job_id,service}" in expression and name in names, expression


def test_workers_may_read_their_own_broker_login_and_never_the_control_planes() -> None:
    statements = [s for pol in props("WorkerRole")["Policies"] for s in pol["PolicyDocument"]["Statement"]]
    reads = [s for s in statements if "secretsmanager:GetSecretValue" in str(s["Action"])]
    assert [s["Resource"] for s in reads] == [{"Ref": "WorkerBrokerSecretArn"}]
    assert "MqSecretArn" not in json.dumps(props("WorkerRole"))
