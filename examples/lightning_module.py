"""A ``lightning.LightningModule`` whose ``configure_optimizers`` returns DoPr, trained by ``lightning.Trainer``.

A small conv net learns which of four bar orientations a noisy 12x12 image shows (synthetic, made here).
DoPr preconditions the ``Conv2d`` and ``Linear`` layers and hands the result to AdamW; Lightning drives it
with automatic optimization (``optimizer.step(closure)``), a per-step learning-rate schedule and gradient
accumulation (the micro-batches of one optimizer step feed one input second moment). Nothing is written
in the working directory: no logger, no checkpoints, and the Trainer's root folder is temporary.

    .venv/bin/python examples/lightning_module.py [--steps 40]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from dopr import DoPr


def bars(n: int, seed: int, size: int = 12) -> TensorDataset:
    """Images with one bar (horizontal, vertical, diagonal or anti-diagonal) at a random place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    offsets = torch.randint(-size // 3, size // 3 + 1, (n,), generator=g)
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.randn(n, 1, size, size, generator=g) * 0.5
    for i, (label, k) in enumerate(zip(labels.tolist(), offsets.tolist())):
        mid = size // 2 + k
        mask = [r == mid, c == mid, r - c == k, r + c == size - 1 + k][label]
        images[i, 0][mask] += 2.0
    return TensorDataset(images, labels)


class BarClassifier(L.LightningModule):
    def __init__(self, lr: float, damping: float, total_steps: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
        )
        self.batch_losses: list[float] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.batch_losses.append(loss.item())
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> dict:
        # DoPr takes the module (it hooks its layers); Lightning has already moved it to its device here
        opt = DoPr(self, base="adamw", lr=self.hparams.lr, damping=self.hparams.damping, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=self.hparams.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per optimizer step")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    L.seed_everything(0, verbose=False)
    train = DataLoader(bars(2048, seed=0), batch_size=32, shuffle=True)
    val = DataLoader(bars(512, seed=1), batch_size=256)
    module = BarClassifier(args.lr, args.damping, total_steps=args.steps)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, accumulate_grad_batches=args.accumulate,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=root)
        trainer.fit(module, train)
        metrics = trainer.validate(module, val, verbose=False)[0]

    losses = module.batch_losses
    every = max(1, len(losses) // 8)
    for i in range(0, len(losses), every):
        chunk = losses[i : i + every]
        print(f"step {i // args.accumulate:4d}  loss {sum(chunk) / len(chunk):.4f}")
    opt = trainer.optimizers[0]
    print(f"{opt!r}: refreshes per input group {sorted({s['refreshes'] for s in opt.stats().values()})}")
    print(f"final loss {metrics['val_loss']:.4f}  accuracy {metrics['val_acc']:.3f}  [validation]")


if __name__ == "__main__":
    main()
