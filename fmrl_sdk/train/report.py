"""Rich tables and a PNG of metrics against granularity."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

SHOWN = ("NDCG@5", "Recall@5", "NDCG@10", "Recall@10", "MRR@10", "NDCG@20", "Recall@20", "Recall@50")


def metrics_table(metrics: dict, title: str) -> Table:
    """metrics: {size: {name: value}} (size as int or str). Headers abbreviated (N@10 = NDCG@10, R = Recall)
    so that the table fits 80 columns."""
    table = Table(title=title, caption="N = NDCG, R = Recall, MRR = mean reciprocal rank")
    table.add_column("size", justify="right")
    for name in SHOWN:
        table.add_column(name.replace("NDCG", "N").replace("Recall", "R"), justify="right")
    for size, values in sorted(metrics.items(), key=lambda kv: int(kv[0])):
        table.add_row(str(size), *(f"{values[name]:.4f}" for name in SHOWN))
    return table


def plot_metrics(metrics: dict, path: Path, title: str, reference: dict | None = None) -> Path | None:
    """Recall@10 and NDCG@10 against size (log2 axis). Returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return None
    sizes = sorted(int(s) for s in metrics)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("Recall@10", "o-"), ("NDCG@10", "s-")):
        ax.plot(sizes, [metrics[str(s)][name] if str(s) in metrics else metrics[s][name] for s in sizes],
                style, label=name)
    ticks = set(sizes)
    if reference:
        ref_sizes = sorted(int(s) for s in reference)
        ax.plot(ref_sizes, [reference[s] for s in ref_sizes], "x--", color="grey", label="paper Recall@10")
        ticks |= set(ref_sizes)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(s) for s in sorted(ticks)])
    ax.set_xlabel("granularity (dims)")
    ax.set_ylabel("metric")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
