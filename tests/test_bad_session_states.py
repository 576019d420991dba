"""Session states given to Recommender.restore: a wrong type, crafted values and counters are refused
with one FmrlError line (the crc32 recomputed, so each test reaches the check it is about); a state at the
bound still steps finitely; counters saturate; states signed with a key (HMAC-SHA256) refuse every edit.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime.recommender import _HEADER, MAC_BYTES, MAX_ABS_STATE

KEY = b"0123456789abcdef-app-secret"


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------
# Session states: type, values, counters


def craft(blob: bytes, field: str, position: int, value) -> bytes:
    """`blob` with one array element replaced and the crc32 recomputed (an edit that passes the crc)."""
    _, _, rows, size, k_max, *_ = _HEADER.unpack_from(blob)
    offsets = {"state": (_HEADER.size, "<f"), "hidden": (_HEADER.size + 4 * rows * size, "<f"),
               "scores": (_HEADER.size + 4 * (rows * size + size), "<f"),
               "indices": (_HEADER.size + 4 * (rows * size + size + k_max), "<i")}
    start, fmt = offsets[field]
    data = bytearray(blob)
    struct.pack_into(fmt, data, start + 4 * position, value)
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.fixture(scope="module")
def blob(rec) -> bytes:
    session = rec.new_session()
    for index in (5, 17, 4000):
        session.observe_index(index)
    return session.to_bytes()


@pytest.mark.parametrize("data", [None, "text", 12, ["FMRS"]])
def test_restore_of_a_non_bytes_value_is_an_fmrl_error(rec, data):
    with pytest.raises(FmrlError, match="a session state is bytes"):
        rec.restore(data)


def test_restore_accepts_bytes_like_values(rec, blob):
    expected = rec.restore(blob).recommend(10)
    assert rec.restore(bytearray(blob)).recommend(10) == expected
    assert rec.restore(memoryview(blob)).recommend(10) == expected


@pytest.mark.parametrize("field, position, value, match", [
    ("state", 0, float("nan"), "state holds NaN"),
    ("state", 31, float("inf"), "state holds NaN"),
    ("state", 3, 1e30, "above 1e"),
    ("state", 3, -2 * MAX_ABS_STATE, "above 1e"),
    ("hidden", 15, float("nan"), "hidden vector holds NaN"),
    ("hidden", 0, 3e38, "hidden vector holds"),
    ("scores", 7, float("nan"), "cached scores hold NaN"),
    ("scores", 0, float("-inf"), "cached scores hold NaN"),
    ("indices", 0, 2 ** 31 - 1, r"cached item indices outside \[1, 7374\]"),
    ("indices", 4, 0, "cached item indices outside"),
    ("indices", 9, -1, "cached item indices outside"),
    ("indices", 99, 7375, "cached item indices outside"),
])
def test_restored_values_are_checked(rec, blob, field, position, value, match):
    with pytest.raises(FmrlError, match=match) as e:
        rec.restore(craft(blob, field, position, value))
    one_line(e)


def test_repeated_cached_indices_are_refused(rec, blob):
    first = int(np.frombuffer(blob, "<i4", count=1, offset=_HEADER.size + 4 * (2 * 16 + 16 + 100))[0])
    with pytest.raises(FmrlError, match="repeated"):
        rec.restore(craft(blob, "indices", 1, first))


def test_a_state_at_the_bound_is_accepted_and_the_next_step_stays_finite(rec, blob):
    session = rec.restore(craft(blob, "state", 0, MAX_ABS_STATE))
    session.observe_index(3)
    assert np.isfinite(session.top(100)[1]).all() and np.isfinite(session.hidden).all()


def test_counters_saturate_instead_of_failing_to_save(rec):
    session = rec.new_session()
    session.observed = 2 ** 64 - 1
    session.observe_index(3)                     # 2^64: one past the u64 field
    session.unknown = 2 ** 40
    restored = rec.restore(session.to_bytes())
    assert (restored.observed, restored.unknown, restored.added) == (2 ** 64 - 1, 2 ** 32 - 1, 0)
    session.added = -1
    with pytest.raises(FmrlError, match="added must be a non-negative integer"):
        session.to_bytes()


# ----------------------------------------------------------------------------------------------
# Keyed MAC (HMAC-SHA256) on session states


def test_signed_state_round_trip_and_size(rec, blob):
    session = rec.restore(blob)
    signed = session.to_bytes(key=KEY)
    assert len(signed) == rec.state_bytes + MAC_BYTES and signed[:rec.state_bytes - 4] != blob[:-4]  # flag set
    restored = rec.restore(signed, key=KEY)
    assert restored.recommend(10) == session.recommend(10)
    assert restored.to_bytes(key=KEY) == signed


def test_signed_state_refuses_every_edit(rec, blob):
    signed = rec.restore(blob).to_bytes(key=KEY)
    unsigned_len = len(signed) - MAC_BYTES
    rng = np.random.default_rng(0)
    for position in [*rng.integers(_HEADER.size, unsigned_len - 4, 20).tolist(), unsigned_len + 3]:
        edited = bytearray(signed)
        edited[position] ^= 0x10
        body = bytes(edited[:unsigned_len - 4])
        forged = body + struct.pack("<I", zlib.crc32(body)) + bytes(edited[unsigned_len:])  # crc recomputed
        with pytest.raises(FmrlError, match="signature does not match"):
            rec.restore(forged, key=KEY)
    # the same edit on an unsigned state passes the crc: what the MAC is for
    edited = craft(blob, "scores", 0, 123.0)
    assert rec.restore(edited).top(1)[1][0] == np.float32(123.0)


@pytest.mark.parametrize("case, match", [
    ("wrong key", "signature does not match"),
    ("no key", "session state is signed: pass the app's key"),
    ("stripped", "not signed but a key was given"),
    ("unsigned", "not signed but a key was given"),
    ("short key", "at least 16 bytes"),
    ("str key", "a session key is bytes, got str"),
])
def test_signed_state_misuse_is_refused(rec, blob, case, match):
    signed = rec.restore(blob).to_bytes(key=KEY)
    head = bytearray(signed[:-MAC_BYTES - 4])
    struct.pack_into("<H", head, 14, 0)          # flags field cleared, crc recomputed: tag "stripped"
    stripped = bytes(head) + struct.pack("<I", zlib.crc32(bytes(head)))
    data, key = {"wrong key": (signed, b"another-secret-key-16"), "no key": (signed, None),
                 "stripped": (stripped, KEY), "unsigned": (blob, KEY), "short key": (signed, b"short"),
                 "str key": (signed, "0123456789abcdefgh")}[case]
    with pytest.raises(FmrlError, match=match):
        rec.restore(data, key=key)


# ----------------------------------------------------------------------------------------------
# The fingerprint covers the manifest (issue 29: moving item_table.offset left old sessions valid)


def test_a_moved_item_table_refuses_states_of_the_bundle_before(art, rec, tmp_path, cpp_build):
    """item_table.offset moved by one row inside model.pte (a valid bundle whose recommendations differ):
    a state saved with the original bundle is refused by both runtimes; format 2's fingerprint (file
    hashes only) accepted it."""
    import json

    from fmrl_sdk.runtime.recommender import Recommender
    from tests.helpers import copy_bundle, rewrite_manifest, run_app

    moved = copy_bundle(art.bundle, tmp_path / "moved")
    table = json.loads((moved / "manifest.json").read_text())["item_table"]
    shift = table["cols"] * (4 if table["dtype"] == "float32" else 1)   # one row back: still inside the file
    rewrite_manifest(moved, item_table={**table, "offset": table["offset"] - shift})
    session = rec.new_session()
    session.observe_index(5)
    blob = session.to_bytes()
    other = Recommender.open(moved)
    try:
        assert other.fingerprint != rec.fingerprint
        with pytest.raises(FmrlError, match="another bundle"):
            other.restore(blob)
    finally:
        other.close()
    got = run_app(cpp_build, """
status, rec = open_(args["bundle"])
out["open"] = status
session = P()
restore = lib.fmrl_session_restore
restore.restype, restore.argtypes = ctypes.c_int, [P, C, SZ, C, SZ, ctypes.POINTER(P)]
blob = bytes.fromhex(args["blob"])
out["restore"] = [restore(rec, blob, len(blob), None, 0, ctypes.byref(session)), err()]
""", bundle=str(moved), blob=blob.hex())
    assert got["open"] == 0
    assert got["restore"][0] != 0 and "another bundle" in got["restore"][1]
