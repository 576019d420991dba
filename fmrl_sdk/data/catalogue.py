"""Item catalogues: one row of content per item, next to any interactions file (`--items FILE`).

JSONL (one object per line) or CSV (header row), keyed by an `item` column (or `item_id`, `id`). Any other
field is kept as given: strings, numbers, lists of strings, nested category paths. A field named `image` is a
path relative to the catalogue file (read by the image encoder, not part of the text).
Bad input is a one-line FmrlError `FILE:LINE: what is wrong`: a malformed line, a missing key column or
value, a duplicate id.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FmrlError
from ..fileio import read_jsonl_objects

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
    if not path.is_file():
        raise FmrlError(f"{path}: items catalogue not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = read_jsonl_objects(path)
    elif suffix in (".csv", ".tsv"):
        records = _csv_records(path, "\t" if suffix == ".tsv" else ",")
    else:
        raise FmrlError(f"{path}: unknown catalogue format (expected .jsonl or .csv)")
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
                                f"got {', '.join(map(str, rec)) or 'none'})")
        item = rec.get(key)
        if isinstance(item, (dict, list, bool)) or item is None or str(item).strip() == "":
            raise FmrlError(f"{path}:{lineno}: missing or invalid {key!r} (an item id string or number)")
        item = str(item).strip()
        if item in rows:
            raise FmrlError(f"{path}:{lineno}: item {item!r} appears twice (first on line {first_line[item]})")
        first_line[item] = lineno
        image = rec.get(IMAGE_FIELD)
        if image not in (None, ""):
            if not isinstance(image, str):
                raise FmrlError(f"{path}:{lineno}: '{IMAGE_FIELD}' must be a file path")
            images[item] = image.strip()
        values = {k: v for k, v in rec.items() if k not in (key, IMAGE_FIELD)}
        fields.update(dict.fromkeys(values))
        rows[item] = values
    if not rows:
        raise FmrlError(f"{path}: no items")
    return Catalogue(path=path, key=key, fields=list(fields), rows=rows, images=images)


def _csv_records(path: Path, delimiter: str):
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise FmrlError(f"{path}: empty file (expected a header row)") from None
        except csv.Error as e:
            raise FmrlError(f"{path}:1: malformed CSV ({e})") from None
        header = [h.strip() for h in header]
        if not any(k in header for k in KEY_COLUMNS):
            raise FmrlError(f"{path}:1: header needs an item id column ({', '.join(KEY_COLUMNS)}); "
                            f"got {', '.join(header)}")
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes or "" in header:
            what = f"duplicate column {dupes[0]!r}" if dupes else "an empty column name"
            raise FmrlError(f"{path}:1: header has {what}")
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise FmrlError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise FmrlError(f"{path}:{reader.line_num}: {len(values)} fields, the header has {len(header)}")
            yield reader.line_num, dict(zip(header, values))


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
