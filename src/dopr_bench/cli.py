"""Command line: ``dopr-bench run TASK ...`` and ``dopr-bench train-expert TASK``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train_expert(args: argparse.Namespace) -> None:
    from .experts.train import train_expert

    train_expert(args.task, Path(args.run_dir or f"runs/expert-{args.task}"), Path(args.out) if args.out else None,
                 total_steps=args.steps, seed=args.seed, threads=args.threads, resume=not args.fresh)


def _run(args: argparse.Namespace) -> None:
    from .data import DEFAULT_CACHE
    from .runner import resolve_spec, run_bench

    overrides = {"demos": args.demos, "steps": args.steps, "lr": args.lr, "damping": args.damping,
                 "standardize": args.standardize, "episodes": args.episodes, "batch": args.batch, "ema": args.ema,
                 "val_demos": args.val_demos, "width": args.width, "blocks": args.blocks, "std_floor": args.std_floor,
                 "max_episode_steps": args.max_episode_steps}
    spec = resolve_spec(args.task, args.quick, overrides)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    run_bench(args.task, optimizers, seeds, Path(args.out or f"results/{args.task}{'-quick' if args.quick else ''}"),
              spec, dataset=args.dataset, cache=Path(args.cache) if args.cache else DEFAULT_CACHE,
              threads=args.threads, sigma=args.sigma, refresh_every=args.refresh_every, aux_lr=args.aux_lr,
              max_block=args.max_block, muon_ns_dtype=args.muon_ns_dtype,
              weight_decay=args.weight_decay,
              video=args.video, progress=not args.no_progress)


def write_report(out: Path, results: dict) -> str:
    """summary.md and the plots of ``out`` from ``results``, by the bench that made them."""
    if str(results.get("task", "")).startswith("lm:"):
        from .lm.report import make_plots, summary_markdown
    elif results.get("settings", {}).get("task") == "flow-digits":
        from .flow.run import plots as make_plots
        from .flow.run import summary as summary_markdown
    elif results.get("bench") == "robo":
        from .robo.report import make_plots, summary_markdown
    else:
        from .report import make_plots, summary_markdown
    md = summary_markdown(results)
    (out / "summary.md").write_text(md)
    make_plots(results, out)
    return md


def _report(args: argparse.Namespace) -> None:
    import json

    out = Path(args.dir)
    print(write_report(out, json.loads((out / "results.json").read_text())))


def _merge(args: argparse.Namespace) -> None:
    import json

    from .results_io import merge_results, save_json

    out, sources = Path(args.out), [Path(d) for d in args.sources]
    parts = [json.loads((d / "results.json").read_text()) for d in ([out] if (out / "results.json").exists() else [])
             + sources]
    try:
        merged = merge_results(parts)
    except ValueError as err:
        raise SystemExit(f"dopr-bench merge: {err}") from err
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "results.json", merged)
    with (out / "COMMAND.txt").open("a") as f:
        for d in sources:
            if (d / "COMMAND.txt").exists():
                f.write((d / "COMMAND.txt").read_text())
        f.write("dopr-bench merge " + " ".join([args.out, *args.sources]) + "\n")
    print(write_report(out, merged))


def main(argv: list[str] | None = None) -> None:
    if (argv := sys.argv[1:] if argv is None else argv)[:2] == ["run", "lm"]:  # LM bench: its own options
        from .lm.cli import main as lm_main

        return lm_main(argv[2:])
    p = argparse.ArgumentParser(prog="dopr-bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="behavior cloning: base optimizers vs DoPr, rollouts, summary and plots")
    r.add_argument("task", nargs="?", default="idp", help="idp (default), hopper, walker2d or humanoid")
    r.add_argument("--optimizers", default="adamw,dopr-adamw,muon,dopr-muon",
                   help="comma-separated arms: adamw, muon, signum, adamuon, each optionally prefixed by dopr-")
    r.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1, or from --first-seed)")
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--out", default=None, help="output directory (default results/TASK)")
    r.add_argument("--quick", action="store_true", help="smoke run of about two minutes")
    r.add_argument("--demos", type=int, default=None, help="number of training demonstrations")
    r.add_argument("--val-demos", type=int, default=None, help="number of held-out validation demonstrations")
    r.add_argument("--steps", type=int, default=None, help="training steps")
    r.add_argument("--batch", type=int, default=None)
    r.add_argument("--lr", type=float, default=None, help="learning rate (DoPr arms inherit the base's lr)")
    r.add_argument("--aux-lr", type=float, default=None, help="lr of the AdamW that takes non-matrix params (muon)")
    r.add_argument("--weight-decay", type=float, default=0.0)
    r.add_argument("--damping", type=float, default=None, help="DoPr damping gamma (lambda = gamma tr(Sigma)/d)")
    r.add_argument("--sigma", default=None, choices=["batch", "ema"], help="DoPr Sigma mode (default batch)")
    r.add_argument("--refresh-every", type=int, default=None,
                   help="DoPr: recompute Sigma and its factorization every k steps (default 1, the paper's)")
    r.add_argument("--max-block", type=int, default=None,
                   help="DoPr: block-diagonal Sigma for layers with more inputs than this (default: full Sigma)")
    r.add_argument("--muon-ns-dtype", default="float32", choices=["bfloat16", "float32"],
                   help="Newton-Schulz precision of the Muon arms (default float32: torch's bfloat16 was 100x "
                        "slower on an AVX2 CPU; bfloat16 reproduces the result folders made before 2026-12-01)")
    r.add_argument("--ema", type=float, default=None, help="EMA rate of the evaluated weights")
    r.add_argument("--width", type=int, default=None)
    r.add_argument("--blocks", type=int, default=None)
    r.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardize observations with the training demos' mean/std (default: raw)")
    r.add_argument("--std-floor", type=float, default=None)
    r.add_argument("--episodes", type=int, default=None, help="evaluation rollouts per run")
    r.add_argument("--max-episode-steps", type=int, default=None, help="cap on rollout length (default: env's)")
    r.add_argument("--dataset", default=None, help="Minari dataset id or local dataset directory instead of the expert")
    r.add_argument("--cache", default=None, help="demonstration cache (default ~/.cache/dopr_bench)")
    r.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    r.add_argument("--video", action="store_true", help="record side-by-side rollouts of base and DoPr")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run)
    rp = sub.add_parser("report", help="rewrite summary.md and the plots of an output directory from its results.json")
    rp.add_argument("dir")
    rp.set_defaults(func=_report)
    mg = sub.add_parser("merge", help="add the runs of other output directories (same settings) to OUT, then report")
    mg.add_argument("out")
    mg.add_argument("sources", nargs="+")
    mg.set_defaults(func=_merge)
    te = sub.add_parser("train-expert", help="train (or resume) a PPO expert for hopper / walker2d / humanoid")
    te.add_argument("task", choices=["hopper", "walker2d", "humanoid"])
    te.add_argument("--steps", type=int, default=None, help="total env steps (default: the recipe's)")
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--threads", type=int, default=1)
    te.add_argument("--run-dir", default=None, help="working dir for resumable checkpoints (default runs/expert-TASK)")
    te.add_argument("--out", default=None, help="where to write TASK.pt/TASK.json (default: the package's experts/)")
    te.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --run-dir")
    te.set_defaults(func=_train_expert)
    from .flow.cli import add_parser as add_flow_parser

    add_flow_parser(sub)
    from .robo.cli import add_parser as add_robo_parser

    add_robo_parser(sub)
    args = p.parse_args(argv)
    if args.cmd == "robo":
        args.argv = argv[1:]  # the exact arguments, for COMMAND.txt
    args.func(args)


if __name__ == "__main__":
    main()
