"""The control bench end to end on a tiny budget: expert, demos, BC, rollouts, results.json, plots, resume, merge,
a learning-rate sweep, and one line per finished run on a pipe."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("matplotlib")

from dopr_bench.bc import bench as bc_bench  # noqa: E402
from dopr_bench.bc.spec import BCSpec  # noqa: E402
from dopr_bench.cli import main  # noqa: E402
from dopr_bench.core.arms import hardware_ns_dtype  # noqa: E402

TINY = ["--demos", "1", "--val-demos", "1", "--steps", "12", "--batch", "64", "--width", "16", "--blocks", "1",
        "--episodes", "2", "--max-episode-steps", "15", "--no-progress"]


def test_pipeline_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "2", "--out", str(out), "--cache", str(cache)]
    main(argv + TINY)
    res = json.loads((out / "results.json").read_text())
    assert res["bench"] == "bc" and res["schema"] == 2 and res["task"] == "idp"
    assert {(r["optimizer"], r["seed"], r["lr"]) for r in res["runs"]} == {(a, s, 1e-3) for a in ("adamw", "dopr-adamw")
                                                                           for s in (0, 1)}
    for r in res["runs"]:
        assert len(r["returns"]) == 2 and len(r["lengths"]) == 2 and max(r["lengths"]) <= 15
        assert np.isfinite(r["val_loss"]) and np.isfinite(r["drift"]) and r["train_curve"]
        assert r["wall_s"] > 0 and r["torch"] and r["dopr"] and r["threads"] == 1
        assert set(r["input_log10_cond"]) == {"inp", "blocks.0.fc1", "blocks.0.fc2", "head"}
        assert all(np.isfinite(v) and v >= 0 for v in r["input_log10_cond"].values())
        assert np.isnan(r["feature_cka_expert"])  # the LQR expert has no hidden features
    assert res["settings"]["steps"] == 12 and res["settings"]["standardize"] is False
    assert res["settings"]["muon_ns_dtype"] == hardware_ns_dtype()  # decided from the hardware, recorded
    assert res["expert_demo_return"] > 9000 and "dopr-bench run idp" in res["command"]
    for name in ("summary.md", "scatter_val_vs_return.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert "dopr-adamw − adamw" in (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert "\r" not in printed  # not a terminal: no progress bars
    assert len([line for line in printed.splitlines() if " lr 0.001 seed " in line]) == 4  # a line per run
    assert "dopr-adamw against adamw at lr 0.001: return" in printed  # the plain sentence per pair
    assert "Standardized observations (committed runs results/idp-std-3demos" in printed  # from the committed folders

    # same seed -> same init for both arms; DoPr must change the result
    by = {(r["optimizer"], r["seed"]): r for r in res["runs"]}
    assert by[("adamw", 0)]["val_curve"] != by[("dopr-adamw", 0)]["val_curve"]

    # resume: finished runs are not redone, a new seed is
    calls: list[tuple[str, int]] = []
    real = bc_bench.train_bc

    def spy(arm: str, seed: int, *a: object, **k: object) -> object:
        calls.append((arm, seed))
        return real(arm, seed, *a, **k)

    monkeypatch.setattr(bc_bench, "train_bc", spy)
    main(["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "3", "--out", str(out), "--cache", str(cache)]
         + TINY)
    assert calls == [("adamw", 2), ("dopr-adamw", 2)]
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 6
    assert (out / "COMMAND.txt").read_text().count("dopr-bench run idp") == 2

    # other settings in the same --out are refused before anything is trained
    with pytest.raises(SystemExit, match="other settings"):
        main(argv + TINY + ["--damping", "0.5"])
    # the folder keeps its Muon precision; another one given explicitly is refused
    other = "float32" if res["settings"]["muon_ns_dtype"] == "bfloat16" else "bfloat16"
    with pytest.raises(SystemExit, match="muon_ns_dtype"):
        main(argv + TINY + ["--muon-ns-dtype", other])
    with pytest.raises(SystemExit, match="unknown arm"):
        main(["run", "idp", "--optimizers", "adamw,dopr-nope", "--out", str(tmp_path / "x")] + TINY)


def test_lr_sweep_reports_each_arm_at_its_best_lr(tmp_path: Path) -> None:
    out = tmp_path / "out"
    main(["run", "bc", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "2", "--lrs", "1e-3,3e-2", "--out",
          str(out), "--cache", str(tmp_path / "cache")] + TINY)
    res = json.loads((out / "results.json").read_text())
    assert sorted({r["lr"] for r in res["runs"]}) == [1e-3, 3e-2] and len(res["runs"]) == 8
    md = (out / "summary.md").read_text()
    assert md.count("lr 0.001,") == 1 and md.count("lr 0.03,") == 1  # one section per lr
    assert "each arm at its own best lr" in md and "Best against best" in md
    section = md.split("## Learning-rate sweep")[1]
    for arm in ("adamw", "dopr-adamw"):
        rs = [r for r in res["runs"] if r["optimizer"] == arm]
        by_lr = {lr: np.mean([r["val_loss"] for r in rs if r["lr"] == lr]) for lr in (1e-3, 3e-2)}
        best = min(by_lr, key=by_lr.get)
        assert f"| {arm} | {best:g} |" in section  # selected on validation loss


def _tiny_data() -> object:
    import torch

    from dopr_bench.bc.train import BCData

    g = torch.Generator().manual_seed(0)
    return BCData(torch.randn(200, 5, generator=g), torch.randn(200, 2, generator=g),
                  torch.randn(50, 5, generator=g), torch.randn(50, 2, generator=g))


TINY_SPEC = BCSpec(width=8, blocks=1, steps=0, batch=32, ema=0.1, std_floor=1e-3, standardize=True,
                            log_every=1)


def test_identical_init_and_batches_across_arms() -> None:
    import torch

    from dopr_bench.bc.train import train_bc

    data = _tiny_data()
    stats = (data.obs.numpy().mean(0), data.obs.numpy().std(0))
    m1, _ = train_bc("adamw", 3, 1e-3, data, TINY_SPEC, stats)
    m2, _ = train_bc("dopr-muon", 3, 1e-3, data, TINY_SPEC, stats)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_refresh_every_and_max_block_reach_dopr() -> None:
    from dopr_bench.bc.train import train_bc

    spec = replace(TINY_SPEC, steps=7, standardize=False, log_every=7)
    _, exact = train_bc("dopr-adamw", 0, 1e-3, _tiny_data(), spec, None)
    _, every3 = train_bc("dopr-adamw", 0, 1e-3, _tiny_data(), replace(spec, refresh_every=3), None)
    _, blocked = train_bc("dopr-adamw", 0, 1e-3, _tiny_data(), replace(spec, max_block=4), None)
    assert {s["refreshes"] for s in exact["dopr_stats"].values()} == {7}
    assert {s["refreshes"] for s in every3["dopr_stats"].values()} == {3}  # steps 0, 3, 6
    assert {s["blocks"] for s in exact["dopr_stats"].values()} == {1}
    assert max(s["blocks"] for s in blocked["dopr_stats"].values()) > 1


def test_max_rows_reaches_dopr() -> None:
    """A row cap the batch exceeds changes the step; one it does not exceed is exact mode, bit for bit."""
    import torch

    from dopr_bench.bc.train import train_bc

    spec = replace(TINY_SPEC, steps=5, standardize=False, log_every=5)
    exact, _ = train_bc("dopr-adamw", 0, 1e-3, _tiny_data(), spec, None)
    wide, _ = train_bc("dopr-adamw", 0, 1e-3, _tiny_data(), replace(spec, max_rows="1000"), None)
    capped, _ = train_bc("dopr-adamw", 0, 1e-3, _tiny_data(), replace(spec, max_rows="4"), None)
    for a, b in zip(exact.state_dict().values(), wide.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(exact.state_dict().values(), capped.state_dict().values(),
                                                     strict=True))


def test_bad_max_rows_is_refused_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--max-rows must be 'auto' or a positive integer"):
        main(["run", "idp", "--optimizers", "dopr-adamw", "--seeds", "1", "--max-rows", "half",
              "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")] + TINY)
    assert not (tmp_path / "out" / "results.json").exists()


def test_merge_runs_of_parallel_seeds(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = ["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "1", "--cache", str(cache)] + TINY
    main(base + ["--out", str(tmp_path / "a")])
    main(base + ["--first-seed", "1", "--out", str(tmp_path / "b")])
    main(["merge", str(tmp_path / "a"), str(tmp_path / "b")])
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert sorted((r["optimizer"], r["seed"]) for r in res["runs"]) == [("adamw", 0), ("adamw", 1),
                                                                        ("dopr-adamw", 0), ("dopr-adamw", 1)]
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "| adamw | 2 |" in summary and "dopr-adamw − adamw | 2 |" in summary
    assert "dopr-bench merge" in (tmp_path / "a" / "COMMAND.txt").read_text()
    with pytest.raises(SystemExit, match="more than one part"):  # the same runs twice
        main(["merge", str(tmp_path / "a"), str(tmp_path / "b")])
    main(base + ["--damping", "0.5", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="other settings"):
        main(["merge", str(tmp_path / "a"), str(tmp_path / "c")])


def test_quick_main_job_rolls_out_whole_episodes_of_the_full_protocol() -> None:
    """The quick IDP job differs from the full protocol only in budget (demos, steps, rollouts, seeds), and caps no
    episode below the task's length."""
    import gymnasium as gym

    full, quick = bc_bench.resolve("idp", False, {}), bc_bench.resolve("idp", True, {})
    assert quick.max_episode_steps is None and gym.spec(quick.env_id).max_episode_steps == 1000
    changed = {k for k in full.__dataclass_fields__ if getattr(full, k) != getattr(quick, k)}
    assert changed <= {"demos", "steps", "episodes", "val_demos", "log_every", "seeds"}
