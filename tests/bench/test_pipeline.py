"""The whole idp pipeline on a tiny budget: expert, demos, BC, rollouts, results.json, plots, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from dopr_bench import runner  # noqa: E402
from dopr_bench.cli import main  # noqa: E402

TINY = ["--demos", "1", "--val-demos", "1", "--steps", "12", "--batch", "64", "--width", "16", "--blocks", "1",
        "--episodes", "2", "--max-episode-steps", "15", "--no-progress"]


def test_pipeline_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "2", "--out", str(out), "--cache", str(cache)]
    main(argv + TINY)
    res = json.loads((out / "results.json").read_text())
    assert {(r["optimizer"], r["seed"]) for r in res["runs"]} == {(a, s) for a in ("adamw", "dopr-adamw")
                                                                   for s in (0, 1)}
    for r in res["runs"]:
        assert len(r["returns"]) == 2 and len(r["lengths"]) == 2 and max(r["lengths"]) <= 15
        assert np.isfinite(r["val_loss"]) and np.isfinite(r["drift"]) and r["train_curve"]
        assert r["wall_s"] > 0
    assert res["settings"]["steps"] == 12 and res["settings"]["standardize"] is False
    assert res["settings"]["muon_ns_dtype"] == "float32"  # the CLI's default for the Muon arms' Newton-Schulz
    assert res["expert_demo_return"] > 9000
    for name in ("summary.md", "scatter_val_vs_return.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert "dopr-adamw − adamw" in (out / "summary.md").read_text()

    # same seed -> same init for both arms; DoPr must change the result
    by = {(r["optimizer"], r["seed"]): r for r in res["runs"]}
    assert by[("adamw", 0)]["val_curve"] != by[("dopr-adamw", 0)]["val_curve"]

    # resume: finished runs are not redone, a new seed is
    calls: list[tuple[str, int]] = []
    real = runner.train_bc

    def spy(arm: str, seed: int, *a: object, **k: object) -> object:
        calls.append((arm, seed))
        return real(arm, seed, *a, **k)

    monkeypatch.setattr(runner, "train_bc", spy)
    main(["run", "idp", "--optimizers", "adamw,dopr-adamw", "--seeds", "3", "--out", str(out), "--cache", str(cache)]
         + TINY)
    assert calls == [("adamw", 2), ("dopr-adamw", 2)]
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 6

    # other settings in the same --out are refused
    with pytest.raises(SystemExit):
        main(argv + TINY[:-1] + ["--lr", "0.5", "--no-progress"])


def _tiny_bc(**cfg_overrides: object) -> tuple[object, dict[str, object]]:
    """Random BC data (200 train, 50 val transitions) and a tiny training config."""
    import torch

    from dopr_bench.bc import BCData

    g = torch.Generator().manual_seed(0)
    data = BCData(torch.randn(200, 5, generator=g), torch.randn(200, 2, generator=g),
                  torch.randn(50, 5, generator=g), torch.randn(50, 2, generator=g))
    cfg = dict(width=8, blocks=1, steps=0, batch=32, lr=1e-3, damping=0.1, weight_decay=0.0, aux_lr=None, ema=0.1,
               std_floor=1e-3, clip=10.0, standardize=True, log_every=1, sigma=None)
    return data, cfg | cfg_overrides


def test_identical_init_and_batches_across_arms() -> None:
    import torch

    from dopr_bench.bc import train_bc

    data, cfg = _tiny_bc()
    stats = (data.obs.numpy().mean(0), data.obs.numpy().std(0))
    m1, _ = train_bc("adamw", 3, data, cfg, stats)
    m2, _ = train_bc("dopr-muon", 3, data, cfg, stats)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_refresh_every_reaches_dopr() -> None:
    from dopr_bench.bc import train_bc

    data, cfg = _tiny_bc(steps=7, standardize=False, log_every=7)
    _, exact = train_bc("dopr-adamw", 0, data, cfg, None)
    _, every3 = train_bc("dopr-adamw", 0, data, cfg | {"refresh_every": 3}, None)
    assert {s["refreshes"] for s in exact["dopr_stats"].values()} == {7}
    assert {s["refreshes"] for s in every3["dopr_stats"].values()} == {3}  # steps 0, 3, 6


def test_max_block_reaches_dopr() -> None:
    from dopr_bench.bc import train_bc

    data, cfg = _tiny_bc(steps=2, standardize=False, log_every=2)
    _, full = train_bc("dopr-adamw", 0, data, cfg, None)
    _, blocked = train_bc("dopr-adamw", 0, data, cfg | {"max_block": 4}, None)
    assert {s["blocks"] for s in full["dopr_stats"].values()} == {1}
    assert max(s["blocks"] for s in blocked["dopr_stats"].values()) > 1


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
    main(base[:-1] + ["--lr", "0.5", "--no-progress", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="other settings"):
        main(["merge", str(tmp_path / "a"), str(tmp_path / "c")])


def test_muon_ns_dtype_reaches_both_muon_arms() -> None:
    import torch
    from torch import nn

    from dopr import Muon
    from dopr_bench.bc import build_optimizer

    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    for arm in ("muon", "dopr-muon"):
        for choice, want in ((None, torch.bfloat16), ("float32", torch.float32)):
            opt = build_optimizer(model, arm, 1e-3, 0.1, 0.0, None, muon_ns_dtype=choice)
            muons = [o for _, o in opt.bases if isinstance(o, Muon)]  # DoPr and MultiOptimizer both keep .bases
            assert muons and {g["ns_dtype"] for o in muons for g in o.param_groups} == {want}, (arm, choice)


def test_train_bc_passes_the_muon_ns_dtype_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from dopr_bench import bc

    seen: list[object] = []
    real = bc.build_optimizer

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(args[7] if len(args) > 7 else kwargs.get("muon_ns_dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(bc, "build_optimizer", spy)
    data, cfg = _tiny_bc(steps=1, standardize=False, log_every=1)
    bc.train_bc("muon", 0, data, cfg, None)  # no setting: torch's bfloat16 (how the earlier folders were made)
    bc.train_bc("muon", 0, data, cfg | {"muon_ns_dtype": "float32"}, None)
    assert seen == [None, "float32"]
