"""Item catalogues: one row of content per item, next to any interactions file (`--items FILE`).

JSONL (.jsonl/.json: one object per line) or CSV (.csv, or .tsv separated by tabs; a header row), keyed by an
`item` column (or `item_id`, `id`). Any other field is kept as given: strings, numbers, lists of strings,
nested category paths. A field named `image` is a path relative to the catalogue file (read by the image
encoder, not part of the text).

Reading rules, the same for both formats (a JSONL line is read by fmrl_sdk.jsonio, under its rules):

* encoding: UTF-8, checked for the whole file before reading (textfiles.require_utf8: `FILE:LINE: not UTF-8
  text`, naming a UTF-16 or UTF-32 byte order mark); a CSV header holding NUL characters is refused (UTF-16 or
  UTF-32 text without the mark).
* ids: the key's value, whitespace around it removed, follows the id rule of fmrl_sdk.ids: a string or an
  integer (JSON: not a float, bool, list, object or null), not empty, no NUL character, at most
  ids.MAX_ID_BYTES bytes as UTF-8. Each id appears once.
* sizes: a JSONL line holds at most jsonio.MAX_JSONL_LINE_BYTES bytes; a CSV field at most
  textfiles.MAX_CSV_FIELD_CHARS characters, the same number (a long description fits in either format).
* CSV: the header names every column once (none empty); each row has the header's number of fields; a
  quoted field must be closed, and nothing may follow its closing quote but a separator or the line's end.
  Lines end with LF, CRLF or CR; blank lines are skipped.

Bad input is a one-line FmrlError `FILE:LINE: what is wrong` (`FILE: what` where no line applies: not found,
a folder, unreadable, no items).
"""

from __future__ import annotations

import contextlib
import csv
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..errors import FmrlError
from ..ids import id_problem, id_text
from ..jsonio import read_jsonl_objects
from .textfiles import csv_field_limit, csv_problem, first_non_utf8_line, quoted_names, require_utf8

KEY_COLUMNS = ("item", "item_id", "id")
IMAGE_FIELD = "image"


@dataclass
class Catalogue:
    """rows: item id -> its fields (key and image excluded), file order. fields: every field name in order
    of first appearance. images: item id -> the raw `image` value (a path relative to the file, or a URL)."""

    path: Path
    key: str
    fields: list[str]
    rows: dict[str, dict]
    images: dict[str, str] = field(default_factory=dict)

    def align(self, item_ids: list[str], file_item_ids: list[str] | None = None) -> dict:
        """How the catalogue and the data's items match: matched, missing (item without a row), filtered (row
        for an item of the file that the k-core removed), unknown (row for an item not in the file at all).
        file_item_ids: every item of the interactions file (default: item_ids)."""
        kept = set(item_ids)
        in_file = kept if file_item_ids is None else set(file_item_ids)
        missing = [i for i in item_ids if i not in self.rows]
        unknown = [i for i in self.rows if i not in in_file]
        filtered = sum(i in in_file and i not in kept for i in self.rows)
        return {"file": str(self.path), "key": self.key, "fields": list(self.fields), "rows": len(self.rows),
                "items": len(item_ids), "matched": len(item_ids) - len(missing), "missing": len(missing),
                "filtered": filtered, "unknown": len(unknown), "first_missing": missing[0] if missing else None,
                "first_unknown": unknown[0] if unknown else None}


def read_catalogue(path: str | Path) -> Catalogue:
    """Read a JSONL (.jsonl/.json) or CSV (.csv/.tsv) catalogue; see the module docstring."""
    path = Path(path).expanduser()
    try:
        read_records = _record_reader(path)
        require_utf8(path)
        with contextlib.closing(read_records(path)) as records:
            return _catalogue(path, records)
    except OSError as e:
        raise FmrlError(f"{path}: cannot read the items catalogue ({e.strerror or e})") from None


def _record_reader(path: Path):
    """The function that yields (line, record) for the catalogue file `path`, after checking it is one."""
    if not path.exists():
        raise FmrlError(f"{path}: items catalogue not found")
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "not a regular file"
        raise FmrlError(f"{path}: items catalogue is {what}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl_objects
    if suffix in (".csv", ".tsv"):
        return partial(_csv_records, delimiter="\t" if suffix == ".tsv" else ",")
    raise FmrlError(f"{path}: unknown catalogue format (expected .jsonl or .csv)")


def _catalogue(path: Path, records) -> Catalogue:
    """The catalogue of (line, record) pairs: the key is the first of KEY_COLUMNS the first record has."""
    key = None
    fields: dict[str, None] = {}
    rows: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    images: dict[str, str] = {}
    for lineno, rec in records:
        if key is None:
            key = next((k for k in KEY_COLUMNS if k in rec), None)
            if key is None:
                raise FmrlError(f"{path}:{lineno}: no item id field (expected one of {', '.join(KEY_COLUMNS)}; "
                                f"got {quoted_names(list(rec))})")
        item = _item_id(rec.get(key), f"{path}:{lineno}: {key!r}")
        if item in rows:
            raise FmrlError(f"{path}:{lineno}: item {item!r} appears twice (first on line {first_line[item]})")
        first_line[item] = lineno
        image = rec.get(IMAGE_FIELD)
        if image not in (None, ""):
            if not isinstance(image, str) or "\0" in image:
                raise FmrlError(f"{path}:{lineno}: '{IMAGE_FIELD}' must be a file path")
            images[item] = image.strip()
        values = {k: v for k, v in rec.items() if k not in (key, IMAGE_FIELD)}
        fields.update(dict.fromkeys(values))
        rows[item] = values
    if not rows:
        raise FmrlError(f"{path}: no items")
    return Catalogue(path=path, key=key, fields=list(fields), rows=rows, images=images)


def _item_id(value, where: str) -> str:
    """The id a row's key value stands for (whitespace around it removed), under the id rule; `where` is
    "FILE:LINE: 'KEY'" for the message."""
    if value is None:
        raise FmrlError(f"{where} is missing")
    if isinstance(value, str):
        value = value.strip()
    problem = id_problem(value)
    if problem:
        raise FmrlError(f"{where} {problem}")
    return id_text(value)


def _csv_records(path: Path, delimiter: str):
    """Yield (line, {column: value}) for each row of a CSV file, under the rules of the module docstring."""
    with csv_field_limit(), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        header = _next_row(path, reader)
        if header is None:
            raise FmrlError(f"{path}: empty file (expected a header row)")
        header = [h.strip() for h in header]
        _check_header(path, header)
        while (values := _next_row(path, reader)) is not None:
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise FmrlError(f"{path}:{reader.line_num}: {len(values)} fields, the header has {len(header)}")
            yield reader.line_num, dict(zip(header, values))


def _check_header(path: Path, header: list[str]) -> None:
    """FmrlError unless the header (names stripped) has a key column and names every column once."""
    if any("\0" in h for h in header):
        raise FmrlError(f"{path}:1: header holds NUL characters (UTF-16 or UTF-32 text without a byte order mark? "
                        "save the file as UTF-8)")
    if not any(k in header for k in KEY_COLUMNS):
        raise FmrlError(f"{path}:1: header needs an item id column ({', '.join(KEY_COLUMNS)}); "
                        f"got {quoted_names(header)}")
    if "" in header:
        raise FmrlError(f"{path}:1: header has an empty column name")
    dupes = sorted(name for name, count in Counter(header).items() if count > 1)
    if dupes:
        raise FmrlError(f"{path}:1: header has duplicate column {quoted_names(dupes[:1])}")


def _next_row(path: Path, reader) -> list[str] | None:
    """The next row of `reader` (None at the end), or FmrlError naming the line the row starts on."""
    start = reader.line_num + 1
    try:
        return next(reader)
    except StopIteration:
        return None
    except UnicodeDecodeError:
        raise FmrlError(f"{path}:{first_non_utf8_line(path)}: not UTF-8 text") from None
    except csv.Error as e:
        raise FmrlError(f"{path}:{start}: {csv_problem(e)}") from None


def alignment_lines(alignment: dict | None) -> list[str]:
    """Console lines describing `Catalogue.align`'s result (empty without a catalogue)."""
    if not alignment:
        return []
    a = alignment
    lines = [f"catalogue {a['file']}: {a['rows']:,} rows keyed by '{a['key']}', fields "
             f"{', '.join(a['fields']) or 'none'}; {a['matched']:,} of {a['items']:,} items of the data have a row"]
    if a["missing"]:
        lines.append(f"[yellow]note: {a['missing']:,} items of the data have no catalogue row (first: "
                     f"{a['first_missing']!r}); their text is empty (--strict makes this an error)")
    if a["filtered"]:
        lines.append(f"note: {a['filtered']:,} catalogue rows are for items the k-core filter removed")
    if a["unknown"]:
        lines.append(f"note: {a['unknown']:,} catalogue rows name items not in the data (first: "
                     f"{a['first_unknown']!r}); ignored")
    return lines
