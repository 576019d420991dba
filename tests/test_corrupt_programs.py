"""Programs with valid hashes but invalid contents (bit flips, random bytes, a crafted header, an operator
name that is not UTF-8) are refused or run, and never abort the app's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# Programs with valid hashes but invalid contents: refused or run, never an abort of the app

FUZZ_CHILD = r"""
import hashlib, json, shutil, struct, sys
from pathlib import Path
import numpy as np
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime import Recommender
source, work, mode, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
shutil.copytree(source, work)
program = (source / "model.pte").read_bytes()
manifest = json.loads((source / "manifest.json").read_text())
flatbuffer_end = struct.unpack_from("<Q", program, 16)[0]   # extended header "eh00": program_size
rng = np.random.default_rng(15)
outcome = {"refused": 0, "ran": 0}
for i in range(count):
    if mode == "flip":  # every other flip inside the flatbuffer (the part that describes the program)
        data = bytearray(program)
        data[int(rng.integers(0, flatbuffer_end if i % 2 == 0 else len(program)))] ^= int(rng.integers(1, 256))
    elif mode == "random":
        data = rng.integers(0, 256, int(rng.integers(8, 4096)), dtype=np.uint8).tobytes()
    else:  # a valid header in front of random bytes
        data = program[:32] + rng.integers(0, 256, len(program) - 32, dtype=np.uint8).tobytes()
    (work / "model.pte").write_bytes(bytes(data))
    manifest["files"]["model.pte"] = hashlib.sha256(bytes(data)).hexdigest()
    (work / "manifest.json").write_text(json.dumps(manifest))
    print("case", i, flush=True)
    try:
        with Recommender.open(work) as rec:
            session = rec.new_session()
            session.observe_index(1)
            session.recommend(5)
        outcome["ran"] += 1
    except FmrlError as e:
        assert "\n" not in str(e)
        outcome["refused"] += 1
print(json.dumps(outcome), flush=True)
"""


@pytest.mark.parametrize("mode, count", [("flip", 200), ("random", 20), ("header", 20)])
def test_corrupt_programs_with_valid_hashes_are_refused_or_run_never_abort(art, tmp_path, mode, count):
    """Each case either raises FmrlError or loads and runs; an abort kills the child and fails here."""
    r = subprocess.run([sys.executable, "-c", FUZZ_CHILD, str(art.bundle), str(tmp_path / "b"), mode, str(count)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=900)
    last_case = [line for line in r.stdout.splitlines() if line.startswith("case")][-1:]
    assert r.returncode == 0, (r.returncode, last_case, r.stderr[-1500:])
    outcome = json.loads(r.stdout.splitlines()[-1])
    assert outcome["refused"] + outcome["ran"] == count
    if mode != "flip":
        assert outcome["ran"] == 0  # random bytes are never a program
    else:
        assert outcome["refused"] > 0 and outcome["ran"] > 0  # flips in the constant data still run


ABORT_CHILD = r"""
import hashlib, json, shutil, sys
from pathlib import Path
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime import Recommender
source, work = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(source, work)
program = bytearray((source / "model.pte").read_bytes())
program[program.index(b"aten::") + 1] = 0xFF   # an operator name that is not UTF-8
(work / "model.pte").write_bytes(bytes(program))
manifest = json.loads((work / "manifest.json").read_text())
manifest["files"]["model.pte"] = hashlib.sha256(bytes(program)).hexdigest()
(work / "manifest.json").write_text(json.dumps(manifest))
try:
    Recommender.open(work)
    print("accepted")
except FmrlError as e:
    print("refused:", e)
with Recommender.open(source) as rec:
    print("alive", len(rec.new_session().recommend(5)))
"""


def test_a_program_that_aborts_executorch_is_refused_and_the_app_lives_on(art, tmp_path):
    """An operator name that is not UTF-8 made ExecuTorch abort the process (SIGABRT, exit 134): a C++
    exception escaping through pybind11 while it logged the unknown operator. Now: an FmrlError naming the
    abort, and the same process opens the intact bundle."""
    r = subprocess.run([sys.executable, "-c", ABORT_CHILD, str(art.bundle), str(tmp_path / "b")],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=600)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-1500:])
    refused, alive = r.stdout.splitlines()[-2:]
    assert refused.startswith("refused: the program makes ExecuTorch abort (signal SIGABRT")
    assert alive == "alive 5"
