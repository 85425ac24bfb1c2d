"""Starts `python -m training_worker` processes and waits for what they print."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from ringfleet_local.warm import start_agent

ROOT = Path(__file__).resolve().parents[2]

_PROGRESS = re.compile(r"\bstep (\d+) loss .* world (\d+) rank (\d+) generation (\d+)$")


#: The job script the worker tests run: the digits example, written against the public API only.
DIGITS = ("python", "examples/digits/train.py")


class WorkerProcess:
    """One instance agent process running ``script`` (the digits example with these arguments; None: no program,
    it waits to be placed and runs what its first Reconfigure names). Without ``broker_url`` it runs with
    ``--broker-url none``; with one it is configured the way a fleet launches it, through ``RINGFLEET_BROKER_URL``."""

    def __init__(
        self,
        log: Path,
        *args: str,
        script: tuple[str, ...] | None = (),
        program: tuple[str, ...] = DIGITS,
        env: dict[str, str] | None = None,
        broker_url: str | None = None,
    ) -> None:
        self.log = log
        full_env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
            "OMP_NUM_THREADS": "1",
            "RINGFLEET_CHECKPOINT_CACHE": str(log.parent / "checkpoint-cache" / log.stem),
            **(env or {}),
        }
        if broker_url is not None:
            full_env["RINGFLEET_BROKER_URL"] = broker_url
        flags = [] if broker_url is not None else ["--broker-url", "none"]
        log.write_text("")
        # forked from the warm interpreter, as the local fleet's agents are (ringfleet_local.warm): the same
        # ``python -m training_worker``, leading a group with its script (kill() ends both), without the cold boot
        self.proc = start_agent(
            [*flags, *args, *([] if script is None else ["--", *program, *script])],
            env=full_env,
            cwd=ROOT,
            log_path=log,
        )

    def output(self) -> str:
        return self.log.read_text()

    def progress(self) -> list[tuple[int, int, int, int]]:
        """Every progress line so far as (step, world size, rank, generation)."""
        found = (_PROGRESS.search(line) for line in self.output().splitlines())
        return [(int(m[1]), int(m[2]), int(m[3]), int(m[4])) for m in found if m]

    def wait_for(self, text: str, timeout: float = 60.0) -> float:
        """Waits until the output contains ``text``; returns when (monotonic). Fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return time.monotonic()
            if self.proc.poll() is not None and text not in self.output():
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) before printing {text!r}:\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output()}")

    def wait_for_step(self, step: int, generation: int, timeout: float = 60.0) -> tuple[int, int, int, int]:
        """Waits for a progress line at ``step`` or later in ``generation``; returns the first such line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.progress():
                if line[0] >= step and line[3] == generation:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before step {step}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"no step {step} of generation {generation} within {timeout}s:\n{self.output()}")

    def terminate(self) -> None:
        """SIGTERM, as ECS or EC2 stopping the container sends it."""
        self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"worker did not finish within {timeout}s:\n{self.output()}") from e

    def kill(self) -> None:
        """SIGKILL to the agent and everything in its group (the script it runs as a child)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def announce(
    discovery: Path, job: str, generation: int, instances: list[str], slots: dict[str, int] | None = None
) -> None:
    """Plays the control plane for agents run with ``--discovery-file``: a Reconfigure of ``generation`` with
    ``instances`` (ranks in that order, each running ``slots`` processes: one unless named), written atomically so an
    agent never reads half a file."""
    from ringfleet.contracts import encode_message
    from ringfleet.contracts.messages import Reconfigure
    from tests.worker.distributed import free_port

    command = Reconfigure(
        job_id=job,
        generation=generation,
        world_size=len(instances),
        ranks={instance: rank for rank, instance in enumerate(instances)},
        rendezvous=f"127.0.0.1:{free_port()}",
        slots={i: n for i, n in (slots or {}).items() if i in instances},
    )
    staged = discovery.with_suffix(".tmp")
    staged.write_bytes(encode_message(command))
    staged.replace(discovery)
