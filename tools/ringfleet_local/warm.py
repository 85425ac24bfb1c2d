"""Warm interpreters: the local cloud's processes forked from interpreters that imported their libraries once.

An emulated instance's agent is ``python -m training_worker``, as in the worker container on AWS. Booting one cold
costs about two seconds of CPU (torch, the runtime, boto3 and aio-pika imported), and a local cloud boots many: one
per instance, again after each job its instance served, while the other instances train on the same few cores. Its
Lambda execution environments (``ringfleet_local.lambda_host``, about a second each: boto3, pydantic, Powertools)
and its moto server (two seconds) are the same story, once per cloud. So the local cloud starts them as Android's
zygote starts apps: for each kind (``PRELOADS``) one server process (``python -m ringfleet_local.warm KIND``)
imports those libraries once and never runs anything else, and each process of that kind is a ``fork()`` of it that
then runs its module's ``__main__`` exactly as ``python -m`` would, with its own environment (and ``sys.path`` from
its ``PYTHONPATH``), working directory and log, in its parent's process group (an agent: leading a session of its
own). Whatever it then does (threads, child processes, the job's script) is its own. The server has no thread (a
fork copies only the calling one), and nothing of one process is in the server the next is forked from.

Why not CPython's ``forkserver`` start method: it imports the parent's ``__main__`` again in every child (a test
runner's, the CLI's), and its children belong to its ``multiprocessing`` bookkeeping (joined at exit, no children
of their own when daemonic). This server speaks JSON lines: a request ``{"module", "args", "env", "cwd", "log"}`` on
its stdin is answered ``{"pid"}`` on its stdout, and each child's end ``{"exited", "status"}`` (a negative status:
the signal that ended it, as ``subprocess`` says). It ends when its stdin closes (its parent went); what it forked
stays, as processes of the emulator's instances or the cloud's, which end them.

Not for AWS: an instance boots one agent, and its container starts it the usual way; Lambda starts its own
environments. ``RINGFLEET_LOCAL_COLD=1`` starts every such process cold (``python -m``), to compare or to rule this
out.
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
from typing import Any, TextIO

__all__ = ["COLD_VARIABLE", "ProcessHandle", "WarmProcess", "close", "cold", "popen", "start", "start_agent"]

COLD_VARIABLE = "RINGFLEET_LOCAL_COLD"
#: What each kind of warm interpreter imports once. An agent: everything it imports before and while it trains (the
#: job's own script imports the rest itself). A Lambda execution environment (``ringfleet_local.lambda_host``): the
#: third-party libraries of the layer, never torch and never the function's or the layer's own code, which each
#: imports from its own ``PYTHONPATH``.
PRELOADS = {
    "agent": ("torch", "torch.distributed", "boto3", "aio_pika", "training_worker.agent"),
    "lambda": (
        "boto3",
        "pydantic",
        "aio_pika",
        "aws_lambda_powertools",
        "aws_lambda_powertools.metrics",
        "aws_lambda_powertools.utilities.batch",
        "aws_lambda_powertools.utilities.idempotency",
    ),
    # the local cloud's moto server (moto's, with the local cloud's DynamoDB and instance types) and the services
    # the template and the control plane use (moto imports each on its first request)
    "moto": (
        "ringfleet_local.moto_server",
        *(
            f"moto.{service}.models"
            for service in (
                "autoscaling",
                "cloudwatch",
                "dynamodb",
                "ec2",
                "events",
                "iam",
                "logs",
                "s3",
                "secretsmanager",
                "sns",
                "sqs",
                "sts",
            )
        ),
    ),
}


def cold() -> bool:
    """Whether local agents boot cold (``RINGFLEET_LOCAL_COLD`` set)."""
    return os.environ.get(COLD_VARIABLE, "") not in ("", "0")


class _Server:
    """This process's warm interpreter: started on first use, one per process."""

    _servers: dict[str, _Server] = {}
    _servers_lock = threading.Lock()

    @classmethod
    def get(cls, kind: str) -> _Server:
        with cls._servers_lock:
            server = cls._servers.get(kind)
            if server is None or server._process.poll() is not None:
                server = cls._servers[kind] = cls(kind)
            return server

    def __init__(self, kind: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ringfleet_local.warm", kind],
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
                    raise RuntimeError("the warm interpreter (python -m ringfleet_local.warm) started nothing")
            return self._started.pop(0)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                reply = json.loads(line)
            except ValueError:  # not the server's (it prints nothing else there): shown, not lost
                sys.stderr.write(line)
                continue
            with self._ended:
                if "pid" in reply:
                    # a pid the kernel gave again: the server reported its earlier holder's end before this fork
                    self._status.pop(int(reply["pid"]), None)
                    self._started.append(int(reply["pid"]))
                else:
                    self._status[int(reply["exited"])] = int(reply["status"])
                self._ended.notify_all()
        with self._ended:
            self._ended.notify_all()

    def close(self) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def status(self, pid: int, timeout: float | None) -> int | None:
        with self._ended:
            self._ended.wait_for(lambda: pid in self._status or self._process.poll() is not None, timeout)
            return self._status.get(pid)


def close() -> None:
    """Ends this process's warm interpreters (as its own exit would: their stdin closes); what they forked runs on,
    each process ended by whoever started it."""
    with _Server._servers_lock:
        servers, _Server._servers = list(_Server._servers.values()), {}
    for server in servers:
        server.close()


class WarmProcess:
    """A process forked from a warm interpreter: the part of ``subprocess.Popen`` the local cloud uses."""

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
            raise subprocess.TimeoutExpired(f"process {self.pid}", timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: A process forked from a warm interpreter, or started cold.
ProcessHandle = WarmProcess | subprocess.Popen[bytes]


def start(
    kind: str,
    module: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    log_path: Path | None,
    new_session: bool = False,
) -> ProcessHandle:
    """``python -m MODULE ARGS`` with ``env`` (its whole environment) in ``cwd``, writing to ``log_path`` (None: to
    this process's stderr): forked from this process's warm interpreter of ``kind`` (started on first use), or cold
    when ``RINGFLEET_LOCAL_COLD`` is set. In this process's group, as ``subprocess`` starts it (whoever ends the
    group ends it), or leading a session of its own (``new_session``: ``start_new_session=True``)."""
    if cold():
        command = [sys.executable, "-m", module, *args]
        return popen(command, env=env, cwd=cwd, log_path=log_path, new_session=new_session)
    if log_path and not log_path.exists():
        log_path.touch()  # there once this returns, as a log Popen would write to
    server = _Server.get(kind)
    request = {"module": module, "args": list(args), "env": dict(env), "cwd": str(cwd) if cwd else None}
    pid = server.start({**request, "log": str(log_path) if log_path else None, "new_session": new_session})
    return WarmProcess(pid, server)


def popen(
    command: Sequence[str], *, env: Mapping[str, str], cwd: Path | None, log_path: Path | None, new_session: bool
) -> subprocess.Popen[bytes]:
    """``command`` started the usual way, its output (stdout and stderr) appended to ``log_path`` (None: this
    process's own): what ``start`` does cold, and how a process that is not Python (``docker run``) starts."""
    with contextlib.ExitStack() as files:
        log = files.enter_context(log_path.open("ab")) if log_path else None
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            env=dict(env),
            cwd=cwd,
            start_new_session=new_session,
        )


def start_agent(args: Sequence[str], *, env: Mapping[str, str], cwd: Path | None, log_path: Path) -> ProcessHandle:
    """An instance's agent: ``python -m training_worker ARGS``, leading a session of its own (see ``start``): it and
    what it starts go together, as on an instance."""
    return start("agent", "training_worker", args, env=env, cwd=cwd, log_path=log_path, new_session=True)


# -- the server ---------------------------------------------------------------------------------------------------
#: The server's replies (its stdout when it started); anything else printed there goes to stderr.
_replies: TextIO | None = None


def _serve(kind: str) -> None:
    global _replies
    _replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # Ctrl-C in a terminal reaches the whole foreground group: whoever started this server decides when it ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in PRELOADS[kind]:
        __import__(module)
    children: set[int] = set()
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.2)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in filter(None, (ln.strip() for ln in lines)):
                children.add(_fork(json.loads(line)))
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                _reply({"exited": pid, "status": os.waitstatus_to_exitcode(status)})


def _fork(request: dict[str, Any]) -> int:
    pid = os.fork()
    if pid == 0:
        _become(request)
    _reply({"pid": pid})
    return pid


def _reply(message: dict[str, int]) -> None:
    assert _replies is not None
    _replies.write(json.dumps(message) + "\n")
    _replies.flush()


def _become(request: dict[str, Any]) -> None:
    """In the forked child: becomes what ``subprocess.Popen([python, -m, MODULE, *args], env=env, cwd=cwd,
    stdout=log, stderr=STDOUT, start_new_session=new_session)`` would start, then runs it; ends the process with its
    status, whatever happens (an agent's ``__main__`` ends it with ``os._exit`` itself)."""
    status = 1
    try:
        if _replies is not None:
            os.close(_replies.fileno())  # the server's, not this process's
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if request["new_session"]:
            os.setsid()
        _redirect(request["log"])
        env: dict[str, str] = request["env"]
        os.environ.clear()
        os.environ.update(env)
        if request["cwd"]:
            os.chdir(request["cwd"])
        # sys.path as python -m sets it in this environment: the working directory, then PYTHONPATH, then the rest
        own = [os.getcwd(), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        sys.path[:] = [*own, *(p for p in sys.path[1:] if p not in own)]
        if "torch" in sys.modules and (threads := env.get("OMP_NUM_THREADS")):
            # OpenMP read its thread count when the server imported torch: the process's own setting applies
            sys.modules["torch"].set_num_threads(int(threads))
        if (moto_api := sys.modules.get("moto.moto_api._internal")) is not None:
            # A fork reseeds the random module's generator (it registers at fork), not moto's own: the source of
            # its resource ids (i-..., sg-...), which two moto servers forked from one must not share
            moto_api.mock_random.seed()
        sys.argv = [sys.executable, *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
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


def _redirect(log_path: str | None) -> None:
    """stdin from /dev/null, stdout and stderr to ``log_path`` (None: the server's stderr, which is its parent's;
    never the server's stdout, its replies)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if log_path:
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 2)
        os.close(log)
    os.dup2(2, 1)
    # line-buffered, as PYTHONUNBUFFERED keeps a log current
    sys.stdin = open(0)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115


if __name__ == "__main__":
    _serve(sys.argv[1])
