"""A moto server with template.yaml's resources (no router): repositories and handlers run against it in-process."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from ringfleet_local.cloud import LocalCloud

from tests.conftest import ROOT


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
