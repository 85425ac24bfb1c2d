"""Builders of jobs, nodes, instance catalogs and cloud events for the recovery, scaling, intake and backup tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from ringfleet.contracts import JobSubmitted
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import Node, NodeState
from ringfleet.recovery.service import RecoveryService
from ringfleet.scaling.catalog import InstanceCatalog, InstanceType
from tests.conftest import ROOT
from tests.doubles import (
    InMemoryInstanceLifecycle,
    InMemoryJobRepository,
    InMemoryNodeRepository,
    RecordingCommandPublisher,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(
    job_id: str = "digits-demo", *, min_workers: int = 1, max_workers: int = 8, max_restarts: int = 3
) -> JobSubmitted:
    data = json.loads((ROOT / "events/messages/job_submitted.json").read_text())
    data.update(job_id=job_id, min_workers=min_workers, max_workers=max_workers, message_id=str(uuid4()))
    data.update(max_restarts=max_restarts)
    return JobSubmitted.model_validate(data)


def instance(n: int) -> str:
    return f"i-{n:017x}"


def running_job(
    job_id: str = "digits-demo",
    *,
    members: int = 4,
    generation: int = 1,
    min_workers: int = 1,
    max_workers: int = 8,
    first: int = 1,
    max_restarts: int = 3,
) -> tuple[Job, list[Node]]:
    """A RUNNING job with ``members`` ACTIVE nodes i-...first.., ranks in order, every node heard from at T0."""
    ranks = {instance(first + r): r for r in range(members)}
    job = Job(
        job_id=job_id,
        tenant="acme",
        state=JobState.RUNNING,
        spec=spec(job_id, min_workers=min_workers, max_workers=max_workers, max_restarts=max_restarts),
        generation=generation,
        members=ranks,
        created_at=T0,
    )
    nodes = [
        Node(
            instance_id=i,
            job_id=job_id,
            state=NodeState.ACTIVE,
            rank=r,
            generation=generation,
            host=f"10.0.0.{r + 1}",
            last_heartbeat=T0,
            last_step=100,
            updated_at=T0,
        )
        for i, r in ranks.items()
    ]
    return job, nodes


def cloud_event(detail_type: str, instance_id: str, at: datetime, **detail: Any) -> dict[str, Any]:
    """An EventBridge event about one instance, shaped like the samples in events/."""
    samples = {
        "EC2 Spot Instance Interruption Warning": "ec2_spot_interruption_warning.json",
        "EC2 Instance Rebalance Recommendation": "ec2_rebalance_recommendation.json",
        "EC2 Instance State-change Notification": "ec2_instance_state_change.json",
        "EC2 Instance-terminate Lifecycle Action": "autoscaling_lifecycle_terminate.json",
    }
    event = json.loads((ROOT / "events" / samples[detail_type]).read_text())
    event["id"] = str(uuid4())
    event["time"] = at.isoformat().replace("+00:00", "Z")
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    key = "EC2InstanceId" if detail_type.startswith("EC2 Instance-terminate") else "instance-id"
    event["detail"][key] = instance_id
    event["detail"].update(detail)
    return event


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def catalog(prices: dict[str, float], gpus: dict[str, int] | None = None) -> InstanceCatalog:
    """An instance catalog of these on-demand $/h, each type with one GPU unless ``gpus`` says more."""
    return InstanceCatalog({n: InstanceType(n, (gpus or {}).get(n, 1), 24576, p) for n, p in prices.items()}, T0)


@dataclass
class RecoveryWorld:
    """The recovery use case on in-memory adapters, around one RUNNING job (``running_job``)."""

    service: RecoveryService
    jobs: InMemoryJobRepository
    nodes: InMemoryNodeRepository
    publisher: RecordingCommandPublisher
    fleet: InMemoryInstanceLifecycle
    #: What the service put on EventBridge.
    events: list[dict[str, Any]]

    @classmethod
    def of(cls, clock: Any, *, members: int = 4, max_workers: int = 8, max_restarts: int = 3) -> RecoveryWorld:
        jobs, nodes = InMemoryJobRepository(clock), InMemoryNodeRepository()
        publisher, fleet = RecordingCommandPublisher(), InMemoryInstanceLifecycle()
        events: list[dict[str, Any]] = []
        job, job_nodes = running_job(members=members, max_workers=max_workers, max_restarts=max_restarts)
        jobs.create(job)
        for node in job_nodes:
            nodes.put(node)
        service = RecoveryService(
            jobs=jobs, nodes=nodes, publisher=publisher, fleet=fleet, clock=clock, put_events=events.extend
        )
        return cls(service, jobs, nodes, publisher, fleet, events)
