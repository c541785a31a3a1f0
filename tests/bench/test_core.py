"""The bench core: Spec-built flags, the Muon precision policy, statistics, the lr report, the results schema."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from pathlib import Path

import pytest

from dopr_bench.core import arms, stats
from dopr_bench.core.bench import BENCHES, Metric, get_bench
from dopr_bench.core.report import best_lr, lr_section, pair_sentences
from dopr_bench.core.spec import add_flags, overrides
from dopr_bench.core.sweep import resolve_ns_dtype


@pytest.mark.parametrize("name", BENCHES)
def test_every_cli_field_of_a_spec_is_a_flag_and_round_trips(name: str) -> None:
    bench = get_bench(name)
    p = argparse.ArgumentParser()
    add_flags(p, bench.spec_type)
    assert overrides(p.parse_args([]), bench.spec_type) == {}  # nothing given: the spec's defaults stand
    spec = bench.resolve(bench.default_task, False, {})
    argv = []
    for f in fields(spec):
        if not f.metadata.get("cli", True) or getattr(spec, f.name) is None:
            continue
        v, flag = getattr(spec, f.name), "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + flag[2:])
        else:
            argv += [flag, ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    given = overrides(p.parse_args(argv), bench.spec_type)
    assert bench.resolve(bench.default_task, False, given) == spec


def test_lrs_and_arms_parse_as_lists() -> None:
    from dopr_bench.bc.bench import BCSpec

    p = argparse.ArgumentParser()
    add_flags(p, BCSpec)
    ov = overrides(p.parse_args(["--lrs", "1e-3,3e-3", "--optimizers", "adamw,dopr-muon", "--standardize"]), BCSpec)
    assert ov == {"lrs": (1e-3, 3e-3), "optimizers": ("adamw", "dopr-muon"), "standardize": True}


def test_muon_precision_follows_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    import dopr.bases.muon as muon  # the bench's policy is the library's ns_dtype="auto"

    monkeypatch.setattr(muon, "matmul_probe", lambda: {"bfloat16": 1.0, "float32": 2.0})
    assert arms.hardware_ns_dtype() == "bfloat16"
    monkeypatch.setattr(muon, "matmul_probe", lambda: {"bfloat16": 7.0, "float32": 1.0})
    assert arms.hardware_ns_dtype() == "float32"


def test_muon_precision_given_then_the_folders_then_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import dopr_bench.core.sweep as sweep
    from dopr_bench.bc.bench import BCSpec

    monkeypatch.setattr(sweep, "hardware_ns_dtype", lambda: "float32")
    old = {"settings": {"muon_ns_dtype": "bfloat16"}}
    assert resolve_ns_dtype(BCSpec(), None).muon_ns_dtype == "float32"
    assert resolve_ns_dtype(BCSpec(), old).muon_ns_dtype == "bfloat16"
    assert resolve_ns_dtype(BCSpec(muon_ns_dtype="float32"), old).muon_ns_dtype == "float32"


@pytest.mark.parametrize("arm", ["muon", "dopr-muon"])
@pytest.mark.parametrize("choice", ["bfloat16", "float32"])
def test_the_muon_precision_reaches_both_muon_arms(arm: str, choice: str) -> None:
    import torch
    from torch import nn

    from dopr import Muon
    from dopr_bench.bc.bench import BCSpec

    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = arms.build_optimizer(model, arm, 1e-3, BCSpec(muon_ns_dtype=choice))
    muons = [o for _, o in opt.bases if isinstance(o, Muon)]  # DoPr and MultiOptimizer both keep .bases
    assert muons and {g["ns_dtype"] for o in muons for g in o.param_groups} == {getattr(torch, choice)}


def test_t_interval_and_pairs_match_on_lr_and_seed() -> None:
    mean, half = stats.t_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(2.4841, abs=1e-3)  # t(0.975, 2) * 1 / sqrt(3)
    one, none = stats.t_ci([5.0]), stats.t_ci([])
    assert one[0] == 5.0 and math.isnan(one[1]) and math.isnan(none[0])
    runs = [{"optimizer": a, "seed": s, "lr": lr} for lr in (1e-3, 1e-2) for s in (0, 1) for a in ("x", "dopr-x")]
    runs.append({"optimizer": "dopr-x", "seed": 7, "lr": 1e-3})  # no partner
    ps = stats.pairs(runs)[("dopr-x", "x")]
    assert [(a["lr"], a["seed"]) for a, _ in ps] == [(1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)]
    assert all(a["lr"] == b["lr"] and a["seed"] == b["seed"] for a, b in ps)
    assert len(stats.pairs(runs, 1e-2)[("dopr-x", "x")]) == 2


def _runs() -> list[dict]:
    """Arm x: best val at lr 1e-3, best test at 1e-2; dopr-x: best at 1e-2 on both."""
    table = {("x", 1e-3): (1.0, 10.0), ("x", 1e-2): (2.0, 30.0), ("dopr-x", 1e-3): (3.0, 5.0),
             ("dopr-x", 1e-2): (0.5, 50.0)}
    return [{"optimizer": a, "lr": lr, "seed": s, "val": v + 0.01 * s, "test": t + s}
            for (a, lr), (v, t) in table.items() for s in (0, 1, 2)]


VAL, TEST = Metric("val", lambda r: r["val"], False), Metric("score", lambda r: r["test"], True)


def test_each_arm_at_its_own_best_lr_on_val_and_on_test() -> None:
    runs = _runs()
    assert best_lr(runs, "x", VAL) == 1e-3 and best_lr(runs, "x", TEST) == 1e-2
    assert best_lr(runs, "dopr-x", VAL) == best_lr(runs, "dopr-x", TEST) == 1e-2
    md = lr_section(runs, VAL, TEST)
    assert "| x | 0.001 | 1.01 | 11 | 0.01 | 2.01 | 31 |" in md
    # best against best on val: dopr-x at 1e-2 (50, 51, 52) minus x at 1e-3 (10, 11, 12): +40, zero spread
    assert "| dopr-x − x | val | 0.01 / 0.001 | 3 | +40 ± 0 |" in md
    assert "| dopr-x − x | score | 0.01 / 0.01 | 3 | +20 ± 0 |" in md


def test_pair_sentences_say_the_means_and_whether_the_interval_excludes_zero() -> None:
    from dataclasses import replace

    bench = replace(get_bench("bc"), test=TEST)
    lines = pair_sentences({"runs": _runs()}, bench)
    assert lines[0] == ("dopr-x against x at lr 0.001: score 6 against 11 (higher is better); DoPr − base −5 ± 0 "
                        "paired over 3 seeds, DoPr better on 0 of 3; the 95% interval excludes zero.")


def test_results_of_another_schema_are_refused_with_what_to_do(tmp_path: Path) -> None:
    from dopr_bench.core.results import load_results

    (tmp_path / "results.json").write_text(json.dumps({"task": "idp", "settings": {"lr": 3e-4}, "runs": []}))
    with pytest.raises(SystemExit, match="schema None.*reads schema 2.*re-run its COMMAND.txt"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(SystemExit, match="not valid JSON"):
        load_results(tmp_path)


def test_old_cli_shapes_say_the_new_one(tmp_path: Path) -> None:
    from dopr_bench.cli import main

    with pytest.raises(SystemExit, match="dopr-bench run flow"):
        main(["flow", "--quick"])


def test_no_bench_imports_another_and_the_core_imports_none() -> None:
    import re

    import dopr_bench

    root = Path(dopr_bench.__file__).parent
    for name in (*BENCHES, "core"):
        others = {b for b in BENCHES if b != name}
        for path in (root / name).rglob("*.py"):
            imported = set(re.findall(r"^\s*from \.\.(\w+)", path.read_text(), re.M))
            imported |= set(re.findall(r"dopr_bench\.(\w+)", path.read_text())) - {name}
            assert not imported & others, f"{path.relative_to(root)} imports {imported & others}"


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_on_a_terminal_one_line_per_run_otherwise(terminal: bool, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    from dopr_bench.core import progress

    monkeypatch.setattr(progress, "interactive", lambda: terminal)
    bar = progress.SweepProgress(2, "runs")
    for i in range(2):
        with bar.run(50, f"run {i}") as steps:
            for _ in range(50):
                steps.update(1)
        bar.done(f"finished run {i}")
    bar.close()
    out, err = capsys.readouterr()
    assert (out + err).count("finished run") == 2
    if terminal:
        assert "\r" in err and "run 1:" in err and "2/2" in err  # a bar per run inside the bar of the sweep
    else:
        assert out == "finished run 0\nfinished run 1\n" and err == ""


def test_runs_go_to_the_git_ignored_runs_folder_unless_told() -> None:
    import subprocess

    from dopr_bench.cli import output_folder, parse_run

    bench, task, spec, args = parse_run(["idp", "--quick"])
    out = output_folder(bench, task, spec, args)
    assert out == Path("runs/idp-quick")
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run(["git", "check-ignore", "-q", str(out / "results.json")], cwd=root).returncode == 0
    bench, task, spec, args = parse_run(["idp", "--out", "results/idp-x"])
    assert output_folder(bench, task, spec, args) == Path("results/idp-x")
