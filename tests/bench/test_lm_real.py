"""The real recipe on local files only: a tiny Llama saved with save_pretrained, a local tokenizer, and local
GSM8K-style .jsonl datasets, through ``dopr-bench run lm --model PATH --dataset PATH`` (nothing downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("datasets")
pytest.importorskip("tokenizers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _gsm8k_like(path: Path, n: int, seed: int, q: str = "question", a: str = "answer") -> None:
    from dopr_bench.lm.synth import problems

    with path.open("w") as f:
        for p in problems(seed, n, (1, 2)):
            f.write(json.dumps({q: p.question, a: p.solution.replace("\n####", "\nSo it is.\n####")}) + "\n")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from dopr_bench.lm.synth import hf_tokenizer, pretrain_corpus, train_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = hf_tokenizer(train_tokenizer(pretrain_corpus(0, 200, 3), 300))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_local_model_and_dataset_reload(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dopr_bench.lm.data import Fields, load_rows, to_examples

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "llama" and tok.eos_token == "</s>"
    data = tmp_path / "train.jsonl"
    _gsm8k_like(data, 12, 0)
    rows = load_rows(str(data))
    assert len(rows) == 12
    ex = to_examples(rows, Fields(), "train")
    assert ex[0].prompt.startswith("Question: ") and ex[0].prompt.endswith("Answer:\n")
    assert ex[0].reference == json.loads(data.read_text().splitlines()[0])["answer"].split("#### ")[1]
    with pytest.raises(SystemExit, match="no field"):
        to_examples(rows, Fields(question="problem"), "train")


@pytest.mark.parametrize("lora", [False, True])
def test_real_recipe_through_cli(tiny_model: Path, tmp_path: Path, lora: bool) -> None:
    from dopr_bench.cli import main

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    _gsm8k_like(train, 30, 0)
    _gsm8k_like(test, 6, 1, q="problem", a="solution")
    out = tmp_path / "out"
    argv = ["run", "lm", "--model", str(tiny_model), "--dataset", str(train), "--eval-dataset", str(test),
            "--eval-question-field", "problem", "--eval-answer-field", "solution", "--optimizers",
            "adamw,dopr-adamw,muon,dopr-muon", "--seeds", "1", "--lrs", "1e-3", "--steps", "2", "--batch", "4",
            "--n-val", "4", "--n-eval", "4", "--max-new-tokens", "8", "--out", str(out), "--no-progress"]
    main(argv + (["--lora", "--lora-r", "2"] if lora else []))
    res = json.loads((out / "results.json").read_text())
    assert [r["optimizer"] for r in res["runs"]] == ["adamw", "dopr-adamw", "muon", "dopr-muon"]
    assert res["settings"]["lora"] is lora and res["settings"]["n_eval"] == 4
    for r in res["runs"]:
        assert r["n_eval"] == 4 and set(r["accuracy_by_group"]) == {"test.jsonl"}
        assert r["val_nll"] > 0 and r["steps_done"] == 2
    full = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
        tiny_model).parameters())
    assert (res["runs"][0]["trainable_params"] < full) is lora
    assert (out / "summary.md").exists() and (out / "nll_vs_accuracy.png").exists()


def test_held_out_eval_split_without_eval_dataset(tiny_model: Path, tmp_path: Path) -> None:
    from dopr_bench.cli import main

    train = tmp_path / "train.jsonl"
    _gsm8k_like(train, 20, 0)
    out = tmp_path / "out"
    main(["run", "lm", "--model", str(tiny_model), "--dataset", str(train), "--optimizers", "dopr-adamw", "--seeds",
          "1", "--lrs", "1e-3", "--steps", "1", "--batch", "2", "--n-val", "3", "--n-eval", "3", "--max-new-tokens",
          "4", "--out", str(out), "--no-progress"])
    res = json.loads((out / "results.json").read_text())
    assert res["runs"][0]["n_eval"] == 3 and res["settings"]["n_val"] == 3
    assert "14 examples" in res["source"]["description"]  # 20 - 3 val - 3 eval
