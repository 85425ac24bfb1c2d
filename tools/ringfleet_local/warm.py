"""Warm interpreters: the local fleet's agents forked from one interpreter that imported torch once.

An emulated instance's agent is ``python -m training_worker``, as in the worker container on AWS. Booting one cold
costs about two seconds of CPU (torch, the runtime, boto3 and aio-pika imported), and a local cloud boots many: one
per instance, again after each job its instance served, while the other instances train on the same few cores. So
the fleet emulator starts its agents as Android's zygote starts apps: one server process (``python -m
ringfleet_local.warm``) imports those modules once and never runs anything else, and each agent is a ``fork()`` of
it that then runs ``training_worker``'s ``__main__`` exactly as ``python -m`` would, with the instance's
environment, working directory and log, leading a session of its own. Whatever the agent then does (its threads,
its slot processes, the job's script) is its own. The server has no thread (a fork copies only the calling one),
and nothing of one agent is in the server another is forked from.

Why not CPython's ``forkserver`` start method: it imports the parent's ``__main__`` again in every child (a test
runner's, the CLI's), and its children belong to its ``multiprocessing`` bookkeeping (joined at exit, no children
of their own when daemonic). This server speaks JSON lines: a request ``{"args", "env", "cwd", "log"}`` on its
stdin is answered ``{"pid"}`` on its stdout, and each child's end ``{"exited", "status"}`` (a negative status: the
signal that ended it, as ``subprocess`` says). It ends when its stdin closes (its parent went); the agents it
forked stay, as processes of the emulator's instances, which ends them.

Not for AWS: an instance boots one agent, and its container starts it the usual way. ``RINGFLEET_LOCAL_COLD=1``
boots every local agent cold (``python -m training_worker``), to compare or to rule this out.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["COLD_VARIABLE", "AgentProcess", "WarmProcess", "cold", "start_agent"]

COLD_VARIABLE = "RINGFLEET_LOCAL_COLD"
#: What the server imports once: everything an agent imports before and while it trains (the job's own script
#: imports the rest itself, in its agent).
PRELOAD = ("torch", "torch.distributed", "boto3", "aio_pika", "training_worker.agent")


def cold() -> bool:
    """Whether local agents boot cold (``RINGFLEET_LOCAL_COLD`` set)."""
    return os.environ.get(COLD_VARIABLE, "") not in ("", "0")


class _Server:
    """This process's warm interpreter: started on first use, one per process."""

    _instance: _Server | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> _Server:
        with cls._instance_lock:
            if cls._instance is None or cls._instance._process.poll() is not None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ringfleet_local.warm"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
        self._lock = threading.Lock()
        self._ended = threading.Condition()
        self._started: list[int] = []
        self._status: dict[int, int] = {}
        threading.Thread(target=self._read, name="warm-interpreter", daemon=True).start()

    def start(self, request: dict[str, Any]) -> int:
        assert self._process.stdin is not None
        with self._lock, self._ended:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            while not self._started:
                if not self._ended.wait(120) or self._process.poll() is not None:
                    raise RuntimeError("the warm interpreter (python -m ringfleet_local.warm) did not start an agent")
            return self._started.pop(0)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            reply = json.loads(line)
            with self._ended:
                if "pid" in reply:
                    self._started.append(int(reply["pid"]))
                else:
                    self._status[int(reply["exited"])] = int(reply["status"])
                self._ended.notify_all()
        with self._ended:
            self._ended.notify_all()

    def status(self, pid: int, timeout: float | None) -> int | None:
        with self._ended:
            self._ended.wait_for(lambda: pid in self._status or self._process.poll() is not None, timeout)
            return self._status.get(pid)


class WarmProcess:
    """An agent forked from the warm interpreter: the part of ``subprocess.Popen`` the emulator uses."""

    def __init__(self, pid: int, server: _Server) -> None:
        self.pid = pid
        self._server = server

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: the signal that ended it), or None while it runs."""
        return self._server.status(self.pid, 0)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        code = self._server.status(self.pid, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"agent {self.pid}", timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: An agent process: forked from the warm interpreter, or started cold.
AgentProcess = WarmProcess | subprocess.Popen[bytes]


def start_agent(args: Sequence[str], *, env: Mapping[str, str], cwd: Path | None, log_path: Path) -> AgentProcess:
    """``python -m training_worker ARGS`` with ``env`` (its whole environment) in ``cwd``, writing to ``log_path``
    and leading a session of its own: forked from this process's warm interpreter (started on first use), or cold
    when ``RINGFLEET_LOCAL_COLD`` is set."""
    if cold():
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "training_worker", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
    log_path.touch()  # there once this returns, as a log Popen would write to
    server = _Server.get()
    pid = server.start({"args": list(args), "env": dict(env), "cwd": str(cwd) if cwd else None, "log": str(log_path)})
    return WarmProcess(pid, server)


# -- the server ---------------------------------------------------------------------------------------------------
def _serve() -> None:
    for module in PRELOAD:
        __import__(module)
    children: set[int] = set()
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.2)
        if ready:
            line = sys.stdin.readline()
            if not line:
                return
            pid = os.fork()
            if pid == 0:
                _become_agent(json.loads(line))
            children.add(pid)
            _reply({"pid": pid})
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                _reply({"exited": pid, "status": os.waitstatus_to_exitcode(status)})


def _reply(message: dict[str, int]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _become_agent(request: dict[str, Any]) -> None:
    """In the forked child: becomes what ``subprocess.Popen([python, -m, training_worker, *args], env=env, cwd=cwd,
    stdout=log, stderr=STDOUT, start_new_session=True)`` would start, then runs it (its ``__main__`` ends the
    process with ``os._exit``; so does this, whatever happens)."""
    status = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        # line-buffered, as PYTHONUNBUFFERED keeps the log current
        sys.stdin = open(0)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        if request["cwd"]:
            os.chdir(request["cwd"])
        import torch

        # OpenMP read its thread count when the server imported torch: the agent's own setting applies
        if threads := request["env"].get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(threads))
        sys.argv = [sys.executable, *request["args"]]
        runpy.run_module("training_worker", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


if __name__ == "__main__":
    _serve()
