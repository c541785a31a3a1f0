"""Does torch.compile give DoPr what it gives AdamW? (issue 21) Step time, eager and compiled, side by side.

Four arms on one model, interleaved round by round, medians of wall and process-CPU time, one thread:
AdamW and DoPr-AdamW eager, and both with the model compiled (``fullgraph=True``, inductor; DoPr's Linear and
Embedding statistics are accumulated inside the graph, see ``dopr.sigma_tap``). The optimizer steps stay eager.
Printed: each arm's time over eager AdamW, and the two ratios the issue compares, compiled DoPr over compiled AdamW
against eager DoPr over eager AdamW.

    .venv/bin/python benchmarks/compile_speed.py [--model mlp|gpt] [--rounds 30]
    python benchmarks/compile_speed.py --device cuda --mode reduce-overhead   # on a GPU (benchmarks/gpu.sh)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from interleaved import interleaved_medians, training_step
from torch import nn

from dopr import DoPr


def gpt(tokens: int, device: torch.device) -> tuple[Callable[[], nn.Module], Callable[[nn.Module], torch.Tensor]]:
    import overhead  # the GPT of benchmarks/overhead.py (4 layers, d=256, SDPA)

    cfg = dict(overhead.PRESETS["cpu-small"])
    batch = max(1, tokens // cfg["seq"])
    ids = torch.randint(0, cfg["vocab"], (batch, cfg["seq"]), generator=torch.Generator().manual_seed(0)).to(device)

    def loss(model: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(1, 1).flatten())

    return lambda: overhead.GPT(**cfg).to(device), loss


def mlp(device: torch.device) -> tuple[Callable[[], nn.Module], Callable[[nn.Module], torch.Tensor]]:
    import mlp_step  # the BC bench's residual MLP policy, batch 256

    x, y = torch.randn(256, 348, device=device), torch.randn(256, 17, device=device)
    return lambda: mlp_step.mlp().to(device), lambda model: ((model(x) - y) ** 2).mean()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["mlp", "gpt"], default="mlp")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per step (gpt)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default=None, help="torch.compile mode (reduce-overhead: CUDA graphs)")
    parser.add_argument("--capturable", action="store_true",
                        help="add a compiled DoPr arm with capturable=True (no host sync in its step)")
    parser.add_argument("--compile-step", action="store_true",
                        help="the compiled arms also compile their optimizer's step (torch.compile(opt.step))")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    build, loss = mlp(device) if args.model == "mlp" else gpt(args.tokens, device)
    arms = {}
    labels = ["adamw eager", "dopr-adamw eager", "adamw compiled", "dopr-adamw compiled"]
    for label in labels + (["dopr-adamw compiled capturable"] if args.capturable else []):
        torch.manual_seed(0)
        model = build()
        opt = (DoPr(model, lr=1e-3, capturable=label.endswith("capturable")) if label.startswith("dopr")
               else torch.optim.AdamW(model.parameters(), lr=1e-3))
        forward = torch.compile(model, fullgraph=True, mode=args.mode) if "compiled" in label else model
        if args.compile_step and "compiled" in label:
            opt.step = torch.compile(opt.step, mode=args.mode)
        arms[label] = (forward, opt)
    med = interleaved_medians({label: training_step(opt, lambda f=forward: loss(f))
                               for label, (forward, opt) in arms.items()}, args.rounds, args.warmup, sync)
    base_w, base_c = med["adamw eager"]
    print(f"model {args.model}" + (f", {args.tokens} tokens per step" if args.model == "gpt" else ", batch 256")
          + f", {device.type}, compile mode {args.mode or 'default'}"
          + (", optimizer step compiled too" if args.compile_step else ""))
    for label, (w, c) in med.items():
        print(f"{label:<31} wall {w * 1e3:8.2f} ms ({w / base_w:.2f}x)  cpu {c * 1e3:8.2f} ms ({c / base_c:.2f}x)")
    for kind, i in (("wall", 0), ("cpu", 1)):
        eager = med["dopr-adamw eager"][i] / med["adamw eager"][i]
        compiled = med["dopr-adamw compiled"][i] / med["adamw compiled"][i]
        print(f"{kind}: DoPr/AdamW eager {eager:.2f}x, compiled {compiled:.2f}x")


if __name__ == "__main__":
    main()
