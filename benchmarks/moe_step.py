"""Step time of DoPr-AdamW over AdamW on a small mixture-of-experts LM (issue 25), side by side.

A transformers Mixtral built from a config (hidden 128, 8 experts, top-2, 2 layers, random init), 512 tokens a
step, one thread, with each of transformers' expert implementations: the eager loop (``F.linear(h[tokens], W[e])``
per expert) and ``grouped_mm`` (its default). Arms interleaved round by round; medians of wall and CPU time.
DoPr gives each expert the Sigma of its routed tokens and factorizes the experts of a bank in one batched call.

    .venv/bin/python benchmarks/moe_step.py [--rounds 30]
"""

from __future__ import annotations

import argparse

import torch
import transformers
from interleaved import interleaved_medians, training_step

from dopr import DoPr


def mixtral(impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, experts_implementation=impl)
    return transformers.MixtralForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = torch.randint(0, 512, (4, 128), generator=torch.Generator().manual_seed(0))
    arms = {}
    for impl in ("eager", "grouped_mm"):
        for label in ("adamw", "dopr-adamw"):
            model = mixtral(impl)
            opt = DoPr(model, lr=1e-3) if label == "dopr-adamw" else torch.optim.AdamW(model.parameters(), lr=1e-3)
            arms[(impl, label)] = (model, opt)
    med = interleaved_medians({key: training_step(opt, lambda m=model: m(ids, labels=ids).loss)
                               for key, (model, opt) in arms.items()}, args.rounds, args.warmup)
    print("Mixtral, hidden 128, 8 experts top-2, 2 layers, 512 tokens per step, 1 thread")
    for impl in ("eager", "grouped_mm"):
        w0, c0 = med[(impl, "adamw")]
        for label in ("adamw", "dopr-adamw"):
            w, c = med[(impl, label)]
            print(f"experts {impl:<10} {label:<11} wall {w * 1e3:7.2f} ms ({w / w0:.2f}x)  cpu {c * 1e3:7.2f} ms "
                  f"({c / c0:.2f}x)")


if __name__ == "__main__":
    main()
