"""A character-level transformer language model trained data-parallel on ringfleet, written only against the public API.

AdamW with linear warm-up then cosine decay (the scheduler is part of the elastic state, so checkpoints carry it),
gradient clipping on the averaged gradients, optional bf16 autocast. Runs under the instance agent
(``ringfleet submit examples/lm/job.yaml``), alone (``python examples/lm/train.py``) or with torchrun.

The text is synthetic: ``corpus()`` writes it from a small seeded grammar with nothing but Python's ``random`` module
(only ``Random.random()``, whose sequence Python keeps stable across versions), so the same ~150 KB come out on every
machine and nothing is downloaded. No third-party text is in it: it is this repository's own, under its Apache-2.0
licence. Its last tenth is held out; the held-out loss is printed at the end.
"""

from __future__ import annotations

import argparse
import math
import random

import torch
from torch import nn

import training_worker as rf

CONTEXT = 64
_WORDS = {
    kind: words.split()
    for kind, words in {
        "A": "quiet old small bright cold green patient hungry golden wooden silent careful",
        "N": "river ship miller garden lantern fox harbour letter mountain sailor orchard bell kettle road",
        "V": "carried found watched mended followed painted crossed remembered opened answered",
        "P": "near under beyond behind beside",
    }.items()
}


def corpus(chars: int = 150_000, seed: int = 1887) -> str:
    """The deterministic synthetic text the model learns (see the module docstring)."""
    rng = random.Random(seed)

    def pick(seq: list[str]) -> str:
        return seq[int(rng.random() * len(seq))]

    def phrase() -> str:
        return f"the {pick(_WORDS['A'])} {pick(_WORDS['N'])}" if rng.random() < 0.6 else f"the {pick(_WORDS['N'])}"

    out: list[str] = []
    size = 0
    while size < chars:
        sentences = []
        for _ in range(3 + int(rng.random() * 4)):
            s = f"{phrase()} {pick(_WORDS['V'])} {phrase()}"
            if rng.random() < 0.4:
                s += f" {pick(_WORDS['P'])} {phrase()}"
            if rng.random() < 0.3:
                s += ", and " + f"{phrase()} {pick(_WORDS['V'])} {phrase()}"
            sentences.append(s[0].upper() + s[1:] + ("?" if rng.random() < 0.1 else "."))
        out.append(" ".join(sentences) + "\n\n")
        size += len(out[-1])
    return "".join(out)[:chars]


class CharWindows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Non-overlapping windows of ``CONTEXT`` characters and their next characters."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return (len(self.ids) - 1) // CONTEXT

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.ids[i * CONTEXT : (i + 1) * CONTEXT + 1]
        return chunk[:-1], chunk[1:]


class CharTransformer(nn.Module):
    """A pre-norm causal transformer. No dropout, so that runs on different world sizes stay allclose; no biases in
    the blocks, as the attention's key bias has a gradient that is zero but for rounding, which Adam would amplify."""

    def __init__(self, vocab: int, d_model: int = 128, layers: int = 2, heads: int = 4, context: int = CONTEXT):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, heads, 4 * d_model, 0.0, "gelu", batch_first=True, norm_first=True, bias=False
            )
            for _ in range(layers)
        )
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            h = block(h, src_mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def datasets() -> tuple[CharWindows, CharWindows, int]:
    text = corpus()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    cut = len(ids) * 9 // 10
    return CharWindows(ids[:cut]), CharWindows(ids[cut:]), len(vocab)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300, help="global steps to train")
    p.add_argument("--global-batch", type=int, default=48, help="sequences per step over all workers")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=20, help="steps of linear warm-up before the cosine decay")
    p.add_argument("--decay-steps", type=int, default=None, help="length of warm-up + cosine decay (default: --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit-every", type=int, default=5, help="steps between in-memory commits")
    p.add_argument("--save-final", default=None, help="rank 0 writes the final model and optimizer state here")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for forward and loss (CPU)")
    args = p.parse_args()

    rf.init()
    torch.manual_seed(args.seed)
    train_set, held_out, vocab = datasets()
    model = CharTransformer(vocab)
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    optimizer = rf.DistributedOptimizer(inner, named_parameters=model.named_parameters())

    def schedule(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, (args.decay_steps or args.steps) - args.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    sampler = rf.elastic.ElasticSampler(train_set, args.global_batch, seed=args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler)
    state = rf.elastic.TorchState(
        model=model, optimizer=optimizer, sampler=sampler, scheduler=scheduler, epoch=0, step=0
    )

    @rf.elastic.run
    def train(state: rf.elastic.TorchState) -> None:
        while state.step < args.steps:
            sampler.set_epoch(state.epoch)
            for x, y in loader:
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                    loss = nn.functional.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
                loss.backward()
                optimizer.synchronize()  # averaged gradients in .grad: clip them, then step() does not reduce again
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                state.step += 1
                rf.report(loss=loss.item())
                if state.step % args.commit_every == 0 or state.step == args.steps:
                    state.commit()
                if state.step == args.steps:
                    return
            state.epoch += 1

    train(state)
    if rf.rank() == 0:
        x, y = (torch.stack(t) for t in zip(*(held_out[i] for i in range(len(held_out))), strict=True))
        model.eval()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        print(f"held-out loss {loss.item():.4f} (uniform would be {math.log(vocab):.4f})", flush=True)
        if args.save_final:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.save_final)


if __name__ == "__main__":
    main()
