"""Text featurization throughput at a few batch sizes (items/s), on the first N items of a dataset.

    python benchmarks/featurize_speed.py --data demo --items 1000 --batch-sizes 16,32,64,128

Uses the same resolution as `fmrl-sdk featurize` (offline). Prints one JSON line per batch size.
"""

from __future__ import annotations

import argparse
import json
import time

from fmrl_sdk.data.dataset import load_dataset
from fmrl_sdk.features.sources import resolve_encoder, set_offline
from fmrl_sdk.data.text import item_text
from fmrl_sdk.features.text import TextEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--batch-sizes", default="16,32,64,128")
    parser.add_argument("--text-encoder", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_offline(False)
    dataset = load_dataset(args.data)
    texts = [item_text(m) for m in dataset.item_meta[: args.items]]
    encoder = TextEncoder(resolve_encoder(args.text_encoder, "text"), device=args.device)
    encoder.encode(texts[:32], batch_size=32)  # warm-up
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        start = time.perf_counter()
        encoder.encode(texts, batch_size=bs)
        seconds = time.perf_counter() - start
        print(json.dumps({"encoder": encoder.source.name, "items": len(texts), "batch_size": bs,
                          "seconds": round(seconds, 2), "items_per_s": round(len(texts) / seconds, 1)}))


if __name__ == "__main__":
    main()
