"""``dopr-bench flow``: flow matching on 8x8 digits, base optimizers vs DoPr."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ..data import DEFAULT_CACHE
    from .run import FlowSpec, quick, run_flow_bench

    spec = quick(FlowSpec()) if args.quick else FlowSpec()
    overrides = {k: v for k, v in dict(steps=args.steps, lr=args.lr, damping=args.damping, batch=args.batch,
                                       samples=args.samples, width=args.width).items() if v is not None}
    spec = replace(spec, **overrides)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    out = Path(args.out or f"results/flow{'-quick' if args.quick else ''}")
    run_flow_bench(optimizers, seeds, out, spec, Path(args.cache) if args.cache else DEFAULT_CACHE,
                   threads=args.threads, progress=not args.no_progress)


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("flow", help="flow-matching generator on 8x8 digits: sample quality vs integration steps")
    f.add_argument("--optimizers", default="adamw,dopr-adamw,muon,dopr-muon")
    f.add_argument("--seeds", type=int, default=5)
    f.add_argument("--first-seed", type=int, default=0)
    f.add_argument("--out", default=None, help="output directory (default results/flow)")
    f.add_argument("--quick", action="store_true", help="smoke run of about a minute")
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--batch", type=int, default=None)
    f.add_argument("--lr", type=float, default=None, help="learning rate (DoPr arms inherit the base's lr)")
    f.add_argument("--damping", type=float, default=None)
    f.add_argument("--samples", type=int, default=None, help="generated samples per evaluation")
    f.add_argument("--width", type=int, default=None)
    f.add_argument("--cache", default=None, help="evaluator cache directory (default ~/.cache/dopr_bench)")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_run)
