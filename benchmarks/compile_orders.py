"""Does DoPr get its statistics under torch.compile, whatever order the script builds things in? (issue 21)

Each build order runs in a fresh process (Dynamo's caches are per process) on four small models: an MLP (Linear
layers, captured where their weight is read, :mod:`dopr.tap`), a conv net (Conv2d layers, also read where their
weight is read, then a Linear head), a net of convolutions only, and a net of transposed convolutions only (read by
module hooks: nothing for Dynamo to guard on).
Three steps each; printed per order: the groups that missed their statistics on some step (DoPr trains those
layers exactly as its base), DoPr's error text where it stopped the run, and the graphs Dynamo compiled.

    .venv/bin/python benchmarks/compile_orders.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import torch
from torch import nn

ORDERS = {
    "dopr-then-compile": "DoPr(model), then torch.compile(model)",
    "compile-then-dopr": "f = torch.compile(model), then DoPr(model)",
    "compile-forward-then-dopr": "f = torch.compile(model), one forward, then DoPr(model)",
    "other-instance-compiled-first": "another instance compiled and run first, then DoPr(model) + torch.compile(model)",
    "fullgraph": "DoPr(model), then torch.compile(model, fullgraph=True)",
}


def build(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2)), \
            torch.randn(16, 8)
    if kind == "conv-only":
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1)), \
            torch.randn(4, 3, 8, 8)
    if kind == "hooks-only":  # no layer read where its weight is read: only hooks, nothing for Dynamo to guard on
        return nn.Sequential(nn.ConvTranspose2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 2, 3)), \
            torch.randn(4, 3, 8, 8)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)), torch.randn(4, 3, 8, 8)


def run(order: str, kind: str) -> dict:
    from torch._dynamo.testing import CompileCounter

    from dopr import DoPr

    counter = CompileCounter()
    model, x = build(kind)
    opt = f = None
    if order == "dopr-then-compile":
        opt = DoPr(model, lr=1e-2)
        f = torch.compile(model, backend=counter)
    elif order.startswith("compile"):
        f = torch.compile(model, backend=counter)
        if order == "compile-forward-then-dopr":
            f(x)  # a shape check before DoPr exists
        opt = DoPr(model, lr=1e-2)
    elif order == "other-instance-compiled-first":
        other, _ = build(kind)
        torch.compile(other, backend=counter)(x).sum().backward()  # an AdamW baseline earlier in the script
        opt = DoPr(model, lr=1e-2)
        f = torch.compile(model, backend=counter)
    else:
        opt = DoPr(model, lr=1e-2)
        f = torch.compile(model, backend=counter, fullgraph=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):
                opt.zero_grad()
                f(x).pow(2).mean().backward()
                opt.step()
    except Exception as err:  # noqa: BLE001 - the table reports what the user sees
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", "frames": counter.frame_count}
    missing = sum(g["missing_statistics"] > 0 for g in opt.stats().values())
    return {"missing": f"{missing} of {len(opt.stats())}", "frames": counter.frame_count}


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(run(sys.argv[1], sys.argv[2])))
        return
    print("| build order | model | groups that missed statistics | DoPr's error | graphs compiled |")
    print("|---|---|---|---|---|")
    for order, text in ORDERS.items():
        for kind in ("mlp", "convnet", "conv-only", "hooks-only"):
            out = subprocess.run([sys.executable, __file__, order, kind], capture_output=True, text=True, check=False)
            try:
                row = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                row = {"error": f"process failed: {out.stderr.strip().splitlines()[-1][:160]}", "frames": "-"}
            print(f"| {text} | {kind} | {row.get('missing', '-')} | {row.get('error', '-')} | {row['frames']} |")


if __name__ == "__main__":
    main()
