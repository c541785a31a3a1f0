"""``dopr-bench robo`` end to end on a tiny budget: results.json, summary, plots, COMMAND.txt, resume, --dataset."""

import json

import pytest

from dopr_bench import cli
from dopr_bench.robo import bench as robo_bench
from dopr_bench.robo import spec as robo_spec

TINY = ["--demos", "2", "--val-demos", "1", "--steps", "6", "--batch", "8", "--episodes", "1", "--evals", "2",
        "--max-episode-steps", "6", "--width", "32", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The --cache root; the robo bench keeps its demos under ``cache / "robo"``."""
    return tmp_path_factory.mktemp("robo-cache")


def test_pipeline_and_resume(tmp_path, cache, monkeypatch):
    out = tmp_path / "out"
    args = ["run", "robo", "lift", "--optimizers", "adamw,dopr-adamw", "--seeds", "1", "--out", str(out), "--cache",
            str(cache), *TINY]
    cli.main(args)
    res = json.loads((out / "results.json").read_text())
    assert [(r["optimizer"], r["seed"]) for r in res["runs"]] == [("adamw", 0), ("dopr-adamw", 0)]
    for r in res["runs"]:
        assert [c["step"] for c in r["checkpoints"]] == [3, 6]
        assert all(len(c["successes"]) == 1 for c in r["checkpoints"])
        assert r["val_loss"] > 0 and r["success_best"] >= r["success_final"]
    assert res["bench"] == "robo" and {"torch", "dopr", "lr"} <= set(res["runs"][0])
    assert res["runs"][1]["dopr_stats"]["encoders.agentview.conv1"]["refreshes"] == 6
    assert res["demos"]["expert_success"] == 1.0
    assert (out / "summary.md").read_text().startswith("# lift (Lift)")
    assert (out / "val_loss_vs_success.png").stat().st_size > 0
    assert (out / "success_over_training.png").stat().st_size > 0
    assert (out / "COMMAND.txt").read_text() == "dopr-bench " + " ".join(args) + "\n"

    def fail(*a, **k):
        raise AssertionError("a finished run was trained again")

    import dopr_bench.robo.train as robo_train

    monkeypatch.setattr(robo_train, "train_run", fail)
    cli.main(args)  # resumes: nothing left to do
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2
    with pytest.raises(SystemExit, match="other settings"):
        cli.main([a if a != "6" else "7" for a in args])


def test_same_data_same_init_across_arms(cache):
    """Identical seeds give identical runs (same data, init, minibatches, rollouts); arms differ."""
    spec = robo_spec.resolve("lift", True, {"demos": 2, "val_demos": 1, "steps": 3, "batch": 4, "episodes": 1,
                                                "evals": 1, "max_episode_steps": 4, "width": 16, "log_every": 1})
    train, val, env_args, _ = robo_bench.load_demos("lift", spec, cache / "robo", progress=False)
    from dopr_bench.robo.envs import RoboEnv
    from dopr_bench.robo.train import make_data, train_run

    env = RoboEnv(env_args, spec.cameras, spec.image_size)
    tr, va = make_data(train, spec.cameras, spec.chunk, spec.shift), make_data(val, spec.cameras, spec.chunk, 0)
    a, b = (train_run("adamw", 0, 1e-3, spec, tr, va, env) for _ in range(2))
    c = train_run("muon", 0, 1e-3, spec, tr, va, env)
    env.close()
    assert a["train_curve"] == b["train_curve"] and a["checkpoints"] == b["checkpoints"]
    assert c["train_curve"][0][1] == a["train_curve"][0][1]  # first minibatch loss: same init and batch
    assert c["val_loss"] != a["val_loss"]


def test_dataset_path(tmp_path, cache):
    """--dataset reads a robomimic-layout file (here a cached expert file) and rolls out in the env it names."""
    from dopr_bench.robo.data import cached_expert_demos

    path = cached_expert_demos("lift", "train", 2, horizon=200, cache=cache / "robo")
    out = tmp_path / "ds"
    tiny = TINY[:]
    tiny[1] = "1"  # --demos 1 (and --val-demos 1): the file holds 2
    cli.main(["run", "robo", "mydata", "--dataset", str(path), "--optimizers", "adamw", "--seeds", "1", "--out",
              str(out), *tiny])
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["source"].startswith("dataset:") and res["settings"]["env_name"] == "Lift"
    assert res["settings"]["render"] == "fast"  # the file says how its images were rendered
    assert res["demos"]["train_frames"] > 0 and len(res["runs"]) == 1
