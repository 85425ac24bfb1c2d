"""Helpers the end-to-end tests share: the digits job, finding deliveries by content, waiting for a condition."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ringfleet_client import load_job_file
from ringfleet_local.router import Delivery, decode_rmq

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


def wait_until(condition: Callable[[], object], timeout: float = 45.0, what: str = "the condition") -> None:
    """Polls ``condition`` until it is true; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
