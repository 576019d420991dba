"""The package as a user installs it: recipes and device profiles are package data, equal to the checkout's
user-visible copies, and a wheel built from the checkout trains and exports from any directory."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("folder", ["recipes", "devices"])
def test_packaged_copies_equal_the_checkout(folder):
    visible = sorted(p.name for p in (ROOT / folder).glob("*.toml"))
    packaged = sorted(p.name for p in (ROOT / "fmrl_sdk" / folder).glob("*.toml"))
    assert visible and visible == packaged, f"cp {folder}/*.toml fmrl_sdk/{folder}/ (and remove stale files)"
    _, mismatch, errors = filecmp.cmpfiles(ROOT / folder, ROOT / "fmrl_sdk" / folder, visible, shallow=False)
    assert not mismatch and not errors, f"{mismatch + errors} differ: cp {folder}/*.toml fmrl_sdk/{folder}/"


def test_builtin_recipe_paths_start_from_working_directory_recipes(tmp_path, monkeypatch):
    from fmrl_sdk.train.recipe import find_recipe, load_recipe

    monkeypatch.chdir(tmp_path)
    path, base = find_recipe("beauty")
    assert path.parent.name == "recipes" and path.parent.parent.name == "fmrl_sdk"
    assert base == tmp_path / "recipes"
    recipe = load_recipe(path, base)
    assert Path(recipe.data.path) == (tmp_path / "recipes" / "../../shared/data/amazon-beauty").resolve()
    # a file given by path keeps resolving from its own folder
    own = tmp_path / "mine" / "r.toml"
    own.parent.mkdir()
    own.write_text('[data]\npath = "data.csv"\n')
    assert load_recipe(*find_recipe(str(own))).data.path == str(own.parent / "data.csv")


def _build_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of the checkout's package sources (the build writes build/ and
    *.egg-info next to pyproject.toml: never in the shared checkout)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "fmrl_sdk", src / "fmrl_sdk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "wheel"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build wheels here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("fmrl_sdk-*.whl")
    return wheel


def test_wheel_trains_and_exports_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("recipes", "devices"):
        for p in (ROOT / folder).glob("*.toml"):
            assert f"fmrl_sdk/{folder}/{p.name}" in names
    for p in (ROOT / "fmrl_sdk" / "data" / "demo").iterdir():
        assert f"fmrl_sdk/data/demo/{p.name}" in names
    if (ROOT / "fmrl_sdk" / "runtime" / "cpp" / "CMakeLists.txt").exists():
        assert "fmrl_sdk/runtime/cpp/CMakeLists.txt" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "80"}

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *args], cwd=work, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    where = subprocess.run([sys.executable, "-c", "import fmrl_sdk; print(fmrl_sdk.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), f"imported {where}, not the unpacked wheel"

    assert "packaged demo data" in cli("recipes")
    cli("train", "--recipe", "demo", "--epochs", "1", "--sizes", "8,16", "--out", "runs/demo")
    assert json.loads((work / "runs" / "demo" / "config.json").read_text())["data"]["path"] == "demo"  # not the
    # unpacked folder: the run keeps working after the SDK is reinstalled elsewhere
    out = cli("export", "--profile", "phone-lowmem", "--run", "runs/demo")
    manifest = json.loads((work / "bundles" / "phone-lowmem" / "manifest.json").read_text())
    assert manifest["profile"] == "phone-lowmem" and manifest["granularity"] in (8, 16)
    assert "runs/demo" in out
