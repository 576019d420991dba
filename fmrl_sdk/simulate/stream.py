"""make-stream: turn a dataset's sequences into an events.jsonl stream.

Each user contributes their sequence up to the split (test: the whole sequence, ending with the test
target; val: up to the validation target; train: the training part). Users are interleaved by a
seeded random merge: the event order is a uniformly random interleaving in which every user's
events keep their order (the owner of each slot is a shuffled multiset of user ids). Timestamps are
synthetic and strictly increasing (start + 60 s per event).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import atomic_open

SPLIT_CUT = {"test": 0, "val": 1, "train": 2}
START_TS = 1_700_000_000
STEP_S = 60


def split_sequences(sequences, split: str) -> list[np.ndarray]:
    if split not in SPLIT_CUT:
        raise FmrlError(f"--split {split!r}: expected test, val or train")
    cut = SPLIT_CUT[split]
    return [s[: len(s) - cut] for s in sequences]


def interleave(lengths: list[int], seed: int) -> np.ndarray:
    """Owner (user position) of every slot of the merged stream, len = sum(lengths)."""
    owners = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    np.random.default_rng(seed).shuffle(owners)
    return owners


def write_stream(out: str | Path, user_ids: list[str], item_ids: list[str], sequences, split: str = "test",
                 seed: int = 0) -> dict:
    """Write the stream atomically; returns {"users", "events", "split", "seed"}."""
    out = Path(out)
    seqs = split_sequences(sequences, split)
    owners = interleave([len(s) for s in seqs], seed)
    cursor = np.zeros(len(seqs), dtype=np.int64)
    with atomic_open(out, "w", encoding="utf-8") as f:
        for position, owner in enumerate(owners.tolist()):
            item = int(seqs[owner][cursor[owner]])
            cursor[owner] += 1
            f.write(json.dumps({"user": user_ids[owner], "item": item_ids[item - 1],
                                "ts": START_TS + STEP_S * position}) + "\n")
    return {"users": int(sum(1 for s in seqs if len(s))), "events": int(len(owners)), "split": split, "seed": seed}
