"""The e2e tests' usual local cloud: the whole template on this test's broker vhost, its state (the CLI's) in the
test's own folder, the jobs queue emptied first. A test file that needs another (a manual clock, some functions
only, one cloud for the whole module) defines its own ``cloud``, which pytest takes over this one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ringfleet_local.cloud import LocalCloud

from ringfleet.contracts.broker import JOBS_QUEUE
from tests.conftest import ROOT, purge_queue


@pytest.fixture
def cloud(broker_url: str, tmp_path: Path) -> Iterator[LocalCloud]:
    purge_queue(broker_url, JOBS_QUEUE)
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, state_dir=tmp_path / "state") as c:
        yield c
