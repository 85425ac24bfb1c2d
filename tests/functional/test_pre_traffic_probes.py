"""The pre-traffic hook's probes are accepted by today's handlers and change nothing (the local cloud, no router).

Each handler runs as in Lambda (its own process, the template's environment) against template.yaml's resources on
moto, and is invoked with exactly what the hook would send it. A probe a handler rejects would fail every deploy;
a probe that wrote would leave traces of every deploy in the live tables.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.runtime import FunctionRuntime

from tests.conftest import ROOT

pytestmark = [pytest.mark.functional, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def hook() -> Iterator[ModuleType]:
    saved = os.environ.get("POWERTOOLS_TRACE_DISABLED")
    os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
    spec = importlib.util.spec_from_file_location("pre_traffic_probes_app", ROOT / "services/pre_traffic/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    if saved is None:
        os.environ.pop("POWERTOOLS_TRACE_DISABLED", None)


@pytest.fixture(scope="module")
def aws() -> Iterator[LocalCloud]:
    # a cloud of its own: the fleet scaler's probe reconciles whatever jobs the tables hold, and the session's
    # cloud holds other tests' hand-made rows
    with LocalCloud(ROOT / "template.yaml", route=False) as cloud:
        yield cloud


def table_items(aws: LocalCloud, logical_id: str) -> list[dict[str, Any]]:
    name = aws.ctx.resolve({"Ref": logical_id})
    items: list[dict[str, Any]] = aws.ctx.client("dynamodb").scan(TableName=name)["Items"]
    return items


def test_every_handler_accepts_its_probes_and_writes_nothing_about_the_probe_job(
    aws: LocalCloud, hook: ModuleType
) -> None:
    functions = {fn.environment["POWERTOOLS_SERVICE_NAME"]: lid for lid, fn in aws.ctx.functions.items()}
    for service, probes in hook.PROBES.items():
        lid = functions[service]
        fn = aws.ctx.function(lid)
        runtime = FunctionRuntime(
            lid, fn.handler, aws.ctx.function_environment(lid), timeout_s=fn.timeout, cwd=str(fn.code_uri)
        )
        try:
            for probe in probes:
                result = runtime.invoke(hook.probe_event(probe))
                # then the handler neither raised nor failed a record
                assert result.ok, f"{service} {probe.sample}: {result.summary()}\n{result.logs[-2000:]}"
                failures = result.result.get("batchItemFailures") if isinstance(result.result, dict) else None
                assert not failures, f"{service} {probe.sample}: {result.result}"
        finally:
            runtime.close()
    # and nothing was recorded about the probe job or instance
    for table in ("JobsTable", "NodesTable", "CheckpointsTable"):
        text = repr(table_items(aws, table))
        assert hook.PROBE_JOB not in text and hook.PROBE_INSTANCE not in text, table
