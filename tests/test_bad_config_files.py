"""Recipes and device profiles (TOML files) that cannot be used are one FmrlError line `FILE[:LINE]: what`,
never a traceback: read_toml's rules (UTF-8 with an optional byte order mark, at most 1 MiB read before
parsing, TOML's own rules with the line named, an empty file refused) through read_toml itself,
load_recipe, resolve_profile and the commands that take them (train --recipe, profiles --profile, export
--profile), which stop before writing anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.fileio import read_toml
from tests.helpers import run_cli

PROFILE = ('name = "mine"\ndescription = ""\nmemory_budget_bytes = 1000\nlatency_budget_ms = 1\nspeed_factor = 0.5\n'
           'precisions = ["int8"]\nthreads = 1\nbackend = "xnnpack"\n')
MAX_TOML_BYTES = 1 << 20

# (test id, file bytes, what the message says after "FILE")
BAD_TOML = [
    ("latin-1", 'description = "café"\n'.encode("latin-1"), r":1: not UTF-8 text"),
    ("bad byte on line 3", b'a = 1\n\nb = "\xff"\n', r":3: not UTF-8 text"),
    ("utf-16", 'name = "x"\n'.encode("utf-16"), r":1: not UTF-8 text"),
    ("nul in a value", b'name = "a\x00b"\n', r":1: invalid TOML \(Illegal character '\\x00', column 10\)"),
    ("nul byte alone", b"a = 1\n\x00\n", r":2: invalid TOML \(Invalid statement, column 1\)"),
    ("duplicate key", b'name = "a"\n\nname = "b"\n', r":3: invalid TOML \(Cannot overwrite a value, column \d+\)"),
    ("duplicate table", b"[train]\nepochs = 1\n[train]\nlr = 0.1\n",
     r":3: invalid TOML \(Cannot declare \('train',\) twice, column 7\)"),
    ("syntax error", b"name = \n", r":1: invalid TOML \(Invalid value, column 8\)"),
    ("unterminated at the end", b'a = 1\nname = "x',
     r":2: invalid TOML \(Unterminated string, at the end of the file\)"),
    ("nested too deeply", b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", r": invalid TOML \(nested too deeply\)"),
    ("integer too long", b"a = " + b"9" * 5000 + b"\n",
     r": invalid TOML \(Exceeds the limit \(4300 digits\) for integer string conversion: value has 5000 digits\)"),
    ("too large", b"# " + b"x" * MAX_TOML_BYTES + b"\n", r": larger than 1,048,576 bytes \(the most a KIND may hold\)"),
    ("empty", b"", r": empty KIND \(no keys\)"),
    ("byte order mark, comments", b"\xef\xbb\xbf# nothing here\n\n", r": empty KIND \(no keys\)"),
]


def expected(path: Path, message: str, kind: str) -> str:
    return "^" + re.escape(str(path)) + message.replace("KIND", kind) + "$"


@pytest.mark.parametrize("data, message", [case[1:] for case in BAD_TOML], ids=[case[0] for case in BAD_TOML])
def test_bad_toml_is_one_line_naming_file_and_line(tmp_path, data, message):
    from fmrl_sdk.deploy.profiles import resolve_profile
    from fmrl_sdk.train.recipe import load_recipe

    bad = tmp_path / "bad.toml"
    bad.write_bytes(data)
    for read, kind in ((lambda p: read_toml(p, "recipe"), "recipe"), (load_recipe, "recipe"),
                       (lambda p: resolve_profile(str(p)), "profile file")):
        with pytest.raises(FmrlError) as e:
            read(bad)
        assert "\n" not in str(e.value) and re.search(expected(bad, message, kind), str(e.value)), str(e.value)


def test_toml_with_bom_crlf_and_non_ascii_text_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_bytes(b"\xef\xbb\xbf" + PROFILE.replace('description = ""', 'description = "café ☕"')
                     .replace("\n", "\r\n").encode())
    from fmrl_sdk.deploy.profiles import resolve_profile

    assert resolve_profile(str(path)).description == "café ☕"


def test_toml_size_limit_is_checked_before_the_file_is_read_whole(tmp_path):
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB that must not be read
    with pytest.raises(FmrlError, match=r"huge.toml: larger than 1,048,576 bytes \(the most a recipe may hold\)$"):
        read_toml(huge, "recipe")
    just_fits = tmp_path / "fits.toml"
    just_fits.write_bytes(b"a = 1\n#" + b"x" * (MAX_TOML_BYTES - 8) + b"\n")
    assert just_fits.stat().st_size == MAX_TOML_BYTES and read_toml(just_fits, "recipe") == {"a": 1}


def test_toml_folder_unreadable_and_overlong_name_are_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(FmrlError, match=r"dir.toml: profile file is a folder, not a file$"):
        read_toml(folder, "profile file")
    with pytest.raises(FmrlError, match=r": recipe not found$"):
        read_toml(tmp_path / "absent.toml", "recipe")
    with pytest.raises(FmrlError, match=r"\.toml: cannot read the recipe \(File name too long\)$"):
        read_toml(tmp_path / ("a" * 5000 + ".toml"), "recipe")
    locked = tmp_path / "locked.toml"
    locked.write_text(PROFILE)
    real_open = open

    def refuse(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(FmrlError, match=r"locked.toml: cannot read the recipe \(Permission denied\)$"):
        read_toml(locked, "recipe")


# ----------------------------------------------------------------------------------------------
# The commands


def cli(args: list[str], capsys) -> tuple[int, str]:
    """`fmrl-sdk ARGS` in this process: (exit code, stderr)."""
    code, _, err = run_cli(args, capsys)
    return code, err


# what the commands are run with: one case of each family (each command run costs a CLI start)
COMMAND_CASES = [case for case in BAD_TOML
                 if case[0] in ("latin-1", "nul in a value", "duplicate table", "nested too deeply", "too large", "empty")]


@pytest.mark.parametrize("data, message", [case[1:] for case in COMMAND_CASES], ids=[c[0] for c in COMMAND_CASES])
def test_commands_stop_with_one_line_before_writing(tmp_path, capsys, monkeypatch, data, message):
    monkeypatch.chdir(tmp_path)  # profiles/export look for ./runs only after the profile
    bad = tmp_path / "bad.toml"
    bad.write_bytes(data)
    out = tmp_path / "out"
    for args, kind in ((["train", "--recipe", bad, "--out", out], "recipe"),
                       (["profiles", "--profile", bad], "profile file"),
                       (["export", "--profile", bad, "--out", out], "profile file")):
        code, err = cli(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert re.search(expected(bad, message, kind).replace("^", "^error: ", 1), lines[0]), lines[0]
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]


def test_profile_given_as_a_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.toml").mkdir()
    code, err = cli(["profiles", "--profile", "dir.toml"], capsys)
    assert code == 2 and err == "error: dir.toml: profile file is a folder, not a file\n"


# ----------------------------------------------------------------------------------------------
# Values: the key named with its value and what it should be


@pytest.mark.parametrize("table, key", [("data", "path"), ("data", "features"), ("data", "items"),
                                        ("train", "init_from")])
@pytest.mark.parametrize("literal, value", [('"a\\u0000b"', "a\x00b"), ('"\\u0000"', "\x00")])
def test_recipe_path_with_nul_is_one_line_naming_the_key(tmp_path, table, key, literal, value):
    """A NUL in a path was a ValueError traceback ("embedded null byte") from resolving it."""
    from fmrl_sdk.train.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(f"[{table}]\n{key} = {literal}\n")
    with pytest.raises(FmrlError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: [{table}] {key} = {value!r}: a path must not contain NUL characters"


def test_train_with_a_nul_path_stops_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\npath = "a\\u0000b"\n')
    code, err = cli(["train", "--recipe", bad, "--out", tmp_path / "out"], capsys)
    assert (code, err) == (2, f"error: {bad}: [data] path = 'a\\x00b': a path must not contain NUL characters\n")
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]


@pytest.mark.parametrize("text, message", [
    ("[data]\nmax_len = 9223372036854775808\n", "[data] max_len = 9223372036854775808 should be an integer from 1 "
                                                "to 100,000"),
    ("[train]\nseed = 1180591620717411303424\n", "[train] seed = 1180591620717411303424 should be an integer from 0 "
                                                 "to 9,223,372,036,854,775,807"),
    ("[train]\nepochs = 0\n", "[train] epochs = 0 should be an integer from 1 to 2,147,483,647"),
])
def test_recipe_integers_beyond_their_range_are_refused(tmp_path, text, message):
    """Integers beyond 64 bits loaded without error."""
    from fmrl_sdk.train.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(FmrlError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: {message}"


@pytest.mark.parametrize("key, literal, what", [
    ("memory_budget_bytes", "9223372036854775808", "an integer from 1 to 9,223,372,036,854,775,807 (bytes)"),
    ("threads", "1099511627776", "an integer from 1 to 1,024"),     # beyond a C int, loaded before
    ("threads", "1025", "an integer from 1 to 1,024"),
    ("latency_budget_ms", "1" + "0" * 400, "a positive finite number (milliseconds)"),   # OverflowError before
    ("speed_factor", "1" + "0" * 400, "a positive finite number (1.0 = the reference CPU)"),
])
def test_profile_numbers_beyond_their_range_are_refused(tmp_path, key, literal, what):
    from fmrl_sdk.deploy.profiles import MAX_THREADS, load_profile_file

    path = tmp_path / "mine.toml"
    path.write_text(re.sub(rf"(?m)^{key} = .*$", f"{key} = {literal}", PROFILE))
    with pytest.raises(FmrlError) as e:
        load_profile_file(path)
    assert str(e.value) == f"{path}: field {key!r} = {literal} should be {what}"
    path.write_text(re.sub(r"(?m)^threads = .*$", f"threads = {MAX_THREADS}", PROFILE))
    assert load_profile_file(path).threads == MAX_THREADS
