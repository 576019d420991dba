"""Regenerate the golden files of tests/test_bundle_format.py (run from the repository root):

    python tests/golden/make_golden.py

A seeded untrained model of 40 items, granularity 8, k_max 20, exported with the real
`fmrl_sdk.deploy.export.export_bundle` (format "both": tiny/ and tiny.fmrlb from the same bytes), the
fingerprint of its manifest bytes and a session state saved by the Python runtime after EVENTS. Only
regenerate on purpose (a format change): the tests check both runtimes against these bytes.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
ITEMS = 40
EVENTS = ["i3", "i4", "i6", "i7", "unknown-item", "i9", "i12", "i3", "i30", "i31"]


def make_run(root: Path) -> Path:
    import numpy as np
    import torch

    from fmrl_sdk.data.dataset import load_dataset
    from fmrl_sdk.model.model import FMRLRec, ModelConfig
    from fmrl_sdk.train.run import save_checkpoint

    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for user in range(120):
        item = int(rng.integers(ITEMS))
        for ts in range(int(rng.integers(6, 12))):
            lines.append(f"u{user},i{item},{ts}")
            item = (item + int(rng.integers(1, 4))) % ITEMS
    data = root / "interactions.csv"
    data.write_text("\n".join(lines) + "\n")
    dataset = load_dataset(data)
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=dataset.num_items, sizes=(8, 16), item_embedding="id", num_blocks=1,
                      dropout=0.0, lru_dropout=0.0)
    model = FMRLRec(cfg).eval()
    run_dir = root / "golden-run"
    run_dir.mkdir()
    save_checkpoint(model, run_dir)
    (run_dir / "items.json").write_text(json.dumps(dataset.item_ids))
    config = {"sdk_version": "0.1.0", "recipe": {"data": {"path": str(data), "max_len": 50, "min_count": 5}},
              "model": cfg.to_dict(), "data": {"path": str(data), "name": "golden"}, "features": None}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def main() -> None:
    from fmrl_sdk.deploy.export import export_bundle
    from fmrl_sdk.runtime import Recommender

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp))
        out = Path(tmp) / "tiny"
        export_bundle(run_dir, out, size=8, profile="golden", k_max=20, verify_sequences=4, format="both")
        shutil.rmtree(HERE / "tiny", ignore_errors=True)
        shutil.copytree(out, HERE / "tiny")
        shutil.copyfile(Path(tmp) / "tiny.fmrlb", HERE / "tiny.fmrlb")
    rec = Recommender.open(HERE / "tiny")
    session = rec.new_session()
    for item in EVENTS:
        session.observe(item)
    (HERE / "session_state.bin").write_bytes(session.to_bytes())
    golden = {"fingerprint": rec.fingerprint, "events": EVENTS,
              "top10": [item for item, _ in session.recommend(10)]}
    (HERE / "golden.json").write_text(json.dumps(golden, indent=2) + "\n")
    print(json.dumps(golden))


if __name__ == "__main__":
    main()
