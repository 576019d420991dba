"""The command line as a newcomer meets it: tables that fit 80 columns, runs named and unfinished runs
flagged, library noise hidden (and shown with --verbose), built-in recipes listed, `simulate --limit`."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console

from fmrl_sdk.errors import FmrlError

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd=None, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "80", **(env or {})}, timeout=600)


def rendered(renderable, width: int) -> list[str]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text().splitlines()


def fake_choices():
    from fmrl_sdk.deploy.profiles import Candidate, all_profiles, choose

    candidates = [Candidate(size=s, precision=p, bundle_bytes=s * 30_000 // (4 if p == "int8" else 1),
                            state_bytes=4184, runtime_bytes=3_000_000, step_p50_us=40.0 + s, val_ndcg10=0.001 * s)
                  for s in (8, 16, 32, 64) for p in ("fp32", "int8")]
    return [choose(p, candidates) for p in all_profiles()]


def test_profiles_table_fits_80_columns_and_names_every_profile():
    from fmrl_sdk.deploy.commands import profiles_table

    choices = fake_choices()
    table, notes = profiles_table(choices, "granularity per device profile", 80)
    lines = rendered(table, 80)
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines)
    text = "\n".join(lines)
    for c in choices:
        assert c.profile.name in text
        if c.chosen is not None:
            assert f"{c.chosen.state_bytes:,} B" in text
    assert len(notes) == sum(c.chosen is None for c in choices) >= 1    # wearable: nothing fits
    assert all(note.startswith(c.profile.name + ": nothing fits") for note, c in
               zip(notes, [c for c in choices if c.chosen is None]))
    wide, wide_notes = profiles_table(choices, "t", 160)
    assert "best val NDCG@10" in "\n".join(rendered(wide, 160)) and not wide_notes


def test_metrics_table_fits_80_columns():
    from fmrl_sdk.train.report import SHOWN, metrics_table

    metrics = {s: {n: 0.0123 for n in SHOWN} for s in (8, 64, 1024)}
    lines = rendered(metrics_table(metrics, "test: 22,363 users, 12,101 items, full ranking (12.3 s)"), 80)
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    assert "N@10" in lines[2] and "R@50" in lines[2] and "N = NDCG, R = Recall" in "\n".join(lines)


def _run_info(tmp_path, finished):
    from fmrl_sdk.train.run import read_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"path": "demo"}, "recipe": {"data": {}}}))
    (run / "items.json").write_text("[]")
    if finished is not None:
        (run / "train_state.json").write_text(json.dumps({"epoch": 3, "finished": finished}))
    return read_run(run)


@pytest.mark.parametrize("finished", [True, None])
def test_a_finished_run_is_named_without_warning(tmp_path, finished):
    from fmrl_sdk.deploy.commands import describe_run

    console = Console(record=True, width=200, file=open("/dev/null", "w"))
    describe_run(console, _run_info(tmp_path, finished), strict=True)
    text = console.export_text()
    assert str(tmp_path / "run") in text and "warning" not in text


def test_an_unfinished_run_warns_in_one_line_and_strict_refuses(tmp_path):
    from fmrl_sdk.deploy.commands import describe_run

    info = _run_info(tmp_path, False)
    console = Console(record=True, width=300, file=open("/dev/null", "w"))
    describe_run(console, info, strict=False)
    warning = [line for line in console.export_text().splitlines() if "warning" in line]
    assert len(warning) == 1 and "did not finish" in warning[0] and "--resume" in warning[0]
    with pytest.raises(FmrlError, match="did not finish.*--strict"):
        describe_run(console, info, strict=True)


def test_export_strict_refuses_an_unfinished_run_before_writing(tmp_path, art):
    run = tmp_path / "run"
    shutil.copytree(art.run_dir, run)
    (run / "train_state.json").write_text(json.dumps({"epoch": 1, "finished": False}))
    result = cli("export", "--profile", "phone-lowmem", "--run", str(run), "--size", "16", "--strict",
                 "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "did not finish" in result.stderr
    assert not (tmp_path / "bundle").exists()


def test_known_library_noise_is_hidden_and_verbose_shows_it(caplog):
    from fmrl_sdk.cli.noise import hide_known_noise

    torchao = logging.getLogger("torchao")
    noise = "Failed to load /x/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load"
    try:
        hide_known_noise(True)
        with caplog.at_level(logging.WARNING):
            torchao.warning(noise)
            torchao.warning("Failed to load the model weights")     # not the known shape: shown
            torchao.error(noise)                                     # errors always pass
        assert [r.getMessage() for r in caplog.records] == ["Failed to load the model weights", noise]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            hide_known_noise(True)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("something else is deprecated", FutureWarning)
        assert [str(w.message) for w in seen] == ["something else is deprecated"]
        caplog.clear()
        hide_known_noise(False)
        with caplog.at_level(logging.WARNING):
            torchao.warning(noise)
        assert [r.getMessage() for r in caplog.records] == [noise]
    finally:
        hide_known_noise(False)


def test_stderr_filter_drops_exactly_the_harmless_lines():
    import io

    from fmrl_sdk.cli.noise import _FilteredStderr

    real = io.StringIO()
    err = _FilteredStderr(real)
    err.write("[cpuinfo_utils.cpp:87] Failed to open midr file /sys/devices/soc0/image_version\n")
    err.write("[cpuinfo_utils.cpp:125] CPU info and manual query on # of cpus dont match.\n")
    err.write("[cpuinfo_utils.cpp:71] Reading")            # a harmless line in two writes
    err.write(" file /sys/devices/soc0/image_version\n")
    err.write("[threadpool.cpp:66] Resetting threadpool to 1 threads.\n")
    assert real.getvalue() == ""
    err.write("[cpuinfo_utils.cpp:87] Failed to open midr file /sys/x, then a real problem\n")
    err.write("progress 50%")                               # not a possible noise line: written at once
    assert real.getvalue().endswith("real problem\nprogress 50%")
    err.write("\n[cpuinfo")                                  # "[cpuinfo" waits for its newline ...
    assert real.getvalue().endswith("progress 50%\n")
    err.release()                                            # ... and is written at exit
    assert real.getvalue().endswith("progress 50%\n[cpuinfo")
    assert err.encoding == real.encoding and err.isatty() is False


def test_executorch_cpuinfo_lines_are_hidden_at_the_entry_point_and_shown_with_verbose(art):
    code = ("import sys; from fmrl_sdk.cli.noise import filter_stderr\n"
            "if sys.argv[1] == 'quiet': filter_stderr()\n"
            "from fmrl_sdk.runtime.program import load_program\n"
            f"load_program({str(Path(art.bundle) / 'model.pte')!r})\n"
            "print('done', file=sys.stderr)\n")
    runs = {mode: subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=300,
                                 env={**__import__("os").environ, "FMRL_PROGRAM_CHECK": "off"})
            for mode in ("quiet", "verbose")}
    assert all(r.returncode == 0 for r in runs.values()), runs
    assert "midr" not in runs["quiet"].stderr and runs["quiet"].stderr.strip().endswith("done")
    if "midr" not in runs["verbose"].stderr:
        pytest.skip("this ExecuTorch build prints no cpuinfo lines here")


def test_recipes_lists_the_packaged_recipes_and_unknown_names_list_them(tmp_path):
    from fmrl_sdk.train.recipe import builtin_recipes

    names = list(builtin_recipes())
    assert {"demo", "beauty"} <= set(names)
    listed = cli("recipes", cwd=tmp_path)
    assert listed.returncode == 0 and all(n in listed.stdout for n in names)
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    shown = cli("recipes", "--show", "demo", cwd=tmp_path)
    assert shown.stdout == (ROOT / "recipes" / "demo.toml").read_text()
    bad = cli("train", "--recipe", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "demo" in bad.stderr and bad.stderr.count("\n") == 1


def test_simulate_limit_replays_only_the_first_events_and_says_so(tmp_path, art):
    from fmrl_sdk.data.dataset import load_dataset
    from fmrl_sdk.simulate.commands import simulate
    from fmrl_sdk.simulate.stream import write_stream

    dataset = load_dataset("demo")
    stream = tmp_path / "events.jsonl"
    info = write_stream(stream, dataset.user_ids, dataset.item_ids, dataset.sequences, "test", 0)
    assert info["events"] > 500
    limited = simulate(stream, art.bundle, report=tmp_path / "limited.json", limit=500)
    assert limited["events"] == 500 and limited["lines"] == 500 and limited["limit"] == 500
    assert json.loads((tmp_path / "limited.json").read_text())["limit"] == 500
    first = tmp_path / "first.jsonl"
    first.write_text("".join(stream.read_text().splitlines(keepends=True)[:500]))
    whole_prefix = simulate(first, art.bundle)
    assert whole_prefix["limit"] is None
    for key in ("online", "online_last_event", "users"):
        assert limited[key] == whole_prefix[key]
    with pytest.raises(FmrlError, match="--limit"):
        simulate(stream, art.bundle, limit=-1)


@pytest.mark.slow
def test_quickstart_writes_the_bundle_path_the_examples_use(tmp_path):
    result = cli("quickstart", "--workdir", str(tmp_path), "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "bundles" / "phone-lowmem" / "manifest.json").read_text())
    assert manifest["profile"] == "phone-lowmem"
    assert "bundles/phone-lowmem" in (ROOT / "examples" / "app.py").read_text()
    (report,) = (tmp_path / "quickstart").glob("report-*.json")
    assert json.loads(report.read_text())["events"] > 0
    assert "midr" not in result.stderr and "Failed to load" not in result.stderr
