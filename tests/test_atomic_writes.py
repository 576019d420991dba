"""fmrl_sdk.fileio: atomic writes get the permissions a plain open() would (umask honoured, an existing
file's mode kept); an output that is an input is refused before writing; names read from manifests stay
inside their folder.
"""

from __future__ import annotations

import os

import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.fileio import atomic_directory, atomic_write_bytes, check_outputs_are_not_inputs, contained_path


# ----------------------------------------------------------------------------------------------
# fileio: permissions like open(), outputs that are inputs


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(tmp_path / "f", b"x")
    with open(tmp_path / "plain", "wb"):
        pass
    assert (tmp_path / "f").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~mask
    with atomic_directory(tmp_path / "d"):
        pass
    (tmp_path / "plain-d").mkdir()
    assert (tmp_path / "d").stat().st_mode & 0o777 == (tmp_path / "plain-d").stat().st_mode & 0o777


def test_atomic_rewrite_keeps_an_existing_files_mode(tmp_path, umask):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


def test_an_output_that_is_an_input_is_refused_before_writing(tmp_path):
    stream = tmp_path / "events.jsonl"
    stream.write_text("x\n")
    (tmp_path / "link.jsonl").symlink_to(stream)
    os.link(stream, tmp_path / "hard.jsonl")
    for out in (stream, tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "." / "events.jsonl"):
        with pytest.raises(FmrlError, match="--out is the stream"):
            check_outputs_are_not_inputs({"--report": None, "--out": out}, {"the stream": stream})
    check_outputs_are_not_inputs({"--out": tmp_path / "new.jsonl"}, {"the stream": stream})
    assert stream.read_text() == "x\n"


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "", None, 5])
def test_contained_path_refuses_names_outside(tmp_path, name):
    with pytest.raises(FmrlError, match="outside|plain relative path"):
        contained_path(tmp_path, name, "manifest.json")
