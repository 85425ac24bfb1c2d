"""Helpers the end-to-end tests share: the digits job (its pace: ``ringfleet_local.pace``), finding deliveries by
content, waiting for a condition (with a function's schedule brought forward meanwhile)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ringfleet_client import load_job_file
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.router import Delivery, decode_rmq
from ringfleet_local.shapes import scheduled_event

from tests.conftest import ROOT

DIGITS = ROOT / "examples" / "digits"


def digits_job(**overrides: Any) -> dict[str, Any]:
    """The digits example's job file, its script by absolute path (the agents run from wherever the test started),
    a budget of 50 $/h, and ``overrides`` (job_id, workers, hyperparameters, ...) on top."""
    fields = load_job_file(DIGITS / "job.yaml")
    fields.update(entrypoint=["python", str(DIGITS / "train.py")], budget_usd_per_hour=50)
    fields.update(overrides)
    return fields


def carrying(deliveries: list[Delivery], needle: str) -> list[Delivery]:
    """Deliveries whose event mentions ``needle`` (bodies of SQS records and aws:rmq messages decoded)."""
    out = []
    for d in deliveries:
        text = json.dumps(d.event)
        if d.event.get("eventSource") == "aws:rmq":
            text += b"".join(decode_rmq(d.event)).decode(errors="replace")
        if needle in text:
            out.append(d)
    return out


#: Seconds between two looks at a condition: most read a table of the local cloud's moto server, and every request
#: takes CPU from the workers the test waits on (the suite is CPU-bound on this 2-core machine).
POLL_S = 0.5


def wait_until(
    condition: Callable[[], object], timeout: float = 45.0, what: str = "the condition", every: float = POLL_S
) -> None:
    """Polls ``condition`` every ``every`` seconds until it is true; fails naming ``what`` after ``timeout`` seconds.
    A condition that runs the CLI (a Python process, boto3 imported) polls every second or more: on a few shared
    cores each run costs the others a good part of a second."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def tick(cloud: LocalCloud, function: str) -> Delivery:
    """The function's ``rate(...)`` schedule fires now, as if its minute had come: the event the router's schedule
    sends, at this moment (the schedule goes on firing on its own too). A run more than the minute's is one that
    AWS may make as well (a retry, another trigger): the functions decide from what is, not from which run it is."""
    event = next(e for e in cloud.ctx.function(function).events if e.type == "Schedule")
    rule_arn = f"arn:aws:events:{cloud.ctx.region}:{cloud.ctx.account}:rule/{cloud.stack}-{function}-{event.name}"
    when = datetime.now(UTC)
    scheduled = scheduled_event(rule_arn, when, account=cloud.ctx.account, region=cloud.ctx.region)
    # As the router's own ticks: a failed run is logged (and recorded in the deliveries), the next one decides again.
    return cloud.router.invoke(function, scheduled, source=event.name, source_type="Schedule")


def wait_ticking(
    cloud: LocalCloud,
    function: str,
    condition: Callable[[], object],
    timeout: float,
    what: str = "the condition",
    every: float = 5.0,
) -> None:
    """:func:`wait_until`, with ``function``'s schedule brought forward (:func:`tick`) every ``every`` seconds
    meanwhile: a test waits for what the function's runs bring about, not for the wall clock's minutes."""
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic()
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what} (ticking {function})")
        if time.monotonic() >= next_tick:
            tick(cloud, function)
            next_tick = time.monotonic() + every
        time.sleep(POLL_S)
