"""SECURITY.md names, for each requirement, the tests that prove it: every row of its
requirement tables must name at least one, and every test it names must exist (the
suite itself shows that they pass)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(test_[a-z0-9_]+\.py)::(test_[A-Za-z0-9_]+)`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def _requirement_rows(text: str) -> list[str]:
    """The body rows of the tables under "## Requirements and the tests that prove them"."""
    section = text.split("## Requirements and the tests that prove them", 1)[1]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " ", ":"}:
            continue
        first = line.strip("|").split("|", 1)[0].strip()
        if first in {"requirement", "section"}:
            continue  # a header row
        rows.append(line)
    return rows


def test_every_requirement_row_names_a_test() -> None:
    rows = _requirement_rows((ROOT / "SECURITY.md").read_text(encoding="utf-8"))
    assert len(rows) > 40
    missing = [row[:80] for row in rows if not REFERENCE.search(row)]
    assert missing == []


def test_every_test_named_in_security_md_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert references
    known: dict[str, set[str]] = {}
    absent = []
    for file, name in references:
        path = ROOT / "tests" / file
        if file not in known:
            known[file] = _tests_in(path) if path.exists() else set()
        if name not in known[file]:
            absent.append(f"{file}::{name}")
    assert absent == []
