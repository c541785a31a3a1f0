"""The LM bench's options (:class:`LMSpec`); how the synthetic or a real task, LoRA and ``--quick`` resolve."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..core.spec import Common, opt

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
