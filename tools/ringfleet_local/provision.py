"""Creates template.yaml's buckets, tables, queues, rules, alarms and the broker secret in the moto server."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from ringfleet_local.context import BROKER_SECRET_NAME, WORKER_BROKER_SECRET_NAME, CloudContext
from ringfleet_local.template import TemplateError

__all__ = ["provision"]

log = logging.getLogger(__name__)

#: Resource types that exist only for deployment (IAM, code, permissions); nothing to emulate locally.
NOT_EMULATED = {
    "AWS::Serverless::Function",  # run by the router's runtimes
    "AWS::Serverless::LayerVersion",
    "AWS::SQS::QueuePolicy",
    # moto applies a bucket policy's Deny without its Condition: the TLS-only policy would refuse every request.
    "AWS::S3::BucketPolicy",
    "AWS::IAM::InstanceProfile",
    "AWS::SNS::Topic",  # alarm notifications: moto never evaluates alarms
    "AWS::IAM::Role",
    "AWS::IAM::Policy",
    "AWS::IAM::ManagedPolicy",
    "AWS::Lambda::Permission",
    "AWS::Logs::LogGroup",
    "AWS::CloudWatch::Dashboard",  # read in the console; moto draws nothing
}

_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "FifoQueue",
    "ContentBasedDeduplication",
    "SqsManagedSseEnabled",
)


_ALARM_KEYS = (
    "MetricName",
    "Namespace",
    "Statistic",
    "Period",
    "EvaluationPeriods",
    "Threshold",
    "ComparisonOperator",
    "Dimensions",
    "TreatMissingData",
    "DatapointsToAlarm",
    "Metrics",
    "AlarmDescription",
    "ExtendedStatistic",
    "Unit",
)


def provision(ctx: CloudContext) -> dict[str, list[str]]:
    """Creates every emulated resource; returns the physical names created, by resource type."""
    resources = ctx.template.resources
    secrets = ctx.client("secretsmanager")
    secrets.create_secret(Name=BROKER_SECRET_NAME, SecretString=json.dumps(_broker_credentials(ctx.broker_url)))
    worker = _broker_credentials(ctx.role_broker_url("worker"))
    secrets.create_secret(Name=WORKER_BROKER_SECRET_NAME, SecretString=json.dumps(worker))
    created: dict[str, list[str]] = {"AWS::SecretsManager::Secret": [BROKER_SECRET_NAME, WORKER_BROKER_SECRET_NAME]}
    for rtype, (service, create) in _CREATORS.items():
        client = ctx.client(service)
        # Dead-letter queues first: a redrive policy may only name a queue that exists (only queues have one).
        lids = sorted(
            (lid for lid, r in resources.items() if r.get("Type") == rtype),
            key=lambda lid: "RedrivePolicy" in resources[lid].get("Properties", {}),
        )
        for lid in lids:
            props = dict(ctx.resolve(resources[lid].get("Properties", {}), lid))
            created.setdefault(rtype, []).append(create(ctx, client, lid, props))
    for lid, res in resources.items():
        if res.get("Type") not in _CREATORS.keys() | NOT_EMULATED:
            log.warning("%s (%s) is not emulated by the local cloud", lid, res.get("Type"))
    return created


def _create_queue(ctx: CloudContext, sqs: Any, lid: str, props: dict[str, Any]) -> str:
    attrs = {
        k: str(props[k]).lower() if isinstance(props[k], bool) else str(props[k])
        for k in _QUEUE_ATTRIBUTES
        if k in props
    }
    if "RedrivePolicy" in props:
        attrs["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
    name = ctx.resolve({"Fn::GetAtt": [lid, "QueueName"]})
    sqs.create_queue(QueueName=name, Attributes=attrs)
    return str(name)


def _create_table(ctx: CloudContext, ddb: Any, lid: str, props: dict[str, Any]) -> str:
    name = ctx.resolve({"Ref": lid})
    kwargs: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if "ProvisionedThroughput" in props:
        kwargs["ProvisionedThroughput"] = props["ProvisionedThroughput"]
    ddb.create_table(**kwargs)
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
    return str(name)


def _create_bucket(ctx: CloudContext, s3: Any, lid: str, props: dict[str, Any]) -> str:
    name = ctx.resolve({"Ref": lid})
    s3.create_bucket(Bucket=name)
    if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
    if "BucketEncryption" in props:
        s3.put_bucket_encryption(
            Bucket=name, ServerSideEncryptionConfiguration={"Rules": _encryption_rules(props["BucketEncryption"])}
        )
    notification = _bucket_notifications(props.get("NotificationConfiguration", {}), lid)
    if notification:
        s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration=notification)
    return str(name)


def _encryption_rules(encryption: dict[str, Any]) -> list[dict[str, Any]]:
    """CloudFormation says ServerSideEncryptionByDefault; the S3 API: ApplyServerSideEncryptionByDefault."""
    return [
        {
            ("ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault" else k): v
            for k, v in rule.items()
        }
        for rule in encryption["ServerSideEncryptionConfiguration"]
    ]


def _create_rule(ctx: CloudContext, events: Any, lid: str, props: dict[str, Any]) -> str:
    name = ctx.resolve({"Ref": lid})
    if "EventPattern" not in props:
        raise TemplateError(f"{lid}: only event-pattern rules are emulated; use a function Schedule event")
    events.put_rule(Name=name, EventPattern=json.dumps(props["EventPattern"]), State=props.get("State", "ENABLED"))
    targets = []
    for target in props.get("Targets", []):
        if ":sqs:" not in str(target["Arn"]):
            raise TemplateError(
                f"{lid}: target {target['Id']} is not an SQS queue; the local cloud routes "
                "EventBridge rules to queues (as template.yaml does) so the router can poll them"
            )
        targets.append({"Id": target["Id"], "Arn": target["Arn"]})
    events.put_targets(Rule=name, Targets=targets)
    return str(name)


def _create_alarm(ctx: CloudContext, cloudwatch: Any, lid: str, props: dict[str, Any]) -> str:
    name = ctx.resolve({"Ref": lid})
    cloudwatch.put_metric_alarm(AlarmName=name, **{k: props[k] for k in _ALARM_KEYS if k in props})
    return str(name)


#: What each emulated resource type is created with, in the order created: (boto3 service, creator).
_CREATORS: dict[str, tuple[str, Callable[[CloudContext, Any, str, dict[str, Any]], str]]] = {
    "AWS::SQS::Queue": ("sqs", _create_queue),
    "AWS::DynamoDB::Table": ("dynamodb", _create_table),
    "AWS::S3::Bucket": ("s3", _create_bucket),
    "AWS::Events::Rule": ("events", _create_rule),
    "AWS::CloudWatch::Alarm": ("cloudwatch", _create_alarm),
}


def _broker_credentials(broker_url: str) -> dict[str, str]:
    creds = broker_url.split("://", 1)[1].rsplit("@", 1)[0] if "@" in broker_url else "guest:guest"
    user, _, password = creds.partition(":")
    # The URL carries them quoted (a per-vhost user is ``ringfleet-control@<vhost>``); the secret holds them as is.
    return {"username": unquote(user), "password": unquote(password)}


def _bucket_notifications(config: dict[str, Any], lid: str) -> dict[str, Any]:
    """CloudFormation's NotificationConfiguration in the shape of S3's PutBucketNotificationConfiguration."""
    out: dict[str, Any] = {}
    for entry in config.get("QueueConfigurations", []):
        item: dict[str, Any] = {"QueueArn": entry["Queue"], "Events": [entry["Event"]]}
        rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules")
        if rules:
            item["Filter"] = {"Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}}
        out.setdefault("QueueConfigurations", []).append(item)
    if config.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        out["EventBridgeConfiguration"] = {}
    for other in ("TopicConfigurations", "LambdaConfigurations"):
        if config.get(other):
            raise TemplateError(f"{lid}: {other} are not emulated; notify an SQS queue as template.yaml does")
    return out
