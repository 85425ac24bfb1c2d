"""bench/scale_model.py: a reclamation through the real plan_recovery in simulated time, small enough to run here."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from types import ModuleType

import pytest

from ringfleet.adapters.dynamodb import job_to_item
from ringfleet.core.jobs import Job
from ringfleet.recovery.decisions import plan_recovery
from ringfleet.recovery.service import RecoveryService
from ringfleet.recovery.signals import signal_of
from tests.conftest import ROOT
from tests.doubles import (
    InMemoryInstanceLifecycle,
    InMemoryJobRepository,
    InMemoryNodeRepository,
    ManualClock,
    RecordingCommandPublisher,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_model", ROOT / "bench" / "scale_model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_model"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_a_reclaimed_pool_gets_one_checkpoint_now_and_one_new_generation_per_job(model: ModuleType) -> None:
    result = model.run_scenario(model.Params(), 2_000)  # 40 jobs of 10 lose every worker: 400 warnings
    assert (result["warnings"], result["affected_jobs"]) == (400, 40)
    assert result["checkpoint_now_per_job"] == [1]
    assert result["reconfigure_per_job"] == [1]
    assert result["generations"] == {"2": 40}
    assert result["aws_calls_per_warning"] <= 4
    assert result["calls_per_warning"]["broker publish"] == pytest.approx(0.1)  # one publish per job, not per node
    assert result["calls_per_warning"]["EventBridge PutEvents"] == pytest.approx(0.1)
    assert result["last_checkpoint_now_s"] <= model.TARGET_S
    assert result["decisions"] >= result["warnings"]


def test_duplicated_warnings_and_jobs_spread_over_pools_change_nothing_more(model: ModuleType) -> None:
    params = model.Params(placement="spread", duplicates=0.5)
    result = model.run_scenario(params, 1_000)  # every job of 100 loses 2 workers, half the warnings come twice
    assert result["affected_jobs"] == 100
    assert result["warnings"] > 200
    assert result["checkpoint_now_per_job"] == [1]
    assert result["reconfigure_per_job"] == [1]
    assert result["generations"] == {"2": 100}
    assert result["calls_per_warning"]["DynamoDB Query"] > 0  # a duplicate reads the job's nodes, decides nothing
    assert result["aws_calls_per_warning"] <= 4


def comparable(job: Job) -> tuple[object, ...]:
    """What a job's record says, whatever the order its concurrent warnings were saved in and when."""
    recovery = job.recovery
    assert recovery is not None
    return (job.state, job.generation, job.revision, job.outbox, job.replacements_wanted, sorted(recovery.leaving))


def test_every_warning_goes_through_the_recovery_service_and_leaves_what_it_leaves_on_in_memory_ports(
    model: ModuleType,
) -> None:
    # given a reclamation run through the model (concurrent handlers, lost races, throttles in simulated time)
    tables, out, warnings, _ = model.simulate(model.Params(), 1_000)
    assert out.conflicts > 0  # the service's retries ran: concurrent notices of a job raced
    # and the same warnings applied one after the other by RecoveryService on the tests' in-memory ports
    seeded, _ = model.seed_fleet(model.Params(), 1_000)
    clock = ManualClock(model.T0)
    jobs, nodes, publisher = InMemoryJobRepository(clock), InMemoryNodeRepository(), RecordingCommandPublisher()
    for job in seeded.jobs.values():
        jobs.create(job)
    for node in seeded.nodes.values():
        nodes.put(node)
    service = RecoveryService(
        jobs=jobs,
        nodes=nodes,
        publisher=publisher,
        fleet=InMemoryInstanceLifecycle(),
        clock=clock,
        sleep=lambda s: None,
    )
    for w in sorted(warnings, key=lambda w: w.arrived):
        service.on_node_event(model.warning(w))
    # then every job and node ends as the service leaves it, and the same CheckpointNow went out per job
    affected = {w.job_id for w in warnings}
    for job_id in affected:
        expected = jobs.get(job_id)
        assert expected is not None
        assert comparable(tables.jobs[job_id]) == comparable(expected)
        assert sorted(map(str, tables.jobs[job_id].incidents)) == sorted(map(str, expected.incidents))
    for w in warnings:
        stored, expected_node = tables.nodes[w.instance_id], nodes.get(w.instance_id)
        assert expected_node is not None and stored.state == expected_node.state
    # (its id names the instance whose notice was saved first, which the races decide)
    sent = Counter(c.job_id for c in publisher.published if c.type == "CheckpointNow")
    assert sent == Counter({job_id: len(ids) for job_id, ids in out.checkpoint_now.items()})
    assert set(sent.values()) == {1} and set(sent) == affected


def test_less_lambda_concurrency_takes_longer(model: ModuleType) -> None:
    full = model.run_scenario(model.Params(), 2_000)
    cut = model.run_scenario(model.Params(account_concurrency=2), 2_000)
    assert cut["peak_concurrency"] <= 2 < full["peak_concurrency"]
    assert cut["last_checkpoint_now_s"] > 2 * full["last_checkpoint_now_s"]


def test_a_partition_too_small_for_the_burst_is_named_as_the_limit(model: ModuleType) -> None:
    squeezed = model.Params(partition_wcu=40.0)
    verdict = model.within(squeezed, 2_000, model.TARGET_S)
    assert verdict["limit"].startswith("DynamoDB jobs index by-tenant")
    assert model.within(model.Params(), 2_000, model.TARGET_S)["limit"] != verdict["limit"]


def test_the_write_units_are_those_of_the_item_the_adapter_writes(model: ModuleType) -> None:
    tables, reclaimed = model.seed_fleet(model.Params(), 1_000)
    instance, job_id = reclaimed[0]
    job, node = tables.jobs[job_id], tables.nodes[instance]
    record = model.Record(instance, job_id, 0.0)
    plan = plan_recovery(job, [node], signal_of(model.warning(record)))
    commands = tuple(c.model_dump(mode="json") for c in plan.commands)
    recovering = replace(plan.job, outbox=commands, updated_at=job.updated_at + timedelta(seconds=1))
    for version in (job, recovering):
        assert model.job_item_uncached(version)[1] == model.item_size(job_to_item(version))


def test_bad_input_is_refused_by_name(model: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="--reclaim"):
        model.main(["--reclaim", "0"])
    with pytest.raises(SystemExit, match="--sizes"):
        model.main(["--sizes", "10"])
    assert capsys.readouterr().out == ""
