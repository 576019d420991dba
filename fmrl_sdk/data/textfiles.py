"""The text rules every data reader shares (interaction logs, catalogues): UTF-8, the CSV field size, and how
their one-line messages name columns (`quoted_names`).

* encoding: the whole file is UTF-8 (a byte order mark at the start allowed), the columns and keys a reader
  does not use included. `require_utf8` refuses anything else with `FILE:LINE: not UTF-8 text`, LINE being the
  physical line (counted by LF) of the first bad byte; a file that starts with a UTF-16 or UTF-32 byte order
  mark (Excel's "Unicode text", PowerShell's `>`) is told which and to save it as UTF-8.
* CSV fields: at most MAX_CSV_FIELD_CHARS characters, as many as a JSONL line may hold bytes, so a long
  description fits in either format. Python's csv module has a process-wide limit (131,072 by default):
  `csv_field_limit()` raises it to ours for the block that reads.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import mmap
import os
import struct
from pathlib import Path
from typing import Iterator

from ..errors import FmrlError
from ..jsonio import MAX_JSONL_LINE_BYTES

MAX_CSV_FIELD_CHARS = MAX_JSONL_LINE_BYTES
# UTF-32 LE comes first: its mark starts with UTF-16 LE's
FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32 LE"), (codecs.BOM_UTF32_BE, "UTF-32 BE"),
                (codecs.BOM_UTF16_LE, "UTF-16 LE"), (codecs.BOM_UTF16_BE, "UTF-16 BE"))


def require_utf8(path: Path) -> None:
    """FmrlError (one line, see the module docstring) unless the file at `path` is UTF-8 text; OSError when it
    cannot be read (the caller names the file's role). pyarrow validates the mapped file in one pass (several
    GB/s); only a file that fails is read again for the line number."""
    import pyarrow as pa

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = pa.py_buffer(mapped)
            valid = _valid_utf8(data)
            del data   # (the map cannot close while a buffer of it lives)
            head = mapped[:4]
    if valid:
        return
    name = next((name for bom, name in FOREIGN_BOMS if head.startswith(bom)), None)
    if name:
        raise FmrlError(f"{path}:1: not UTF-8 text (a {name} byte order mark: save the file as UTF-8)")
    raise FmrlError(f"{path}:{first_non_utf8_line(path)}: not UTF-8 text")


def _valid_utf8(data) -> bool:
    """Whether a (non-empty) pyarrow buffer is UTF-8: validated as the one value of a large_string array."""
    import pyarrow as pa

    offsets = pa.py_buffer(struct.pack("<qq", 0, data.size))   # (not pa.array: its first call imports pandas, 0.2 s)
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, data]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def first_non_utf8_line(path: Path) -> int:
    """The line (counted by LF) holding the first byte of `path` that is not UTF-8 (one past the last line when
    the file is UTF-8)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        try:
            for block in iter(lambda: f.read(1 << 20), b""):
                decoder.decode(block)
                line += block.count(b"\n")
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:  # e.object: the bytes held back from the last block (never LF) + block
            return line + e.object.count(b"\n", 0, e.start)
    return line


@contextlib.contextmanager
def csv_field_limit(limit: int | None = None) -> Iterator[None]:
    """The csv module's field size limit at `limit` (default MAX_CSV_FIELD_CHARS, read when called) for the
    block, then back to what it was (the setting is process-wide)."""
    previous = csv.field_size_limit(MAX_CSV_FIELD_CHARS if limit is None else limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def csv_problem(error: csv.Error) -> str:
    """What a csv.Error means, for a one-line message: the field limit in our words, else "malformed CSV (...)"."""
    message = " ".join(str(error).split())
    if message.startswith("field larger than field limit"):
        return f"a field longer than {MAX_CSV_FIELD_CHARS:,} characters (the most a CSV field may hold)"
    if message == "unexpected end of data":
        message = "a quoted field is never closed"
    return f"malformed CSV ({message})"


def quoted_names(names: list[str], shown: int = 8) -> str:
    """Column or field names for a one-line message: each quoted (repr: a newline stays on the line) and cut to
    40 characters, the first `shown`."""
    quoted = [repr(name) if len(name) <= 40 else repr(name[:40]) + "..." for name in names[:shown]]
    return ", ".join(quoted + ["..."] * (len(names) > shown)) or "none"
