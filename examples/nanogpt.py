"""A nanoGPT-style character model trained with DoPr-AdamW, next to plain AdamW from the same initialization.

A few pre-norm transformer blocks (causal ``scaled_dot_product_attention``, GELU MLP, tied input/output
embeddings) learn a character-level corpus of sums (``"17+25=42"``) generated here: nothing is downloaded.
Both arms see the same batches, learning-rate schedule (warmup then cosine) and gradient clipping. DoPr
preconditions every ``nn.Linear`` and the tied embedding/head weight; the base AdamW gets the result.
Neither arm is tuned: this shows the wiring, it is not a benchmark.

    .venv/bin/python examples/nanogpt.py [--steps 200] [--no-compare]
"""

from __future__ import annotations

import argparse
import copy
import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dopr import DoPr


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block_size: int, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(block_size, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied embeddings
        for m in self.modules():  # GPT-2's initialization (PyTorch's N(0, 1) embeddings would give huge tied logits)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        logits = self.head(self.ln_f(self.blocks(self.tok(idx) + self.pos(pos))))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_corpus(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(f"{a}+{b}={a + b}\n" for a, b in ((rng.randrange(100), rng.randrange(100)) for _ in range(n)))


def batch(data: Tensor, block_size: int, size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    start = torch.randint(0, len(data) - block_size - 1, (size,), generator=g)
    x = torch.stack([data[i : i + block_size] for i in start.tolist()])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in start.tolist()])
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--no-compare", action="store_true", help="train DoPr only, without the AdamW arm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    text = make_corpus(4000, args.seed)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]

    torch.manual_seed(args.seed)
    init = GPT(len(chars), args.block_size)
    hyper = dict(lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    arms: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    model = copy.deepcopy(init)  # copy before DoPr hooks the model (a DoPr-hooked model is not for copying)
    arms["dopr"] = (model, DoPr(model, base="adamw", damping=args.damping, **hyper))
    if not args.no_compare:
        model = copy.deepcopy(init)
        arms["adamw"] = (model, torch.optim.AdamW(model.parameters(), **hyper))
    warmup = max(1, args.steps // 10)

    def schedule(step: int) -> float:  # linear warmup, then cosine decay to 10% of the base optimizer's lr
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    scheds = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, (_, opt) in arms.items()}

    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        x, y = batch(train, args.block_size, args.batch, g)
        losses = {}
        for name, (model, opt) in arms.items():
            opt.zero_grad()  # also discards DoPr's input statistics for the cleared gradients
            loss = model(x, y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # clips the raw gradient; DoPr preconditions it next
            opt.step()
            scheds[name].step()
            losses[name] = loss.item()
        if step % max(1, args.steps // 8) == 0 or step == args.steps - 1:
            other = f"  (adamw {losses['adamw']:.4f})" if "adamw" in losses else ""
            print(f"step {step:4d}  loss {losses['dopr']:.4f}{other}")

    gv = torch.Generator().manual_seed(args.seed + 1)
    xv, yv = batch(val, args.block_size, 256, gv)
    with torch.no_grad():
        val_loss = {name: model.eval()(xv, yv).item() for name, (model, _) in arms.items()}
    other = f"  (adamw {val_loss['adamw']:.4f})" if "adamw" in val_loss else ""
    print(f"final loss {val_loss['dopr']:.4f}{other}  [validation, dopr-adamw]")


if __name__ == "__main__":
    main()
