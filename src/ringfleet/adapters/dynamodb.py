"""DynamoDB implementations of the repositories: jobs, nodes and checkpoints tables, every change conditional."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
from boto3.dynamodb.conditions import Attr, Key
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from ringfleet.backup.ports import CheckpointRecord, CheckpointStatus
from ringfleet.core.jobs import ACTIVE_STATES, DurableCheckpoint, Incident, Job, JobState, PendingRecovery, Retirement
from ringfleet.core.nodes import LifecycleHook, Node, NodeState
from ringfleet.core.ports import Saved
from ringfleet.intake.ports import Admission
from ringfleet.intake.quotas import Usage

if TYPE_CHECKING:
    from ringfleet.core.ports import Clock
    from ringfleet.intake.quotas import QuotaClaim

__all__ = [
    "DynamoDbCheckpointCatalog",
    "DynamoDbJobRepository",
    "DynamoDbNodeRepository",
    "job_from_item",
    "job_to_item",
]

#: Index of the active jobs (sparse: only an active job has ``active_shard``), so the scaler reads what runs, never
#: the jobs that ended; keyed by one of JOB_SHARDS shards so that no index partition takes every job's writes.
ACTIVE_JOBS_INDEX = "active"
JOB_SHARDS = 4
#: A tenant's jobs (``ringfleet jobs``).
TENANT_INDEX = "by-tenant"
#: A tenant's usage of its quota (GPUs and $/h its active jobs hold) is an item of the jobs table keyed
#: ``quota#<tenant>`` (no job id has a '#'), so that a job's put and its tenant's count change in one transaction. It
#: has no ``tenant`` and no ``active_shard``: neither index lists it. A job holding a share carries ``quota_held``.
USAGE_KEY_PREFIX = "quota#"
#: Index of the ACTIVE nodes by when they were last heard of (sparse: ``watch_shard`` only while ACTIVE). The sweep
#: reads, per shard, only the nodes silent since before its cut-off: its reads grow with the silent nodes, not with
#: the table. NODE_SHARDS shards spread the heartbeats' index writes (one partition takes ~1,000 writes/s).
SILENCE_INDEX = "by-silence"
NODE_SHARDS = 8
#: Rows that ended expire (DynamoDB TTL on ``expires_at``, epoch seconds): lost or released nodes after a week,
#: finished jobs after 90 days (their checkpoints' catalogue rows stay until retention retires them).
NODE_RETENTION = timedelta(days=7)
JOB_RETENTION = timedelta(days=90)

_deserialize = TypeDeserializer().deserialize


def _shard(key: str, shards: int) -> str:
    return f"{zlib.crc32(key.encode()) % shards:02d}"


def _epoch(at: datetime | None, after: timedelta) -> int | None:
    return int((at + after).timestamp()) if at is not None else None


# Attributes a conditional save writes; the durable checkpoint is not among them (see record_durable_checkpoint).
_SAVED = (
    "state",
    "generation",
    "revision",
    "members",
    "spares",
    "replacements_wanted",
    "restoring_step",
    "recovery",
    "retirement",
    # Changed only by a rolling upgrade (its image and entrypoint) or its rollback; written only then.
    "spec",
    "incidents",
    "script_failures",
    "script_failed_generation",
    "failure",
    "outbox",
    "updated_at",
    "active_shard",
    "expires_at",
)


def _table(name: str, resource: Any | None) -> Any:
    return (resource or boto3.resource("dynamodb")).Table(name)


def _is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


# -- jobs -------------------------------------------------------------------------------------------------------------


def _recovery_to_json(recovery: PendingRecovery | None) -> str | None:
    if recovery is None:
        return None
    data = asdict(recovery)
    data["started_at"] = _time(recovery.started_at)
    data["deadline"] = _time(recovery.deadline)
    data["leaving"] = list(recovery.leaving)
    data["lost"] = list(recovery.lost)
    return json.dumps(data)


def _recovery_from_json(text: str | None) -> PendingRecovery | None:
    if not text:
        return None
    data = json.loads(text)
    data["started_at"] = _parse_time(data["started_at"])
    data["deadline"] = _parse_time(data.get("deadline"))
    data["leaving"] = tuple(data["leaving"])
    data["lost"] = tuple(data.get("lost", ()))
    return PendingRecovery(**data)


def _retirement_to_json(retirement: Retirement | None) -> str | None:
    if retirement is None:
        return None
    return json.dumps({**asdict(retirement), "started_at": _time(retirement.started_at)})


def _retirement_from_json(text: str | None) -> Retirement | None:
    if not text:
        return None
    data = json.loads(text)
    data["started_at"] = _parse_time(data["started_at"])
    data["retiring"] = tuple(data["retiring"])
    data["previous_entrypoint"] = tuple(data.get("previous_entrypoint") or ())
    data.pop("retired", None)  # rows saved before the retirees were read from the incident log (retired_at)
    return Retirement(**data)


def _incidents_to_json(incidents: tuple[Incident, ...]) -> str:
    return json.dumps([{**asdict(i), "at": _time(i.at)} for i in incidents])


def _incidents_from_json(text: str | None) -> tuple[Incident, ...]:
    return tuple(Incident(**{**i, "at": _parse_time(i["at"])}) for i in json.loads(text or "[]"))


def job_to_item(job: Job) -> dict[str, Any]:
    """The jobs-table item of a job (nested records as JSON text: readable in the console, free of Decimals)."""
    item: dict[str, Any] = {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "state": job.state.value,
        "generation": job.generation,
        "revision": job.revision,
        "spec": job.spec.model_dump_json(),
        "members": dict(job.members),
        "spares": list(job.spares),
        "replacements_wanted": job.replacements_wanted,
        "restoring_step": job.restoring_step,
        "recovery": _recovery_to_json(job.recovery),
        "retirement": _retirement_to_json(job.retirement),
        "incidents": _incidents_to_json(job.incidents),
        "script_failures": job.script_failures,
        "script_failed_generation": job.script_failed_generation,
        "failure": job.failure,
        "outbox": json.dumps(list(job.outbox)),
        "created_at": _time(job.created_at),
        "updated_at": _time(job.updated_at),
    }
    if job.durable_checkpoint is not None:
        item["durable_checkpoint"] = asdict(job.durable_checkpoint)
        item["durable_step"] = job.durable_checkpoint.step
    if job.state in ACTIVE_STATES:
        item["active_shard"] = _shard(job.job_id, JOB_SHARDS)
    elif job.updated_at is not None:
        item["expires_at"] = _epoch(job.updated_at, JOB_RETENTION)
    return item


def job_from_item(item: dict[str, Any]) -> Job:
    from ringfleet.contracts import JobSubmitted

    durable = item.get("durable_checkpoint")
    return Job(
        job_id=item["job_id"],
        tenant=item["tenant"],
        state=JobState(item["state"]),
        spec=JobSubmitted.model_validate_json(item["spec"]),
        generation=int(item["generation"]),
        members={k: int(v) for k, v in (item.get("members") or {}).items()},
        spares=tuple(item.get("spares") or ()),
        replacements_wanted=int(item.get("replacements_wanted") or 0),
        durable_checkpoint=(
            DurableCheckpoint(uri=durable["uri"], step=int(durable["step"]), generation=int(durable["generation"]))
            if durable
            else None
        ),
        restoring_step=_int(item.get("restoring_step")),
        recovery=_recovery_from_json(item.get("recovery")),
        retirement=_retirement_from_json(item.get("retirement")),
        incidents=_incidents_from_json(item.get("incidents")),
        # Items written before these attributes existed read as a job whose script never failed.
        script_failures=int(item.get("script_failures") or 0),
        script_failed_generation=_int(item.get("script_failed_generation")),
        failure=item.get("failure"),
        outbox=tuple(json.loads(item.get("outbox") or "[]")),
        created_at=_parse_time(item.get("created_at")),
        updated_at=_parse_time(item.get("updated_at")),
        revision=int(item.get("revision") or 0),
    )


def _current(raw: Any) -> Job | None:
    """The job a failed conditional write returned (ALL_OLD, in DynamoDB's wire format: errors are not deserialized
    by the resource layer), None when it returned none."""
    if not raw:
        return None
    return job_from_item({k: _deserialize(v) for k, v in raw.items()})


def _changes(item: dict[str, Any], before: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The update expression, names and values writing only what differs between ``before`` and ``item`` (the
    revision and time always differ): the save's condition holds only while the stored job is still ``before``,
    every save moving the revision, so the rest already holds its value. The names include the condition's."""
    changed = [a for a in _SAVED if a in item and item[a] != before.get(a)]
    removed = [a for a in _SAVED if a not in item and a in before]
    names = {f"#{a}": a for a in (*changed, *removed, "generation", "revision")}
    update = "SET " + ", ".join(f"#{a} = :{a}" for a in changed)
    if removed:
        update += " REMOVE " + ", ".join(f"#{a}" for a in removed)
    return update, names, {f":{a}": item[a] for a in changed}


class DynamoDbJobRepository:
    """``JobRepository`` on the jobs table (partition key ``job_id``; indexes ``active`` and ``by-tenant``).

    ``nodes_table``: where the nodes a decision changes are written in the same transaction as the job.
    """

    def __init__(
        self,
        table_name: str,
        *,
        clock: Clock,
        boto3_resource: Any | None = None,
        nodes_table: str | None = None,
    ) -> None:
        self._table = _table(table_name, boto3_resource)
        self._clock = clock
        self._nodes_table = nodes_table

    def create(self, job: Job) -> bool:
        stamped = job.saved(self._clock.now()) if job.revision == 0 else job
        try:
            self._table.put_item(Item=job_to_item(stamped), ConditionExpression=Attr("job_id").not_exists())
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def create_within_quota(self, job: Job, claim: QuotaClaim) -> Admission:
        """The job's put-if-absent and its tenant's usage count, conditional on the quota, in one transaction."""
        stamped = job.saved(self._clock.now()) if job.revision == 0 else job
        usd = _decimal(claim.wants.usd_per_hour)
        held = {"gpus": claim.wants.gpus, "usd_per_hour": usd}
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self._table.name,
                    "Item": {**job_to_item(stamped), "quota_held": held},
                    "ConditionExpression": "attribute_not_exists(job_id)",
                }
            },
            {
                "Update": {
                    "TableName": self._table.name,
                    "Key": {"job_id": USAGE_KEY_PREFIX + claim.tenant},
                    "UpdateExpression": "ADD gpus :gpus, usd_per_hour :usd SET quota_tenant = :tenant",
                    "ConditionExpression": "(attribute_not_exists(gpus) OR gpus <= :gpus_room) AND "
                    "(attribute_not_exists(usd_per_hour) OR usd_per_hour <= :usd_room)",
                    "ExpressionAttributeValues": {
                        ":gpus": claim.wants.gpus,
                        ":usd": usd,
                        ":tenant": claim.tenant,
                        ":gpus_room": claim.gpus_room,
                        ":usd_room": _decimal(claim.quota.max_usd_per_hour) - usd,
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
        ]
        try:
            self._table.meta.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            return _refused_admission(list(exc.response.get("CancellationReasons") or []))  # type: ignore[arg-type]
        return Admission("admitted")

    def get(self, job_id: str) -> Job | None:
        item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return job_from_item(item) if item else None

    def _quota_release(self, job: Job, decided_from: Job) -> list[dict[str, Any]]:
        """The usage update giving back the share of a job that this save ends, none for a save that ends nothing or
        a job that holds no share (admitted before shares were counted, or recorded as rejected)."""
        if decided_from.state not in ACTIVE_STATES or job.state in ACTIVE_STATES:
            return []
        item = self._table.get_item(
            Key={"job_id": job.job_id}, ConsistentRead=True, ProjectionExpression="quota_held"
        ).get("Item")
        held = (item or {}).get("quota_held")
        if not held:
            return []
        return [
            {
                "Update": {
                    "TableName": self._table.name,
                    "Key": {"job_id": USAGE_KEY_PREFIX + job.tenant},
                    "UpdateExpression": "ADD gpus :gpus, usd_per_hour :usd",
                    "ExpressionAttributeValues": {":gpus": -int(held["gpus"]), ":usd": -Decimal(held["usd_per_hour"])},
                }
            }
        ]

    def save(self, job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        if job.job_id != decided_from.job_id:
            raise ValueError(f"cannot save job {job.job_id} as decided from job {decided_from.job_id}")
        item = job_to_item(job.saved(self._clock.now()) if job.revision == decided_from.revision else job)
        update, names, values = _changes(item, job_to_item(decided_from))
        values |= {":decided_generation": decided_from.generation, ":decided_revision": decided_from.revision}
        condition = "#generation = :decided_generation AND #revision = :decided_revision"
        release = self._quota_release(job, decided_from)
        if release:
            # Given back in the write that ends the job, fenced as it is: a second end of the job changes nothing.
            update += ", #quota_held" if " REMOVE " in update else " REMOVE #quota_held"
            names["#quota_held"] = "quota_held"
            condition += " AND attribute_exists(#quota_held)"
        if release or (nodes and self._nodes_table):
            return self._save_in_transaction(
                job, update, condition, names, values, nodes if self._nodes_table else (), release
            )
        try:
            self._table.update_item(
                Key={"job_id": job.job_id},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return Saved(False, current=_current(exc.response.get("Item")))
            raise
        return Saved(True)

    def _save_in_transaction(
        self,
        job: Job,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
        nodes: Sequence[Node],
        also: Sequence[dict[str, Any]],
    ) -> Saved:
        """The job's conditional update, its nodes' puts and ``also`` (its quota's release) in one transaction: one
        round trip, all or nothing."""
        now = self._clock.now()
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table.name,
                    "Key": {"job_id": job.job_id},
                    "UpdateExpression": update,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        ]
        for node in nodes:
            stamped = node if node.updated_at else replace(node, updated_at=now)
            items.append({"Put": {"TableName": self._nodes_table, "Item": node_to_item(stamped)}})
        items.extend(also)
        try:
            # The resource's client: it serializes Python values as the table's methods do (errors come raw).
            self._table.meta.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons: list[dict[str, Any]] = list(exc.response.get("CancellationReasons") or [{}])  # type: ignore[arg-type]
            if reasons[0].get("Code") == "ConditionalCheckFailed":
                return Saved(False, current=_current(reasons[0].get("Item")))
            # Another transaction on the same items at the same moment (TransactionConflict): a lost race too.
            return Saved(False)
        return Saved(True, nodes_written=bool(nodes))

    def record_durable_checkpoint(self, job_id: str, checkpoint: DurableCheckpoint) -> bool:
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET durable_checkpoint = :checkpoint, durable_step = :step",
                ConditionExpression=Attr("job_id").exists()
                & (Attr("durable_step").not_exists() | Attr("durable_step").lt(checkpoint.step)),
                ExpressionAttributeValues={":checkpoint": asdict(checkpoint), ":step": checkpoint.step},
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def list_by_tenant(self, tenant: str) -> list[Job]:
        return [job_from_item(i) for i in _query(self._table, TENANT_INDEX, Key("tenant").eq(tenant))]

    def list_active(self) -> list[Job]:
        # The index is eventually consistent: a job that changed state a moment ago may show its former state, which
        # the scaler's next tick (or the event that changed it) corrects.
        items = [
            i
            for shard in range(JOB_SHARDS)
            for i in _query(self._table, ACTIVE_JOBS_INDEX, Key("active_shard").eq(f"{shard:02d}"))
        ]
        return [job_from_item(i) for i in items if JobState(i["state"]) in ACTIVE_STATES]


def _decimal(value: float) -> Decimal:
    # DynamoDB numbers are decimal: a float's shortest repr, so that 0.1 + 0.2 adds up to 0.3 in the usage count.
    return Decimal(repr(float(value)))


def _refused_admission(reasons: list[dict[str, Any]]) -> Admission:
    """Why a job's admission transaction was cancelled, from its reasons (the job's put, then the usage update)."""
    codes = [r.get("Code") for r in reasons] + [None, None]
    if codes[0] == "ConditionalCheckFailed":
        return Admission("exists")
    if codes[1] == "ConditionalCheckFailed":
        raw = reasons[1].get("Item") or {}
        usage = {k: _deserialize(v) for k, v in raw.items()}
        return Admission("over-quota", Usage(int(usage.get("gpus") or 0), float(usage.get("usd_per_hour") or 0)))
    return Admission("conflict")


def _query(table: Any, index: str | None, condition: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"KeyConditionExpression": condition}
    if index:
        kwargs["IndexName"] = index
    while True:
        page = table.query(**kwargs)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# -- nodes ------------------------------------------------------------------------------------------------------------


def node_to_item(node: Node) -> dict[str, Any]:
    item: dict[str, Any] = {
        "instance_id": node.instance_id,
        "job_id": node.job_id,
        "state": node.state.value,
        "rank": node.rank,
        "generation": node.generation,
        "host": node.host,
        "slots": node.slots,
        "tenant": node.tenant,
        "last_heartbeat": _time(node.last_heartbeat),
        "last_step": node.last_step,
        "updated_at": _time(node.updated_at),
    }
    if node.lifecycle_hook is not None:
        item["lifecycle_hook"] = asdict(node.lifecycle_hook)
    seen = node.last_heartbeat or node.updated_at
    if node.state is NodeState.ACTIVE and seen is not None:
        item["watch_shard"] = _shard(node.instance_id, NODE_SHARDS)
        item["last_seen"] = seen.isoformat()
    elif node.state in (NodeState.LOST, NodeState.RELEASED):
        item["expires_at"] = _epoch(node.updated_at, NODE_RETENTION)
    return item


def node_from_item(item: dict[str, Any]) -> Node:
    hook = item.get("lifecycle_hook")
    return Node(
        instance_id=item["instance_id"],
        job_id=item["job_id"],
        state=NodeState(item["state"]),
        rank=_int(item.get("rank")),
        generation=int(item.get("generation") or 0),
        host=item.get("host"),
        # A row written before slots were recorded: its instance ran one process.
        slots=_int(item.get("slots")) or 1,
        tenant=item.get("tenant"),
        last_heartbeat=_parse_time(item.get("last_heartbeat")),
        last_step=_int(item.get("last_step")),
        lifecycle_hook=LifecycleHook(**hook) if hook else None,
        updated_at=_parse_time(item.get("updated_at")),
    )


class DynamoDbNodeRepository:
    """``NodeRepository`` on the nodes table (partition key ``instance_id``, index ``by-job``)."""

    def __init__(self, table_name: str, *, clock: Clock, boto3_resource: Any | None = None) -> None:
        self._table = _table(table_name, boto3_resource)
        self._clock = clock

    def put(self, node: Node) -> None:
        stamped = node if node.updated_at else replace(node, updated_at=self._clock.now())
        self._table.put_item(Item=node_to_item(stamped))

    def place(self, node: Node, *, over: Node | None) -> bool:
        stamped = node if node.updated_at else replace(node, updated_at=self._clock.now())
        condition: Any
        if over is None:
            condition = Attr("instance_id").not_exists()
        else:
            condition = (
                Attr("job_id").eq(over.job_id)
                & Attr("state").eq(over.state.value)
                & Attr("generation").eq(over.generation)
            )
            if over.updated_at is not None:
                condition &= Attr("updated_at").eq(over.updated_at.isoformat())
        try:
            self._table.put_item(Item=node_to_item(stamped), ConditionExpression=condition)
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def get(self, instance_id: str) -> Node | None:
        item = self._table.get_item(Key={"instance_id": instance_id}, ConsistentRead=True).get("Item")
        return node_from_item(item) if item else None

    def list_by_job(self, job_id: str) -> list[Node]:
        items = _query(self._table, "by-job", Key("job_id").eq(job_id))
        return sorted((node_from_item(i) for i in items), key=lambda n: n.instance_id)

    def record_heartbeat(self, instance_id: str, *, job_id: str, generation: int, step: int, at: datetime) -> bool:
        try:
            self._table.update_item(
                Key={"instance_id": instance_id},
                # last_seen moves the node along the silence index only while it has a watch_shard (ACTIVE).
                UpdateExpression="SET last_heartbeat = :at, last_step = :step, last_seen = :at",
                ConditionExpression=Attr("instance_id").exists()
                & Attr("job_id").eq(job_id)
                & Attr("state").is_in([NodeState.ACTIVE.value, NodeState.LEAVING.value])
                & Attr("generation").lte(generation)
                # A node never heard from carries last_heartbeat as NULL (node_to_item writes None so): no "<" holds.
                & (
                    Attr("last_heartbeat").not_exists()
                    | Attr("last_heartbeat").attribute_type("NULL")
                    | Attr("last_heartbeat").lt(at.isoformat())
                ),
                ExpressionAttributeValues={":at": at.isoformat(), ":step": step},
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def list_silent(self, before: datetime) -> list[Node]:
        # ISO-8601 UTC timestamps of one format compare as strings in time order. One query per shard, each reading
        # only the silent nodes; the index lags the table by a moment, so each is checked as the item says.
        found = [
            node_from_item(i)
            for shard in range(NODE_SHARDS)
            for i in _query(
                self._table,
                SILENCE_INDEX,
                Key("watch_shard").eq(f"{shard:02d}") & Key("last_seen").lt(before.isoformat()),
            )
        ]
        return sorted(
            (n for n in found if n.state is NodeState.ACTIVE and (n.last_heartbeat or n.updated_at or before) < before),
            key=lambda n: n.instance_id,
        )


# -- checkpoints ------------------------------------------------------------------------------------------------------


class DynamoDbCheckpointCatalog:
    """``CheckpointCatalog`` on the checkpoints table (``job_id`` + ``step``)."""

    def __init__(self, table_name: str, *, boto3_resource: Any | None = None) -> None:
        self._table = _table(table_name, boto3_resource)

    def put(self, record: CheckpointRecord) -> None:
        self._table.put_item(
            Item={
                "job_id": record.job_id,
                "step": record.step,
                "generation": record.generation,
                "status": record.status.value,
                "uri": record.uri,
                "size_bytes": record.size_bytes,
                "recorded_at": record.recorded_at.isoformat(),
                "reason": record.reason,
            }
        )

    def list(self, job_id: str) -> list[CheckpointRecord]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"KeyConditionExpression": Key("job_id").eq(job_id), "ConsistentRead": True}
        while True:
            page = self._table.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return [
            CheckpointRecord(
                job_id=i["job_id"],
                step=int(i["step"]),
                generation=int(i["generation"]),
                status=CheckpointStatus(i["status"]),
                uri=i["uri"],
                size_bytes=int(i["size_bytes"]),
                recorded_at=datetime.fromisoformat(i["recorded_at"]),
                reason=i.get("reason", ""),
            )
            for i in items
        ]
