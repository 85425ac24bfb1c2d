"""A broker that refuses a publish costs seconds inside the invocation, not the recovery queue's 60 s visibility
timeout: the spot warning's CheckpointNow still reaches the workers well inside the two-minute notice."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from ringfleet.adapters.commands import AmqpCommandPublisher
from ringfleet.contracts import parse_cloud_event
from ringfleet.recovery.service import RecoveryService
from tests.builders import cloud_event, instance, later, running_job
from tests.doubles import InMemoryInstanceLifecycle, InMemoryJobRepository, InMemoryNodeRepository
from tests.e2e.recovery_support import CommandTap

pytestmark = pytest.mark.e2e


class Clock:
    def now(self) -> Any:
        return later(2)


def refused(url: str) -> str:
    """The same broker URL on a port where nothing listens: the connection is refused at once."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urlunsplit((parts.scheme, f"{netloc}:1", parts.path, "", ""))


def test_a_refused_first_publish_still_gets_the_checkpoint_now_out_within_five_seconds(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # given a running job, and a broker that refuses the control plane's first connection
    job, job_nodes = running_job("publish-retry", members=2)
    clock = Clock()
    jobs, nodes = InMemoryJobRepository(clock), InMemoryNodeRepository()
    jobs.create(job)
    for node in job_nodes:
        nodes.put(node)
    urls = iter([refused(broker_url)])
    publisher = AmqpCommandPublisher(lambda: next(urls, broker_url))
    service = RecoveryService(
        jobs=jobs, nodes=nodes, publisher=publisher, fleet=InMemoryInstanceLifecycle(), clock=clock
    )
    tap = CommandTap(broker_url, job.job_id)
    try:
        # when a spot warning for one of its members is handled
        started = time.monotonic()
        # (the adapter's own logger, whatever an earlier test in this process left it at: a level, disabled)
        logging.getLogger("ringfleet.adapters.commands").disabled = False
        with caplog.at_level(logging.INFO, logger="ringfleet.adapters.commands"):
            outcome = service.on_node_event(
                parse_cloud_event(cloud_event("EC2 Spot Instance Interruption Warning", instance(1), later(1)))
            )
        handled = time.monotonic() - started
    finally:
        publisher.close()
    # then the handler succeeded (no redelivery needed) and the workers got their CheckpointNow within 5 s
    assert "publish attempt 1 failed" in caplog.text
    assert outcome.as_dict()["commands"] == ["CheckpointNow"]
    seen = tap.wait_for(lambda cs: any(c["type"] == "CheckpointNow" for c in cs), timeout=5)
    assert time.monotonic() - started < 5, f"handled in {handled:.2f} s"
    assert [c["type"] for c in seen] == ["CheckpointNow"]
    stored = jobs.get(job.job_id)
    assert stored is not None and stored.outbox == ()
