"""The LM bench (``dopr-bench run lm``): fine-tune a causal LM per (lr, arm, seed) from the same base, full or
LoRA; judge it by the exact-match accuracy of greedy generations beside its teacher-forced validation NLL.

Without ``--model`` it runs the built-in synthetic task (a small Llama pretrained here on generated arithmetic word
problems). With ``--model NAME_OR_PATH --dataset NAME_OR_PATH`` it fine-tunes any causal LM checkpoint on any
instruction dataset (hub name or local .json/.jsonl/.csv/.parquet file or saved dataset directory).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..core.bench import Bench, Metric
from ..core.progress import interactive
from ..core.report import dopr_options
from ..core.spec import Common, opt
from .data import Source
from .report import make_plots, summary_markdown
from .train import Encoded, encode, finetune, generate_eval, nll, pad_id, wrap_lora

_REAL = {"help": "", "setting": False}


@dataclass(frozen=True)
class LMSpec(Common):
    seeds: int = opt(5, "number of seeds", setting=False)
    lrs: tuple[float, ...] = opt((3e-4, 1e-3, 3e-3), "comma-separated learning rates (synthetic LoRA: 3e-3,1e-2,"
                                                    "3e-2)", setting=False)
    steps: int = opt(80, "optimizer steps per run")
    batch: int = opt(16, "minibatch size (sequences)")
    warmup: float = opt(0.1, "warmup fraction of the steps, then cosine to zero")
    grad_clip: float = opt(1.0, "global grad-norm clip before the step (0: off)")
    sigma_rows: str = opt("attention-mask", "DoPr's Sigma over the attention-masked tokens or every token, padding "
                                            "included (how results/lm-synthetic was made)",
                          choices=("attention-mask", "all"))
    lora: bool = opt(False, "LoRA fine-tuning (DoPr preconditions the adapters)")
    lora_r: int = opt(8, "LoRA rank")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_targets: str = opt("all-linear", "'all-linear' or comma-separated module names")
    max_len: int = opt(256, "truncate training sequences (tokens)")
    eval_batch: int = opt(100, "batch of the NLL and generation passes")
    max_new_tokens: int = opt(90, "generation budget per answer")
    log_every: int = opt(10, "steps between logged losses")
    quick: bool = opt(False, setting=False, cli=False)
    model: str | None = opt(None, "causal LM: hub name or local path (default: the synthetic task)", setting=False)
    dataset: str | None = opt(None, "training data: hub name or local file/directory", setting=False)
    dataset_config: str | None = opt(None, "dataset config", setting=False)
    train_split: str = opt("train", "training split", setting=False)
    eval_dataset: str | None = opt(None, "judged by generation (default: held-out part of --dataset)", setting=False)
    eval_config: str | None = opt(None, "eval dataset config", setting=False)
    eval_split: str = opt("test", "eval split", setting=False)
    question_field: str = opt("question", "question field", setting=False)
    answer_field: str = opt("answer", "the solution the model learns to write", setting=False)
    reference_field: str | None = opt(None, "field with the bare final answer (default: extracted from the answer)",
                                      setting=False)
    eval_question_field: str | None = opt(None, "default: --question-field", setting=False)
    eval_answer_field: str | None = opt(None, "default: --answer-field", setting=False)
    eval_reference_field: str | None = opt(None, "default: --reference-field", setting=False)
    prompt_template: str | None = opt(None, r"default 'Question: {question}\nAnswer:\n'", setting=False)
    n_train: int | None = opt(None, "training examples (default: all)", setting=False)
    n_val: int = opt(200, "held-out validation examples for NLL (real datasets)", setting=False)
    n_eval: int = opt(200, "examples judged by generation (real datasets)", setting=False)


def resolve(task: str, quick: bool, ov: dict[str, Any]) -> LMSpec:
    """Defaults of the synthetic task, or of a real model (``--model``); LoRA and ``--quick`` change some."""
    real, lora = ov.get("model") is not None, bool(ov.get("lora"))
    if task not in ("synthetic", "custom") or (task == "custom" and not real):
        raise SystemExit(f"unknown LM task {task!r}: 'synthetic', or give --model and --dataset")
    spec = LMSpec(quick=quick, lrs=(3e-3, 1e-2, 3e-2) if lora else (3e-4, 1e-3, 3e-3))
    if real:
        spec = replace(spec, steps=200, batch=8, max_len=1024, max_new_tokens=512, eval_batch=16,
                       lrs=(1e-4,) if lora else (1e-5,), seeds=1 if quick else 3)
        if quick:
            spec = replace(spec, steps=5, max_new_tokens=64)
    elif quick:
        spec = replace(spec, steps=25, lrs=(1e-2 if lora else 1e-3,), seeds=1, max_new_tokens=60)
    return replace(spec, **ov)


def planned(spec: LMSpec, task: str) -> dict[str, Any]:
    return spec.settings()


def out_name(task: str, spec: LMSpec) -> str:
    return f"lm-{'custom' if spec.model else 'synthetic'}{'-lora' if spec.lora else ''}"


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
