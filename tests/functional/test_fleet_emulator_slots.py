"""The fleet emulator's agents: each is started with its instance's slots, the GPUs of its type in the local catalog,
at boot and when it is started again after its job ended."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws
from ringfleet_local import warm
from ringfleet_local.fleet import STACK_TAG, FleetEmulator, instance_slots

pytestmark = pytest.mark.functional


class Agent:
    """Stands in for an agent's process: records the environment it was started with, and runs until told it ended."""

    started: list[dict[str, str]] = []
    exit_code: int | None = None

    def __init__(self, args: list[str], *, env: dict[str, str], **kwargs: Any) -> None:
        self.pid = 0
        Agent.started.append(env)

    def poll(self) -> int | None:
        return Agent.exit_code


def test_instance_slots_are_the_gpus_of_its_type_in_the_local_catalog() -> None:
    assert [instance_slots(t) for t in ("g5.xlarge", "g5.12xlarge", "p4d.24xlarge", "p3.2xlarge")] == [1, 4, 8, 1]
    assert instance_slots("t3.micro") == 1  # a type the catalog does not list: one process, as before slots


@mock_aws
def test_each_agent_is_started_with_as_many_slots_as_its_instance_type_has_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a running four-GPU and a running one-GPU instance of the stack
    ec2 = boto3.client("ec2", region_name="us-east-1")
    # (a stack of its own: another test's instances may still be in moto's state in this process)
    tags = [{"ResourceType": "instance", "Tags": [{"Key": STACK_TAG, "Value": "rf-slots"}]}]
    types = {}
    for instance_type in ("g5.12xlarge", "g5.xlarge"):
        out = ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType=instance_type, TagSpecifications=tags
        )
        types[out["Instances"][0]["InstanceId"]] = instance_type
    ctx = SimpleNamespace(
        stack="rf-slots",
        region="us-east-1",
        account="123456789012",
        client=lambda s: boto3.client(s, region_name="us-east-1"),
        aws_environment={},
        worker_broker_environment=lambda: {},
        control_user=None,
        resolve=lambda ref: "checkpoints",
    )
    Agent.started, Agent.exit_code = [], None
    monkeypatch.setattr(warm, "start_agent", Agent)
    emulator = FleetEmulator(ctx, log_dir=tmp_path)  # type: ignore[arg-type]
    try:
        # when the emulator boots their agents
        emulator.poll()
        # then each agent is told its instance's slots: one training process per GPU of its type
        slots = {env["RINGFLEET_INSTANCE_ID"]: env["RINGFLEET_SLOTS"] for env in Agent.started}
        assert slots == {i: "4" if t == "g5.12xlarge" else "1" for i, t in types.items()}
        # and an agent started again after its job ended (unplaced) is told the same
        Agent.exit_code = 0
        emulator._restart_exited(100.0)
        emulator._restart_exited(100.0 + FleetEmulator.RESTART_AFTER_S)
        again = {env["RINGFLEET_INSTANCE_ID"]: env["RINGFLEET_SLOTS"] for env in Agent.started[len(types) :]}
        assert again == slots
    finally:
        emulator.metadata.close()
