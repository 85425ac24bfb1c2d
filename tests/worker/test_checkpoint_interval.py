"""The checkpoint interval has one name from the job spec to the worker (``checkpoint_interval_steps``, the variable
``RINGFLEET_CHECKPOINT_INTERVAL_STEPS``) and one default, the contract's."""

from __future__ import annotations

import pytest

from ringfleet.contracts import DEFAULT_CHECKPOINT_INTERVAL_STEPS, Program
from training_worker.__main__ import build_parser
from training_worker.runtime import RuntimeConfig

pytestmark = pytest.mark.worker


def test_a_worker_told_nothing_checkpoints_at_the_contracts_default() -> None:
    assert RuntimeConfig().checkpoint_interval_steps == DEFAULT_CHECKPOINT_INTERVAL_STEPS
    assert RuntimeConfig.from_env({}).checkpoint_interval_steps == DEFAULT_CHECKPOINT_INTERVAL_STEPS
    assert build_parser().parse_args([]).checkpoint_interval_steps == DEFAULT_CHECKPOINT_INTERVAL_STEPS
    program = Program(image="local", entrypoint=["train.py"])
    assert program.checkpoint_interval_steps == DEFAULT_CHECKPOINT_INTERVAL_STEPS


def test_the_interval_travels_under_its_one_name_to_what_the_agent_launches() -> None:
    # given a runtime configured with a job's interval of 7 steps
    config = RuntimeConfig.from_env({"RINGFLEET_CHECKPOINT_INTERVAL_STEPS": "7"})
    # when it hands its configuration to a process it launches, then that process reads the same interval
    handed = config.environment()
    assert handed["RINGFLEET_CHECKPOINT_INTERVAL_STEPS"] == "7"
    assert RuntimeConfig.from_env(handed).checkpoint_interval_steps == 7


@pytest.mark.parametrize("flag", ["--checkpoint-interval-steps", "--checkpoint-every"])
def test_the_command_line_takes_the_interval_under_its_name_and_the_old_flag(flag: str) -> None:
    assert build_parser().parse_args([flag, "20"]).checkpoint_interval_steps == 20
