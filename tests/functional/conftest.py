"""A moto server with template.yaml's resources (no router): repositories and use cases run against it in-process;
the handler tests load their handler on a cloud of their own (tests/functional/handlers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from ringfleet_local.cloud import LocalCloud

from tests.conftest import ROOT
from tests.functional.handlers import SAMPLE_JOB, CommandTap


@pytest.fixture(scope="session")
def aws() -> Iterator[LocalCloud]:
    with LocalCloud(ROOT / "template.yaml", route=False) as cloud:
        saved = {k: os.environ.get(k) for k in cloud.ctx.aws_environment}
        os.environ.update(cloud.ctx.aws_environment)
        yield cloud
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def commands(broker_url: str) -> Iterator[CommandTap]:
    """Every command published to the sample job's workers during the test (tests/functional/handlers.py)."""
    tap = CommandTap(broker_url, SAMPLE_JOB)
    yield tap
    tap.close()
