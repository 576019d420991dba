"""Which part of the item vectors makes a run's largest head rank differently from the one below it.

A diagnostic for issue 14 (benchmarks/RESULTS.md, section 17). In every full-softmax run the largest head has
more NDCG@5 and MRR@10 than the next size down but less Recall@10/20/50. Its own dimensions (next size .. largest)
are trained by one loss term only. With hybrid item vectors (projected content + a learned id vector) this
script scores test users with the largest head three ways, changing only the scoring table's own dimensions
(the model's inputs, and every smaller head, are untouched):
  as trained     content + id                      (what `fmrl-sdk eval` reports)
  content only   the id vectors' own dimensions set to 0
  id only        the projected content's own dimensions set to 0

    python benchmarks/top_head_parts.py --run runs/G512 [--json benchmarks/results/top_head_parts_G512.json]
        [--features features/beauty-minilm] [--data ../shared/data/amazon-beauty]

Protocol as `fmrl-sdk eval` (train.evaluate with the changed scoring table): test split, full ranking, history
not masked, exact per-user means.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fmrl_sdk.fileio import atomic_write_json
from fmrl_sdk.train.evaluate import evaluate
from fmrl_sdk.train.run import load_run, load_run_dataset

SHOWN = ("NDCG@5", "MRR@10", "NDCG@10", "Recall@5", "Recall@10", "Recall@20", "Recall@50")


@torch.no_grad()
def score_variants(model, dataset, max_len: int) -> dict[str, dict[str, float]]:
    """{variant: test metrics} for the next-to-largest head and three scorings of the largest head."""
    if model.cfg.item_embedding != "hybrid":
        raise SystemExit("the run's item vectors are not hybrid (content + id): nothing to separate")
    sizes = model.cfg.sizes
    low, top = sizes[-2], sizes[-1]
    if model.cfg.id_width < top:
        raise SystemExit(f"the id vectors fill {model.cfg.id_width} of {top} dims (id_dims): the largest head's "
                         "own dimensions hold content only, nothing to separate")
    content = model.projector(model.projector_inputs)           # [N + 1, d] projected content
    ids = model.id_embedding.weight                             # [N + 1, d] learned id vectors
    table = model.item_table()                                  # model input, as trained: content + ids
    own = slice(low, top)
    variants = {"as trained": table,
                "content only": torch.cat([table[:, :low], content[:, own]], 1),
                "id only": torch.cat([table[:, :low], ids[:, own]], 1)}
    results = {}
    for name, scoring_table in variants.items():
        metrics = evaluate(model, dataset, "test", max_len, scoring_table=scoring_table)
        if name == "as trained":
            results[f"{low} as trained"] = metrics[low]
        results[f"{top} {name}"] = metrics[top]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--features", type=Path, default=None, help="features folder, if it moved since training")
    parser.add_argument("--data", default=None, help="data path, if it moved since training")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = load_run(args.run, args.features)
    dataset = load_run_dataset(loaded.info, args.data)
    results = score_variants(loaded.model, dataset, loaded.info.max_len)
    print(f"| {args.run.name} | " + " | ".join(SHOWN) + " |")
    print("|---" * (len(SHOWN) + 1) + "|")
    for name, metrics in results.items():
        print(f"| {name} | " + " | ".join(f"{metrics[m]:.4f}" for m in SHOWN) + " |")
    if args.json:
        atomic_write_json(args.json, {"run": str(args.run), "split": "test", "metrics": results})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
