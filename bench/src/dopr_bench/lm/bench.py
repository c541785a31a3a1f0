"""The LM bench (``dopr-bench run lm``): fine-tune a causal LM per (lr, arm, seed) from the same base, full or
LoRA; judge it by the exact-match accuracy of greedy generations beside its teacher-forced validation NLL.

Without ``--model`` it runs the built-in synthetic task (a small Llama pretrained here on generated arithmetic word
problems). With ``--model NAME_OR_PATH --dataset NAME_OR_PATH`` it fine-tunes any causal LM checkpoint on any
instruction dataset (hub name or local .json/.jsonl/.csv/.parquet file or saved dataset directory).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..core.bench import Bench, Metric
from ..core.progress import interactive
from ..core.report import dopr_options
from .data import Source
from .report import make_plots, summary_markdown
from .spec import LMSpec, out_name, planned, resolve
from .train import Encoded, encode, finetune, generate_eval, nll, pad_id, wrap_lora


class Prepared:
    def __init__(self, spec: LMSpec, task: str, cache: Path, source: Source | None = None) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.spec = spec
        if source is not None:  # given (tests: a tiny synthetic task)
            self.source = source
        elif spec.model:
            from .data import real_source

            self.source: Source = real_source(spec)
        else:
            if spec.dataset:
                raise SystemExit("--dataset needs --model (without --model the synthetic task runs)")
            from .synth import QUICK, SynthTask, synth_source

            self.source = synth_source(QUICK if spec.quick else SynthTask(), cache / "lm", progress=interactive())
        src = self.source
        self.settings = {"source": src.name, "n_val": len(src.val), "n_eval": len(src.evals)}
        self.val_enc = encode(src.tokenizer, src.val, spec.max_len)
        self.eval_enc = encode(src.tokenizer, src.evals, spec.max_len)
        self.train_cache: dict[int, list[Encoded]] = {}

    def info(self, old: dict[str, Any]) -> dict[str, Any]:
        src, tok, spec = self.source, self.source.tokenizer, self.spec
        info = dict(old.get("source", src.info))
        if "base_accuracy" not in info:  # the starting point, before any fine-tuning
            base = src.load_model()
            gen = generate_eval(base, tok, src.evals, spec.eval_batch, spec.max_new_tokens)
            info |= {"base_accuracy": gen["accuracy"], "base_accuracy_by_group": gen["accuracy_by_group"],
                     "base_val_nll": nll(base, self.val_enc, pad_id(tok), spec.eval_batch)}
        return {"task": f"lm:{src.name}", "source": info}

    def run(self, arm: str, seed: int, lr: float, progress: Any) -> dict[str, Any]:
        src, spec = self.source, self.spec
        if seed not in self.train_cache:
            self.train_cache[seed] = encode(src.tokenizer, src.train(seed), spec.max_len)
        model = src.load_model()
        model.config.use_cache = True
        if spec.lora:
            torch.manual_seed(seed)  # the same adapter initialization for every arm with this seed
            model = wrap_lora(model, spec)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        pad = pad_id(src.tokenizer)
        model, rec = finetune(model, self.train_cache[seed], self.val_enc, pad, arm, lr, spec, seed, progress)
        t1 = time.time()
        if rec["diverged"]:
            gen: dict[str, Any] = {"accuracy": 0.0, "accuracy_by_group": {}, "n_eval": len(src.evals), "samples": []}
            val_nll = eval_nll = float("nan")
        else:
            val_nll = nll(model, self.val_enc, pad, spec.eval_batch)
            eval_nll = nll(model, self.eval_enc, pad, spec.eval_batch)
            gen = generate_eval(model, src.tokenizer, src.evals, spec.eval_batch, spec.max_new_tokens, keep_text=3)
        return {"mode": "lora" if spec.lora else "full", "val_nll": val_nll, "eval_nll": eval_nll, **gen, **rec,
                "trainable_params": trainable, "eval_s": time.time() - t1}

    def line(self, run: dict[str, Any]) -> str:
        groups = " ".join(f"{g}:{a:.2f}" for g, a in run["accuracy_by_group"].items())
        return (f"{run['mode']} lr {run['lr']:g} {run['optimizer']:>11} seed {run['seed']}: val NLL "
                f"{run['val_nll']:.4f} acc {run['accuracy']:.3f} ({groups}) "
                f"{'DIVERGED ' if run['diverged'] else ''}({run['wall_s']:.0f}s)")

    def close(self, results: dict[str, Any], out: Path) -> None:
        pass


def headline(results: dict[str, Any]) -> str:
    s = results["settings"]
    return (f"{results['task']}, {'LoRA r=' + str(s['lora_r']) if s['lora'] else 'full FT'}, {s['steps']} steps"
            + dopr_options(s)
            + ("" if s.get("sigma_rows") == "attention-mask" else ", Sigma over padding too"))


BENCH = Bench(
    name="lm", help="fine-tune a causal LM (synthetic arithmetic, or --model/--dataset): accuracy of generations",
    spec_type=LMSpec, tasks=("synthetic", "custom"), default_task="synthetic", resolve=resolve, planned=planned,
    data_keys=frozenset({"source", "n_val", "n_eval"}), prepare=Prepared,
    val=Metric("val NLL", lambda r: r["val_nll"], False, lambda v: f"{v:.4f}"),
    test=Metric("accuracy", lambda r: r["accuracy"], True, lambda v: f"{v:.3f}"),
    summary=summary_markdown, plots=make_plots, headline=headline, sweeps_lrs=True, out_name=out_name)
