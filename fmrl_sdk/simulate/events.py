"""events.jsonl: one interaction per line.

    {"user": str | int, "item": str | int, "ts": number (optional), "event": str (optional)}

Other keys are ignored; blank lines are skipped; a UTF-8 byte order mark at the start of a line is
ignored. Ids are compared as strings (user 7 and user "7" are the same user). A line is *bad*, and
counted by kind with its line number, when it is:

    invalid_json    not valid JSON for any reason: not UTF-8, a syntax error, nesting too deep for the
                    parser, a number too long to convert
    duplicate_key   an object (at any depth) with the same key twice (JSON parsers disagree on which wins)
    not_object      JSON, but not an object
    missing_field   no "user" or "item" (absent, null or "")
    wrong_type      user/item not a string or integer, or a string holding NUL ("\\u0000"), ts not a
                    finite number, event not a string
    unknown_item    item not in the bundle
    ts_backwards    ts smaller than the same user's previous valid event
    missing_ts      no ts while a time cut is in force (simulate cannot place the event before or after it)
"""

from __future__ import annotations

import json
import math

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
        obj = _decoder.decode(raw.decode("utf-8"))
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
    user, item, ts = check_fields(obj)
    return user, item, ts, obj


def _id_type_ok(value) -> bool:
    t = type(value)
    return t is str or t is int  # bool is a subclass of int but not an id


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
    if not _id_type_ok(user):
        raise BadLine("wrong_type", f"'user' must be a string or an integer, got {type(user).__name__}")
    if not _id_type_ok(item):
        raise BadLine("wrong_type", f"'item' must be a string or an integer, got {type(item).__name__}")
    # an id holding NUL cannot cross the C ABI (a C string ends there): refused alike by both runtimes
    if type(user) is str and "\0" in user:
        raise BadLine("wrong_type", "'user' must not contain NUL characters")
    if type(item) is str and "\0" in item:
        raise BadLine("wrong_type", "'item' must not contain NUL characters")
    ts = obj.get("ts")
    if ts is not None:
        t = type(ts)
        if (t is not int and t is not float) or (t is float and not math.isfinite(ts)):
            raise BadLine("wrong_type", f"'ts' must be a finite number, got {ts!r}")
    event = obj.get("event")
    if event is not None and type(event) is not str:
        raise BadLine("wrong_type", f"'event' must be a string, got {type(event).__name__}")
    return (user if type(user) is str else str(user)), (item if type(item) is str else str(item)), ts
