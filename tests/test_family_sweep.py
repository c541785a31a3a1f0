"""The fast subset of benchmarks/family_sweep.py (``--fast``), one test per family: each builds, trains 3 steps
with DoPr (base AdamW) without crashing, its loss stays finite, no layer misses its statistics, and what gets no AP
is named: at least 95% of the weight elements get AP unless named gaps explain the rest. The full sweep is the
benchmark itself (results/family-sweep)."""

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from families import BY_NAME  # noqa: E402
from family_sweep import FAST, main, sweep_one  # noqa: E402


@pytest.mark.parametrize("name", FAST)
def test_fast_family(name):
    family = BY_NAME[name]
    if family.kind == "timm":
        pytest.importorskip("timm")
    row = sweep_one(family)
    assert row.status == "ok", row.status
    assert len(row.losses) == 3 and all(math.isfinite(x) for x in row.losses), row.losses
    assert row.share is not None and 0.0 <= row.share <= 1.0
    assert not row.missing and not row.no_input_warning, row.missing  # BART/OPT crashed, Mixtral's experts missed
    assert row.share >= 0.95 or row.gaps, row.share


def test_cli_writes_table(tmp_path, capsys):
    out = tmp_path / "sweep.md"
    rows = main(["--only", "opt", "--out", str(out)])
    assert [r.family for r in rows] == ["opt"]
    text = out.read_text()
    assert "| family | kind | status | AP share |" in text and "| opt | causal | ok |" in text
    assert "1 families in" in capsys.readouterr().out
