"""What the LM bench fine-tunes and judges (:class:`Source`), and the instruction datasets of the real recipe: a hub
name or a local file/directory, through ``datasets``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .answers import extract_answer
from .spec import LMSpec
from .train import Example

if TYPE_CHECKING:
    from torch import nn

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:\n"


@dataclass
class Source:
    """What a bench fine-tunes and how it judges it."""

    name: str
    load_model: Callable[[], nn.Module]  # a fresh copy of the base model
    tokenizer: Any
    train: Callable[[int], list[Example]]  # training examples for a seed
    val: list[Example]  # held-out examples of the training distribution: validation NLL
    evals: list[Example]  # judged by generation (exact match); ``group`` gives the breakdown
    info: dict[str, Any] = field(default_factory=dict)
_LOCAL_KINDS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass(frozen=True)
class Fields:
    question: str = "question"
    answer: str = "answer"  # the solution the model is trained to write
    reference: str | None = None  # a field with the bare final answer; None: extract it from the answer field
    template: str = DEFAULT_TEMPLATE


def load_rows(name_or_path: str, config: str | None = None, split: str = "train") -> Any:
    """A ``datasets.Dataset``: a local .json/.jsonl/.csv/.parquet file, a ``save_to_disk`` directory, a local
    dataset script/data directory, or a hub name (``config`` and ``split`` apply to the last three)."""
    import datasets

    path = Path(name_or_path).expanduser()
    if path.is_file():
        kind = _LOCAL_KINDS.get(path.suffix.lower())
        if kind is None:
            raise SystemExit(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(_LOCAL_KINDS)}")
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(str(path) if path.is_dir() else name_or_path, config, split=split)


def to_examples(rows: Any, fields: Fields, group: str, limit: int | None = None,
                skip: int = 0) -> list[Example]:
    """Rows -> Examples (prompt from the template, target = answer field, reference = final answer)."""
    cols = set(rows.column_names)
    for f in (fields.question, fields.answer, fields.reference):
        if f is not None and f not in cols:
            raise SystemExit(f"dataset has no field {f!r}; its fields are {sorted(cols)} "
                             "(set --question-field / --answer-field / --reference-field)")
    end = len(rows) if limit is None else min(len(rows), skip + limit)
    out = []
    for i in range(skip, end):
        r = rows[i]
        answer = str(r[fields.answer])
        ref = str(r[fields.reference]) if fields.reference else extract_answer(answer)
        if ref is None:
            continue  # no final answer to judge against
        out.append(Example(fields.template.format(question=str(r[fields.question]).strip()), answer.strip(), ref,
                           group))
    return out


def shuffled(rows: Any, seed: int) -> Any:
    return rows.shuffle(seed=seed) if len(rows) > 1 else rows


def real_source(a: LMSpec) -> Source:
    """Any causal LM checkpoint (``a.model``) on any instruction dataset (``a.dataset``), judged on a held-out part of
    it or on ``a.eval_dataset``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not a.dataset:
        raise SystemExit("--model needs --dataset (hub name or local file)")
    template = (a.prompt_template or DEFAULT_TEMPLATE).replace("\\n", "\n")
    fields = Fields(a.question_field, a.answer_field, a.reference_field, template)
    rows = shuffled(load_rows(a.dataset, a.dataset_config, a.train_split), 0)
    name = Path(a.dataset).name or a.dataset
    val = to_examples(rows, fields, name, limit=a.n_val)
    skip = a.n_val
    if a.eval_dataset:
        efields = Fields(a.eval_question_field or a.question_field, a.eval_answer_field or a.answer_field,
                         a.eval_reference_field or a.reference_field, template)
        erows = load_rows(a.eval_dataset, a.eval_config, a.eval_split)
        evals = to_examples(erows, efields, Path(a.eval_dataset).name or a.eval_dataset, limit=a.n_eval)
    else:
        evals = to_examples(rows, fields, name, limit=a.n_eval, skip=a.n_val)
        skip += a.n_eval
    train_all = to_examples(rows, fields, name, limit=a.n_train, skip=skip)
    if not train_all:
        raise SystemExit(f"no training examples left in {a.dataset} after {skip} held out (val + eval)")
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"

    def load() -> Any:
        import torch

        return AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)

    desc = (f"Model {a.model}; trained on {len(train_all)} examples of {a.dataset} (fields {fields.question!r} -> "
            f"{fields.answer!r}); validation NLL on {len(val)} held-out ones; judged on {len(evals)} examples of "
            f"{a.eval_dataset or a.dataset + ' (held out)'}.")
    return Source(f"{Path(a.model).name}@{name}", load, tok, lambda seed: train_all, val, evals,
                  {"description": desc, "model": a.model, "dataset": a.dataset, "eval_dataset": a.eval_dataset})
