"""Two local clouds on one machine and its one RabbitMQ, as developers and test runs share it: each runs on a vhost
of its own, so neither consumes the other's job submissions."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.core.ports import SystemClock
from tests.e2e.support import digits_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def _jobs(cloud: LocalCloud) -> DynamoDbJobRepository:
    table = str(cloud.ctx.resolve({"Ref": "JobsTable"}))
    return DynamoDbJobRepository(table, clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb"))


def test_two_local_clouds_never_take_each_others_messages(tmp_path: Path) -> None:
    if os.environ.get("RINGFLEET_BROKER_URL"):
        pytest.fail("each cloud makes a vhost of its own on the local broker: unset RINGFLEET_BROKER_URL")
    only = {"JobIntakeFunction"}
    with (
        LocalCloud(only_functions=only, state_dir=tmp_path / "a") as a,
        LocalCloud(only_functions=only, state_dir=tmp_path / "b") as b,
    ):
        assert a.roles is not None and b.roles is not None and a.roles.vhost != b.roles.vhost
        # when an app submits one job to each cloud, as its tenant's app user
        for cloud, job_id in ((a, "side-a"), (b, "side-b")):
            RingfleetClient(cloud.ctx.role_broker_url("app", "acme")).submit(digits_job(job_id=job_id))
        # then each cloud admits its own job, and only its own, however long the other's consumers run
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (_jobs(a).get("side-a") and _jobs(b).get("side-b")):
            time.sleep(0.5)
        assert _jobs(a).get("side-a") is not None and _jobs(b).get("side-b") is not None
        time.sleep(3)  # time enough for a consumer of the wrong vhost to have taken it
        assert _jobs(a).get("side-b") is None and _jobs(b).get("side-a") is None
        # and each cloud's job intake was only ever handed its own cloud's message
        for cloud, own in ((a, "side-a"), (b, "side-b")):
            seen = {json.loads(base64.b64decode(m["data"]))["job_id"] for m in _delivered(cloud)}
            assert seen == {own}, seen


def _delivered(cloud: LocalCloud) -> list[dict[str, Any]]:
    return [
        message
        for d in cloud.router.deliveries
        if d.function == "JobIntakeFunction"
        for messages in d.event["rmqMessagesByQueue"].values()
        for message in messages
    ]
