"""A fixed-size Bloom filter of the items a session has seen (for `recommend(exclude_seen=True)`).

The session keeps no history, so "seen" is approximate: m bits (default 2048 = 256 bytes) and h hash
positions per item (default 4). An item is never reported unseen once observed (no false negatives);
an unseen item is reported seen with probability about (1 - exp(-h n / m))^h after n distinct items:

    n distinct items     10      50      100     200     500
    false positives    4e-7    7.5e-5  1.0e-3  1.1e-2  1.5e-1   (m = 2048, h = 4)

A false positive only hides one candidate from an exclude_seen recommendation.
Positions come from the item's external id (blake2b), not its internal index, so items added after
export keep the same positions whatever order an app adds them in.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

DEFAULT_BITS = 2048
DEFAULT_HASHES = 4


def false_positive_rate(n: int, bits: int = DEFAULT_BITS, hashes: int = DEFAULT_HASHES) -> float:
    return (1.0 - math.exp(-hashes * n / bits)) ** hashes


def item_positions(item_ids: list[str], bits: int, hashes: int) -> np.ndarray:
    """[len(item_ids), hashes] int64 bit positions (double hashing of a 64-bit blake2b digest)."""
    out = np.empty((len(item_ids), hashes), dtype=np.int64)
    steps = np.arange(hashes, dtype=np.int64)
    for row, item in enumerate(item_ids):
        h = int.from_bytes(hashlib.blake2b(item.encode("utf-8"), digest_size=8).digest(), "little")
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        out[row] = (h1 + steps * h2) % bits
    return out


def check_params(bits: int, hashes: int) -> None:
    if bits < 8 or bits % 8 or bits > 1 << 20:
        raise ValueError(f"bloom bits must be a multiple of 8 in [8, 2^20], got {bits}")
    if not 1 <= hashes <= 16:
        raise ValueError(f"bloom hashes must be in [1, 16], got {hashes}")


def add(bloom: bytearray, positions) -> None:
    """Set the bits of one item (`positions`: a sequence of ints)."""
    for p in positions:
        bloom[p >> 3] |= 1 << (p & 7)


def contains_many(bloom: bytearray, positions: np.ndarray) -> np.ndarray:
    """positions [C, hashes] -> bool [C]: True where every bit is set (probably seen)."""
    bits = np.frombuffer(bytes(bloom), dtype=np.uint8)
    return ((bits[positions >> 3] >> (positions & 7)) & 1).all(axis=1)
