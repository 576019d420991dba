"""events.jsonl: one interaction per line.

    {"user": str | int, "item": str | int, "ts": number (optional), "event": str (optional)}

Other keys are ignored; blank lines are skipped. Ids are compared as strings (user 7 and user "7" are
the same user). A line is *bad*, and counted by kind with its line number, when it is:

    invalid_json    not valid JSON (or not UTF-8)
    not_object      JSON, but not an object
    missing_field   no "user" or "item" (absent, null or "")
    wrong_type      user/item not a string or integer, ts not a finite number, event not a string
    unknown_item    item not in the bundle
    ts_backwards    ts smaller than the same user's previous valid event
"""

from __future__ import annotations

import math

BAD_KINDS = ("invalid_json", "not_object", "missing_field", "wrong_type", "unknown_item", "ts_backwards")


class BadLine(Exception):
    def __init__(self, kind: str, what: str):
        super().__init__(what)
        self.kind, self.what = kind, what


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
    ts = obj.get("ts")
    if ts is not None:
        t = type(ts)
        if (t is not int and t is not float) or (t is float and not math.isfinite(ts)):
            raise BadLine("wrong_type", f"'ts' must be a finite number, got {ts!r}")
    event = obj.get("event")
    if event is not None and type(event) is not str:
        raise BadLine("wrong_type", f"'event' must be a string, got {type(event).__name__}")
    return (user if type(user) is str else str(user)), (item if type(item) is str else str(item)), ts
