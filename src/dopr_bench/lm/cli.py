"""``dopr-bench run lm``: fine-tune a causal LM per arm (full or LoRA), judge it by generated answers.

Without ``--model`` it runs the built-in synthetic task (a small Llama pretrained here on generated arithmetic
word problems). With ``--model NAME_OR_PATH --dataset NAME_OR_PATH`` it fine-tunes any causal LM checkpoint on
any instruction dataset (hub name or local .json/.jsonl/.csv/.parquet file or saved dataset directory).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("DOPR_BENCH_CACHE", Path.home() / ".cache" / "dopr_bench")) / "lm"


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dopr-bench run lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="causal LM: hub name or local path (default: the synthetic task)")
    p.add_argument("--dataset", default=None, help="training data: hub name or local file/directory")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-dataset", default=None, help="judged by generation (default: held-out part of --dataset)")
    p.add_argument("--eval-config", default=None)
    p.add_argument("--eval-split", default="test")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer", help="the solution the model learns to write")
    p.add_argument("--reference-field", default=None,
                   help="field with the bare final answer (default: extracted from the answer field, '####' etc.)")
    p.add_argument("--eval-question-field", default=None, help="default: --question-field")
    p.add_argument("--eval-answer-field", default=None, help="default: --answer-field")
    p.add_argument("--eval-reference-field", default=None, help="default: --reference-field")
    p.add_argument("--prompt-template", default=None, help=r"default 'Question: {question}\nAnswer:\n'")
    p.add_argument("--n-train", type=int, default=None, help="training examples (default: all)")
    p.add_argument("--n-val", type=int, default=None, help="held-out validation examples for NLL (default 200)")
    p.add_argument("--n-eval", type=int, default=None, help="examples judged by generation (default 200)")
    p.add_argument("--lora", action="store_true", help="LoRA fine-tuning (DoPr preconditions the adapters)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-targets", default="all-linear", help="'all-linear' or comma-separated module names")
    p.add_argument("--optimizers", default="adamw,dopr-adamw,muon,dopr-muon",
                   help="comma-separated arms: adamw, adam, sgd, signum, muon, adamuon, optionally prefixed dopr-")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; quick 1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--lrs", default=None, help="comma-separated learning rates (the sweep); DoPr takes the base's")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the steps, then cosine to zero")
    p.add_argument("--damping", type=float, default=0.1, help="DoPr gamma (lambda = gamma tr(Sigma)/d)")
    p.add_argument("--sigma", default="batch", choices=["batch", "ema"])
    p.add_argument("--max-block", type=int, default=None,
                   help="DoPr: block-diagonal Sigma for layers with more inputs than this (default: full Sigma)")
    p.add_argument("--sigma-rows", default="attention-mask", choices=["attention-mask", "all"],
                   help="DoPr's Sigma over the attention-masked tokens (default) or every token, padding included "
                        "(how results/lm-synthetic was made)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--aux-lr", type=float, default=None, help="lr of the AdamW beside Muon (default: --lrs)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip before the step (0: off)")
    p.add_argument("--max-len", type=int, default=None, help="truncate training sequences (tokens)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--eval-batch", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a smoke run of one to two minutes")
    p.add_argument("--cache", default=None, help=f"synthetic base model cache (default {DEFAULT_CACHE})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="output directory (default results/lm-synthetic[-lora][-quick])")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    return p


def _real_source(a: argparse.Namespace) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data import DEFAULT_TEMPLATE, Fields, load_rows, shuffled, to_examples
    from .runner import Source

    if not a.dataset:
        raise SystemExit("--model needs --dataset (hub name or local file)")
    template = (a.prompt_template or DEFAULT_TEMPLATE).replace("\\n", "\n")
    fields = Fields(a.question_field, a.answer_field, a.reference_field, template)
    rows = shuffled(load_rows(a.dataset, a.dataset_config, a.train_split), 0)
    n_val = 200 if a.n_val is None else a.n_val
    n_eval = 200 if a.n_eval is None else a.n_eval
    name = Path(a.dataset).name or a.dataset
    val = to_examples(rows, fields, name, limit=n_val)
    skip = n_val
    if a.eval_dataset:
        efields = Fields(a.eval_question_field or a.question_field, a.eval_answer_field or a.answer_field,
                         a.eval_reference_field or a.reference_field, template)
        erows = load_rows(a.eval_dataset, a.eval_config, a.eval_split)
        evals = to_examples(erows, efields, Path(a.eval_dataset).name or a.eval_dataset, limit=n_eval)
    else:
        evals = to_examples(rows, fields, name, limit=n_eval, skip=n_val)
        skip += n_eval
    train_all = to_examples(rows, fields, name, limit=a.n_train, skip=skip)
    if not train_all:
        raise SystemExit(f"no training examples left in {a.dataset} after {skip} held out (val + eval)")
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"

    def load() -> Any:
        import torch

        return AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)

    desc = (f"Model {a.model}; trained on {len(train_all)} examples of {a.dataset} (fields {fields.question!r} -> "
            f"{fields.answer!r}); validation NLL on {len(val)} held-out ones; judged on {len(evals)} examples of "
            f"{a.eval_dataset or a.dataset + ' (held out)'}.")
    return Source(f"{Path(a.model).name}@{name}", load, tok, lambda seed: train_all, val, evals,
                  {"description": desc, "model": a.model, "dataset": a.dataset, "eval_dataset": a.eval_dataset})


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    import torch

    from .runner import run_lm_bench
    from .train import FTConfig

    torch.set_num_threads(a.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    synthetic = a.model is None
    if synthetic:
        from .synth import QUICK, SynthTask, synth_source

        if a.dataset:
            raise SystemExit("--dataset needs --model (without --model the synthetic task runs)")
        task = QUICK if a.quick else SynthTask()
        source = synth_source(task, Path(a.cache) if a.cache else DEFAULT_CACHE, progress=not a.no_progress)
        defaults: dict[str, Any] = {"steps": 80, "batch": 16, "max_len": 256, "max_new_tokens": 90, "eval_batch": 100,
                                    "lrs": [3e-3, 1e-2, 3e-2] if a.lora else [3e-4, 1e-3, 3e-3], "seeds": 5}
        if a.quick:
            defaults |= {"steps": 25, "lrs": [1e-2 if a.lora else 1e-3], "seeds": 1, "max_new_tokens": 60}
    else:
        source = _real_source(a)
        defaults = {"steps": 200, "batch": 8, "max_len": 1024, "max_new_tokens": 512, "eval_batch": 16,
                    "lrs": [1e-4 if a.lora else 1e-5], "seeds": 1 if a.quick else 3}
        if a.quick:
            defaults |= {"steps": 5, "max_new_tokens": 64}
    lrs = _floats(a.lrs) if a.lrs else defaults["lrs"]
    cfg = FTConfig(steps=a.steps or defaults["steps"], batch=a.batch or defaults["batch"], lr=lrs[0],
                   warmup=a.warmup, damping=a.damping, weight_decay=a.weight_decay, aux_lr=a.aux_lr,
                   grad_clip=a.grad_clip, sigma=a.sigma, sigma_rows=a.sigma_rows, max_block=a.max_block,
                   lora=a.lora, lora_r=a.lora_r, lora_alpha=a.lora_alpha,
                   lora_targets=a.lora_targets, max_len=a.max_len or defaults["max_len"],
                   max_new_tokens=a.max_new_tokens or defaults["max_new_tokens"],
                   eval_batch=a.eval_batch or defaults["eval_batch"])
    seeds = list(range(a.first_seed, a.first_seed + (a.seeds or defaults["seeds"])))
    default_out = f"results/lm-{'synthetic' if synthetic else 'custom'}{'-lora' if a.lora else ''}" \
                  f"{'-quick' if a.quick else ''}"
    optimizers = [o.strip() for o in a.optimizers.split(",") if o.strip()]
    run_lm_bench(source, optimizers, seeds, lrs, cfg, Path(a.out or default_out), threads=a.threads,
                 progress=not a.no_progress, plots=not a.no_plots)


if __name__ == "__main__":
    main()
