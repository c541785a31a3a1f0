"""How many graphs torch.compile makes of a small GPT's training forward, with and without DoPr's hooks.

Counts the graphs dynamo hands to a counting backend (no inductor, so it runs in seconds on CPU), and
reports what fullgraph=True does. Run: .venv/bin/python benchmarks/compile_graphs.py
"""

from __future__ import annotations

import torch
import torch._dynamo
from torch import nn

from dopr import DoPr


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.out(torch.relu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 32, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(32, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        return self.head(self.blocks(h))


def graphs(with_dopr: bool, fullgraph: bool = False) -> tuple[int | None, str]:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT()
    opt = DoPr(model, lr=1e-3) if with_dopr else torch.optim.AdamW(model.parameters(), lr=1e-3)
    count = 0

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        nonlocal count
        count += 1
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph)
    ids = torch.randint(0, 64, (4, 16))
    try:
        for _ in range(2):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(compiled(ids).flatten(0, 1), ids.flatten())
            loss.backward()
            opt.step()
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return count, "ok"


if __name__ == "__main__":
    for label, dopr in (("AdamW", False), ("DoPr-AdamW", True)):
        n, status = graphs(dopr)
        n_full, status_full = graphs(dopr, fullgraph=True)
        print(f"{label:<11} graphs (fullgraph=False): {n}  {status}; fullgraph=True: {n_full} {status_full}")
