"""How many graphs torch.compile makes of a model's training forward, with AdamW and with DoPr (issue 21).

Four models: a small GPT (SDPA, token and position embeddings), the BC bench's kind of residual MLP, a conv net and
an ``nn.TransformerEncoder`` (``nn.MultiheadAttention``). Counts the graphs Dynamo hands to a counting backend (no
inductor, so it runs in seconds on CPU) over two training steps, and reports what ``fullgraph=True`` does. Layers
read where their weight is read (Linear, Embedding, convolutions, the projections of DoPr's attention forward)
compile into the graph; a layer read by a module hook (transposed convolutions, RNNs) breaks it once.
Run: .venv/bin/python benchmarks/compile_graphs.py
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


def residual_mlp() -> nn.Module:
    from mlp_step import Residual  # the BC bench's residual block (benchmarks/mlp_step.py)

    return nn.Sequential(nn.Linear(24, 64), *[Residual(64) for _ in range(2)], nn.ReLU(), nn.Linear(64, 6))


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def mha_encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))


MODELS = {  # name -> (model, input)
    "GPT (SDPA)": (GPT, lambda: torch.randint(0, 64, (4, 16))),
    "residual MLP": (residual_mlp, lambda: torch.randn(32, 24)),
    "conv net": (conv_net, lambda: torch.randn(4, 3, 8, 8)),
    "nn.MultiheadAttention": (mha_encoder, lambda: torch.randn(4, 6, 16)),
}


def graphs(name: str, with_dopr: bool, fullgraph: bool = False) -> tuple[int | None, str]:
    torch._dynamo.reset()
    torch.manual_seed(0)
    build, data = MODELS[name]
    model, x = build(), data()
    opt = DoPr(model, lr=1e-3) if with_dopr else torch.optim.AdamW(model.parameters(), lr=1e-3)
    count = 0

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        nonlocal count
        count += 1
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph)
    try:
        for _ in range(2):
            opt.zero_grad()
            compiled(x).float().pow(2).mean().backward()
            opt.step()
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
    return count, "ok"


if __name__ == "__main__":
    print("| model | optimizer | graphs (fullgraph=False) | fullgraph=True |")
    print("|---|---|---|---|")
    for name in MODELS:
        for label, dopr in (("AdamW", False), ("DoPr-AdamW", True)):
            n, status = graphs(name, dopr)
            n_full, status_full = graphs(name, dopr, fullgraph=True)
            full = f"{n_full} graph" if n_full is not None else status_full
            print(f"| {name} | {label} | {n if n is not None else status} | {full} |")
