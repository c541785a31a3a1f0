"""Fine-tune a tiny GPT-2 with the Hugging Face ``Trainer`` and DoPr-AdamW as its optimizer.

The model is built from a ``GPT2Config`` (random init, 2 layers; its ``Conv1D`` projections and tied
embeddings are preconditioned too) and the data are synthetic token sequences made here, so nothing is
downloaded. The sequences count up modulo the vocabulary with a per-sequence stride, which the model must
read from the context.

DoPr needs the model (it hooks the layers' inputs), so the Trainer subclass below builds it in
``create_optimizer`` from the ``TrainingArguments`` (learning rate, betas, eps, weight decay); the
Trainer then builds its usual scheduler (warmup, linear decay) on it and handles gradient accumulation:
the micro-batches of one optimizer step feed one input second moment. Passing
``optimizers=(DoPr(model, ...), None)`` to a plain ``Trainer`` works as well, but ignores those arguments
and is refused under FSDP.

    .venv/bin/python examples/hf_trainer.py [--steps 30]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainingArguments

from dopr import DoPr


class CountingSequences(Dataset):
    """``start, start + s, start + 2s, ...`` modulo ``vocab``, with ``s`` in 1..4 drawn per sequence."""

    def __init__(self, n: int, length: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        stride = torch.randint(1, 5, (n, 1), generator=g)
        self.ids = (start + stride * torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}  # the model shifts the labels itself


class DoPrTrainer(Trainer):
    damping: float = 0.1
    dopr: DoPr | None = None  # the Trainer's self.optimizer may be Accelerate's wrapper around it

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:  # weight decay reaches every parameter; the default optimizer spares biases, norms
            a = self.args
            self.optimizer = self.dopr = DoPr(self.model if model is None else model, base="adamw",
                                              damping=self.damping, lr=a.learning_rate, weight_decay=a.weight_decay,
                                              betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon)
        return self.optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--damping", type=float, default=0.1)
    args = parser.parse_args()

    vocab, length = 64, 24
    config = GPT2Config(vocab_size=vocab, n_positions=length, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    train, evaluation = CountingSequences(2048, length, vocab, seed=0), CountingSequences(256, length, vocab, seed=1)

    with tempfile.TemporaryDirectory() as out:  # checkpoints and logs go to a temporary folder
        training_args = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=8, gradient_accumulation_steps=2,
            per_device_eval_batch_size=64, learning_rate=args.lr, weight_decay=0.01, warmup_steps=3,
            lr_scheduler_type="linear", logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
            seed=0, disable_tqdm=True, dataloader_num_workers=0,
        )
        DoPrTrainer.damping = args.damping
        trainer = DoPrTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation)
        trainer.remove_callback(PrinterCallback)  # the losses are printed below instead of as raw dicts
        trainer.train()
        for entry in trainer.state.log_history:
            if "loss" in entry:
                print(f"step {entry['step']:4d}  loss {entry['loss']:.4f}  lr {entry['learning_rate']:.2e}")
        eval_loss = trainer.evaluate()["eval_loss"]

    opt = trainer.dopr
    refreshes = {s["refreshes"] for s in opt.stats().values()}
    print(f"{opt!r}: {len(opt.stats())} input groups, refreshes per group {sorted(refreshes)}")
    print(f"final loss {eval_loss:.4f}  [evaluation set]")


if __name__ == "__main__":
    main()
