"""Instruction datasets for the real recipe: a hub name or a local file/directory, through ``datasets``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .answers import extract_answer
from .train import Example

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:\n"
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
