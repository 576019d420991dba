"""Item text from catalogue metadata: the paper's template, the default template for other catalogues,
and --text-template parsing. Plain data handling (no encoders); features/ turns these texts into vectors."""

from __future__ import annotations

import string
from pathlib import Path

from ..errors import FmrlError

DEFAULT_TEMPLATE = "Title: {title}\nPrice: {price}\nBrand: {brand}\nCategories: {categories}"
UNTITLED = "Untitled Item"
# Fields of Amazon product metadata (P5 meta.json): data with only these keeps the paper's template.
AMAZON_FIELDS = {"asin", "title", "price", "brand", "categories", "description", "imUrl", "salesRank", "related"}


def _clean(value) -> str | None:
    """One metadata value as text: None/empty -> None, numbers -> str, strings stripped, lists joined with
    ', ' (a list of paths: each path joined with ', ', paths with '; '), objects as 'key: value' pairs."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from CSV/pandas exports
        return None
    if isinstance(value, dict):
        pairs = ((k, _clean(v)) for k, v in value.items())
        value = ", ".join(f"{k}: {v}" for k, v in pairs if v is not None)
    elif isinstance(value, (list, tuple)):
        parts = [_clean(v) for v in value]
        nested = any(isinstance(v, (list, tuple, dict)) for v in value)
        value = ("; " if nested else ", ").join(p for p in parts if p is not None)
    text = str(value).strip()
    return text or None


def _categories(value) -> str | None:
    """The first category path joined with ', ' (a flat list of strings is one path; a string is kept)."""
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        first = value[0]
        path = first if isinstance(first, (list, tuple)) else value
        return _clean([c for c in path if c is not None])
    return _clean(value)


def template_fields(template: str) -> list[str]:
    """Names of the {placeholders} in a template (raises FmrlError on a malformed template)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise FmrlError(f"text template {template!r}: {e}") from None
    for name in names:
        if not name.strip() or name.isdigit() or any(c in name for c in ".[]"):
            raise FmrlError(f"text template: placeholder {{{name}}} must be a plain field name like {{title}}")
    return names


def fields_template(fields: list[str]) -> str:
    """One line 'Name: {field}' per field, in the given order (the default for non-Amazon catalogues)."""
    lines = []
    for name in fields:
        if not name.strip() or name.isdigit() or any(c in name for c in ".[]{}:!"):
            continue  # not expressible as a placeholder; use --text-template with a renamed column
        label = name.replace("_", " ").strip()
        lines.append(f"{label[:1].upper()}{label[1:]}: {{{name}}}")
    return "\n".join(lines)


def default_template(fields: list[str]) -> str:
    """The paper's template when the metadata has Amazon fields only, else every field (fields_template)."""
    if not fields or set(fields) <= AMAZON_FIELDS:
        return DEFAULT_TEMPLATE
    return fields_template(fields) or DEFAULT_TEMPLATE


def metadata_fields(metas: list[dict]) -> list[str]:
    """Every field name of the items' metadata, in order of first appearance."""
    seen: dict[str, None] = {}
    for meta in metas:
        seen.update(dict.fromkeys(k for k in meta if isinstance(k, str)))
    return list(seen)


def item_texts(metas: list[dict], template_arg: str | None = None, fields: list[str] | None = None,
               allow_constant: bool = False) -> tuple[str, list[str], int]:
    """(template, one text per item, how many are empty) for featurize.

    template_arg: --text-template (None: `default_template(fields)`, fields defaulting to the metadata's).
    A given template naming a field no item has is an error; so is every item getting the same text (the
    features would be constant) unless allow_constant.
    """
    template = (parse_template(template_arg) if template_arg is not None
                else default_template(metadata_fields(metas) if fields is None else fields))
    texts = [item_text(m, template) for m in metas]
    if template_arg is not None:
        have = {k for m in metas for k, v in m.items() if (_categories(v) if k == "categories" else _clean(v))}
        absent = [f for f in dict.fromkeys(template_fields(template)) if f not in have]
        if absent:
            known = ", ".join(metadata_fields(metas)) or "none"
            raise FmrlError(f"--text-template: no item has a value for {{{absent[0]}}} (fields: {known})")
    empty = sum(t == UNTITLED for t in texts)
    if len(texts) > 1 and len(set(texts)) == 1 and not allow_constant:
        why = ("no item has any metadata: give a catalogue with --items FILE" if empty == len(texts)
               else "the template's fields have the same value for every item: change --text-template")
        raise FmrlError(f"every item's text is {texts[0]!r}, so the features would be constant; {why} "
                        "(or pass --allow-constant)")
    return template, texts, empty


def item_text(meta: dict, template: str | None = None) -> str:
    """The item's text as the paper builds it.

    The template is a list of lines; a line is kept only when every {field} in it has a value. Fields:
    title, price, brand, categories (the first category path joined with ', '), and any other key of
    `meta` (stringified). Values are stripped. When no line survives the text is 'Untitled Item'.
    Default: 'Title: {title}\\nPrice: {price}\\nBrand: {brand}\\nCategories: {categories}'.
    """
    template = DEFAULT_TEMPLATE if template is None else template
    values: dict[str, str] = {}
    for key, value in (meta or {}).items():
        if not isinstance(key, str):
            continue
        text = _categories(value) if key == "categories" else _clean(value)
        if text is not None:
            values[key] = text
    lines = []
    for line in template.split("\n"):
        names = template_fields(line)
        if names and not all(n in values for n in names):
            continue
        if not names and not line.strip():
            continue
        try:
            lines.append(line.format(**{n: values[n] for n in names}))
        except (ValueError, KeyError, IndexError) as e:
            raise FmrlError(f"text template line {line!r}: {e} (values are text; use plain {{field}})") from None
    text = "\n".join(lines).strip()
    return text or UNTITLED


def parse_template(arg: str | None) -> str:
    """--text-template: a template string (a literal backslash-n means a newline) or @FILE to read it from."""
    if arg is None:
        return DEFAULT_TEMPLATE
    if arg.startswith("@"):
        path = Path(arg[1:]).expanduser()
        if not path.is_file():
            raise FmrlError(f"{path}: text template file not found")
        template = path.read_text(encoding="utf-8").rstrip("\n")
    else:
        template = arg.replace("\\n", "\n")
    if not template_fields(template):
        raise FmrlError(f"text template {template!r} has no {{field}} placeholders (e.g. {{title}})")
    return template
