"""Reading JSON: the one reader for every JSON file fmrl_sdk reads (bundles, runs, features, catalogues).

The rules, the same for every file:

* encoding: UTF-8, a byte order mark at the start allowed;
* duplicate keys: an object (at any depth) with the same key twice is refused (JSON parsers disagree on
  which value wins);
* nesting: deeper than the parser can follow is refused ("nested too deeply"), as is a number too long to
  convert;
* size: a JSON file larger than MAX_JSON_BYTES, or a JSONL line longer than MAX_JSONL_LINE_BYTES, is
  refused before it is parsed.

Every failure is one FmrlError line, "FILE:LINE: what" (LINE where the parser knows it). The simulate
stream (simulate/events.py) classifies its bad lines into kinds instead of raising; it may use the same
duplicate-key hook (`object_without_duplicates`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .errors import FmrlError

MAX_JSON_BYTES = 1 << 31          # 2 GiB: an items.json or item-vectors file of millions of items fits
MAX_JSONL_LINE_BYTES = 1 << 26    # 64 MiB: one catalogue item or interaction
BOM = b"\xef\xbb\xbf"


class DuplicateKey(ValueError):
    """Raised by object_without_duplicates; args[0] is the key."""


def object_without_duplicates(pairs: list) -> dict:
    """object_pairs_hook: the object as a dict, or DuplicateKey naming the first repeated key."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(key)
    return obj


_decoder = json.JSONDecoder(object_pairs_hook=object_without_duplicates)


def _where(name: str, line: int | None) -> str:
    return name if line is None else f"{name}:{line}"


def parse_json_text(text: str, name: str, what: str | None = None, line: int | None = None) -> Any:
    """Decode JSON text under the rules above. `name` (the file) and `line` (a JSONL line number: every
    message then names it) make the error; `what` says which part of the file it is ("the manifest")."""
    in_what = f" in {what}" if what else ""
    try:
        return _decoder.decode(text)
    except DuplicateKey as e:
        raise FmrlError(f"{_where(name, line)}: invalid JSON{in_what} (duplicate key {str(e.args[0])[:80]!r})") from None
    except json.JSONDecodeError as e:
        raise FmrlError(f"{name}:{e.lineno if line is None else line}: invalid JSON{in_what} ({e.msg})") from None
    except RecursionError:
        raise FmrlError(f"{_where(name, line)}: invalid JSON{in_what} (nested too deeply)") from None
    except (ValueError, MemoryError) as e:  # e.g. an integer with more digits than Python converts
        raise FmrlError(f"{_where(name, line)}: invalid JSON{in_what} ({str(e).split(';')[0]})") from None


def _check_size(size: int, name: str, limit: int) -> None:
    if size > limit:
        raise FmrlError(f"{name}: {size:,} bytes; a JSON file may hold at most {limit:,} bytes")


def read_json_bytes(data, name: str, what: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Decode JSON bytes (any bytes-like object) under the rules above; `name` is the file they came
    from. With `what`, the messages are those of the bundle readers (the C runtime gives the same)."""
    data = bytes(data)
    _check_size(len(data), name, max_bytes)
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if what:
            raise FmrlError(f"{name}: {what} is not UTF-8") from None
        line = data.count(b"\n", 0, e.start) + 1
        raise FmrlError(f"{name}:{line}: not UTF-8 text") from None
    return parse_json_text(text, name, what)


def read_json(path: str | Path, what: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in the file `path`, under the rules above; a missing file is "PATH: file not found"."""
    path = Path(path)
    if not path.exists():
        raise FmrlError(f"{path}: file not found")
    try:
        _check_size(path.stat().st_size, str(path), max_bytes)
        data = path.read_bytes()
    except OSError as e:
        raise FmrlError(f"{path}: cannot read ({e.strerror or e})") from None
    return read_json_bytes(data, str(path), what, max_bytes)


def read_jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, dict) for each non-blank line of a JSONL file, under the rules above (a BOM
    is allowed at the start of the file); every bad line is an FmrlError naming it."""
    path = Path(path)
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_JSONL_LINE_BYTES + 2)   # + "\r\n": a line of exactly the limit is read whole
            if not raw:
                return
            lineno += 1
            if len(raw.rstrip(b"\r\n")) > MAX_JSONL_LINE_BYTES:
                raise FmrlError(f"{path}:{lineno}: line longer than {MAX_JSONL_LINE_BYTES:,} bytes (the most a JSONL "
                                "line may hold)")
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise FmrlError(f"{path}:{lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            rec = parse_json_text(line, str(path), line=lineno)
            if not isinstance(rec, dict):
                raise FmrlError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec
