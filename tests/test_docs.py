"""The documentation says what the code does: a stale default, rule, snippet or link fails here.

Checked: the options tables (README and docs/options.md) against the constructors' signatures, both ways; the
documented `max_rows="auto"` cap and `solve="auto"` rule against the code's behavior; every Python block of the
README and the getting-started page runs; every relative link resolves; the README stays short."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dopr import ActivationPreconditioner, APOptions, DoPr
from dopr.statistics import auto_row_cap

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
TABLES = [ROOT / "README.md", ROOT / "docs" / "options.md"]


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
    """The table lists DoPr's parameters in its signature's order with its defaults; the AP options among them are
    exactly APOptions' fields, and ActivationPreconditioner's signature takes the same ones with the same defaults."""
    table = options_table(page)
    dopr = inspect.signature(DoPr.__init__).parameters
    ap = inspect.signature(ActivationPreconditioner.__init__).parameters
    in_order = [f"**{n}" if p.kind is p.VAR_KEYWORD else n for n, p in dopr.items() if n != "self"]
    assert list(table) == in_order, f"{page.name}: the table's rows are not DoPr's parameters in order"
    for name, cell in table.items():
        if not name.startswith("**"):
            assert documented_value(cell) == dopr[name].default, f"{page.name}: {name} documented as {cell}"
    fields = {f.name: f.default for f in dataclasses.fields(APOptions)}
    assert {n: ap[n].default for n in ap if n not in ("self", "model", "options")} == fields
    assert {n: dopr[n].default for n in fields} == fields


def test_options_are_checked_and_misspellings_named() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="'dampng' \\(did you mean 'damping'\\?\\)"):
        ActivationPreconditioner(model, dampng=1.0)
    with pytest.raises(TypeError, match="looks like the DoPr option 'max_rows'"):
        DoPr(model, lr=1e-3, max_row=8)
    with pytest.raises(ValueError, match="max_rows must be"):
        DoPr(model, lr=1e-3, options=APOptions(damping=1.0), max_rows=0)
    opt = DoPr(model, lr=1e-3, options=APOptions(damping=1.0, solve="inverse"), damping=2.0, betas=(0.8, 0.9))
    assert opt.preconditioner.options == APOptions(damping=2.0, solve="inverse")
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    opt.remove()


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
