"""Issue 23, items 2-3: ``--dampings`` crosses dampings with lrs for the DoPr arms only (base arms run once), resumes
by (lr, arm, seed, damping), selects over (lr, damping); the control bench also rolls out the EMA weights at the
lowest logged validation loss, and the reports show both checkpoints (older runs, without them, still report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("matplotlib")

from dopr_bench.bc import bench as bc_bench  # noqa: E402
from dopr_bench.bc import train as bc_train  # noqa: E402
from dopr_bench.cli import main  # noqa: E402
from dopr_bench.core.checkpoints import LowestVal, at_lowest_val  # noqa: E402
from dopr_bench.core.dampings import best_config, by_damping  # noqa: E402
from dopr_bench.core.index import index_table  # noqa: E402
from dopr_bench.core.report import summary_markdown  # noqa: E402
from dopr_bench.core.results import merge_results, run_key  # noqa: E402

TINY = ["--demos", "1", "--val-demos", "1", "--steps", "12", "--log-every", "3", "--batch", "64", "--width", "16",
        "--blocks", "1", "--episodes", "2", "--max-episode-steps", "15", "--no-progress"]


def _sweep(out: Path, cache: Path, dampings: str) -> None:
    main(["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "2", "--lrs", "1e-3,3e-2", "--dampings",
          dampings, "--out", str(out), "--cache", str(cache)] + TINY)


def test_dampings_cross_lrs_for_dopr_arms_only_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    built: list[tuple[str, float]] = []
    real = bc_train.build_optimizer

    def spy(model: nn.Module, arm: str, lr: float, spec: Any, exclude: tuple[str, ...] = ()) -> Any:
        built.append((arm, spec.damping))
        return real(model, arm, lr, spec, exclude)

    monkeypatch.setattr(bc_train, "build_optimizer", spy)
    _sweep(out, cache, "0.1,10")
    res = json.loads((out / "results.json").read_text())
    keys = {(r["optimizer"], r["lr"], r["seed"], r.get("damping")) for r in res["runs"]}
    assert keys == ({("adamw", lr, s, None) for lr in (1e-3, 3e-2) for s in (0, 1)}
                    | {("dopr-adamw", lr, s, g) for lr in (1e-3, 3e-2) for s in (0, 1) for g in (0.1, 10.0)})
    # each DoPr run was built with its own damping; the base arm once per (lr, seed)
    assert sorted(g for arm, g in built if arm == "dopr-adamw") == [0.1] * 4 + [10.0] * 4
    assert sum(arm == "adamw" for arm, _ in built) == 4
    # the folder's damping setting stays the task's (idp: 1e-3, for DoPr runs that record none); the grid, like
    # --lrs, is not a setting
    assert res["settings"]["damping"] == 1e-3 and "dampings" not in res["settings"]

    built.clear()
    _sweep(out, cache, "0.1,10")  # nothing left to run
    assert built == []
    _sweep(out, cache, "0.1,10,1")  # a new damping: its DoPr runs only
    assert sorted(built) == [("dopr-adamw", 1.0)] * 4
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 4 + 12 and len({run_key(r) for r in res["runs"]}) == 16

    md = (out / "summary.md").read_text()
    for g in ("0.1", "1", "10"):  # a block per damping, its header naming it
        assert f"damping {g}, EMA" in md
    section = md.split("## Damping × learning rate: each arm at its own best (lr, damping)\n")[1]
    val = bc_bench.BENCH.val
    lr, g = best_config(res["runs"], "dopr-adamw", val, 1e-3)
    assert f"| dopr-adamw | {lr:g}, γ {g:g}" in section
    assert "(selected)" in section and "Mean val loss over seeds at each lr and damping" in section
    assert "(lowest-validation-loss checkpoint)" in md  # the selection again at the lowest-validation checkpoint

    # a run's other checkpoint: the lowest logged validation loss, rolled out on the same episodes
    for r in res["runs"]:
        logged = dict((int(s), v) for s, v in r["val_curve"])
        assert r["min_val_step"] in logged and r["val_loss_min"] == min(logged.values())
        assert len(r["returns_at_min_val"]) == len(r["returns"]) == 2
        if r["min_val_step"] == 12:
            assert r["returns_at_min_val"] == r["returns"] and r["val_loss_min"] == r["val_loss"]

    rows = index_table(tmp_path, [out])  # the results index has a block of rows per damping
    assert all(f"damping {g}," in rows or rows.count(f"damping {g} ") for g in ("0.1", "1", "10"))
    with pytest.raises(SystemExit, match="several dampings"):
        main(["shared-lr", str(out), "adamw", "dopr-adamw"])


def test_the_lowest_validation_checkpoint_is_rolled_out_when_not_the_last(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the kept checkpoint to the first logged step: its own weights are rolled out, not the final ones."""
    real = LowestVal.offer

    def first_only(self: LowestVal, step: int, val_loss: float, model: nn.Module) -> None:
        if self.step is None:
            real(self, step, val_loss, model)

    monkeypatch.setattr(LowestVal, "offer", first_only)
    out = tmp_path / "out"
    main(["run", "idp", "--optimizers", "adamw", "--seeds", "1", "--lrs", "3e-2", "--out", str(out), "--cache",
          str(tmp_path / "cache")] + TINY)
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["min_val_step"] == 3 and run["val_loss_min"] == run["val_curve"][0][1]
    assert run["returns_at_min_val"] != run["returns"]  # 3 steps of training against 12
    md = (out / "summary.md").read_text()
    assert "Final against lowest-validation-loss checkpoint" in md and "| adamw | 1 | 3 |" in md


def test_lowest_val_keeps_the_earliest_lowest_finite_loss() -> None:
    model = nn.Linear(2, 1)
    keep = LowestVal()
    for step, loss in ((1, 3.0), (2, float("nan")), (3, 1.0), (4, 1.0), (5, 2.0)):
        with torch.no_grad():
            model.weight.fill_(step)
        keep.offer(step, loss, model)
    assert keep.step == 3 and keep.val_loss == 1.0
    copy = keep.model(model)
    assert torch.equal(copy.weight, torch.full((1, 2), 3.0)) and torch.equal(model.weight, torch.full((1, 2), 5.0))
    ckpts = [{"step": 1, "val_loss": float("nan")}, {"step": 2, "val_loss": 0.5}, {"step": 3, "val_loss": 0.5}]
    assert at_lowest_val(ckpts)["step"] == 2


def _run(arm: str, seed: int, damping: float | None = None, **extra: float) -> dict[str, Any]:
    r: dict[str, Any] = {"optimizer": arm, "seed": seed, "lr": 1e-3, "val_loss": 1.0 + seed, "train_loss": 1.0,
                         "returns": [10.0 * seed], "lengths": [5], "drift": 0.1, "drift_std": 0.1, "train_s": 1.0,
                         "train_curve": [], "val_curve": []}
    return r | ({} if damping is None else {"damping": damping}) | extra


def test_older_runs_without_the_new_fields_report_as_before() -> None:
    """Runs made before --dampings and the lowest-validation checkpoint: one block, no new section; a DoPr run
    without a damping is at the folder's."""
    results = {"bench": "bc", "task": "idp", "settings": {"damping": 0.1, "env_id": "x", "demos": 1, "val_demos": 1,
                                                            "steps": 1, "batch": 1, "ema": 0.1, "standardize": False,
                                                            "episodes": 1},
               "runs": [_run(a, s) for a in ("adamw", "dopr-adamw") for s in (0, 1)]}
    assert [g for g, _ in by_damping(results)] == [0.1]
    md = summary_markdown(results)
    assert "lowest-validation" not in md and "Damping ×" not in md and "damping 0.1," in md
    with_ckpt = results | {"runs": [r | {"returns_at_min_val": [1.0], "val_loss_min": 0.5, "min_val_step": 1}
                                    for r in results["runs"]]}
    assert "Final against lowest-validation-loss checkpoint" in summary_markdown(with_ckpt)


def test_merge_tells_runs_apart_by_damping() -> None:
    settings = {"damping": 0.1}
    old = {"bench": "bc", "settings": settings, "runs": [_run("adamw", 0), _run("dopr-adamw", 0)]}
    new = {"bench": "bc", "settings": settings, "runs": [_run("dopr-adamw", 0, 10.0), _run("dopr-adamw", 0, 1.0)]}
    assert len(merge_results([old, new])["runs"]) == 4
    again = {"bench": "bc", "settings": settings, "runs": [_run("dopr-adamw", 0, 0.1)]}  # = the old run's damping
    with pytest.raises(ValueError, match="more than one part"):
        merge_results([old, again])


def test_checkpoints_table_pairs_best_against_best_at_each_checkpoint(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`dopr-bench checkpoints`: DoPr's final weights lose, its lowest-validation checkpoint wins; each selection is
    paired by seed, and a damping picks DoPr's runs in a folder of several."""
    from dopr_bench.core.compare import checkpoints_table
    from dopr_bench.core.results import SCHEMA

    runs = []
    for seed in range(3):
        runs.append(_run("adamw", seed, returns_at_min_val=[100.0 + seed], val_loss_min=1.0, min_val_step=10))
        for damping, final, early in ((0.1, 50.0, 300.0), (10.0, 90.0, 110.0)):
            runs.append(_run("dopr-adamw", seed, damping, returns=[final + seed], val_loss=2.0,
                             returns_at_min_val=[early + seed], val_loss_min=0.5, min_val_step=4))
    for r in runs:
        if r["optimizer"] == "adamw":
            r["returns"] = [100.0 + r["seed"]]
    (tmp_path / "results.json").write_text(json.dumps({"schema": SCHEMA, "bench": "bc", "settings": {"damping": 0.1},
                                                       "runs": runs}))
    with pytest.raises(SystemExit, match="name one"):
        checkpoints_table([f"R={tmp_path}:adamw,dopr-adamw"])
    table = checkpoints_table([f"R={tmp_path}:adamw,dopr-adamw@0.1"])
    rows = [line for line in table.splitlines() if line.startswith("| R (adamw, γ 0.1)")]
    assert len(rows) == 4  # final and lowest-validation, each selected on val and on test
    final_val, lowest_val = (rows[i].strip("| ").split(" | ") for i in (0, 2))
    assert final_val[1] == "final" and final_val[7] == "-50 ± 0" and final_val[9] == "0/3"
    assert lowest_val[1].startswith("lowest") and lowest_val[7] == "200 ± 0" and lowest_val[9] == "3/3"
    arm = [line for line in table.splitlines() if line.startswith("| R | dopr-adamw")][0].strip("| ").split(" | ")
    assert arm[5:9] == ["4 ± 0", "51 ± 2.48", "301 ± 2.48", "250 ± 0"]
    main(["checkpoints", f"R={tmp_path}:adamw,dopr-adamw@10"])
    assert "| R (adamw, γ 10) | lowest-validation-loss checkpoint | val | 3 |" in capsys.readouterr().out
