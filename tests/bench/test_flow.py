"""The flow-matching bench on a tiny budget, and its evaluator."""

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dopr_bench.core.bench import get_bench  # noqa: E402
from dopr_bench.core.report import summary_markdown  # noqa: E402
from dopr_bench.core.results import machine_line  # noqa: E402
from dopr_bench.core.sweep import run_sweep  # noqa: E402
from dopr_bench.flow.data import evaluator, frechet_distance, load_digits_split, sample_quality  # noqa: E402
from dopr_bench.flow.spec import FlowSpec  # noqa: E402
from dopr_bench.flow.train import sample  # noqa: E402


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2.0 + 1.0
    # ||mu_a - mu_b||^2 + tr(I + 4I - 2 * 2I) = 3 + 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_evaluator_separates_real_digits_from_noise_and_from_one_class(tmp_path):
    judge = evaluator(tmp_path)
    train_x, train_y, val_x, val_y = load_digits_split()
    assert (judge(val_x).argmax(1) == val_y).float().mean() > 0.95
    real = sample_quality(judge, train_x[:400], val_x)
    noise = sample_quality(judge, torch.randn(400, 64) * 0.5, val_x)
    one_class = sample_quality(judge, train_x[train_y == 3][:100], val_x)
    assert real["frechet"] * 20 < noise["frechet"] and real["frechet"] * 20 < one_class["frechet"]
    assert real["coverage"] == 10 and one_class["coverage"] == 1
    # cached: the second call loads the same frozen weights (weights_only)
    again = evaluator(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), again.state_dict().values()))


def test_truncated_evaluator_cache_is_reported_and_rebuilt(tmp_path, capsys):
    evaluator(tmp_path)
    path = tmp_path / "flow" / "digits-evaluator-v1.pt"
    path.write_bytes(path.read_bytes()[:100])
    evaluator(tmp_path)
    assert "unreadable" in capsys.readouterr().out


def test_euler_sampling_of_a_known_field():
    class Toward(torch.nn.Module):  # v = target - x0 along straight paths: constant velocity from x0
        def forward(self, x, t):
            return torch.ones_like(x)

    x = sample(Toward(), torch.zeros(2, 64), 8)
    assert torch.allclose(x, torch.ones(2, 64))


def test_pipeline_tiny_budget_and_resume(tmp_path):
    spec = FlowSpec(steps=20, batch=32, width=32, blocks=1, samples=64, integration_steps=(1, 4), log_every=10,
                    optimizers=("adamw", "dopr-adamw"), seeds=2)
    out, flow = tmp_path / "run", get_bench("flow")
    res = run_sweep(flow, "digits", spec, out, cache=tmp_path / "cache", progress=False)
    assert len(res["runs"]) == 4
    saved = json.loads((out / "results.json").read_text())
    run = saved["runs"][0]
    assert set(run["quality"]) == {"1", "4"} and np.isfinite(run["val_loss"])
    assert (out / "summary.md").exists() and (out / "flow_quality.png").exists() and (out / "flow_curves.png").exists()
    # same seed, same init and data: the two arms differ only by the optimizer
    a, d = (r for r in saved["runs"] if r["seed"] == 0)
    assert a["val_loss"] != d["val_loss"]
    # resume: nothing is redone
    again = run_sweep(flow, "digits", spec, out, cache=tmp_path / "cache", progress=False)
    assert [r["wall_s"] for r in again["runs"]] == [r["wall_s"] for r in saved["runs"]]
    assert saved["bench"] == "flow" and {"torch", "dopr", "diverged"} <= set(run)  # the provenance flow lacked
    # where each run ran: CPU model and the kernels torch used, listed in the summary (issue 23 item 5)
    assert run["machine"]["cpu"] and run["machine"]["cpu_capability"] and "blas" in run["machine"]
    summary = (out / "summary.md").read_text()
    assert "## Machines" in summary and f"- 4 run(s): {machine_line(run['machine'])}" in summary
    older = saved | {"runs": [{k: v for k, v in r.items() if k != "machine"} for r in saved["runs"]]}
    assert "## Machines" not in summary_markdown(older)  # folders made before it are reported as they were
    mixed = saved | {"runs": saved["runs"][:3] + older["runs"][3:]}
    assert "- 1 run(s): not recorded" in summary_markdown(mixed)
