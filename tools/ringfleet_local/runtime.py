"""Lambda execution environments for the local cloud: one process per function, with its template environment."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ringfleet_local import warm

__all__ = ["FunctionRuntime", "InvocationResult"]

#: How long a cold start may take to connect back.
_CONNECT_TIMEOUT_S = 60.0


@dataclass
class InvocationResult:
    """What one invocation returned or raised, with its logs."""

    function: str
    request_id: str
    ok: bool
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    logs: str = ""
    duration_ms: float = 0.0
    started_at: float = field(default_factory=time.time)

    def summary(self) -> str:
        outcome = "ok" if self.ok else f"{self.error_type}: {self.error_message}"
        return f"{self.function} {self.duration_ms:.0f} ms {outcome}"


class FunctionRuntime:
    """A warm execution environment: started on first use (the cold start), reused after, replaced after a timeout.

    One invocation at a time, as one Lambda execution environment handles one event at a time.
    """

    def __init__(self, name: str, handler: str, environment: dict[str, str], *, timeout_s: float, cwd: str) -> None:
        self.name = name
        self.handler = handler
        self.environment = environment
        self.timeout_s = timeout_s
        self.cwd = cwd
        self._proc: warm.ProcessHandle | None = None
        self._channel: socket.socket | None = None
        self._requests: TextIO | None = None
        self._reply: TextIO | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        """The cold start: a Lambda host forked from the warm interpreter of Lambda's libraries
        (``ringfleet_local.warm``), which connects to a socket of this runtime's."""
        folder = tempfile.mkdtemp(prefix="ringfleet-lambda-")
        path = os.path.join(folder, "channel")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)
            listener.listen(1)
            listener.settimeout(_CONNECT_TIMEOUT_S)
            self._proc = warm.start(
                "lambda",
                "ringfleet_local.lambda_host",
                ["--handler", self.handler, "--connect", path],
                env=self.environment,
                cwd=Path(self.cwd),
                log_path=None,
            )
            try:
                self._channel, _ = listener.accept()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        self._requests = self._channel.makefile("w")
        self._reply = self._channel.makefile("r")

    def invoke(self, event: Any) -> InvocationResult:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._requests is not None and self._reply is not None
            request_id = str(uuid.uuid4())
            started = time.time()
            deadline_ms = (started + self.timeout_s) * 1000
            request = {"request_id": request_id, "event": event, "deadline_ms": deadline_ms}
            self._requests.write(json.dumps(request) + "\n")
            self._requests.flush()
            ready, _, _ = select.select([self._reply], [], [], self.timeout_s + 5.0)
            line = self._reply.readline() if ready else ""
            duration = (time.time() - started) * 1000
            if not line:
                # A timed-out or crashed environment is thrown away, as Lambda does.
                self.close()
                reason = "Task timed out" if not ready else "Runtime exited"
                return InvocationResult(
                    self.name,
                    request_id,
                    False,
                    error_type="Runtime.ExitError",
                    error_message=f"{reason} after {duration / 1000:.2f} s",
                    duration_ms=duration,
                    started_at=started,
                )
            out = json.loads(line)
            return InvocationResult(
                self.name,
                request_id,
                bool(out["ok"]),
                result=out.get("result"),
                error_type=out.get("errorType"),
                error_message=out.get("errorMessage"),
                logs=out.get("logs", ""),
                duration_ms=duration,
                started_at=started,
            )

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
        if self._channel is not None:
            self._channel.close()
        self._proc = self._channel = self._requests = self._reply = None
