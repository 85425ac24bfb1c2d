"""A hard kill healed inside the ring: the survivors agree among themselves who is gone and train on at once.

Real agent processes on a real gloo ring, the control plane played by a discovery file that a test rewrites only
where it says so; the survivors' agreement itself on a real TCP store; the quorum rule as a pure function.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.worker.distributed import free_port
from tests.worker.processes import WorkerProcess, announce
from training_worker.membership import agree_survivors, quorum

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]

INSTANCES = ["i-00000000000000a01", "i-00000000000000a02", "i-00000000000000a03"]
STEPS = 70

#: A small job against the public API that commits every step and writes every rank's final parameters.
SCRIPT = """
import sys, time
import torch
import training_worker as rf

steps, out, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rf.init()
torch.manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(960, 16), torch.randint(0, 4, (960,)))
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = rf.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model.named_parameters())
sampler = rf.elastic.ElasticSampler(data, 24, seed=0)
loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
state = rf.elastic.TorchState(model=model, optimizer=optimizer, sampler=sampler, epoch=0, step=0)

@rf.elastic.run
def train(state):
    while state.step < steps:
        sampler.set_epoch(state.epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            state.step += 1
            rf.report(loss=loss.item())
            time.sleep(delay)
            state.commit()
            if state.step == steps:
                return
        state.epoch += 1

train(state)
torch.save(model.state_dict(), f"{out}/rank{rf.rank()}.pt")
"""


def _program(tmp: Path) -> tuple[str, ...]:
    script = tmp / "job.py"
    script.write_text(SCRIPT)
    return ("python", str(script))


def _final(folder: Path, world: int) -> list[dict[str, torch.Tensor]]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The same job on a fixed ring of 3 that nobody kills: its final parameters."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    port = free_port()
    workers = [
        WorkerProcess(
            tmp / f"w{rank}.log",
            "--instance-id",
            f"fixed-{rank}",
            "--static-world",
            f"{rank}:3:127.0.0.1:{port}",
            script=(str(STEPS), str(tmp), "0"),
            program=_program(tmp),
        )
        for rank in range(3)
    ]
    try:
        assert [w.finish(180) for w in workers] == [0, 0, 0]
    finally:
        for w in workers:
            w.kill()
    return _final(tmp, 3)[0]


def _three_agents(tmp: Path, discovery: Path) -> list[WorkerProcess]:
    """Three agents of job "heal" in generation 1; a silent peer counts as dead after 10 s."""
    announce(discovery, "heal", 1, INSTANCES)
    return [
        WorkerProcess(
            tmp / f"w{i}.log",
            "--job-id",
            "heal",
            "--instance-id",
            instance,
            "--discovery-file",
            str(discovery),
            "--timeout",
            "10",
            "--log-every",
            "1",
            script=(str(STEPS), str(tmp), "0.08"),
            program=_program(tmp),
        )
        for i, instance in enumerate(INSTANCES)
    ]


def _assert_same_as(finals: list[dict[str, torch.Tensor]], baseline: dict[str, torch.Tensor]) -> None:
    first = finals[0]
    for other in finals[1:]:
        assert all(torch.equal(first[k], other[k]) for k in first), "the survivors' parameters differ"
    assert all(torch.allclose(first[k], baseline[k], rtol=1e-4, atol=1e-5) for k in first)


@pytest.mark.parametrize("victim", [0, 1], ids=["rank-0-killed", "rank-1-killed"])
def test_survivors_of_a_hard_kill_re_form_among_themselves_without_the_control_plane(
    tmp_path: Path, victim: int, uninterrupted: dict[str, torch.Tensor]
) -> None:
    # given three workers training in generation 1, the control plane silent from now on
    discovery = tmp_path / "membership.json"
    workers = _three_agents(tmp_path, discovery)
    survivors = [w for i, w in enumerate(workers) if i != victim]
    try:
        for w in workers:
            w.wait_for_step(15, generation=1, timeout=120)
        # when one of them (rank 0 too: it served the generation's rendezvous) dies with SIGKILL mid-training
        workers[victim].kill()
        killed_at = time.monotonic()
        # then the two others agree that it is gone and form a ring of 2 at once, in the same generation
        healed = [w.wait_for("generation 1: shrank to 2 at step", timeout=60) for w in survivors]
        # (within a second mostly; a survivor whose pending collective waits on the other survivor is freed by the
        # peer timeout: never later, and never waiting for the control plane)
        assert max(healed) - killed_at < 15
        # and they train to the end with no Reconfigure at all, with the same parameters as the run nobody killed
        assert [w.finish(120) for w in survivors] == [0, 0]
        for w in survivors:
            assert w.progress()[-1][:2] == (STEPS, 2)
            assert "joining generation 2" not in w.output()
        _assert_same_as(_final(tmp_path, 2), uninterrupted)
    finally:
        for w in workers:
            w.kill()


def test_the_control_planes_reconfigure_for_the_healed_ring_is_taken_without_a_second_re_form(tmp_path: Path) -> None:
    # given three workers of generation 1 whose rank 1 is killed, and the survivors' own ring of 2
    discovery = tmp_path / "membership.json"
    workers = _three_agents(tmp_path, discovery)
    survivors = [workers[0], workers[2]]
    try:
        for w in workers:
            w.wait_for_step(15, generation=1, timeout=120)
        workers[1].kill()
        for w in survivors:
            w.wait_for("generation 1: shrank to 2 at step", timeout=60)
        # when the control plane fences the loss with generation 2 naming exactly those two, in their order
        announce(discovery, "heal", 2, [INSTANCES[0], INSTANCES[2]])
        # then they take it at a step boundary as it is: no rendezvous, no second rollback, one failure in all
        for w in survivors:
            w.wait_for("generation 2 names the ring its survivors formed (world 2)", timeout=30)
        assert [w.finish(120) for w in survivors] == [0, 0]
        for rank, w in enumerate(survivors):
            out = w.output()
            assert w.progress()[-1] == (STEPS, 2, rank, 2)
            assert "joining generation 2" not in out
            assert out.count("collective failed") == 1
    finally:
        for w in workers:
            w.kill()


# -- the agreement ------------------------------------------------------------------------------------------------


def test_the_survivors_agree_once_every_rank_but_one_has_checked_in() -> None:
    assert quorum(3, [0, 2], waited_out=False) == (0, 2)
    assert quorum(5, [4, 0, 1, 3], waited_out=False) == (0, 1, 3, 4)
    assert quorum(3, [0, 1, 2], waited_out=False) == (0, 1, 2)  # nobody died (a transient failure): all re-form


def test_they_wait_while_two_could_still_arrive_then_re_form_with_a_majority() -> None:
    assert quorum(5, [0, 1, 2], waited_out=False) is None
    assert quorum(5, [0, 1, 2], waited_out=True) == (0, 1, 2)


def test_a_minority_never_forms_a_ring_so_a_partition_cannot_make_two() -> None:
    assert quorum(3, [1], waited_out=True) == ()
    assert quorum(4, [0, 1], waited_out=True) == ()  # half is not a majority: the other half may be training
    assert quorum(2, [0], waited_out=False) == ()  # a ring of 2 cannot heal alone: the control plane decides


def _store() -> tuple[dist.TCPStore, str]:
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=5), wait_for_workers=False)
    return server, f"127.0.0.1:{server.port}"


def _client(address: str) -> dist.TCPStore:
    host, port = address.rsplit(":", 1)
    return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=5), wait_for_workers=False)


def test_two_survivors_checking_in_at_once_read_the_same_decision() -> None:
    # given rank 0's heal store of a ring of 3 whose rank 1 died
    server, address = _store()
    results: dict[int, object] = {}

    def check_in(rank: int) -> None:
        results[rank] = agree_survivors([_client(address)], "heal", rank, 3, 40 + rank, wait_s=10)

    # when ranks 0 and 2 check in at the same moment
    threads = [threading.Thread(target=check_in, args=(r,)) for r in (0, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    # then both read one decision: the two of them, at the first store
    assert results == {0: (0, (0, 2)), 2: (0, (0, 2))}
    assert server.get("heal/step/2") == b"42"


def test_a_survivor_whose_rank_0_died_checks_in_at_rank_1s_store() -> None:
    # given rank 0's heal store gone with it, rank 1's serving
    dead, dead_address = _store()
    client_of_dead = _client(dead_address)
    del dead
    _, standby = _store()
    results: dict[int, object] = {}

    def check_in(rank: int, stores: list[dist.Store]) -> None:
        results[rank] = agree_survivors(stores, "heal", rank, 3, 7, wait_s=10)

    threads = [
        threading.Thread(target=check_in, args=(1, [_client(standby)])),
        threading.Thread(target=check_in, args=(2, [client_of_dead, _client(standby)])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == {1: (0, (1, 2)), 2: (1, (1, 2))}


def test_a_lone_survivor_of_three_forms_no_ring_and_a_late_one_is_left_out() -> None:
    # given a ring of 3 where only rank 2 checks in: after the wait, no majority, no ring
    _, address = _store()
    assert agree_survivors([_client(address)], "heal", 2, 3, 5, wait_s=0.2) == (0, ())
    # and a rank checking in after that decision reads it too: it is not in a ring
    assert agree_survivors([_client(address)], "heal", 0, 3, 5, wait_s=0.2) == (0, ())
