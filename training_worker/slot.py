"""One slot process of an instance (``python -m training_worker.slot [-- PROGRAM ...]``): started warm by its agent
(``training_worker.slots``), configured from the environment the agent gives it, told the control plane's commands
on standard input, one JSON line each."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from ringfleet.contracts import parse_message
from training_worker.agent import Agent
from training_worker.runtime.config import RuntimeConfig

__all__ = ["main"]


def _relayed(commands: IO[str], on_command: Callable[[Any], None], leave: Callable[[str], None]) -> None:
    """A slot process's commands, one JSON line each from its agent; the agent gone (end of input), it leaves."""
    for line in commands:
        if line.strip():
            on_command(parse_message(line))
    leave("the instance's agent ended")


def main(argv: list[str] | None = None) -> int:
    """Runs the job's program in this slot, as its agent runs it in slot 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    entrypoint = argv[argv.index("--") + 1 :] if "--" in argv else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    config = RuntimeConfig.from_env()
    agent = Agent(config, entrypoint=entrypoint)
    if config.relayed:
        notices = agent.runtime.notices
        threading.Thread(
            target=_relayed, args=(sys.stdin, notices.on_command, notices.leave), name="slot-commands", daemon=True
        ).start()
    return agent.run()


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # as training_worker.__main__: no interpreter finalization under gloo's threads
