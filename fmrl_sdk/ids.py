"""User and item ids: the one rule for every file the SDK reads and every call that takes an id.

An id is a string or an integer (an integer stands for its decimal digits: user 7 and user "7" are the same);
never a bool, a float, null, a list or an object. It is not empty, holds no NUL character (the C ABI takes
NUL-terminated strings, so it could not carry one), is Unicode text (no unpaired surrogate, which a JSON
escape such as "\\ud800" can produce) and is at most MAX_ID_BYTES bytes as UTF-8.

Where it applies: interaction logs (CSV, JSONL, Parquet), catalogues, simulate streams, `Recommender.add_items`
and `Session.observe`. The C runtime applies the same rule to stream lines (fmrl_replay.cpp, check_fields) and
to fmrl_add_items; the tests feed both runtimes the same lines.
"""

from __future__ import annotations

import re

MAX_ID_BYTES = 1024
_SURROGATE = re.compile("[\ud800-\udfff]")   # what a JSON escape "\\ud800" without its pair decodes to


def id_problem(value) -> str | None:
    """Why the decoded value `value` (from JSON, Parquet or a caller) is not an id, or None when it is one.

    The reason is a phrase to follow the field's name: "'item' " + reason."""
    kind = type(value)
    if kind is not str and kind is not int:   # bool is a subclass of int, not an id
        return f"must be a string or an integer, got {kind.__name__}"
    return text_id_problem(value if kind is str else str(value))


def text_id_problem(text: str) -> str | None:
    """Why the string `text` (a CSV field, an id's digits) is not an id, or None; see id_problem."""
    if not text:
        return "must not be empty"
    if "\0" in text:
        return "must not contain NUL characters"
    if text.isascii():
        return f"is longer than {MAX_ID_BYTES:,} bytes (the most an id may hold)" if len(text) > MAX_ID_BYTES else None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:   # (a surrogate counts 3 bytes, as in C)
        return f"is longer than {MAX_ID_BYTES:,} bytes (the most an id may hold)"
    if holds_surrogate(text):
        return "holds an unpaired surrogate (\\ud800-\\udfff): not Unicode text"
    return None


def holds_surrogate(text: str) -> bool:
    """Whether `text` holds a UTF-16 surrogate code point (U+D800..DFFF): no character, not storable as UTF-8."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def id_text(value) -> str:
    """The string an id is keyed by (call after id_problem returned None): the string, or an integer's digits."""
    return value if type(value) is str else str(value)
