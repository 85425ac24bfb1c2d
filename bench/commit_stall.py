"""Benchmark: what an in-memory commit every step costs a training step, on the GPU or the CPU, as a ratio of medians.

One process trains the transformer of ``examples/lm`` (AdamW through our ``DistributedOptimizer``, world of one) and
alternates windows of steps that end in ``state.commit()`` (a snapshot of model and optimizer, copied while the next
step's forward and backward run) with windows that end in ``state.check_host_updates()`` (the same step boundary,
no snapshot). Prints both medians, their ratio (target <= 1.05) and the commit interval that keeps within it, and
checks what makes the overlap safe: the commit taken after step k holds exactly the parameters and optimizer state
of step k, though the copy finished while step k+1 ran (exit status 1 when it does not). On a GPU the copy is a
device-to-host transfer.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import training_worker as rf  # noqa: E402

VOCAB = 64
TARGET = 1.05


def _lm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ringfleet_example_lm", ROOT / "examples" / "lm" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _cpu_copy(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _cpu_copy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_cpu_copy(v) for v in tree)
    return tree


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.device = args.device
        lm = _lm()
        torch.manual_seed(0)
        self.model = lm.CharTransformer(VOCAB, d_model=args.d_model, layers=args.layers, heads=args.heads).to(
            self.device
        )
        inner = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.optimizer = rf.DistributedOptimizer(inner, named_parameters=self.model.named_parameters())
        self.state = rf.elastic.TorchState(model=self.model, optimizer=self.optimizer)
        self.ids = torch.randint(VOCAB, (args.batch, lm.CONTEXT + 1), device=self.device)
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self) -> None:
        self.optimizer.zero_grad()
        x, y = self.ids[:, :-1], self.ids[:, 1:]
        with torch.autocast(self.device, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(self.model(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        self.optimizer.step()

    def window(self, steps: int, commit: bool) -> list[float]:
        times = []
        for _ in range(steps):
            _sync(self.device)
            t0 = time.perf_counter()
            self.step()
            if commit:
                self.state.commit()
            else:
                self.state.check_host_updates()
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        return times

    def commit_is_exact(self, checks: int) -> bool:
        """After commit k, the next step runs while the copy may still be in flight: the commit must still be k."""
        for _ in range(checks):
            self.step()
            self.state.commit()
            expected = {
                "model": _cpu_copy(self.model.state_dict()),
                "optimizer": _cpu_copy(self.optimizer.state_dict()),
            }
            self.step()  # changes parameters and optimizer state in place
            got = self.state.committed()
            if not (_same(expected["model"], got["model"]) and _same(expected["optimizer"], got["optimizer"])):
                return False
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a small model and few steps (a smoke run)")
    parser.add_argument("--d-model", type=int, default=None, help="transformer width (default 1024, quick 64)")
    parser.add_argument("--layers", type=int, default=None, help="transformer layers (default 12, quick 2)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (default 8)")
    parser.add_argument("--batch", type=int, default=None, help="sequences of 64 characters per step (default 64)")
    parser.add_argument("--rounds", type=int, default=None, help="commit/no-commit window pairs (default 6, quick 2)")
    parser.add_argument("--steps", type=int, default=10, help="steps per window (default 10)")
    args = parser.parse_args(argv)
    args.d_model = args.d_model or (64 if args.quick else 1024)
    args.layers = args.layers or (2 if args.quick else 12)
    args.batch = args.batch or (8 if args.quick else 64)
    args.rounds = args.rounds or (2 if args.quick else 6)
    rf.init()
    trainer = Trainer(args)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"lm {trainer.params / 1e6:.1f}M parameters (AdamW), batch {args.batch}x64, bf16 autocast, on {name}")
    trainer.window(3, commit=True)  # warm-up: allocator, kernels, the copy thread
    timings: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for commit in (False, True):
            timings[commit] += trainer.window(args.steps, commit)
    plain, committed = statistics.median(timings[False]), statistics.median(timings[True])
    ratio = committed / plain
    print(f"  no commit:         {plain * 1e3:8.2f} ms/step (median of {len(timings[False])})")
    print(f"  commit every step: {committed * 1e3:8.2f} ms/step   ratio {ratio:.3f} (target <= {TARGET})")
    extra = max(0.0, committed - plain)
    every = max(1, math.ceil(extra / ((TARGET - 1) * plain)))
    print(
        f"  a commit adds {extra * 1e3:.2f} ms: committing every {every} step(s) or fewer often keeps the inflation"
        f" <= {(TARGET - 1) * 100:.0f} %"
    )
    exact = trainer.commit_is_exact(3)
    print(f"  commit taken while the next step ran holds exactly its step's state: {'yes' if exact else 'NO'}")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
