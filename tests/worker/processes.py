"""Starts `python -m training_worker` processes and waits for what they print."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = log
        full_env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self._file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training_worker", "--broker-url", "none", *args],
            cwd=ROOT,
            env=full_env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

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

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"worker did not finish within {timeout}s:\n{self.output()}") from e

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._file.close()
