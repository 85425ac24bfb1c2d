"""Messages on the broker: what they accept, what they refuse (naming the field), and that encoding round-trips."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from ringfleet.contracts import (
    DEFAULT_CHECKPOINT_INTERVAL_STEPS,
    MESSAGE_TYPES,
    AppMessage,
    CheckpointNow,
    Command,
    Heartbeat,
    JobSubmitted,
    Reconfigure,
    WorkerMessage,
    encode_message,
    parse_message,
    split_host_port,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

MESSAGES = ROOT / "events" / "messages"
SAMPLES = sorted(p.stem for p in MESSAGES.glob("*.json"))


def sample(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MESSAGES / f"{name}.json").read_text())
    data.update(changes)
    return data


def rejected(data: dict[str, Any]) -> str:
    """The error text for a message the contract must refuse."""
    with pytest.raises(ValidationError) as exc:
        parse_message(data)
    return str(exc.value)


# -- accepted, and round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_encoded_message_parses_back_equal(name: str) -> None:
    # given a sample message
    message = parse_message(sample(name))
    # when it is encoded for the broker and parsed by the consumer
    again = parse_message(encode_message(message))
    # then nothing was lost or changed
    assert again == message
    assert type(again) is MESSAGE_TYPES[sample(name)["type"]]


@pytest.mark.parametrize("name", SAMPLES)
def test_bytes_text_and_dict_parse_alike(name: str) -> None:
    raw = (MESSAGES / f"{name}.json").read_bytes()
    assert parse_message(raw) == parse_message(raw.decode()) == parse_message(json.loads(raw))


def test_a_new_message_gets_a_unique_id_and_an_aware_send_time() -> None:
    data = sample("stop")
    del data["message_id"], data["sent_at"]
    first, second = parse_message(data), parse_message(data)
    assert first.message_id != second.message_id
    assert first.sent_at.tzinfo is not None
    assert abs(first.sent_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_messages_are_frozen() -> None:
    message = Heartbeat.model_validate(sample("heartbeat"))
    with pytest.raises(ValidationError):
        message.step = 1_000  # type: ignore[misc]


def test_the_typed_unions_accept_only_their_own_messages() -> None:
    # a Heartbeat on the jobs queue is a routing bug: job_intake's union refuses it, naming the type
    with pytest.raises(ValidationError) as exc:
        TypeAdapter(AppMessage).validate_python(sample("heartbeat"))
    assert "'Heartbeat'" in str(exc.value) and "type" in str(exc.value)
    assert isinstance(TypeAdapter(WorkerMessage).validate_python(sample("heartbeat")), Heartbeat)
    assert isinstance(TypeAdapter(Command).validate_python(sample("checkpoint_now")), CheckpointNow)


def test_reconfigure_tells_each_instance_its_rank_and_where_to_meet() -> None:
    reconfigure = parse_message(sample("reconfigure"))
    assert isinstance(reconfigure, Reconfigure)
    assert reconfigure.rank_of("i-0abcd1234ef567892") == 1
    assert reconfigure.rank_of("i-0abcd1234ef567891") is None  # left the job: it should stop
    assert (reconfigure.rendezvous_host, reconfigure.rendezvous_port) == ("10.0.12.34", 29500)
    assert reconfigure.checkpoint is not None
    assert reconfigure.checkpoint.bucket == "ringfleet-checkpoints-123456789012-us-east-1"
    assert reconfigure.checkpoint.prefix == "jobs/digits-demo/ckpt/000000000120/"


def test_reconfigure_says_how_many_slots_each_member_runs_and_their_process_ranks_follow_the_instance_ranks() -> None:
    # given the sample ring of three with its rank-1 member running 4 slots (the others, not named, one each)
    a, b, c = "i-0abcd1234ef567890", "i-0abcd1234ef567892", "i-0f1e2d3c4b5a69788"
    reconfigure = parse_message(sample("reconfigure", slots={b: 4}))
    assert isinstance(reconfigure, Reconfigure)
    assert [reconfigure.slots_of(i) for i in (a, b, c)] == [1, 4, 1]
    # then its processes are ranked contiguously per instance, in instance rank order: 6 processes, b's in the middle
    assert reconfigure.process_instances() == (a, b, b, b, b, c)
    assert reconfigure.world_size == 3  # still the instances, its membership unit
    # and the sample as sent before slots existed runs one process on each member
    sent_before = sample("reconfigure")
    del sent_before["slots"]
    before = parse_message(sent_before)
    assert isinstance(before, Reconfigure) and before.slots == {} and before.process_instances() == (a, b, c)


def test_reconfigure_slots_naming_a_non_member_or_out_of_range_are_refused() -> None:
    assert "slots names non-members: i-00000000000000bad" in rejected(
        sample("reconfigure", slots={"i-00000000000000bad": 2})
    )
    for count in (0, 17, "2"):
        assert "slots" in rejected(sample("reconfigure", slots={"i-0abcd1234ef567892": count}))


@pytest.mark.parametrize(
    ("gpus", "slots_per_instance", "slots"),
    [(1, None, 1), (4, None, 4), (8, 2, 2), (2, 4, 2), (0, None, 1), (0, 3, 1)],
)
def test_a_job_runs_a_slot_per_gpu_of_its_instance_at_most_its_slots_per_instance(
    gpus: int, slots_per_instance: int | None, slots: int
) -> None:
    job = JobSubmitted.model_validate(sample("job_submitted", slots_per_instance=slots_per_instance))
    assert job.slots_on(gpus) == slots


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1:29500", ("10.0.0.1", 29500)),
        ("ip-10-0-0-1.ec2.internal:1", ("ip-10-0-0-1.ec2.internal", 1)),
        ("[fd00::1]:65535", ("fd00::1", 65535)),
    ],
)
def test_rendezvous_addresses_split_into_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address) == expected


# -- refused, with the field named ------------------------------------------------------------------------------------


def test_an_unknown_field_is_refused() -> None:
    assert "priority" in rejected(sample("job_submitted", priority="high"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_workers", -1),
        ("min_workers", 0),
        ("max_workers", 100_000),
        ("gpus_per_worker", 17),
        ("budget_usd_per_hour", -5.0),
        ("budget_usd_per_hour", 0),
        ("budget_usd_per_hour", 1e9),
        ("checkpoint_interval_steps", 0),
        ("total_steps", 0),
        ("total_steps", "1000"),
        ("instance_types", []),
        ("entrypoint", []),
        ("tenant", "Acme Corp"),
        ("job_id", "-leading-dash"),
        ("image", "evil image; rm -rf /"),
        ("instance_types", ["g5.xlarge", "g5.xlarge"]),
        ("slots_per_instance", 0),
        ("slots_per_instance", 17),
        ("slots_per_instance", "2"),
    ],
)
def test_job_submitted_refuses_absurd_values(field: str, value: Any) -> None:
    assert field in rejected(sample("job_submitted", **{field: value}))


def test_total_steps_is_optional_so_a_job_submitted_before_it_existed_still_parses() -> None:
    # given the sample JobSubmitted as an older client sends it (no total_steps)
    data = sample("job_submitted")
    data.pop("total_steps", None)
    # then it parses, with no total (the deadline cannot steer the job), and a job that names one keeps it
    assert JobSubmitted.model_validate(data).total_steps is None
    assert JobSubmitted.model_validate({**data, "total_steps": 600}).total_steps == 600


def test_a_program_without_a_checkpoint_interval_takes_the_one_default() -> None:
    # given the sample Reconfigure as an older control plane sent it, its program naming no checkpoint interval
    data = sample("reconfigure")
    program = {k: v for k, v in data["program"].items() if k != "checkpoint_interval_steps"}
    # then the worker reads the one default interval
    parsed = Reconfigure.model_validate({**data, "program": program})
    assert parsed.program is not None
    assert parsed.program.checkpoint_interval_steps == DEFAULT_CHECKPOINT_INTERVAL_STEPS == 50


def test_max_workers_below_min_workers_is_refused() -> None:
    error = rejected(sample("job_submitted", min_workers=4, max_workers=2))
    assert "max_workers" in error and "min_workers" in error


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_floats_must_be_finite(value: float) -> None:
    assert "budget_usd_per_hour" in rejected(sample("job_submitted", budget_usd_per_hour=value))
    assert "loss" in rejected(sample("heartbeat", loss=value))


@pytest.mark.parametrize(("field", "value"), [("rank", True), ("step", "118"), ("generation", 3.0)])
def test_numbers_are_not_coerced_from_other_types(field: str, value: Any) -> None:
    assert field in rejected(sample("heartbeat", **{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("generation", -1),
        ("generation", 10**9 + 1),
        ("step", 10**12),
        ("rank", 4096),
        ("world_size", 0),
        ("world_size", 4097),
        ("instance_id", "i-123"),
        ("samples_per_second", -1.0),
    ],
)
def test_heartbeat_refuses_out_of_range_values(field: str, value: Any) -> None:
    assert field in rejected(sample("heartbeat", **{field: value}))


def test_a_rank_outside_the_world_is_refused() -> None:
    error = rejected(sample("heartbeat", rank=3, world_size=3))
    assert "rank" in error and "world_size" in error


def test_another_schema_version_is_refused() -> None:
    assert "schema_version" in rejected(sample("stop", schema_version=2))


def test_a_send_time_without_time_zone_is_refused() -> None:
    assert "sent_at" in rejected(sample("stop", sent_at="2025-06-02T16:12:09"))


def test_an_unknown_type_is_refused() -> None:
    assert "type" in rejected(sample("stop", type="Restart"))


@pytest.mark.parametrize(
    "ranks",
    [
        {"i-0abcd1234ef567890": 0, "i-0abcd1234ef567892": 1},  # one member too few
        {"i-0abcd1234ef567890": 0, "i-0abcd1234ef567892": 1, "i-0f1e2d3c4b5a69788": 1},  # rank 1 twice, no 2
        {"i-0abcd1234ef567890": 1, "i-0abcd1234ef567892": 2, "i-0f1e2d3c4b5a69788": 3},  # not from 0
    ],
)
def test_ranks_that_do_not_match_world_size_are_refused(ranks: dict[str, int]) -> None:
    assert "ranks" in rejected(sample("reconfigure", ranks=ranks))


@pytest.mark.parametrize("rendezvous", ["10.0.12.34", "10.0.12.34:0", "10.0.12.34:70000", "host name:80", ":29500"])
def test_a_rendezvous_that_is_not_host_port_is_refused(rendezvous: str) -> None:
    assert "rendezvous" in rejected(sample("reconfigure", rendezvous=rendezvous))


def test_a_checkpoint_ref_whose_uri_names_another_step_is_refused() -> None:
    checkpoint = {"uri": "s3://ringfleet-checkpoints-123456789012-us-east-1/jobs/digits-demo/ckpt/000000000120/"}
    assert "uri" in rejected(sample("reconfigure", checkpoint={**checkpoint, "step": 121}))


def test_a_checkpoint_of_another_job_is_refused() -> None:
    checkpoint = {"uri": "s3://ringfleet-checkpoints-123456789012-us-east-1/jobs/other-job/ckpt/000000000120/"}
    assert "checkpoint" in rejected(sample("reconfigure", checkpoint={**checkpoint, "step": 120}))


@pytest.mark.parametrize(
    "uri",
    [
        "s3://ringfleet-checkpoints-123456789012-us-east-1/jobs/digits-demo/ckpt/000000000121/",
        "s3://ringfleet-checkpoints-123456789012-us-east-1/jobs/digits-demo/ckpt/120/",
        "https://example.com/jobs/digits-demo/ckpt/000000000120/",
    ],
)
def test_checkpoint_completed_must_name_its_own_checkpoint(uri: str) -> None:
    assert "uri" in rejected(sample("checkpoint_completed", uri=uri))


def test_checkpoint_now_refuses_an_unknown_reason_and_a_naive_deadline() -> None:
    assert "reason" in rejected(sample("checkpoint_now", reason="bored"))
    assert "deadline" in rejected(sample("checkpoint_now", deadline="2025-06-02T14:07:31"))


# -- property-based round trips ---------------------------------------------------------------------------------------

job_ids = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,62}\Z")
instance_ids = st.from_regex(r"\Ai-[0-9a-f]{8,17}\Z")
aware_times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
hyper_values = st.one_of(st.text(max_size=50), st.booleans(), st.integers(min_value=-(2**53), max_value=2**53), finite)


@st.composite
def reconfigures(draw: st.DrawFn) -> Reconfigure:
    members = draw(st.lists(instance_ids, min_size=1, max_size=64, unique=True))
    ranks = draw(st.permutations(range(len(members))))
    slots = draw(st.dictionaries(st.sampled_from(members), st.integers(1, 16)))
    return Reconfigure(
        job_id=draw(job_ids),
        generation=draw(st.integers(0, 10**9)),
        world_size=len(members),
        ranks=dict(zip(members, ranks, strict=True)),
        slots=slots,
        rendezvous=f"10.0.{draw(st.integers(0, 255))}.{draw(st.integers(0, 255))}:{draw(st.integers(1, 65535))}",
        sent_at=draw(aware_times),
    )


@given(reconfigures())
def test_any_valid_reconfigure_round_trips(message: Reconfigure) -> None:
    assert parse_message(encode_message(message)) == message


@given(
    job_id=job_ids,
    hyperparameters=st.dictionaries(st.text(min_size=1, max_size=20), hyper_values, max_size=20),
    workers=st.tuples(st.integers(1, 1024), st.integers(1, 1024)).map(sorted),
    budget=st.floats(min_value=0.01, max_value=100_000),
)
def test_any_valid_job_submitted_round_trips(
    job_id: str, hyperparameters: dict[str, Any], workers: list[int], budget: float
) -> None:
    message = JobSubmitted.model_validate(
        sample(
            "job_submitted",
            job_id=job_id,
            hyperparameters=hyperparameters,
            min_workers=workers[0],
            max_workers=workers[1],
            budget_usd_per_hour=budget,
        )
    )
    again = parse_message(encode_message(message))
    assert again == message
    # a bool stays a bool and an int stays an int (in Python True == 1, so compare the types too)
    assert isinstance(again, JobSubmitted)
    assert {k: type(v) for k, v in again.hyperparameters.items()} == {k: type(v) for k, v in hyperparameters.items()}


@given(loss=st.none() | finite, step=st.integers(0, 10**12 - 1), when=aware_times)
def test_any_valid_heartbeat_round_trips(loss: float | None, step: int, when: datetime) -> None:
    message = Heartbeat.model_validate(sample("heartbeat", loss=loss, step=step, sent_at=when.isoformat()))
    assert parse_message(encode_message(message)) == message


def test_a_job_spec_too_large_for_its_record_is_refused_with_the_reason() -> None:
    from ringfleet.contracts.messages import MAX_SPEC_BYTES

    # given a valid job whose hyperparameters add up to more than a job record can hold (each value within bounds)
    fields = json.loads((ROOT / "events" / "messages" / "job_submitted.json").read_text())
    fields["hyperparameters"] = {f"h{i}": "x" * 4000 for i in range(40)}
    # then it is refused, saying how big it is and what to do
    with pytest.raises(ValidationError, match=rf"more than {MAX_SPEC_BYTES}: keep the entrypoint"):
        JobSubmitted.model_validate(fields)
