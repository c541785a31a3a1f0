"""The synthetic LM bench end to end on a tiny budget: generator, tokenizer, pretraining cache, arms, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")

from dopr_bench.lm import synth  # noqa: E402
from dopr_bench.lm.answers import extract_answer  # noqa: E402
from dopr_bench.lm.bench import BENCH as LM  # noqa: E402
from dopr_bench.lm.bench import Prepared as LMPrepared  # noqa: E402
from dopr_bench.lm.spec import LMSpec  # noqa: E402


def run_lm_bench(source: object, arms: list[str], seeds: list[int], lrs: list[float], spec: LMSpec,
                 out: Path) -> dict:
    """The core sweep over the LM bench, with ``source`` (a tiny synthetic task) in place of the built-in one."""
    from dataclasses import replace

    from dopr_bench.core.sweep import run_sweep

    bench = replace(LM, prepare=lambda s, task, cache: LMPrepared(s, task, cache, source=source))
    spec = replace(spec, optimizers=tuple(arms), seeds=len(seeds), first_seed=seeds[0], lrs=tuple(lrs))
    return run_sweep(bench, "synthetic", spec, out, cache=out / "cache", progress=False)


TINY = synth.SynthTask(synth.SynthModelSpec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, vocab=300,
                                            pretrain_docs=200, pretrain_steps=3, pretrain_batch=4),
                       n_train=40, eval_steps=(1, 2, 3), n_val=6, n_eval_per_k=2)


def test_problems_are_deterministic_and_correct() -> None:
    a, b = synth.problems(3, 30, (1, 2, 6)), synth.problems(3, 30, (1, 2, 6))
    assert a == b
    assert a != synth.problems(4, 30, (1, 2, 6))
    for p in a:
        lines = p.solution.split("\n")
        assert len(lines) == p.steps + 1
        value = int(p.question.split(" has ")[1].split()[0])
        for i, line in enumerate(lines[:-1]):
            tag, lhs, op, n, eq, res = line.split()
            assert tag == f"({i + 1})" and int(lhs) == value and eq == "="
            value = value + int(n) if op == "+" else value - int(n)
            assert int(res) == value and 0 <= value <= synth.MAX_VALUE
            assert f"({i + 1}) " in p.question
        assert extract_answer(p.solution) == str(p.answer) == str(value)


def test_tokenizer_is_deterministic_and_round_trips() -> None:
    docs = synth.pretrain_corpus(0, 300, 4)
    t1, t2 = synth.train_tokenizer(docs, 300), synth.train_tokenizer(docs, 300)
    assert t1.to_str() == t2.to_str()
    text = synth.problems(1, 1, (4,))[0].text()
    assert t1.decode(t1.encode(text).ids) == text
    assert all(len(t) == 1 for t in t1.encode("12 + 345").tokens if t.strip("Ġ").isdigit())  # digit by digit


@pytest.mark.parametrize("lora", [False, True])
def test_pipeline_tiny(tmp_path: Path, lora: bool) -> None:
    source = synth.synth_source(TINY, tmp_path / "cache", progress=False)
    ckpt = Path(source.info["checkpoint"])
    assert (ckpt / "config.json").exists() and (ckpt / "tokenizer.json").exists()
    assert synth.synth_source(TINY, tmp_path / "cache", progress=False).info["checkpoint"] == str(ckpt)  # cached
    cfg = LMSpec(steps=2, batch=4, lora=lora, lora_r=2, max_new_tokens=12, eval_batch=8, log_every=1)
    out = tmp_path / "out"
    arms = ["adamw", "dopr-adamw", "muon", "dopr-muon"]
    res = run_lm_bench(source, arms, [0, 1], [1e-3], cfg, out)
    assert len(res["runs"]) == 8
    for r in res["runs"]:
        assert r["mode"] == ("lora" if lora else "full")
        assert 0.0 <= r["accuracy"] <= 1.0 and set(r["accuracy_by_group"]) == {"1", "2", "3"}
        assert r["val_nll"] > 0 and not r["diverged"]
    assert {r["trainable_params"] for r in res["runs"]} == {res["runs"][0]["trainable_params"]}
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 8
    md = (out / "summary.md").read_text()
    assert "dopr-adamw − adamw" in md and "dopr-muon − muon" in md
    for name in ("nll_vs_accuracy.png", "accuracy_vs_steps.png", "curves.png"):
        assert (out / name).stat().st_size > 1000
    from dopr_bench.cli import main

    (out / "summary.md").unlink()
    main(["report", str(out)])  # rewrites the LM summary from results.json
    assert "dopr-muon − muon" in (out / "summary.md").read_text()
    # resumable: a second call with the same settings trains nothing new
    again = run_lm_bench(source, arms[:2], [0], [1e-3], cfg, out)
    assert len(again["runs"]) == 8


def test_same_arm_same_seed_is_reproducible(tmp_path: Path) -> None:
    source = synth.synth_source(TINY, tmp_path / "cache", progress=False)
    cfg = LMSpec(steps=2, batch=4, max_new_tokens=8, eval_batch=8)
    r1 = run_lm_bench(source, ["dopr-adamw"], [0], [1e-3], cfg, tmp_path / "a")
    r2 = run_lm_bench(source, ["dopr-adamw"], [0], [1e-3], cfg, tmp_path / "b")
    assert r1["runs"][0]["val_nll"] == r2["runs"][0]["val_nll"]
    assert r1["runs"][0]["accuracy"] == r2["runs"][0]["accuracy"]


@pytest.mark.parametrize("sigma_rows", ["attention-mask", "all"])
def test_padding_rows_stay_out_of_sigma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigma_rows: str) -> None:
    """With right-padded batches, each Linear layer's Sigma counts exactly the attention-mask tokens."""
    import importlib.util

    from dopr_bench.lm import train as lm_train

    # the library module that forms Sigma from a layer's rows (it moved once: look it up rather than name it)
    names = [n for n in ("dopr.statistics", "dopr.preconditioner") if importlib.util.find_spec(n) is not None]
    pre = next(m for m in map(importlib.import_module, names) if hasattr(m, "second_moment_sum"))

    source = synth.synth_source(TINY, tmp_path / "cache", progress=False)
    encoded = lm_train.encode(source.tokenizer, source.train(0)[:4], 128)
    assert len({len(e.ids) for e in encoded}) > 1  # the batch really is padded
    rows: list[int] = []
    real = pre.second_moment_sum

    def spy(z, **kw):
        rows.append(z.shape[0])
        return real(z, **kw)

    monkeypatch.setattr(pre, "second_moment_sum", spy)
    cfg = LMSpec(steps=1, batch=4, sigma_rows=sigma_rows)  # batch = all 4 examples
    lm_train.finetune(source.load_model(), encoded, [], lm_train.pad_id(source.tokenizer), "dopr-adamw", 1e-3, cfg, 0)
    tokens, padded = sum(len(e.ids) for e in encoded), len(encoded) * max(len(e.ids) for e in encoded)
    assert rows and set(rows) == {tokens if sigma_rows == "attention-mask" else padded}


def test_max_block_reaches_dopr(tmp_path: Path) -> None:
    from dopr_bench.lm import train as lm_train

    source = synth.synth_source(TINY, tmp_path / "cache", progress=False)
    encoded = lm_train.encode(source.tokenizer, source.train(0)[:4], 128)
    cfg = LMSpec(steps=1, batch=4, max_block=16)
    _, rec = lm_train.finetune(source.load_model(), encoded, [], lm_train.pad_id(source.tokenizer), "dopr-adamw",
                               1e-3, cfg, 0)
    blocks = {name: s["blocks"] for name, s in rec["dopr_stats"].items()}
    assert blocks.pop("model.embed_tokens") == 1  # a diagonal Sigma is never blocked
    assert set(blocks.values()) == {2, 4}, blocks  # 32 and 64 inputs in blocks of 16
    assert cfg.settings()["max_block"] == 16 and LMSpec().settings()["max_block"] is None
