"""An instance's slots: one training process per GPU, as torchrun's ``--nproc-per-node`` or horovodrun's slots per
host start them, with the instance (not the process) as the unit of membership.

The agent's own process is slot 0: it holds the control channel, the heartbeats, the spot-notice watch and the job's
credentials. ``SlotProcesses`` starts slots 1..K-1 when the agent boots, before any job is known, so each has torch
imported and waits warm (``python -m training_worker.slot``); the control plane's commands reach them through the
agent, one JSON line each on their standard input (one consumer per mailbox, and a slot process needs no broker
login: it never talks to the control plane). Each runs the job's program in its own interpreter with ``LOCAL_RANK``
set, and takes its place in the ring from the same Reconfigure: the ring's ranks are contiguous per instance
(``Reconfigure.process_instances``), so slot ``k`` of an instance whose first rank is ``r`` is rank ``r + k``.

What happens to the instance happens to all its slots, at one step boundary:

- a spot notice or SIGTERM reaches slot 0; at the step boundary every rank of the instance leaves with it
  (``Ring.shrink`` widens a leaver to its instance), and the others train on;
- a hard kill of the instance loses all its ranks; the survivors heal by instance (``membership.quorum``);
- **one slot's process dying drops its instance**: the agent reports the instance lost (``WorkerFailed`` scope
  ``self``) and leaves; the survivors re-form without the whole instance (its remaining slots are left out of the
  quorum) and the control plane replaces it, as it replaces any lost instance. Restarting only the dead slot would
  need a ring that takes one process back in mid-generation, which no collective library offers; an instance is
  what the control plane places, replaces and pays for, so it is also what leaves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace

from ringfleet.contracts import encode_message
from ringfleet.contracts.messages import CheckpointNow, Reconfigure, Stop
from ringfleet.contracts.training import EVENTS_FILE_VARIABLE
from training_worker.checkpoint import INSTANCE_CREDENTIALS
from training_worker.runtime.config import RuntimeConfig

__all__ = ["SlotProcesses", "slot_config"]

log = logging.getLogger("training_worker.slots")

#: How long a slot process may take to end once its agent closes it, before it is killed.
CLOSE_GRACE_S = 10.0
_POLL_S = 0.2


def slot_config(config: RuntimeConfig, slot: int) -> RuntimeConfig:
    """Slot ``slot``'s configuration: the agent's, without what only slot 0 does (the control channel, the spot
    notice, the job's checkpoints: rank 0, which writes them, is always an instance's slot 0)."""
    return replace(
        config,
        local_rank=slot,
        relayed=config.discovery_file is None,  # a discovery file is read by every slot itself
        broker_url=None,
        broker_secret=None,
        metadata_url=None,
        bucket=None,
        checkpoint_cache=None,
    )


def _passed_on(variable: str) -> bool:
    return variable == EVENTS_FILE_VARIABLE or not variable.startswith("RINGFLEET_")


class SlotProcesses:
    """Slots 1..K-1 of this instance, started warm at boot; told every command; watched for dying."""

    def __init__(
        self, config: RuntimeConfig, entrypoint: list[str] | None, on_died: Callable[[int, int], None]
    ) -> None:
        self._config = config
        self._entrypoint = entrypoint
        self._on_died = on_died
        self._children: dict[int, subprocess.Popen[str]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        #: The slots the job uses (a Reconfigure named them): the others wait warm, told nothing, until they close.
        self._used: set[int] = set()

    def start(self) -> None:
        """Starts the slot processes (they import torch and wait for the job) and a thread that watches them."""
        # The slot's configuration is what slot_config writes, whatever this process was started with (and the
        # typed events' file, which the instance's slots share).
        base = {k: v for k, v in os.environ.items() if k not in INSTANCE_CREDENTIALS and _passed_on(k)}
        program = ["--", *self._entrypoint] if self._entrypoint else []
        for slot in range(1, self._config.slots):
            env = {**base, **slot_config(self._config, slot).environment()}
            self._children[slot] = subprocess.Popen(
                [sys.executable, "-m", "training_worker.slot", *program], env=env, stdin=subprocess.PIPE, text=True
            )
            log.info(
                "slot %d of this instance started as process %d, waiting for the job", slot, self._children[slot].pid
            )
        threading.Thread(target=self._watch, name="slot-watch", daemon=True).start()

    def relay(self, command: CheckpointNow | Reconfigure | Stop) -> None:
        """Passes a command of the control plane on to the slot processes the job uses: those below the instance's
        slot count in a Reconfigure (a job may use fewer slots than the instance has GPUs)."""
        line = encode_message(command).decode() + "\n"
        with self._lock:
            if isinstance(command, Reconfigure):
                self._used |= set(range(1, command.slots_of(self._config.instance_id)))
            for slot, child in self._children.items():
                if slot in self._used and child.poll() is None and child.stdin is not None:
                    try:
                        child.stdin.write(line)
                        child.stdin.flush()
                    except (BrokenPipeError, ValueError):
                        log.debug("slot %d no longer reads commands", slot)

    def _watch(self) -> None:
        """A slot process that ends on its own with a failure (killed, crashed) drops the instance (``on_died``);
        one that ends cleanly (the job trained, stopped, or the instance left the ring) does not."""
        reported: set[int] = set()
        while not self._closing.wait(_POLL_S):
            for slot, child in list(self._children.items()):
                status = child.poll()
                if status not in (None, 0) and slot not in reported and not self._closing.is_set():
                    reported.add(slot)
                    self._on_died(slot, status)

    def close(self) -> None:
        """Ends the slot processes: their commands end (they leave at their next step boundary, or at once while
        they wait), and one still running after ``CLOSE_GRACE_S`` is killed."""
        self._closing.set()
        with self._lock:
            for child in self._children.values():
                if child.stdin is not None:
                    with contextlib.suppress(OSError):  # BrokenPipeError is one
                        child.stdin.close()
        for slot, child in self._children.items():
            try:
                child.wait(CLOSE_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("slot %d did not end within %.0f s: killing it", slot, CLOSE_GRACE_S)
                child.kill()
                child.wait()
