"""docs/reliability.md names the test behind every row: each named test must exist, so the page stays true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def test_every_test_the_reliability_page_names_exists() -> None:
    text = (ROOT / "docs" / "reliability.md").read_text("utf-8").split("## Attack → behaviour → test")[1]
    named, last = 0, None
    for cell in re.findall(r"`([^`]+)`", text):
        m = re.fullmatch(r"((?:[\w/]+/)?test_\w+\.py)?(?:::(test_\w*?)(\*)?)?", cell.strip())
        if m is None or not (m[1] or m[2]):
            continue
        last = m[1] or last  # "::test_x" names a test of the file named before it
        assert last is not None, f"docs/reliability.md: {cell} follows no file"
        path = ROOT / "tests" / last
        assert path.is_file(), f"docs/reliability.md names {last}, which does not exist"
        if m[2]:
            have = _tests(path)
            ok = any(t.startswith(m[2]) for t in have) if m[3] else m[2] in have
            assert ok, f"docs/reliability.md names {last}::{m[2]}{m[3] or ''}, which does not exist"
        named += 1
    assert named >= 50
