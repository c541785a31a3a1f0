"""What the grouped factor costs (issue 22): step time of DoPr-AdamW over AdamW on a ConvNeXt, side by side.

A Hugging Face ConvNeXt (4 stages, widths 32-256, one block each, depthwise 7x7 convolutions) on 64-pixel images,
batch 16, one thread. Arms interleaved, medians of wall and process CPU time, each over AdamW:

* ``adamw``;
* ``dopr-adamw``: DoPr with defaults, the depthwise convolutions included (one Sigma per channel, 50 x 50);
* ``dopr-adamw, depthwise excluded``: the same without them (what DoPr cost before grouped convolutions had AP),
  so the difference of the two DoPr arms is the grouped factor's share;
* ``dopr-adamw max_rows='auto'``: Sigma from at most ``max(4 d, 1024)`` sampled rows per forward.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grouped_step.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import warnings

import torch
import transformers
from interleaved import interleaved_medians, training_step

from dopr import DoPr


def convnext() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.ConvNextConfig(num_channels=3, num_stages=4, hidden_sizes=[32, 64, 128, 256],
                                      depths=[1, 1, 1, 1], num_labels=10)
    return transformers.ConvNextForImageClassification(cfg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
    arms = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, make in (
                ("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)),
                ("dopr-adamw", lambda m: DoPr(m, lr=1e-3)),
                ("dopr-adamw, depthwise excluded", lambda m: DoPr(m, lr=1e-3, exclude=["*dwconv"])),
                ("dopr-adamw max_rows='auto'", lambda m: DoPr(m, lr=1e-3, max_rows="auto"))):
            model = convnext()
            arms[label] = (model, make(model))
    depthwise = sum(1 for n, _ in arms["dopr-adamw"][1].preconditioner.layers.items() if n.endswith("dwconv"))
    med = interleaved_medians({label: training_step(opt, lambda m=model: m(pixel_values=x, labels=y).loss)
                               for label, (model, opt) in arms.items()}, args.rounds, args.warmup)
    print(f"ConvNeXt (HF, widths 32-256, {depthwise} depthwise 7x7 convolutions), batch 16 of 64x64, 1 thread")
    w0, c0 = med["adamw"]
    for label, (w, c) in med.items():
        print(f"{label:<32} wall {w * 1e3:7.2f} ms ({w / w0:.2f}x)  cpu {c * 1e3:7.2f} ms ({c / c0:.2f}x)")


if __name__ == "__main__":
    main()
