"""``dopr-bench``: one command line for every bench.

    dopr-bench run [BENCH] [TASK] [options]   BENCH: bc (the default: TASK idp, hopper, walker2d, humanoid),
                                              lm, flow or robo; `dopr-bench run BENCH --help` lists its options
    dopr-bench report DIR                     rewrite summary.md and the plots of a result folder of any bench
    dopr-bench merge OUT DIR...               add the runs of other folders (same settings) to OUT, then report
    dopr-bench index [RESULTS] [--check]      write (or check) the results index, RESULTS/README.md
    dopr-bench train-expert TASK              train (or resume) a PPO expert for hopper / walker2d / humanoid

Paired tables across committed folders of one bench (differences paired by seed, mean ± 95% t-interval):

    dopr-bench paired ARM A B [A2...]         one arm, folder B − folder A (A2...: more seeds of A's setting)
    dopr-bench paired --pool ARM_A ARM_B DIR...   arm B − arm A over the runs of DIR... pooled
    dopr-bench arms LABEL=DIR:ARM ...         arms from several folders, each at its own best lr, against the first
    dopr-bench arms --pairs DIR:BASE,DOPR ... one row per base/DoPr pair and selection, best against best
    dopr-bench shared-lr DIR BASE DOPR        DoPr − base at every lr both ran
    dopr-bench diagnostics DIR...             (bc) rank correlation of rollout-free diagnostics with the return
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from .core.bench import BENCHES, Bench, get_bench
from .core.spec import add_flags, overrides


def run_parser(bench: Bench, shown: Any = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"dopr-bench run {bench.name}", description=bench.help)
    p.add_argument("task", nargs="?", default=bench.default_task,
                   help=f"one of {', '.join(bench.tasks)} (default {bench.default_task})")
    p.add_argument("--out", default=None, help="output folder (default runs/<task>[-quick], git-ignored; "
                                               "committed evidence goes to results/ with --out)")
    p.add_argument("--quick", action="store_true", help="a short run of the same protocol (a few minutes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--cache", default=None, help="cache of demonstrations and models (default ~/.cache/dopr_bench)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per finished run)")
    add_flags(p, bench.spec_type, shown)
    return p


def parse_run(argv: list[str]) -> tuple[Bench, str, Any, argparse.Namespace]:
    """``run`` arguments -> (bench, task, spec, the parsed namespace); the bench name may be left out for bc."""
    bench = get_bench(argv[0] if argv and argv[0] in BENCHES else "bc")
    rest = argv[1:] if argv and argv[0] in BENCHES else argv
    shown = None
    if "-h" in rest or "--help" in rest:  # the help shows the defaults of the task (and --quick) given
        task = rest[0] if rest and not rest[0].startswith("-") else bench.default_task
        shown = bench.resolve(task, "--quick" in rest, {})
    args = run_parser(bench, shown).parse_args(rest)
    spec = bench.resolve(args.task, args.quick, overrides(args, bench.spec_type))
    return bench, args.task, spec, args


def output_folder(bench: Bench, task: str, spec: Any, args: argparse.Namespace) -> Path:
    """``--out``, else ``runs/<task>[-quick]``: git-ignored, so a run never lands among the committed results."""
    return Path(args.out or f"runs/{bench.out_name(task, spec)}{'-quick' if args.quick else ''}")


def _run(argv: list[str]) -> None:
    from .core import CACHE
    from .core.sweep import run_sweep

    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        for name in BENCHES:
            print(f"  {name:5} {get_bench(name).help}")
        return
    bench, task, spec, args = parse_run(argv)
    run_sweep(bench, task, spec, output_folder(bench, task, spec, args),
              cache=Path(args.cache) if args.cache else CACHE, threads=args.threads, progress=not args.no_progress,
              command="dopr-bench run " + shlex.join(argv))


def _train_expert(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="dopr-bench train-expert")
    p.add_argument("task", choices=["hopper", "walker2d", "humanoid"])
    p.add_argument("--steps", type=int, default=None, help="total env steps (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default=None, help="working dir for resumable checkpoints (default runs/expert-TASK)")
    p.add_argument("--out", default=None, help="where to write TASK.pt/TASK.json (default: the package's experts/)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --run-dir")
    a = p.parse_args(argv)
    from .bc.experts.train import train_expert

    train_expert(a.task, Path(a.run_dir or f"runs/expert-{a.task}"), Path(a.out) if a.out else None,
                 total_steps=a.steps, seed=a.seed, threads=a.threads, resume=not a.fresh)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    if cmd == "run":
        return _run(rest)
    if cmd == "train-expert":
        return _train_expert(rest)
    if cmd in ("flow", "robo"):
        raise SystemExit(f"`dopr-bench {cmd} ...` is now `dopr-bench run {cmd} ...`")
    p = argparse.ArgumentParser(prog="dopr-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run a bench (see `dopr-bench run --help`)")
    sub.add_parser("train-expert", help="train a PPO expert")
    rp = sub.add_parser("report", help="rewrite summary.md and the plots of a result folder from its results.json")
    rp.add_argument("dir")
    rp.add_argument("--no-plots", action="store_true")
    mg = sub.add_parser("merge", help="add the runs of other output folders (same settings) to OUT, then report")
    mg.add_argument("out")
    mg.add_argument("sources", nargs="+")
    ix = sub.add_parser("index", help="write the results index (ROOT/README.md) from the result folders")
    ix.add_argument("root", nargs="?", default="results")
    ix.add_argument("--readme", default=None, help="the file with the index markers (default ROOT/README.md)")
    ix.add_argument("--check", action="store_true", help="only check that the index is up to date")
    pd = sub.add_parser("paired", help="paired difference of one arm between folders, or of two arms pooled")
    pd.add_argument("--pool", action="store_true", help="ARGS are ARM_A ARM_B DIR...: two arms over pooled runs")
    pd.add_argument("args", nargs="+", metavar="ARG", help="ARM A B [A2...], or with --pool ARM_A ARM_B DIR...")
    am = sub.add_parser("arms", help="arms of one protocol from several folders, each at its own best lr")
    am.add_argument("--pairs", action="store_true", help="SPECS are DIR:BASE,DOPR, one row per pair and selection")
    am.add_argument("specs", nargs="+", metavar="SPEC", help="LABEL=DIR:ARM (the first is the reference)")
    cp = sub.add_parser("checkpoints", help="final weights against the checkpoint a user keeps, best against best")
    cp.add_argument("specs", nargs="+", metavar="SPEC", help="LABEL=DIR:BASE,DOPR[@DAMPING], one per regime")
    sl = sub.add_parser("shared-lr", help="DoPr − base at every lr both arms of one folder ran")
    sl.add_argument("dir")
    sl.add_argument("base")
    sl.add_argument("dopr")
    dg = sub.add_parser("diagnostics", help="bc: rank correlation of each diagnostic with the return across runs")
    dg.add_argument("dirs", nargs="+")
    a = p.parse_args(argv)
    if a.cmd in ("paired", "arms", "checkpoints", "shared-lr", "diagnostics"):
        return print(_table(a, p))
    if a.cmd == "report":
        from .core.report import report_dir

        print(report_dir(Path(a.dir), plots=not a.no_plots))
    elif a.cmd == "merge":
        from .core.report import merge_dirs

        print(merge_dirs(Path(a.out), [Path(d) for d in a.sources]))
    elif a.cmd == "index":
        from .core.index import write_index

        readme = Path(a.readme) if a.readme else Path(a.root) / "README.md"
        changed = write_index(Path(a.root), readme, check=a.check)
        if a.check and changed:
            raise SystemExit(f"{readme}'s results table is out of date: run `dopr-bench index {a.root}`")
        print(f"{readme}: results table {'up to date' if not changed else 'rewritten'}")


def _table(a: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    import numpy as np

    from .core import compare

    np.seterr(all="ignore")  # a cell of one finished run has no interval: shown as such, not warned about
    if a.cmd == "paired":
        if len(a.args) < (4 if a.pool else 3):
            parser.error("paired takes ARM A B [A2...], or --pool ARM_A ARM_B DIR [DIR...]")
        return compare.pooled_difference(*a.args) if a.pool else compare.folder_difference(*a.args)
    if a.cmd == "arms":
        return compare.pairs_table(a.specs) if a.pairs else compare.arm_table(a.specs)
    if a.cmd == "checkpoints":
        return compare.checkpoints_table(a.specs)
    if a.cmd == "shared-lr":
        return compare.shared_lr_table(a.dir, a.base, a.dopr)
    from .bc.predictors import predictor_table

    return predictor_table(a.dirs)


if __name__ == "__main__":
    main()
