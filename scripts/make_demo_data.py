"""Build the packaged demo set: a seeded sample of users from the shared Amazon Beauty folder (P5 layout).

Usage: python scripts/make_demo_data.py ../shared/data/amazon-beauty fmrl_sdk/data/demo --users 2000
Items are renumbered 1..N in order of first appearance; metadata and licence notices travel with it.
"""

import argparse
import gzip
import json
import shutil
from pathlib import Path

import numpy as np

from fmrl_sdk.data.dataset import read_p5_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = read_p5_folder(args.source)
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(data.num_users, size=args.users, replace=False))
    new_index: dict[int, int] = {}
    lines = []
    for new_user, u in enumerate(chosen, 1):
        seq = [new_index.setdefault(int(i), len(new_index) + 1) for i in data.sequences[u]]
        lines.append(" ".join(map(str, [new_user, *seq])))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sequential_data.txt").write_text("\n".join(lines) + "\n")
    old_of_new = {v: k for k, v in new_index.items()}
    id2item = {str(n): data.item_ids[old_of_new[n] - 1] for n in range(1, len(new_index) + 1)}
    id2user = {str(n): data.user_ids[u] for n, u in enumerate(chosen, 1)}
    maps = {"id2item": id2item, "item2id": {v: k for k, v in id2item.items()},
            "id2user": id2user, "user2id": {v: k for k, v in id2user.items()}}
    (args.out / "datamaps.json").write_text(json.dumps(maps))
    with gzip.open(args.out / "meta.json.gz", "wt") as f:
        for n in range(1, len(new_index) + 1):
            meta = {"asin": id2item[str(n)], **data.item_meta[old_of_new[n] - 1]}
            f.write(json.dumps(meta) + "\n")
    for lic in args.source.glob("LICENSE-*"):
        shutil.copy(lic, args.out / lic.name)
    print(f"{args.users} users, {len(new_index)} items, {sum(len(data.sequences[u]) for u in chosen)} interactions")


if __name__ == "__main__":
    main()
