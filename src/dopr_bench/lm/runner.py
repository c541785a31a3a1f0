"""``dopr-bench run lm``: every (learning rate, arm, seed) fine-tuned from the same base, resumable; then the
summary and plots."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bc import parse_arm
from ..results_io import save_json, saved_results
from .report import make_plots, summary_markdown
from .train import Encoded, Example, FTConfig, encode, finetune, generate_eval, nll, pad_id, wrap_lora


@dataclass
class Source:
    """What a bench fine-tunes and how it judges it."""

    name: str
    load_model: Callable[[], nn.Module]  # a fresh copy of the base model
    tokenizer: Any
    train: Callable[[int], list[Example]]  # training examples for a seed
    val: list[Example]  # held-out examples of the training distribution: validation NLL
    evals: list[Example]  # judged by generation (exact match); ``group`` gives the breakdown
    info: dict[str, Any] = field(default_factory=dict)


def _lr_key(lr: float) -> str:
    return f"{lr:g}"


def run_one(source: Source, arm: str, seed: int, cfg: FTConfig, train_enc: list[Encoded], val_enc: list[Encoded],
            eval_enc: list[Encoded], progress: bool = False) -> dict[str, Any]:
    from tqdm import tqdm

    t0 = time.time()
    model = source.load_model()
    model.config.use_cache = True
    if cfg.lora:
        torch.manual_seed(seed)  # the same adapter initialization for every arm with this seed
        model = wrap_lora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pad = pad_id(source.tokenizer)
    with tqdm(total=cfg.steps, desc=f"{arm} lr {_lr_key(cfg.lr)} s{seed}", leave=False, disable=not progress) as pb:
        model, rec = finetune(model, train_enc, val_enc, pad, arm, cfg, seed, progress=pb)
    t1 = time.time()
    if rec["diverged"]:
        gen: dict[str, Any] = {"accuracy": 0.0, "accuracy_by_group": {}, "n_eval": len(source.evals), "samples": []}
        val_nll = eval_nll = float("nan")
    else:
        val_nll = nll(model, val_enc, pad, cfg.eval_batch)
        eval_nll = nll(model, eval_enc, pad, cfg.eval_batch)
        gen = generate_eval(model, source.tokenizer, source.evals, cfg.eval_batch, cfg.max_new_tokens, keep_text=3)
    return {"optimizer": arm, "seed": seed, "lr": cfg.lr, "mode": "lora" if cfg.lora else "full",
            "val_nll": val_nll, "eval_nll": eval_nll, **gen, **rec, "trainable_params": trainable,
            "eval_s": time.time() - t1, "wall_s": time.time() - t0, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def run_lm_bench(source: Source, optimizers: list[str], seeds: list[int], lrs: list[float], cfg: FTConfig,
                 out: Path, *, threads: int = 1, progress: bool = True, plots: bool = True) -> dict[str, Any]:
    """Fine-tune every (lr, arm, seed) from the same base; results.json after each run (resumable)."""
    from dataclasses import replace

    torch.set_num_threads(threads)
    for arm in optimizers:
        parse_arm(arm)
    out.mkdir(parents=True, exist_ok=True)
    if Path(sys.argv[0]).name == "dopr-bench":
        with (out / "COMMAND.txt").open("a") as f:
            f.write("dopr-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n")
    settings = cfg.settings() | {"source": source.name, "n_val": len(source.val), "n_eval": len(source.evals)}
    settings.pop("lr")
    res_path = out / "results.json"
    results: dict[str, Any] = {"task": f"lm:{source.name}", "settings": settings, "source": source.info, "runs": []}
    if (old := saved_results(res_path, settings)) is not None:
        results["runs"] = old["runs"]
        results["source"] = old.get("source", results["source"])
    done = {(_lr_key(r["lr"]), r["optimizer"], r["seed"]) for r in results["runs"]}
    todo = [(lr, arm, s) for lr in lrs for s in seeds for arm in optimizers if (_lr_key(lr), arm, s) not in done]
    if len(todo) < len(lrs) * len(optimizers) * len(seeds):
        print(f"resuming: {len(lrs) * len(optimizers) * len(seeds) - len(todo)} finished run(s) in {res_path}")
    tok = source.tokenizer
    val_enc = encode(tok, source.val, cfg.max_len)
    eval_enc = encode(tok, source.evals, cfg.max_len)
    if "base_accuracy" not in results["source"]:  # the starting point, before any fine-tuning
        base = source.load_model()
        gen = generate_eval(base, tok, source.evals, cfg.eval_batch, cfg.max_new_tokens)
        results["source"] |= {"base_accuracy": gen["accuracy"], "base_accuracy_by_group": gen["accuracy_by_group"],
                              "base_val_nll": nll(base, val_enc, pad_id(tok), cfg.eval_batch)}
        del base
    train_cache: dict[int, list[Encoded]] = {}
    t_start = time.time()
    for i, (lr, arm, seed) in enumerate(todo):
        if seed not in train_cache:
            train_cache[seed] = encode(tok, source.train(seed), cfg.max_len)
        run = run_one(source, arm, seed, replace(cfg, lr=lr), train_cache[seed], val_enc, eval_enc, progress)
        results["runs"].append(run)
        save_json(res_path, results)
        groups = " ".join(f"{g}:{a:.2f}" for g, a in run["accuracy_by_group"].items())
        print(f"[{i + 1}/{len(todo)} {time.time() - t_start:.0f}s] {run['mode']} lr {_lr_key(lr)} {arm:>11} "
              f"seed {seed}: val NLL {run['val_nll']:.4f} acc {run['accuracy']:.3f} ({groups}) "
              f"{'DIVERGED ' if run['diverged'] else ''}({run['wall_s']:.0f}s)", flush=True)
    order = {a: i for i, a in enumerate(optimizers)}
    results["runs"].sort(key=lambda r: (r["lr"], order.get(r["optimizer"], 99), r["seed"]))
    save_json(res_path, results)
    (out / "summary.md").write_text(summary_markdown(results))
    if plots:
        make_plots(results, out)
    print((out / "summary.md").read_text())
    return results
