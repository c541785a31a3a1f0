"""Family sweep: DoPr with defaults on every transformers family it can build small, and a list of timm models.

Each family of benchmarks/families.py is built tiny from its config (random init, random inputs, nothing
downloaded), checked with one plain forward and backward, then trained 3 steps with ``DoPr(model, base="adamw",
lr=1e-3)``. Prints one markdown row per family: whether it crashed (and where in dopr), the AP share of weight-matrix
elements, the weight matrices named without AP and why, the input groups with missing statistics, and the loss,
then a summary line. A model that fails before DoPr is "build failed", apart from DoPr's crashes; a family whose
package is not installed (timm) is "skipped".

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/family_sweep.py [--fast] [--only llama,bart] [--out table.md]
(``--fast``: the subset CI runs through tests/test_family_sweep.py, well under a minute on one core.)
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

import dopr

sys.path.insert(0, str(Path(__file__).parent))
from families import BY_NAME, FAMILIES, Family  # noqa: E402

#: The fast subset: a plain causal LM, a seq2seq with learned position embeddings, OPT, an MoE, a masked LM, a
#: vision transformer, an audio model, a convnet with depthwise convolutions and a timm convnet (skipped without timm).
FAST: tuple[str, ...] = ("llama", "bart", "opt", "mixtral", "bert", "vit", "wav2vec2", "wavlm", "sew-d", "convnext",
                          "timm:resnet18")

STEPS = 3
LOW_SHARE = 0.95
NO_INPUT = "recorded no input"
_DOPR_DIR = Path(dopr.__file__).resolve().parent
_OPTIONAL = ("timm", "torchvision", "transformers")


@dataclass
class Row:
    family: str
    kind: str
    status: str = "ok"
    share: float | None = None
    gaps: dict[str, str] = field(default_factory=dict)  # weight matrix -> why it gets no AP
    missing: list[str] = field(default_factory=list)  # input groups with missing_statistics > 0 in opt.stats()
    no_input_warning: bool = False  # a RuntimeWarning "... recorded no input ..." was raised
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def outcome(self) -> str:
        return self.status.split(":")[0]  # ok, crash, build failed, skipped


def describe(exc: BaseException, limit: int = 100) -> str:
    """``Type: first line of the message``, truncated, and the last frame inside dopr where it was raised."""
    lines = str(exc).strip().splitlines()
    first = re.sub(r"\[[^\]]{30,}\]", "[...]", lines[0]) if lines else ""  # long lists of names
    text = f"{type(exc).__name__}: {first}"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _DOPR_DIR in Path(f.filename).resolve().parents]
    if frames:
        text += f" (at dopr/{Path(frames[-1].filename).resolve().relative_to(_DOPR_DIR)}:{frames[-1].lineno})"
    return text


def sweep_one(family: Family, steps: int = STEPS, compile: bool = False) -> Row:
    """Build ``family``, check it trains without DoPr, then train ``steps`` steps with DoPr and report (with
    ``compile``, through ``torch.compile(model)`` built after DoPr; Dynamo's caches are reset after the family)."""
    row = Row(family.name, family.kind)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        try:
            model, loss_fn = family.build()
            model.train()
            loss_fn(model).backward()  # the model alone: a failure here is not DoPr's
            for p in model.parameters():
                p.grad = None
        except ImportError as exc:
            missing = getattr(exc, "name", None) or ""
            row.status = (f"skipped: {missing} is not installed" if missing.split(".")[0] in _OPTIONAL
                          else f"build failed: {describe(exc)}")
        except Exception as exc:
            row.status = f"build failed: {describe(exc)}"
        if row.outcome in ("build failed", "skipped"):
            row.seconds = time.perf_counter() - start
            return row
        opt = None
        torch.manual_seed(0)  # DoPr's run does not depend on the random numbers the check drew (dropout)
        try:
            opt = dopr.DoPr(model, base="adamw", lr=1e-3)
            run = torch.compile(model) if compile else model
            for _ in range(steps):
                opt.zero_grad()
                loss = loss_fn(run)
                loss.backward()
                opt.step()
                row.losses.append(loss.item())
        except Exception as exc:
            row.status = f"crash: {describe(exc)}"
        if opt is not None:
            try:
                ap = opt.preconditioner
                row.share = ap.coverage()["share"]
                row.gaps = ap.discovery.unexpected()
                row.missing = [k for k, t in opt.stats().items() if t.get("missing_statistics", 0) > 0]
            except Exception as exc:  # reporting after a crash may fail too; keep the first error
                row.status += f"; reporting failed: {describe(exc)}"
        row.no_input_warning = any(issubclass(w.category, RuntimeWarning) and NO_INPUT in str(w.message)
                                   for w in caught)
    if compile:
        torch.compiler.reset()
    row.seconds = time.perf_counter() - start
    return row


def short_reason(why: str) -> str:
    return why.split("(")[0].strip().rstrip(":;,.") or why


def gaps_cell(gaps: dict[str, str], names: int = 2) -> str:
    """``count: reason (xN): a, b; ...`` with up to ``names`` parameter names per reason."""
    if not gaps:
        return "0"
    by_reason: dict[str, list[str]] = {}
    for name, why in gaps.items():
        by_reason.setdefault(short_reason(why), []).append(name)
    parts = []
    for reason, members in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(members[:names]) + (", ..." if len(members) > names else "")
        parts.append(f"{reason} (x{len(members)}): {shown}")
    return f"{len(gaps)}: " + "; ".join(parts)


def missing_cell(row: Row) -> str:
    if row.outcome != "ok" and row.share is None:
        return "-"
    text = "0"
    if row.missing:
        text = f"{len(row.missing)} group(s): {row.missing[0]}" + (", ..." if len(row.missing) > 1 else "")
    return text + (", warned" if row.no_input_warning else "")


def loss_cell(losses: list[float]) -> str:
    if not losses:
        return "-"
    text = f"{losses[0]:.3f} -> {losses[-1]:.3f}"
    return text if all(math.isfinite(x) for x in losses) else text + " (non-finite)"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


HEADER = ("| family | kind | status | AP share | named gaps (count: reasons) | missing statistics | loss 3 steps |\n"
          "|---|---|---|---|---|---|---|")


def table_row(row: Row) -> str:
    share = "-" if row.share is None else f"{row.share:.1%}"
    gaps = "-" if row.share is None else gaps_cell(row.gaps)
    cells = (row.family, row.kind, row.status, share, gaps, missing_cell(row), loss_cell(row.losses))
    return "| " + " | ".join(_md(c) for c in cells) + " |"


def summary(rows: list[Row], seconds: float) -> str:
    counts = Counter(r.outcome for r in rows)
    missing = [r.family for r in rows if r.missing or r.no_input_warning]
    low = [r.family for r in rows if r.share is not None and r.share < LOW_SHARE]
    return (f"{len(rows)} families in {seconds:.0f} s: {counts['ok']} ok, {counts['crash']} crash, "
            f"{counts['build failed']} build failed, {counts['skipped']} skipped; missing statistics in "
            f"{len(missing)} ({', '.join(missing) or '-'}); AP share < {LOW_SHARE:.0%} in {len(low)} "
            f"({', '.join(low) or '-'})")


def select(fast: bool, only: str | None) -> list[Family]:
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise SystemExit(f"unknown families {unknown}; known: {', '.join(BY_NAME)}")
        return [BY_NAME[n] for n in names]
    return [BY_NAME[n] for n in FAST] if fast else list(FAMILIES)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="the fixed fast subset: " + ", ".join(FAST))
    parser.add_argument("--only", help="comma-separated family names (e.g. llama,bart,timm:resnet18)")
    parser.add_argument("--out", type=Path, help="also write the markdown table (and summary) to this file")
    parser.add_argument("--list", action="store_true", help="print the family names and exit")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile(model), built after DoPr")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{f.name} ({f.kind})" for f in FAMILIES))
        return []
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    families = select(args.fast, args.only)
    start = time.perf_counter()
    rows = []
    for i, family in enumerate(families, 1):
        rows.append(sweep_one(family, compile=args.compile))
        print(f"[{i}/{len(families)}] {family.name}: {rows[-1].status} ({rows[-1].seconds:.1f} s)", file=sys.stderr,
              flush=True)
    text = "\n".join([HEADER, *map(table_row, rows), "", summary(rows, time.perf_counter() - start)])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        how = ", through torch.compile(model)" if args.compile else ""
        args.out.write_text(f"DoPr {dopr.__version__}, torch {torch.__version__}, {STEPS} steps{how}, base adamw, "
                            f"lr 1e-3, defaults otherwise (benchmarks/family_sweep.py).\n\n{text}\n")
    return rows


if __name__ == "__main__":
    main()
