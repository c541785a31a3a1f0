"""``dopr-bench robo TASK``: image-based manipulation in robosuite, base optimizers vs DoPr (run it in .venv-robo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> None:
    from .data import DEFAULT_CACHE
    from .run import resolve_spec, run_robo_bench

    overrides = {k: getattr(args, k) for k in ("demos", "val_demos", "steps", "batch", "lr", "damping", "weight_decay",
                                               "ema", "episodes", "evals", "max_episode_steps", "chunk", "execute",
                                               "euler_steps", "width", "image_size")}
    if args.cameras:
        overrides["cameras"] = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    spec = resolve_spec(args.task, args.quick, overrides, args.dataset)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    out = Path(args.out or f"results/robo-{args.task}{'-quick' if args.quick else ''}")
    run_robo_bench(args.task, optimizers, seeds, out, spec, dataset=args.dataset,
                   cache=Path(args.cache) if args.cache else DEFAULT_CACHE, threads=args.threads, render=args.render,
                   progress=not args.no_progress, argv=args.argv)


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("robo", help="robosuite image-based manipulation (lift, stack, or a robomimic HDF5 dataset): "
                       "flow-matching policy, success rate of rollouts")
    r.add_argument("task", help="lift or stack (scripted experts); with --dataset, any label")
    r.add_argument("--optimizers", default="adamw,dopr-adamw,muon,dopr-muon",
                   help="comma-separated arms: adamw, muon, signum, adamuon, each optionally prefixed by dopr-")
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--out", default=None, help="output directory (default results/robo-TASK)")
    r.add_argument("--quick", action="store_true", help="smoke run of a few minutes")
    r.add_argument("--dataset", default=None,
                   help="robomimic-layout HDF5 file (e.g. robomimic's image.hdf5) instead of the scripted expert")
    r.add_argument("--demos", type=int, default=None, help="training demos")
    r.add_argument("--val-demos", type=int, default=None, help="held-out validation demos")
    r.add_argument("--steps", type=int, default=None, help="training steps")
    r.add_argument("--batch", type=int, default=None)
    r.add_argument("--lr", type=float, default=None, help="learning rate (DoPr arms inherit the base's lr)")
    r.add_argument("--damping", type=float, default=None, help="DoPr damping gamma")
    r.add_argument("--weight-decay", type=float, default=None)
    r.add_argument("--ema", type=float, default=None, help="EMA rate of the evaluated weights")
    r.add_argument("--episodes", type=int, default=None, help="rollouts per checkpoint")
    r.add_argument("--evals", type=int, default=None, help="evenly spaced checkpoints with rollouts")
    r.add_argument("--max-episode-steps", type=int, default=None, help="rollout cap")
    r.add_argument("--chunk", type=int, default=None, help="actions per predicted chunk")
    r.add_argument("--execute", type=int, default=None, help="actions executed before re-planning")
    r.add_argument("--euler-steps", type=int, default=None, help="integration steps when sampling a chunk")
    r.add_argument("--width", type=int, default=None, help="width of the flow head")
    r.add_argument("--cameras", default=None, help="comma-separated cameras (default agentview,robot0_eye_in_hand)")
    r.add_argument("--image-size", type=int, default=None)
    r.add_argument("--render", choices=["fast", "default"], default=None,
                   help="offscreen rendering for rollouts (default: as the demos were rendered; robosuite's own "
                   "settings for robomimic files)")
    r.add_argument("--cache", default=None, help="demo cache (default ~/.cache/dopr_bench/robo)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run, argv=None)

