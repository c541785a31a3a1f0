"""AP coverage of DoPr with defaults on the model zoo of tests/zoo.py (tiny, random init, nothing downloaded).

Prints, per model: the share of trainable weight-matrix elements that get AP, what is named and why, and the
loss over 3 steps. Run: .venv/bin/python benchmarks/coverage.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from dopr import DoPr  # noqa: E402
from zoo import ZOO  # noqa: E402

print("| model | AP share of weight-matrix elements | named (why) | loss, 3 steps |")
print("|---|---|---|---|")
for name, build in ZOO.items():
    torch.manual_seed(0)
    model, loss_fn = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = DoPr(model, lr=1e-3)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = loss_fn(model)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    ap = opt.preconditioner
    named = "; ".join(f"{n} ({why.split('(')[0].strip()})" for n, why in ap.discovery.unexpected().items()) or "-"
    print(f"| {name} | {ap.coverage()['share']:.1%} | {named} | {losses[0]:.3f} -> {losses[-1]:.3f} |")
