"""A digits classifier trained data-parallel on ringfleet: the demo's job, written only against the public API.

Runs under the instance agent (``ringfleet submit examples/digits/job.yaml``), alone (``python train.py``) or with
torchrun (``torchrun --nproc-per-node 2 examples/digits/train.py``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from sklearn.datasets import load_digits

import training_worker as rf

#: The last images are held out of training: accuracy is measured on them.
HELD_OUT = 297


def digits(split: str) -> torch.utils.data.TensorDataset:
    data = load_digits()  # shipped inside scikit-learn: nothing is downloaded
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    cut = len(y) - HELD_OUT
    return torch.utils.data.TensorDataset(*((x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])))


class StepDelay:
    """The sleep after each step: ``--step-delay``, or the number of seconds in ``--step-delay-file`` while it holds
    one. The file is looked at every step (a stat; read again only once it changed), so a run can be slowed or sped
    up while it trains; a file that is missing, unreadable or not a number leaves the last value in force."""

    def __init__(self, seconds: float, path: str | None) -> None:
        self.seconds = max(0.0, seconds)
        self._path = path
        self._seen: tuple[int, int, int] | None = None

    def __call__(self) -> float:
        if self._path is not None:
            try:
                st = os.stat(self._path)
                seen = (st.st_ino, st.st_mtime_ns, st.st_size)
                if seen != self._seen:
                    with open(self._path) as f:
                        self.seconds = max(0.0, float(f.read()))
                    self._seen = seen
            except (OSError, ValueError):
                pass
        return self.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200, help="global steps to train")
    p.add_argument("--global-batch", type=int, default=96, help="samples per step over all workers")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit-every", type=int, default=5, help="steps between in-memory commits")
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step (paces demos and tests)")
    p.add_argument(
        "--step-delay-file",
        default=None,
        metavar="PATH",
        help="pacing for demos and tests: the seconds to sleep per step are read from this file (looked at every "
        "step), so a run can be slowed or sped up while it trains; while the file is missing or holds no number "
        "the last value (at first --step-delay) stays",
    )
    p.add_argument("--save-final", default=None, help="rank 0 writes the final model's state_dict here")
    args = p.parse_args()

    rf.init()
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = rf.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9), model.named_parameters()
    )
    train_set = digits("train")
    sampler = rf.elastic.ElasticSampler(train_set, args.global_batch, seed=args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler)
    state = rf.elastic.TorchState(model=model, optimizer=optimizer, sampler=sampler, epoch=0, step=0)
    step_delay = StepDelay(args.step_delay, args.step_delay_file)

    @rf.elastic.run
    def train(state: rf.elastic.TorchState) -> None:
        while state.step < args.steps:
            sampler.set_epoch(state.epoch)
            for x, y in loader:
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                state.step += 1
                rf.report(loss=loss.item())
                if delay := step_delay():
                    time.sleep(delay)
                if state.step % args.commit_every == 0 or state.step == args.steps:
                    state.commit()
                if state.step == args.steps:
                    return
            state.epoch += 1

    train(state)
    if rf.rank() == 0:
        x, y = digits("test").tensors
        with torch.no_grad():
            accuracy = float((model(x).argmax(dim=1) == y).float().mean())
        print(f"held-out accuracy {accuracy:.4f}", flush=True)
        if args.save_final:
            torch.save(model.state_dict(), args.save_final)


if __name__ == "__main__":
    main()
