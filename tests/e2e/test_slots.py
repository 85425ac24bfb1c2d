"""A job on multi-GPU instances (issue 22 point 1): every slot of an instance trains (here a CPU process per slot),
and the instance joins and leaves the ring with all its slots, through a spot notice and a killed slot process, to
the same model as an uninterrupted run with the same global batches."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.demo import uninterrupted_run
from ringfleet_local.pace import Pace

from ringfleet.core.jobs import Job, JobState
from tests.e2e.side_by_side import HOLD_S, SCALER, Watch, emulator_for
from tests.e2e.support import DIGITS, digits_job, wait_ticking

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

JOB = "slots"
STEPS = 240
#: Seconds per step while the test waits for replacements (HOLD_S until then, full speed at the end).
SLOW_S = 1.0
#: The digits example's arguments both runs share: the same global batches in the same order.
TRAINING = {"steps": STEPS, "commit-every": 1, "global-batch": 96, "lr": 0.05}


def _worlds(log: Path, generation: int) -> set[tuple[int, int]]:
    """(world, rank) of every progress line of ``generation`` in an instance's log (all its slots write there)."""
    text = log.read_text() if log.exists() else ""
    found = re.finditer(r"\bworld (\d+) rank (\d+) generation (\d+)$", text, re.M)
    return {(int(m[1]), int(m[2])) for m in found if int(m[3]) == generation}


def _baseline(tmp: Path) -> Path:
    """The same training on a fixed ring of two processes, no control plane, no failure: its final parameters."""
    final = tmp / "baseline" / "final.pt"
    args = [x for k, v in {**TRAINING, "save-final": final}.items() for x in (f"--{k}", str(v))]
    uninterrupted_run(DIGITS / "train.py", args, 2, tmp / "baseline")
    return final


def _log(tmp: Path, instance: str) -> Path:
    """The emulated instance's log (the fleet emulator's, beside its other files)."""
    return tmp / "workers" / f"{instance}.log"


def _slot_pid(log: Path) -> int:
    """The process of slot 1 of an instance (its agent logs it when it starts the slot)."""
    found = re.findall(r"slot 1 of this instance started as process (\d+)", log.read_text())
    assert found, f"{log.stem} started no slot process"
    return int(found[-1])


def test_two_instances_of_two_slots_train_through_a_notice_and_a_killed_slot_to_the_uninterrupted_model(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    pace = Pace(tmp_path / "step-delay", HOLD_S)
    final = tmp_path / "final.pt"
    emulator = emulator_for(cloud, tmp_path / "workers")
    emulator.start()
    try:
        with Watch(cloud, (JOB,)) as watch:
            # when a job asks for two 4-GPU instances, two slots on each
            RingfleetClient(cloud.broker_url).submit(
                digits_job(
                    job_id=JOB,
                    min_workers=2,
                    max_workers=2,
                    instance_types=["g5.12xlarge"],
                    slots_per_instance=2,
                    total_steps=STEPS,
                    hyperparameters={**TRAINING, "save-final": str(final), **pace.hyperparameters()},
                )
            )
            # then one ring of four processes trains: ranks 0-1 on the first instance, 2-3 on the second
            wait_ticking(cloud, SCALER, lambda: watch.state(JOB) is JobState.RUNNING, 150, "the job to run")
            first = watch.job(JOB)
            logs = {i: _log(tmp_path, i) for i in first.members}
            by_rank = sorted(first.members, key=first.members.__getitem__)
            wait_ticking(
                cloud,
                SCALER,
                lambda: all(
                    _worlds(logs[i], first.generation) >= {(4, 2 * r), (4, 2 * r + 1)} for r, i in enumerate(by_rank)
                ),
                120,
                "four ranks to train",
            )
            # (slowly from now on, so that the job is still training when its replacements are ready, however busy
            # the machine: a replacement boots four interpreters, one per GPU)
            pace.set(SLOW_S)
            # when the second instance gets a spot notice
            leaving = by_rank[1]
            emulator.interrupt(leaving, grace_s=5)
            # then both its slots leave at one step boundary and the first instance's two train on from that step
            wait_ticking(cloud, SCALER, lambda: "finished: stopped" in logs[leaving].read_text(), 60, "it to leave")
            left = re.findall(r"finished: stopped at step (\d+)", logs[leaving].read_text())
            assert len(left) == 2 and len(set(left)) == 1, logs[leaving].read_text()[-3000:]
            assert f"shrank to 2 at step {left[0]}" in logs[by_rank[0]].read_text()
            # and a replacement instance joins with both its slots
            wait_ticking(cloud, SCALER, lambda: _replaced(watch.job(JOB), first, leaving), 180, "a replacement")
            second = watch.job(JOB)
            joined = next(i for i in second.members if i not in first.members)
            wait_ticking(
                cloud,
                SCALER,
                lambda: len(_worlds(_log(tmp_path, joined), watch.job(JOB).generation)) >= 2,
                120,
                "the replacement's two slots to train",
            )
            # when a slot process of the replacement dies (killed, as by the kernel's OOM killer)
            os.kill(_slot_pid(_log(tmp_path, joined)), signal.SIGKILL)
            # then its agent reports its instance lost, and the ring goes on without it and takes another
            try:
                wait_ticking(
                    cloud,
                    SCALER,
                    lambda: joined not in watch.job(JOB).members and len(watch.job(JOB).members) == 2,
                    180,
                    "the instance with the dead slot replaced",
                )
            except TimeoutError as e:
                job = watch.job(JOB)
                raise AssertionError(f"{e}: {job.state} {job.members} {job.spares} {job.incidents}") from e
            assert "slot 1's process ended with status -9" in _log(tmp_path, joined).read_text()
            # and the job trains to the end
            pace.full_speed()
            wait_ticking(cloud, SCALER, lambda: watch.job(JOB).is_final, 180, "the job to end")
            assert watch.job(JOB).state is JobState.SUCCEEDED
        # and its final parameters are those of an uninterrupted run with the same global batches
        ours, theirs = torch.load(final, weights_only=True), torch.load(_baseline(tmp_path), weights_only=True)
        assert ours.keys() == theirs.keys()
        assert all(torch.allclose(ours[k], theirs[k], rtol=1e-4, atol=1e-5) for k in ours)
    finally:
        emulator.stop()


def _replaced(job: Job, first: Job, leaving: str) -> bool:
    return job.generation > first.generation and leaving not in job.members and len(job.members) == 2
