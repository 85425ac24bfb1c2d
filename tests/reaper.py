"""No process a test run starts outlives it: moto servers, Lambda hosts, local clouds, fleet agents, workers and
whatever they started in turn.

A test that fails or times out between starting a process and stopping it (or a helper that stops the parent and
orphans its child) would otherwise leave it running, holding ports and CPU, long after pytest is gone. The run marks
its environment with a token of its own (``TESTS_RUN_TOKEN``) that every process it starts inherits, and at the
end of the session (``tests/conftest.py``: ``pytest_sessionfinish``, then ``atexit``, and on SIGTERM) every process
still alive that carries the token or descends from the run is sent SIGTERM, and SIGKILL two seconds later: a
process that leads a group of its own (``start_new_session``) is signalled with its whole group. An orphan, adopted
by init once its parent died, is still found by its token.

Under pytest-xdist each worker marks its own processes with a token nested under its controller's
(``<controller's>/<worker's>``): a worker reaps what it started, never another worker's, and the controller reaps
all of them, so the orphans of a worker killed before it could reap (the run stopped with SIGTERM: the controller
tears its workers down) are still found, by their token.

Not covered: a process that replaced its whole environment and whose parent is gone, and a run killed with SIGKILL
(or by pytest-timeout's ``thread`` method, which ends with ``os._exit``). Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MARKER", "Process", "alive", "leftovers", "mark_run", "reap"]

#: Not RINGFLEET_...: some tests start the CLI with every RINGFLEET_ variable removed from its environment.
MARKER = "TESTS_RUN_TOKEN"
#: The machine's RabbitMQ, when `rabbitmq-server -detached` was run from a test: shared by every run, left alone.
SHARED = frozenset({"beam.smp", "epmd", "erl_child_setup", "inet_gethost", "rabbitmq-server"})
PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    pgid: int
    name: str
    zombie: bool

    def __str__(self) -> str:
        return f"{self.pid} ({self.name})"


def mark_run() -> str:
    """Gives this process (and so everything it starts from now on) the run's token, nested under the token it
    inherited if any (a pytest-xdist worker's under its controller's); returns the token."""
    own = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    inherited = os.environ.get(MARKER)
    token = f"{inherited}/{own}" if inherited else own
    os.environ[MARKER] = token
    return token


def _of_run(carried: str | None, token: str) -> bool:
    """Whether a process carrying ``carried`` belongs to the run of ``token`` (or to a run nested in it)."""
    return carried is not None and (carried == token or carried.startswith(f"{token}/"))


def _read(pid: int) -> Process | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, ppid, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
    return Process(pid, int(ppid), int(pgid), name, state in {"Z", "X"})


def _processes() -> dict[int, Process]:
    found = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (proc := _read(int(entry.name))) is not None:
            found[proc.pid] = proc
    return found


def _token_of(pid: int) -> str | None:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = MARKER.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def _descendants(root: int, procs: dict[int, Process]) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _multiprocessing_helper(pid: int) -> bool:
    """multiprocessing's resource tracker or fork server: it ends with the run itself, and killing it early only
    makes multiprocessing start another one."""
    try:
        return b"from multiprocessing." in (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def leftovers(token: str, root: int | None = None) -> list[Process]:
    """The live processes of the run: descendants of ``root`` (this process) and any carrying ``token``."""
    root = os.getpid() if root is None else root
    procs = _processes()
    ours = _descendants(root, procs) | {pid for pid in procs if _of_run(_token_of(pid), token)}
    ours.discard(root)
    live = (procs[pid] for pid in ours if pid in procs and not procs[pid].zombie)
    return sorted((p for p in live if p.name not in SHARED and not _multiprocessing_helper(p.pid)), key=lambda p: p.pid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet waited for, does not)."""
    proc = _read(pid)
    return proc is not None and not proc.zombie


def _signal(proc: Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if proc.pgid == proc.pid and proc.pgid != os.getpgrp():
            os.killpg(proc.pgid, sig)  # a group leader: the group is it and what it started
        else:
            os.kill(proc.pid, sig)


def _wait_gone(procs: list[Process], timeout: float) -> list[Process]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if alive(p.pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def reap(token: str, *, grace_s: float = 2.0) -> list[Process]:
    """Ends every live process of the run (SIGTERM, then SIGKILL after ``grace_s``); returns those it found."""
    found = leftovers(token)
    for proc in found:
        _signal(proc, signal.SIGTERM)
    for proc in _wait_gone(found, grace_s):
        _signal(proc, signal.SIGKILL)
    _wait_gone(found, 5.0)
    for proc in found:
        if proc.ppid == os.getpid():  # our own children: waited for, so no zombie is left either
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, os.WNOHANG)
    return found
