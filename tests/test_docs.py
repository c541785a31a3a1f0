"""The documentation says what the code does: a stale default, rule, snippet or link fails here.

Checked: the options tables (README and docs/options.md) against the constructors' signatures, both ways; the
documented `max_rows="auto"` cap and `solve="auto"` rule against the code's behavior; every Python block of the
README and the getting-started page runs; every relative link resolves; the README stays short."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dopr import ActivationPreconditioner, DoPr
from dopr.statistics import auto_row_cap

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
TABLES = [ROOT / "README.md", ROOT / "docs" / "options.md"]
ONLY_AP = {"eps"}  # rows marked "ActivationPreconditioner only"


def options_table(page: Path) -> dict[str, str]:
    """The `| option | default | meaning |` table: option name -> default cell."""
    text = page.read_text()
    start = text.index("| option | default | meaning |")
    rows: dict[str, str] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def documented_value(cell: str) -> object:
    return inspect.Parameter.empty if cell == "required" else ast.literal_eval(cell)


@pytest.mark.parametrize("page", TABLES, ids=lambda p: p.name)
def test_options_table_is_the_signature(page: Path) -> None:
    table = options_table(page)
    dopr = inspect.signature(DoPr.__init__).parameters
    ap = inspect.signature(ActivationPreconditioner.__init__).parameters
    named = {n for n, p in dopr.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
    assert set(table) - {"**base_kwargs"} - ONLY_AP == named, "the table's options are not DoPr's parameters"
    assert "**base_kwargs" in table and any(p.kind is p.VAR_KEYWORD for p in dopr.values())
    for name, cell in table.items():
        if name == "**base_kwargs":
            continue
        sig = ap if name in ONLY_AP else dopr
        assert documented_value(cell) == sig[name].default, f"{page.name}: {name} documented as {cell}"
        if name in ap and name != "model":  # the AP options take the same default in both constructors
            assert ap[name].default == sig[name].default, f"{name}: DoPr and ActivationPreconditioner disagree"
    assert set(ap) - {"self"} <= set(table), f"undocumented ActivationPreconditioner options {set(ap) - set(table)}"


def test_auto_row_cap_is_the_documented_formula() -> None:
    """Documented as `max(4 d, 1024)` rows."""
    for d in (1, 9, 255, 256, 257, 1000, 4097):
        assert auto_row_cap(d) == max(4 * d, 1024)


@pytest.mark.parametrize(("outputs", "refresh_every", "cholesky"),
                         [(4, 1, True), (5, 1, False), (1, 1, True), (4, 2, False)])
def test_solve_auto_is_the_documented_rule(outputs: int, refresh_every: int, cholesky: bool) -> None:
    """`"auto"`: Cholesky where Sigma is refreshed every step and the group has at most d/2 outputs, else the
    inverse (d = 8 here: 7 inputs plus the bias column); 64 rows, so the few-rows Woodbury form does not apply."""
    torch.manual_seed(0)
    model = nn.Linear(7, outputs)
    opt = DoPr(model, lr=1e-3, refresh_every=refresh_every)
    nn.functional.mse_loss(model(torch.randn(64, 7)), torch.randn(64, outputs)).backward()
    opt.step()
    (group,) = opt.preconditioner.groups.values()
    assert group.dim == 8
    assert group.factor.kind == ("cholesky" if cholesky else "inverse")


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)


SNIPPETS = [(page, i, code) for page in (ROOT / "README.md", ROOT / "docs" / "index.md")
            for i, code in enumerate(python_blocks(page))]


@pytest.mark.parametrize(("page", "index", "code"), SNIPPETS, ids=[f"{p.name}-{i}" for p, i, _ in SNIPPETS])
def test_python_snippet_runs(page: Path, index: int, code: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{page.name} block {index}:\n{code}\n{done.stderr[-3000:]}"


def test_pages_have_snippets() -> None:
    assert len(python_blocks(ROOT / "README.md")) >= 3


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README has {len(lines)} lines; keep it <= 250 (details go to docs/)"
    head = "\n".join(lines[:30])
    assert "./scripts/setup" in head and "dopr-bench run" in head and "./scripts/test" in head
