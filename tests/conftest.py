"""Shared fixtures: the repository root, and a loud failure when RabbitMQ is missing (never a skip); and no process
the run started outlives it (``tests/reaper.py``).

The tests by kind: ``unit/`` pure (no broker, no moto, no network, no subprocess), ``functional/`` use cases and
handlers on moto with the samples of ``events/``, ``integration/`` RabbitMQ and real processes, ``worker/`` the
training worker's processes, ``e2e/`` the local cloud. Each file is marked with its kind (``pytestmark``), and the
kinds run in that order: a broken rule fails in seconds, not after the e2e tests' minutes.
"""

from __future__ import annotations

import atexit
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from ringfleet_local import warm

from tests import reaper

# The tests start many training processes on a few cores (worker ranks, the local fleet's instances): one intra-op
# thread each, as torchrun sets for several processes per host. Set before anything imports torch, so the ranks
# the tests spawn inherit it; OpenMP's spinning idle threads otherwise doubled the suite's CPU time.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("RINGFLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")

#: The kinds of test, fastest first: the order they run in (each is a marker, and a folder of tests/).
KINDS = ("unit", "functional", "integration", "worker", "e2e")

_RUN: dict[str, object] = {}


def kind_of(item: pytest.Item) -> str | None:
    return next((kind for kind in KINDS if item.get_closest_marker(kind) is not None), None)


def budget_of(item: pytest.Item) -> float:
    """A test's time budget: its ``timeout`` marker (a whole file's, as ``pytestmark``), else pytest-timeout's
    default. The longest tests say so by a larger budget."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Runs the unit tests first (a broken rule fails in seconds), then the largest time budgets first, then the
    kinds fastest first (a test without a kind last; tests/unit/test_test_kinds.py fails on it); the sort is stable.

    Under pytest-xdist (``make pytest``: ``--dist loadfile``, one file per worker at a time) the long e2e files so
    start while the short ones fill the other workers, instead of one of them starting last and running alone: the
    suite takes about as long as its longest file, or its total over the workers, whichever is more."""
    rank = {kind: i for i, kind in enumerate(KINDS)}

    def order(item: pytest.Item) -> tuple[bool, float, int]:
        kind = kind_of(item)
        return kind != "unit", -budget_of(item), rank.get(kind or "", len(KINDS))

    items.sort(key=order)


def _reap_once() -> None:
    """Ends whatever the run left running: once, in the pytest process only (a forked child inherits atexit)."""
    token = _RUN.get("token")
    if isinstance(token, str) and _RUN.get("owner") == os.getpid() and "reaped" not in _RUN:
        # The run's warm interpreters (ringfleet_local.warm) end with it: not something a test left running. What
        # they forked and a test did not end is still found, by its token.
        warm.close()
        _RUN["reaped"] = reaper.reap(token)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _RUN.get("owner") != os.getpid():  # a forked child: die as it would have
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise KeyboardInterrupt("SIGTERM")  # pytest tears the fixtures down, then pytest_sessionfinish reaps


def pytest_configure(config: pytest.Config) -> None:
    _RUN.update(token=reaper.mark_run(), owner=os.getpid())
    atexit.register(_reap_once)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # trylast: after the session's fixtures are torn down, so only what their teardown missed is left
    _reap_once()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reaped = _RUN.get("reaped")
    if isinstance(reaped, list) and reaped:
        terminalreporter.write_line(
            f"killed {len(reaped)} process(es) the tests left running: {', '.join(map(str, reaped))}", yellow=True
        )


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The broker, on a vhost of this test session's own: test runs side by side never take each other's
    messages."""
    from ringfleet_local.cloud import broker_reachable
    from ringfleet_local.vhost import create_vhost, delete_vhost

    if not broker_reachable(BROKER_URL):
        pytest.fail(f"RabbitMQ does not answer at {BROKER_URL}: start it with `rabbitmq-server -detached`")
    own = create_vhost(BROKER_URL, prefix="ringfleet-tests")
    if own is None:
        yield BROKER_URL
        return
    vhost, url = own
    yield url
    delete_vhost(vhost)


def purge_queue(url: str, queue: str) -> None:
    """Empties a broker queue (declaring the topology first) so a test starts from a known state."""
    import asyncio

    from ringfleet.adapters.rabbitmq import connect, declare_topology

    async def run() -> None:
        conn = await connect(url)
        async with conn:
            ch = await conn.channel()
            await declare_topology(ch)
            await (await ch.get_queue(queue)).purge()

    asyncio.run(run())
