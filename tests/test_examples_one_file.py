"""Issue 28: examples/cpp (fmrl_app, built with its own CMakeLists.txt) and examples/java/Main.java open the
shared test bundle's one-file form (NAME.fmrlb) from a path, from an fd + offset + length inside a larger
"APK-like" file (junk bytes before and after; an offset that is a multiple of 64, used in place, and one that
is not, copied once) and from a buffer (the file or the byte range read into memory), and print the same
top-10 (ids, scores within 1e-5) as Python's Recommender.open(...) after the same items. The Java half is
skipped only when javac (or java) cannot be found (conftest's jni_runtime)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fmrl_sdk.runtime import Recommender

ROOT = Path(__file__).resolve().parent.parent
ALIGNED, UNALIGNED = 4096, 1000  # offsets of the bundle in the APK-like files (1000 % 64 == 40)
# (name, --open, which file: "fmrlb" or an offset above, pass --offset/--length)
OPENINGS = [("path", "path", "fmrlb", False), ("buffer-whole-file", "buffer", "fmrlb", False),
            ("fd-aligned", "fd", ALIGNED, True), ("fd-unaligned", "fd", UNALIGNED, True),
            ("buffer-aligned", "buffer", ALIGNED, True), ("buffer-unaligned", "buffer", UNALIGNED, True)]


@pytest.fixture(scope="module")
def one_file(art, tmp_path_factory):
    """The one-file bundle export writes beside art.bundle (packed here if absent), and APK-like files that
    hold it at each offset between junk bytes."""
    fmrlb = art.bundle.parent / (art.bundle.name + ".fmrlb")
    if not fmrlb.exists():
        from fmrl_sdk.runtime.bundle import pack_bundle_file

        manifest = (art.bundle / "manifest.json").read_bytes()
        parts = {name: (art.bundle / name).read_bytes() for name in json.loads(manifest)["files"]}
        fmrlb = tmp_path_factory.mktemp("fmrlb") / "bundle.fmrlb"
        fmrlb.write_bytes(pack_bundle_file(manifest, parts))
    data = fmrlb.read_bytes()
    rng = np.random.default_rng(28)
    folder = tmp_path_factory.mktemp("apk")
    files = {"fmrlb": fmrlb}
    for offset in (ALIGNED, UNALIGNED):
        files[offset] = folder / f"app-{offset}.apk"
        files[offset].write_bytes(rng.bytes(offset) + data + rng.bytes(333))
    return {"files": files, "length": len(data)}


@pytest.fixture(scope="module")
def items(dataset):
    return [dataset.item_ids[i - 1] for i in dataset.sequences[11].tolist()][:6]


@pytest.fixture(scope="module")
def expected(one_file, items):
    """Python's top-10 not yet seen after the items, and the session's bytes."""
    rec = Recommender.open(one_file["files"]["fmrlb"])
    session = rec.new_session()
    for item in items:
        session.observe(item)
    want = session.recommend(10, exclude_seen=True), session.to_bytes()
    rec.close()
    return want


@pytest.fixture(scope="module")
def cpp_app(tmp_path_factory):
    """examples/cpp built the README's way (its CMakeLists.txt pulls in the runtime's own project)."""
    cmake = shutil.which("cmake")
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cmake or not cxx:
        pytest.skip(f"needs cmake and a C++ compiler (cmake: {cmake}, compiler: {cxx})")
    import executorch

    build = tmp_path_factory.mktemp("fmrl-app")
    configure = subprocess.run([cmake, "-S", str(ROOT / "examples" / "cpp"), "-B", str(build),
                                f"-DCMAKE_PREFIX_PATH={list(executorch.__path__)[0]}", "-DCMAKE_BUILD_TYPE=Release"],
                               capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run([cmake, "--build", str(build), "-j2", "--target", "fmrl_app"], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return build / "fmrl_app"


@pytest.fixture(scope="module")
def java_example(jni_runtime, tmp_path_factory):
    """examples/java/Main.java compiled against conftest's JNI build (fmrl.jar, libfmrl_jni.so)."""
    classes = tmp_path_factory.mktemp("java-example")
    compiled = subprocess.run([jni_runtime["javac"], "-Xlint:all", "-Werror", "-cp", str(jni_runtime["jar"]), "-d",
                               str(classes), str(ROOT / "examples" / "java" / "Main.java")],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return [jni_runtime["java"], "-Xcheck:jni", "--add-opens", "java.base/java.io=ALL-UNNAMED",
            f"-Djava.library.path={jni_runtime['build']}", "-cp", f"{jni_runtime['jar']}:{classes}", "Main"]


def open_args(one_file, how: str, where, ranged: bool) -> list[str]:
    args = ["--open", how]
    if ranged:
        args += ["--offset", str(where), "--length", str(one_file["length"])]
    return args + [str(one_file["files"][where])]


def top10(stdout: str) -> tuple[list[str], list[float]]:
    """The "id<TAB>score" lines (Java's other lines start with '#')."""
    rows = [line.split("\t") for line in stdout.splitlines() if line and not line.startswith("#")]
    assert all(len(row) == 2 for row in rows), stdout
    return [row[0] for row in rows], [float(row[1]) for row in rows]


def assert_same(stdout: str, want) -> None:
    ids, scores = top10(stdout)
    assert len(ids) == 10 and ids == [i for i, _ in want], stdout
    np.testing.assert_allclose(scores, [s for _, s in want], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,how,where,ranged", OPENINGS, ids=[o[0] for o in OPENINGS])
def test_cpp_example_opens_the_one_file_bundle(cpp_app, one_file, items, expected, tmp_path, name, how, where,
                                               ranged):
    state = tmp_path / "user.state"
    result = subprocess.run([str(cpp_app), *open_args(one_file, how, where, ranged), str(state), *items],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same(result.stdout, expected[0])
    assert state.read_bytes() == expected[1]  # the session saved is Python's Session.to_bytes() after the items


def test_cpp_example_keeps_its_plain_usage_and_refuses_a_wrong_range(cpp_app, art, one_file, items, expected,
                                                                     tmp_path):
    plain = subprocess.run([str(cpp_app), str(art.bundle), str(tmp_path / "a.state"), *items], capture_output=True,
                           text=True, timeout=300)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert_same(plain.stdout, expected[0])
    wrong = subprocess.run([str(cpp_app), "--open", "fd", "--offset", str(UNALIGNED + 1), "--length",
                            str(one_file["length"]), str(one_file["files"][UNALIGNED]), str(tmp_path / "b.state"),
                            *items], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "error: " in wrong.stderr and not wrong.stdout, wrong.stdout + wrong.stderr


@pytest.mark.parametrize("name,how,where,ranged", OPENINGS, ids=[o[0] for o in OPENINGS])
def test_java_example_opens_the_one_file_bundle(java_example, one_file, items, expected, name, how, where, ranged):
    result = subprocess.run([*java_example, *open_args(one_file, how, where, ranged), *items], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert_same(result.stdout, expected[0])
    assert f"# restored: {len(items)} events, same top-10: true" in result.stdout, result.stdout
