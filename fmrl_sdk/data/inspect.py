"""`fmrl-sdk data inspect`: the numbers to check before spending hours training.

Users, items and interactions; what the k-core filter removed and why; timestamp ties that let file order
decide targets; how many training targets max_len (and a stride) use; catalogue coverage; example item texts.
"""

from __future__ import annotations

import numpy as np

from .dataset import data_report, load_dataset, target_usage
from .split import SplitSpec


def inspect_data(path: str, items: str | None = None, min_count: int = 5, max_len: int = 50, stride: int = 0,
                 examples: int = 3, split: SplitSpec | None = None) -> dict:
    """The full data report as a dict (what `data inspect --json` prints)."""
    from .text import item_texts

    dataset = load_dataset(path, min_count=min_count, items=items, split=split)
    report = data_report(dataset, max_len, stride)
    lengths = np.array([len(s) for s in dataset.sequences])
    longer = int((np.array([len(s) for s in dataset.train_sequences()]) > max_len).sum())  # more targets than max_len
    report["history_lengths"] = {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                 "max": int(lengths.max()), "users_longer_than_max_len": longer}
    if stride == 0 and longer:
        suggested = max(1, max_len // 2)
        report["with_stride"] = {"stride": suggested, **target_usage(dataset, max_len, suggested)}
    fields = dataset.catalogue.fields if dataset.catalogue is not None else None
    template, texts, empty = item_texts(dataset.item_meta, None, fields, allow_constant=True)
    report["texts"] = {"template": template, "empty": empty, "distinct": len(set(texts)),
                       "examples": [{"item": dataset.item_ids[i], "text": texts[i]}
                                    for i in range(min(examples, len(texts)))]}
    return report


def _share(part: int, whole: int) -> str:
    """'1,234 (12.3%)'."""
    return f"{part:,} ({100 * part / whole:.1f}%)" if whole else f"{part:,}"


def report_rows(r: dict) -> list[tuple[str, str]]:
    """(what, value) rows of the report for a two-column table."""
    rows = [("data", f"{r['name']} ({r['source']})"),
            ("users / items / interactions", f"{r['users']:,} / {r['items']:,} / {r['interactions']:,}")]
    raw, k = r.get("raw"), r.get("k_core")
    if k:
        base = k.get("of") or raw   # a time split filters only the events before val_from
        rows += [("in the file", f"{raw['users']:,} users, {raw['items']:,} items, {raw['interactions']:,} "
                                 "interactions"),
                 (f"{k['min_count']}-core removed" + (f" (of {k['of']['what']})" if k.get("of") else ""),
                  f"{_share(k['users_dropped'], base['users'])} users, {_share(k['items_dropped'], base['items'])} "
                  f"items, {_share(k['interactions_dropped'], base['interactions'])} interactions in {k['rounds']} "
                  "rounds"),
                 ("  why", f"{k['users_below_k']:,} users and {k['items_below_k']:,} items had fewer than "
                           f"{k['min_count']} interactions in the file; {k['users_cascade']:,} users and "
                           f"{k['items_cascade']:,} items fell below it after others were removed")]
    else:
        rows.append(("k-core", "none (P5 folder: used as given)"))
    ties = r.get("timestamps")
    if ties:
        n = ties["users"]
        rows += [("test target tied in time", f"{_share(ties['test_target_tied'], n)} users: file order decides"),
                 ("val target tied in time", f"{_share(ties['val_target_tied'], n)} users"),
                 ("users with any tie", _share(ties["users_with_any_tie"], n))]
    else:
        rows.append(("timestamps", "none: events are in file order"))
    cut = r.get("split")
    if cut:
        tr = cut["train"]
        rows += [("split", f"time: training before {cut['val_from_iso']}, validation from it, test from "
                           f"{cut['test_from_iso']}"),
                 ("  training", f"{tr['events_before_val_from']:,} events before val_from; its {r['k_core']['min_count']}"
                                f"-core: {tr['events_trained']:,} events of {tr['users_trained']:,} users, "
                                f"{tr['items']:,} items (the known items)")]
        for name in ("val", "test"):
            w = cut[name]
            rows.append((f"  {'validation' if name == 'val' else 'test'} window",
                         f"{w['events']:,} events, {w['users']:,} users, {w['items']:,} items; new users "
                         f"{_share(w['new_users'], w['users'])} with {_share(w['events_of_new_users'], w['events'])} "
                         f"events; events of new items {_share(w['events_of_new_items'], w['events'])} "
                         "(not scored: the model cannot know them)"))
    h, t = r["history_lengths"], r["training_targets"]
    rows.append(("history length", f"min {h['min']}, median {h['median']:g}, max {h['max']}; "
                                   f"{h['users_longer_than_max_len']:,} users have more training targets than max_len"))
    label = f"targets trained (max_len {r['max_len']}" + (f", stride {r['stride']})" if r["stride"] else ")")
    rows.append((label, f"{_share(t['used'], t['targets'])} of {t['targets']:,}, in {t['rows']:,} rows per epoch"))
    w = r.get("with_stride")
    if w:
        rows.append((f"  with stride {w['stride']}",
                     f"{_share(w['used'], w['targets'])} of {w['targets']:,}, in {w['rows']:,} rows per epoch"))
    cat = r.get("catalogue")
    if cat:
        first = f" (first {cat['first_missing']!r})" if cat["missing"] else ""
        rows += [("catalogue", f"{cat['file']}: {cat['rows']:,} rows, key '{cat['key']}', fields "
                               f"{', '.join(cat['fields']) or 'none'}"),
                 ("  coverage", f"{_share(cat['matched'], cat['items'])} of {cat['items']:,} items have a row; "
                                f"{cat['missing']:,} without a row{first}; {cat['filtered']:,} rows for items the "
                                f"k-core removed; {cat['unknown']:,} rows for items not in the data (ignored)")]
    else:
        meta = r.get("metadata") or {}
        rows.append(("item metadata", f"{meta.get('items_with_metadata', 0):,} items from {meta.get('source')}"
                     if meta.get("source") else "none (give a catalogue with --items FILE)"))
    x = r["texts"]
    rows.append(("item texts", f"{x['distinct']:,} distinct, {x['empty']:,} empty; template {x['template']!r}"))
    for ex in x["examples"]:
        rows.append((f"  {ex['item']}", ex["text"].replace("\n", " | ")))
    return rows
