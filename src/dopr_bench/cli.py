"""Command line: ``dopr-bench run TASK ...`` and ``dopr-bench train-expert TASK``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _train_expert(args: argparse.Namespace) -> None:
    from .experts.train import train_expert

    train_expert(args.task, Path(args.run_dir or f"runs/expert-{args.task}"), Path(args.out) if args.out else None,
                 total_steps=args.steps, seed=args.seed, threads=args.threads, resume=not args.fresh)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="dopr-bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    te = sub.add_parser("train-expert", help="train (or resume) a PPO expert for hopper / humanoid")
    te.add_argument("task", choices=["hopper", "humanoid"])
    te.add_argument("--steps", type=int, default=None, help="total env steps (default: the recipe's)")
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--threads", type=int, default=1)
    te.add_argument("--run-dir", default=None, help="working dir for resumable checkpoints (default runs/expert-TASK)")
    te.add_argument("--out", default=None, help="where to write TASK.pt/TASK.json (default: the package's experts/)")
    te.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --run-dir")
    te.set_defaults(func=_train_expert)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
