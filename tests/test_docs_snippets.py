"""The Python examples of README.md, docs/windows.md and docs/loader.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/windows.md", "docs/loader.md", "docs/index.md", "docs/frames.md"]


def blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), flags=re.M | re.S)


def _is_signature(block: str) -> bool:
    """A block that shows a call signature (``fb.X(a, *, b=...)``), not runnable code."""
    return bool(re.search(r"\(\s*\w+,\s*\*,", block))


CASES = [(page, k, b) for page in PAGES for k, b in enumerate(blocks(page)) if not _is_signature(b)]


def test_the_pages_have_examples():
    assert {page for page, _, _ in CASES} >= {"README.md", "docs/windows.md"}


@pytest.mark.parametrize("page, index, block", CASES, ids=[f"{p}#{k}" for p, k, _ in CASES])
def test_example_runs(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"{page} block {index}", "exec"), {"__name__": "__docs__"})
