"""results/EVIDENCE-TABLES.md is what its commands print today: every section is regenerated from the committed
folders (by `dopr-bench arms / paired / diagnostics`, in this process) and compared byte for byte, so a change to
the tables' code or to a folder that moves a number fails here (rewrite the file with scripts/evidence/tables.sh)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("scipy")

from dopr_bench.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TABLES = ROOT / "results" / "EVIDENCE-TABLES.md"
SECTION = re.compile(r"\n## [^\n]*\n\n`([^`]*)`\n\n")  # as scripts/evidence/tables.sh writes a section's head


def sections() -> list[tuple[str, str]]:
    parts = SECTION.split(TABLES.read_text())
    return list(zip(parts[1::2], parts[2::2]))


def test_every_section_has_a_command() -> None:
    names = [cmd.split()[0] for cmd, _ in sections()]
    assert len(names) >= 10 and set(names) <= {"dopr-bench", "results/lm-synthetic-sweep/summary.md"}, names


@pytest.mark.parametrize(("command", "body"), sections(), ids=lambda v: v[:60] if v.startswith(("dopr", "res")) else "")
def test_section_is_what_its_command_prints(command: str, body: str, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    if not command.startswith("dopr-bench "):  # the LM section: the folder's own summary from its lr sweep on
        summary = (ROOT / command).read_text()
        assert body == summary[summary.index("\n", summary.index("\n## Learning-rate sweep") + 1) + 1:]
        return
    capsys.readouterr()
    main(shlex.split(command)[1:])
    assert capsys.readouterr().out == body, f"rewrite {os.path.relpath(TABLES)} with scripts/evidence/tables.sh"


def test_paired_folders_reproduce_a_committed_comparison(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """results/lm-rows-auto/PAIRED.md: the output, then a line with the command that printed it."""
    monkeypatch.chdir(ROOT)
    text = (ROOT / "results" / "lm-rows-auto" / "PAIRED.md").read_text()
    body, command = text.rsplit("\ncommand: ", 1)
    capsys.readouterr()
    main(shlex.split(command)[1:])
    assert capsys.readouterr().out == body


def test_shared_lr_has_a_row_per_shared_lr(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from dopr_bench.core import stats
    from dopr_bench.core.results import load_results

    monkeypatch.chdir(ROOT)
    folder = "results/hopper-std-d5-s1000-muon"
    runs = load_results(ROOT / folder)["runs"]
    shared = set(stats.lrs(stats.select(runs, "muon"))) & set(stats.lrs(stats.select(runs, "dopr-muon")))
    capsys.readouterr()
    main(["shared-lr", folder, "muon", "dopr-muon"])
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| [0-9.e-]+ \| \d+ \|", line)]
    assert len(rows) == len(shared) >= 2
    assert [float(r.split("|")[1]) for r in rows] == sorted(shared)


def test_tables_refuse_to_mix_benches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match="different benches"):
        main(["arms", "a=results/hopper-std-d5-s1000:adamw", "b=results/lm-rows-exact:dopr-adamw"])
