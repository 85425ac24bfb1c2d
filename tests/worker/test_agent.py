"""The instance agent's reading of a job's program: how the entrypoint runs and what it is given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ringfleet.contracts.messages import Program
from tests.worker.distributed import free_port
from tests.worker.processes import WorkerProcess
from training_worker.agent import _python_target, command_line

pytestmark = pytest.mark.worker


def _program(entrypoint: list[str], **hyperparameters: str | int | float | bool) -> Program:
    return Program(image="local/x:1", entrypoint=entrypoint, hyperparameters=hyperparameters)


def test_hyperparameters_follow_the_entrypoint_as_flags_with_json_for_non_strings() -> None:
    program = _program(["python", "train.py", "--fixed"], lr=0.05, steps=300, bf16=True, name="run 1")
    assert command_line(program) == [
        "python",
        "train.py",
        "--fixed",
        "--lr",
        "0.05",
        "--steps",
        "300",
        "--bf16",
        "true",
        "--name",
        "run 1",
    ]


def test_python_entrypoints_run_in_the_warm_interpreter_and_others_as_child_processes() -> None:
    script = _python_target(["python", "examples/digits/train.py", "--steps", "5"])
    assert script is not None and (script.kind, script.target, script.argv) == (
        "path",
        "examples/digits/train.py",
        ["examples/digits/train.py", "--steps", "5"],
    )
    module = _python_target([sys.executable, "-m", "my_pkg.train", "--lr", "1"])
    assert module is not None and (module.kind, module.target, module.argv) == (
        "module",
        "my_pkg.train",
        ["my_pkg.train", "--lr", "1"],
    )
    assert _python_target(["train.py"]) is not None
    # a shell, a binary, or Python with interpreter flags run as they are, in a child process
    assert _python_target(["bash", "-c", "python train.py"]) is None
    assert _python_target(["python", "-u", "train.py"]) is None


def test_a_non_python_entrypoint_runs_as_a_child_that_gets_the_ring_and_reports_its_exit_status(
    tmp_path: Path,
) -> None:
    # given an agent whose program is a shell command running the digits example on a ring of one
    port = free_port()
    shell = ("bash", "-c", f"{sys.executable} examples/digits/train.py --steps 10 && echo child-done")
    ok = WorkerProcess(
        tmp_path / "ok.log",
        "--instance-id",
        "i-0000000000000001a",
        "--static-world",
        f"0:1:127.0.0.1:{port}",
        program=shell,
    )
    # and one whose program fails
    failing = WorkerProcess(
        tmp_path / "fail.log",
        "--instance-id",
        "i-0000000000000002b",
        "--static-world",
        f"0:1:127.0.0.1:{free_port()}",
        program=("bash", "-c", "echo broken >&2; exit 3"),
    )
    try:
        # then the child trains with the ring the agent was given, and the agent ends cleanly
        assert ok.finish(90) == 0, ok.output()
        assert "finished: done at step 10" in ok.output() and "child-done" in ok.output()
        assert "as a child process" in ok.output()
        # and a failing child ends the agent with status 1, naming the exit status and its last output
        assert failing.finish(60) == 1, failing.output()
        assert "the script exited with status 3" in failing.output() and "broken" in failing.output()
    finally:
        ok.kill()
        failing.kill()
