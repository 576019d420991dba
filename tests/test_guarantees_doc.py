"""docs/guarantees.md names the test that holds each finding and guarantee: every name must be a test that
exists, so the table cannot point at a test that was renamed or removed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_guarantees_exists():
    text = (ROOT / "docs" / "guarantees.md").read_text()
    named = set(re.findall(r"(tests/test_\w+\.py)::(test_\w+)", text))
    assert len(named) >= 30
    missing = []
    for file, name in sorted(named):
        path = ROOT / file
        tests = {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)} \
            if path.is_file() else set()
        if name not in tests:
            missing.append(f"{file}::{name}")
    assert missing == []
