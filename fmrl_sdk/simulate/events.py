"""events.jsonl: one interaction per line.

    {"user": str | int, "item": str | int, "ts": number (optional), "event": str (optional)}

Other keys are ignored; blank lines are skipped; a UTF-8 byte order mark at the start of a line is
ignored. Ids are compared as strings (user 7 and user "7" are the same user). A line is *bad*, and
counted by kind with its line number, when it is:

    invalid_json    not valid JSON for any reason: not UTF-8, a syntax error, nesting too deep for the
                    parser, a number too long to convert, a string with an unpaired surrogate escape
                    ("\\ud800" alone: no Unicode character)
    duplicate_key   an object (at any depth) with the same key twice (JSON parsers disagree on which wins)
    not_object      JSON, but not an object
    missing_field   no "user" or "item" (absent, null or "")
    wrong_type      user/item not an id (fmrl_sdk/ids.py: not a string or integer, a string holding NUL
                    ("\\u0000"), longer than MAX_ID_BYTES bytes as UTF-8), ts not a finite number, event not
                    a string
    unknown_item    item not in the bundle
    ts_backwards    ts smaller than the same user's previous valid event
    missing_ts      no ts while a time cut is in force (simulate cannot place the event before or after it)
"""

from __future__ import annotations

import json
import math

from ..ids import holds_surrogate, id_problem, id_text
from ..jsonio import DuplicateKey, object_without_duplicates

BAD_KINDS = ("invalid_json", "duplicate_key", "not_object", "missing_field", "wrong_type", "unknown_item",
             "ts_backwards", "missing_ts")
BOM = b"\xef\xbb\xbf"
MAX_WHAT_CHARS = 200   # a bad line's description (report samples, --strict errors) is cut to this length


def shorten(text: str, limit: int = MAX_WHAT_CHARS) -> str:
    """`text` cut to about `limit` characters, saying how long it was (a 10 MB id stays out of reports)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class BadLine(Exception):
    def __init__(self, kind: str, what: str):
        what = shorten(what)
        super().__init__(what)
        self.kind, self.what = kind, what


_decoder = json.JSONDecoder(object_pairs_hook=object_without_duplicates)


def parse_line(raw: bytes):
    """One raw line of the stream -> (user key, item key, ts or None, decoded object); None for a blank
    line; BadLine for anything else. Never raises another exception, whatever the bytes."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
        obj = _decoder.decode(text)
    except DuplicateKey as e:
        raise BadLine("duplicate_key", f"duplicate key {e.args[0]!r}") from None
    except UnicodeDecodeError:
        raise BadLine("invalid_json", "not UTF-8") from None
    except json.JSONDecodeError as e:
        if not raw.strip():
            return None
        raise BadLine("invalid_json", f"invalid JSON ({e.msg})") from None
    except RecursionError:
        raise BadLine("invalid_json", "invalid JSON (nested too deeply)") from None
    except (ValueError, MemoryError) as e:  # e.g. an integer with more digits than Python converts
        raise BadLine("invalid_json", f"invalid JSON ({str(e).split(';')[0]})") from None
    if "\\u" in text and _holds_unpaired_surrogate(obj):
        raise BadLine("invalid_json", "invalid JSON (an unpaired surrogate escape)")
    user, item, ts = check_fields(obj)
    return user, item, ts, obj


def _holds_unpaired_surrogate(value) -> bool:
    """Whether a decoded JSON value holds a string (key or value) with a surrogate escape ("\\ud800") that
    has no pair: Python's json decodes it, a strict parser (the C runtime's) refuses the line."""
    if type(value) is str:
        return holds_surrogate(value)
    if type(value) is dict:
        return any(_holds_unpaired_surrogate(k) or _holds_unpaired_surrogate(v) for k, v in value.items())
    if type(value) is list:
        return any(_holds_unpaired_surrogate(v) for v in value)
    return False


def check_fields(obj) -> tuple[str, str, object]:
    """(user key, item key, ts or None) from a decoded line, or raise BadLine."""
    if type(obj) is not dict:
        raise BadLine("not_object", f"expected a JSON object, got {type(obj).__name__}")
    user = obj.get("user")
    item = obj.get("item")
    if user is None or user == "":
        raise BadLine("missing_field", "missing 'user'")
    if item is None or item == "":
        raise BadLine("missing_field", "missing 'item'")
    for name, value in (("user", user), ("item", item)):   # fmrl_replay's check_fields: the same order
        problem = id_problem(value)
        if problem is not None:
            raise BadLine("wrong_type", f"'{name}' {problem}")
    ts = obj.get("ts")
    if ts is not None:
        t = type(ts)
        if (t is not int and t is not float) or (t is float and not math.isfinite(ts)):
            raise BadLine("wrong_type", f"'ts' must be a finite number, got {ts!r}")
    event = obj.get("event")
    if event is not None and type(event) is not str:
        raise BadLine("wrong_type", f"'event' must be a string, got {type(event).__name__}")
    return id_text(user), id_text(item), ts
