"""Committed measurements agree with the committed run they were read from."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fmrl_sdk.model import FMRLRec, ModelConfig

RUN = Path("benchmarks/results/beauty-256")


def test_beauty_json_is_the_committed_runs_test_metrics():
    result = json.loads(Path("benchmarks/results/beauty.json").read_text())
    config = json.loads((RUN / "config.json").read_text())
    test = json.loads((RUN / "metrics.json").read_text())["test"]
    sizes = sorted((k for k in result if k.isdigit()), key=int)
    assert sizes == [str(s) for s in config["model"]["sizes"]] == sorted(test, key=int)
    for size in sizes:
        assert set(result[size]) == set(test[size])
        for name, value in result[size].items():
            assert value == pytest.approx(test[size][name], abs=5e-7), (size, name)
    history = (RUN / "history.jsonl").read_text().splitlines()
    assert result["epochs"] == len(history)
    assert result["recipe"] == config["recipe"]


def test_committed_checkpoint_loads_into_the_configured_model():
    """Strict load: every tensor of the checkpoint has the shape config.json's model gives it."""
    config = json.loads((RUN / "config.json").read_text())
    cfg = ModelConfig.from_dict(config["model"])
    features = torch.zeros(cfg.num_items + 1, cfg.feature_dim) if cfg.item_embedding != "id" else None
    model = FMRLRec(cfg, features)
    model.load_state_dict(load_file(str(RUN / "model.safetensors")))
    assert model.num_params()["total"] == config["params"]["total"]
    assert len(json.loads((RUN / "items.json").read_text())) == cfg.num_items == config["data"]["items"]
