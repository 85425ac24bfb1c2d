"""Slots: an instance runs one training process per GPU (here CPU processes), and joins and leaves the ring with all
of them at once (issue 22 point 1). Two agents of two slots each play two instances; a discovery file plays the
control plane."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch

from tests.worker.processes import WorkerProcess, announce

pytestmark = pytest.mark.worker

A, B = "i-0000000000000001a", "i-0000000000000002b"
_PROGRESS = re.compile(r"\bstep (\d+) loss .* world (\d+) rank (\d+) generation (\d+)$", re.MULTILINE)


def _two_instances_of_two_slots(
    tmp: Path, discovery: Path, steps: int, *flags: str, delay: float = 0.05, final: Path | None = None
) -> list[WorkerProcess]:
    announce(discovery, "slots", 1, [A, B], slots={A: 2, B: 2})
    script = ("--steps", str(steps), "--commit-every", "1", "--step-delay", str(delay), "--global-batch", "48")
    script += ("--save-final", str(final)) if final else ()
    return [
        WorkerProcess(
            tmp / f"{name}.log",
            "--job-id",
            "slots",
            "--instance-id",
            instance,
            "--discovery-file",
            str(discovery),
            "--slots",
            "2",
            "--timeout",
            "5",
            "--log-every",
            "1",
            *flags,
            script=script,
        )
        for name, instance in (("a", A), ("b", B))
    ]


def _ranks_seen(worker: WorkerProcess, generation: int, world: int) -> set[int]:
    """The ranks whose progress lines in ``worker``'s log (all its slots write there) say ``world``, ``generation``."""
    return {int(m[3]) for m in _PROGRESS.finditer(worker.output()) if (int(m[2]), int(m[4])) == (world, generation)}


def _wait_for_ranks(worker: WorkerProcess, ranks: set[int], generation: int, world: int) -> None:
    for rank in sorted(ranks):
        worker.wait_for(f"world {world} rank {rank} generation {generation}", timeout=90)
    assert _ranks_seen(worker, generation, world) == ranks


def test_an_instance_of_two_slots_leaves_with_both_at_one_step_boundary_and_the_other_trains_on(
    tmp_path: Path,
) -> None:
    # given two instances of two slots each: one ring of 4 processes, ranks contiguous per instance
    discovery = tmp_path / "membership.json"
    a, b = _two_instances_of_two_slots(tmp_path, discovery, steps=100000)
    try:
        _wait_for_ranks(a, {0, 1}, generation=1, world=4)
        _wait_for_ranks(b, {2, 3}, generation=1, world=4)
        # when the second instance gets notice (its agent, slot 0, alone hears it)
        b.terminate()
        # then both its slots leave at the same step boundary, and its agent ends cleanly
        assert b.finish(60) == 0, b.output()
        left = re.findall(r"finished: stopped at step (\d+)", b.output())
        assert len(left) == 2 and len(set(left)) == 1, b.output()
        # and the first instance's two slots train on at once as a ring of 2, without a failure
        step = int(left[0])
        a.wait_for(f"generation 1: shrank to 2 at step {step}")
        _wait_for_ranks(a, {0, 1}, generation=1, world=2)
        assert "collective failed" not in a.output()
    finally:
        for w in (a, b):
            w.kill()


def test_a_killed_slot_process_drops_its_instance_and_the_ring_goes_on_without_it(tmp_path: Path) -> None:
    # given two instances of two slots each, training
    discovery = tmp_path / "membership.json"
    a, b = _two_instances_of_two_slots(tmp_path, discovery, steps=100000)
    try:
        _wait_for_ranks(b, {2, 3}, generation=1, world=4)
        # when the second instance's slot 1 is killed (an out-of-memory kill, a segfault in a kernel)
        b.wait_for("slot 1 of this instance started as process ")
        pid = int(re.search(r"slot 1 of this instance started as process (\d+)", b.output())[1])  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        # then its agent says so and leaves: the instance is what the control plane replaces
        b.wait_for("slot 1's process ended with status -9: this instance leaves the ring")
        assert b.finish(60) == 0, b.output()
        # and once the control plane re-forms the ring without that instance, the first one's two slots train on
        a.wait_for("collective failed")
        announce(discovery, "slots", 2, [A], slots={A: 2})
        _wait_for_ranks(a, {0, 1}, generation=2, world=2)
    finally:
        for w in (a, b):
            w.kill()


def test_the_hierarchical_all_reduce_trains_the_same_model_as_the_flat_ring(tmp_path: Path) -> None:
    # given the same job twice on two instances of two slots: gradients reduced inside each instance first, then
    # across instances (Horovod's HOROVOD_HIERARCHICAL_ALLREDUCE), and by one flat ring of all four
    finals = {}
    for backends in ("hierarchical,ring", "ring"):
        run = tmp_path / backends.split(",")[0]
        run.mkdir()
        finals[backends] = run / "final.pt"
        workers = _two_instances_of_two_slots(
            run, run / "membership.json", 30, "--backends", backends, delay=0.0, final=finals[backends]
        )
        try:
            assert [w.finish(90) for w in workers] == [0, 0], [w.output()[-3000:] for w in workers]
        finally:
            for w in workers:
                w.kill()
        chosen = backends.split(",")[0]
        assert f"generation 1: gradients all-reduced by the {chosen} backend" in workers[0].output()
    # then both end with the same parameters
    ours, theirs = (torch.load(f, weights_only=True) for f in finals.values())
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6) for k in ours)
