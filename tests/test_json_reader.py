"""fmrl_sdk.jsonio is the one JSON reader: UTF-8 (a BOM allowed), no duplicate keys, nesting and size
bounded, every failure one FmrlError line naming the file (and the line where known); and no other module
parses JSON files itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fmrl_sdk import jsonio
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.jsonio import read_json, read_json_bytes, read_jsonl_objects
from tests.helpers import DEEP

PACKAGE = Path(__file__).resolve().parent.parent / "fmrl_sdk"
# modules that still call json.load(s) themselves, and why (a shrinking list)
OWN_PARSERS = {
    "jsonio.py": "the reader",
    "simulate/events.py": "classifies bad stream lines into kinds instead of raising",
    "data/dataset.py": "meta.json lines are JSON or a Python dict literal (ast.literal_eval after json fails)",
}


def error(call, *args, **kwargs) -> str:
    with pytest.raises(FmrlError) as e:
        call(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("data, message", [
    (b'{"a": 1, "b": {"k": 1, "k": 2}}', "x.json: invalid JSON (duplicate key 'k')"),
    (DEEP.encode(), "x.json: invalid JSON (nested too deeply)"),
    (b'{"a": ' + b"9" * 5000 + b"}", "x.json: invalid JSON (Exceeds the limit (4300 digits)"),
    (b'{\n"a": 1,\n}', "x.json:3: invalid JSON (Expecting property name enclosed in double quotes)"),
    (b'{\n"a": "\xff"}', "x.json:2: not UTF-8 text"),
    (b"\xef\xbb\xbf\xef\xbb\xbf{}", "x.json:1: invalid JSON (Expecting value)"),   # one BOM only
])
def test_bad_json_bytes_are_one_line_errors(data, message):
    assert error(read_json_bytes, data, "x.json").startswith(message)


def test_a_bom_is_allowed_and_the_bundle_messages_name_the_part():
    assert read_json_bytes(b'\xef\xbb\xbf{"a": [1, 2]}', "x.json") == {"a": [1, 2]}
    assert error(read_json_bytes, b"\xff", "b/items.json", "items.json") == "b/items.json: items.json is not UTF-8"
    assert error(read_json_bytes, b'{"k": 1, "k": 1}', "b/manifest.json", "the manifest") == \
        "b/manifest.json: invalid JSON in the manifest (duplicate key 'k')"


def test_files_over_the_size_limit_are_refused_before_parsing(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"a": "' + "x" * 100 + '"}')
    assert error(read_json, path, max_bytes=50) == f"{path}: 109 bytes; a JSON file may hold at most 50 bytes"
    assert read_json(path)["a"] == "x" * 100
    assert error(read_json, tmp_path / "missing.json") == f"{tmp_path / 'missing.json'}: file not found"


def test_jsonl_errors_name_the_line(tmp_path, monkeypatch):
    path = tmp_path / "items.jsonl"
    good = b'{"item": "a"}\n\n'
    cases = {b'{"item": "b", "item": "c"}': f"{path}:3: invalid JSON (duplicate key 'item')",
             b'{"item": "\xe9"}': f"{path}:3: not UTF-8 text",
             b"[1]": f"{path}:3: expected a JSON object, got list",
             DEEP.encode(): f"{path}:3: invalid JSON (nested too deeply)",
             b'{"item": ': f"{path}:3: invalid JSON (Expecting value)"}
    for bad, message in cases.items():
        path.write_bytes(good + bad + b"\n")
        assert error(list, read_jsonl_objects(path)) == message
    path.write_bytes(b'\xef\xbb\xbf{"item": "a"}\r\n{"item": "b"}')
    assert list(read_jsonl_objects(path)) == [(1, {"item": "a"}), (2, {"item": "b"})]
    monkeypatch.setattr(jsonio, "MAX_JSONL_LINE_BYTES", 10)
    assert error(list, read_jsonl_objects(path)) == f"{path}:1: line longer than 10 bytes (the most a JSONL line may hold)"
    # a line of exactly the limit ending in CRLF is one line: the numbers of the lines after it stay right
    path.write_bytes(b'{"a": 12}\r\n{"a": 123}\r\n[]\r\n')
    monkeypatch.setattr(jsonio, "MAX_JSONL_LINE_BYTES", 9)
    assert error(list, read_jsonl_objects(path)) == f"{path}:2: line longer than 9 bytes (the most a JSONL line may hold)"
    monkeypatch.setattr(jsonio, "MAX_JSONL_LINE_BYTES", 10)
    assert error(list, read_jsonl_objects(path)) == f"{path}:3: expected a JSON object, got list"


def test_no_module_parses_json_files_itself():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and \
                    isinstance(node.value, ast.Name) and node.value.id == "json":
                found.setdefault(str(path.relative_to(PACKAGE)), []).append(node.lineno)
    assert set(found) <= set(OWN_PARSERS), {k: v for k, v in found.items() if k not in OWN_PARSERS}
