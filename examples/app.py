"""A small app embedding the fmrl-sdk runtime: open a bundle, feed a user's events, show recommendations,
and keep the user's state across restarts (one small file per user, whatever the history length).

    python examples/app.py --bundle bundles/phone-lowmem --user alice B0030HKJ8I B00027D8IC
    python examples/app.py --bundle bundles/phone-lowmem --user alice          # interactive: one item id per line
    python examples/app.py --user alice --new-items new_items.safetensors       # items made after export

Run it twice: the second run starts from where the first one stopped (the state file is restored;
a state saved with another bundle is refused, and the app starts the user over).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fmrl_sdk.fileio import atomic_write_bytes
from fmrl_sdk.runtime import FmrlError, Recommender, newest_bundle


def state_path(state_dir: Path, user: str) -> Path:
    return state_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", user) + ".state")


def load_session(rec: Recommender, path: Path):
    if path.exists():
        try:
            session = rec.restore(path.read_bytes())
            print(f"restored {path} ({session.observed} events so far)")
            return session
        except FmrlError as e:  # another bundle, or a damaged file: start over rather than fail
            print(f"cannot restore {path}: {e}")
    return rec.new_session()


def show(session, k: int) -> None:
    for rank, (item, score) in enumerate(session.recommend(k, exclude_seen=True), 1):
        print(f"  {rank:2d}. {item:<14} {score:8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="fmrl-sdk runtime example app")
    parser.add_argument("items", nargs="*", help="Item ids to feed (default: read them from stdin).")
    parser.add_argument("--bundle", help="Bundle directory (default: newest under ./bundles).")
    parser.add_argument("--user", default="demo-user")
    parser.add_argument("--state-dir", default="app-state")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--new-items", help="safetensors file from `fmrl-sdk item-vectors`.")
    args = parser.parse_args()

    try:
        rec = Recommender.open(args.bundle or newest_bundle("bundles"), threads=1)
        if args.new_items:
            print(f"added {rec.add_items_from_file(args.new_items)} items")
    except FmrlError as e:
        sys.exit(f"error: {e}")
    print(f"bundle {rec.bundle.path} (s={rec.granularity}, {rec.num_items:,} items, state {rec.state_bytes} bytes)")
    path = state_path(Path(args.state_dir), args.user)
    session = load_session(rec, path)
    print(f"recommendations for {args.user}:")
    show(session, args.k)

    events = args.items or (line.strip() for line in sys.stdin)
    for item in events:
        if not item:
            continue
        if item in ("quit", "exit"):
            break
        if not session.observe(item):
            print(f"{item}: unknown item, skipped")
            continue
        atomic_write_bytes(path, session.to_bytes())  # persist after every event: a crash loses nothing
        print(f"after {item}:")
        show(session, args.k)
    rec.close()


if __name__ == "__main__":
    main()
