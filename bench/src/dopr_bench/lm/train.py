"""One fine-tuning run of a causal LM (full or LoRA) with a base optimizer or DoPr, and its evaluation:
teacher-forced validation NLL on the answer tokens, and exact-match accuracy of greedy generations."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.arms import build_optimizer, telemetry
from ..core.loop import fit
from .answers import extract_answer, is_correct
from .spec import LMSpec


@dataclass(frozen=True)
class Example:
    prompt: str  # what the model is given
    target: str  # what it is trained to write (the solution)
    reference: str  # the final answer it is judged against
    group: str = "all"  # breakdown key of the accuracy table (number of steps, source dataset)


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]  # -100 on the prompt


def encode(tokenizer: Any, examples: list[Example], max_len: int, with_eos: bool = True) -> list[Encoded]:
    """Token ids of prompt + target (BOS first, EOS last when the tokenizer has them); loss only on the target."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for ex in examples:
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        if bos is not None:
            p = [bos, *p]
        if with_eos and eos is not None:
            t = [*t, eos]
        ids = (p + t)[:max_len]
        labels = ([-100] * len(p) + t)[:max_len]
        out.append(Encoded(ids, labels))
    return out


def pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def collate(items: list[Encoded], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with attention mask; padded labels are -100."""
    n = max(len(e.ids) for e in items)
    ids = torch.full((len(items), n), pad, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warmup over ``warmup * steps`` steps, then cosine decay to zero (``step`` counts from 0)."""
    w = max(1, round(warmup * steps)) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def wrap_lora(model: nn.Module, cfg: LMSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets: Any = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    conf = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, conf)


@torch.no_grad()
def nll(model: nn.Module, encoded: list[Encoded], pad: int, batch: int = 32) -> float:
    """Teacher-forced mean negative log-likelihood per target token (nats)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))  # less padding
    for i in range(0, len(order), batch):
        b = collate([encoded[j] for j in order[i:i + batch]], pad)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels != -100).sum())
    model.train(was)
    return total / max(count, 1)


@torch.no_grad()
def generate_eval(model: nn.Module, tokenizer: Any, examples: list[Example], batch: int = 64,
                  max_new_tokens: int = 256, keep_text: int = 0) -> dict[str, Any]:
    """Greedy generation for every prompt; accuracy overall and per group, and a few sample generations."""
    was = model.training
    model.eval()
    pad = pad_id(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    correct: list[bool] = [False] * len(examples)
    texts: list[str] = [""] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        prompts = [tokenizer(examples[j].prompt, add_special_tokens=False)["input_ids"] for j in idx]
        if bos is not None:
            prompts = [[bos, *p] for p in prompts]
        n = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), n), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), n), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding for generation
            ids[r, n - len(p):] = torch.tensor(p)
            mask[r, n - len(p):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=eos, num_beams=1)
        for r, j in enumerate(idx):
            text = tokenizer.decode(out[r, n:], skip_special_tokens=True)
            texts[j] = text
            correct[j] = is_correct(text, examples[j].reference)
    model.train(was)
    groups: dict[str, list[bool]] = {}
    for ex, c in zip(examples, correct):
        groups.setdefault(ex.group, []).append(c)
    return {
        "accuracy": sum(correct) / max(len(correct), 1),
        "accuracy_by_group": {g: sum(v) / len(v) for g, v in groups.items()},
        "n_by_group": {g: len(v) for g, v in groups.items()},
        "n_eval": len(examples),
        "samples": [{"prompt": examples[j].prompt[-200:], "generation": texts[j][:400],
                     "extracted": extract_answer(texts[j]), "reference": examples[j].reference,
                     "correct": correct[j]} for j in range(min(keep_text, len(examples)))],
    }


def finetune(model: nn.Module, train: list[Encoded], val: list[Encoded], pad: int, arm: str, lr: float, cfg: LMSpec,
             seed: int, progress: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` (already LoRA-wrapped if wanted) on ``train``; returns it and a record of the run."""
    torch.manual_seed(seed)
    opt = build_optimizer(model, arm, lr, cfg)
    groups = list(opt.param_groups)
    for g in groups:
        g["initial_lr"] = g["lr"]
    gen = torch.Generator().manual_seed(20_000 + seed)  # same minibatches for every arm with this seed
    perm: list[int] = []
    train_curve: list[list[float]] = []
    val_curve: list[list[float]] = []
    log_every = max(1, cfg.log_every)
    # padding rows carry no loss; left in, they would weigh the pad token's activations into Sigma
    masked = cfg.sigma_rows == "attention-mask" and hasattr(opt, "preconditioner")

    def loss_at(step: int) -> torch.Tensor:
        nonlocal perm
        for g in groups:
            g["lr"] = g["initial_lr"] * lr_factor(step - 1, cfg.steps, cfg.warmup)
        if len(perm) < cfg.batch:
            perm += torch.randperm(len(train), generator=gen).tolist()
        idx, perm = perm[:cfg.batch], perm[cfg.batch:]
        b = collate([train[i] for i in idx], pad)
        with opt.preconditioner.row_mask(b["attention_mask"]) if masked else contextlib.nullcontext():
            return model(**b).loss

    def log(step: int, train_loss: float) -> None:
        train_curve.append([step, train_loss])
        if val and (step == cfg.steps or step % (log_every * 5) == 0):
            val_curve.append([step, nll(model, val, pad, cfg.eval_batch)])

    model.train()
    end = fit(opt, model.parameters(), cfg.steps, loss_at, log_every=log_every, log=log, grad_clip=cfg.grad_clip,
              progress=progress)
    rec: dict[str, Any] = {"train_curve": train_curve, "val_curve": val_curve, **end.record(),
                           "train_loss": train_curve[-1][1] if train_curve else float("nan")}
    if not rec["diverged"] and (stats := telemetry(opt)) is not None:
        rec["dopr_stats"] = stats
    if hasattr(opt, "preconditioner"):
        opt.preconditioner.remove()  # unhook, so the evaluation and later runs are plain forwards
    return model, rec
