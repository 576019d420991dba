"""Data-parallel training: one process per device, launched by torchrun (or `fmrl-sdk train --nproc N`).

Everything here is a no-op for a single process (`Dist()`), so the trainer has one code path:
- each rank keeps only its shard of the users (`shard`: user u belongs to rank u % world), their
  sequences and training rows (windows.py), plus the number of targets of every row of every user;
- every rank draws the same epoch permutation over all rows (same seed), so a global batch of
  `batch_size` rows is the same set as in one process; each rank takes the rows of that batch that
  belong to its users (`shard_batch`; possibly none: then a zero-weighted forward keeps DDP in step),
  so a recipe means the same optimisation whatever the number of processes;
- gradients are averaged by DistributedDataParallel around the `Objective` module (item table, model
  and loss in one forward); each rank's loss is scaled by world * local targets / global targets so
  that the average is the gradient of the global per-target mean, as in one process;
- validation and test: each rank scores its own users and the metric sums are all-reduced;
- only rank 0 writes files; `replicas_in_sync` checks every epoch that all ranks hold the same bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from ..data.dataset import Dataset
from ..errors import FmrlError
from .evaluate import evaluate, evaluation_sums, metric_names, trim_left_padding
from .windows import Windows


@dataclass
class Dist:
    """Where this process sits: rank of world, and its device. The default is one CPU process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def check_device(device: str, nproc: int = 1) -> None:
    if device not in ("cpu", "cuda"):
        raise FmrlError(f"--device {device!r}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FmrlError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if device == "cuda" and nproc > torch.cuda.device_count():
        raise FmrlError(f"--nproc {nproc} --device cuda: only {torch.cuda.device_count()} GPUs on this machine")


def launch(nproc: int, cli_args: list[str]) -> int:
    """Run `fmrl-sdk <cli_args>` in nproc local processes under torchrun; returns its exit code."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "fmrl_sdk.cli", *cli_args]
    proc = subprocess.Popen(command)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # torchrun and its workers got the same Ctrl-C: let them stop cleanly
        proc.wait()
        return 130


def setup(device: str = "cpu") -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPU."""
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if world == 1:
        return Dist(device=dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), world, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), dev)


def teardown(d: Dist, together: bool = True) -> None:
    """Leave the process group; `together` (after a normal finish) waits for every rank first: a rank
    that destroyed its gloo group while another was still working (rank 0 writing files, a test's
    reference step) aborted now and then at exit (SIGABRT, "terminate called without an active
    exception", about 1 run in 30). After an error there is no wait: the other ranks may be inside
    another collective, and torchrun stops them."""
    if d.world > 1 and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def wrap(objective: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP around the objective (buffers such as content features are constant: not re-broadcast)."""
    if d.world == 1:
        return objective
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(objective, device_ids=[d.local_rank] if d.cuda else None,
                                   forward_sync_buffers=False)


def steps_per_epoch(rows: int, batch_size: int, d: Dist) -> int:
    """Full batches, plus the last partial one if it has at least one row per rank."""
    return rows // batch_size + (rows % batch_size >= d.world)


def local_batch(inputs: np.ndarray, targets: np.ndarray, rows: np.ndarray, d: Dist):
    """This rank's contiguous share of the global batch `rows` of materialised arrays (`training_arrays`,
    every user on every rank): (x, y, loss scale) on the rank's device. Training uses `shard_batch`; this
    is the plain reference the tests compare it with."""
    mine = np.array_split(rows, d.world)[d.rank]
    x, y = (torch.from_numpy(a).to(d.device) for a in trim_left_padding(inputs[mine], targets[mine]))
    if d.world == 1:
        return x, y, 1.0
    return x, y, d.world * int((targets[mine] > 0).sum()) / int((targets[rows] > 0).sum())


def shard_users(num_users: int, d: Dist) -> np.ndarray:
    """The users (positions 0..num_users - 1) rank d.rank keeps: every user u with u % world == rank."""
    return np.arange(d.rank, num_users, d.world, dtype=np.int64)


def shard(dataset: Dataset, max_len: int, stride: int, d: Dist) -> tuple[Dataset, Windows]:
    """This rank's users of `dataset` (`shard_users`; one process: the dataset itself) and the training
    windows over them (every row's target count, but only this rank's rows' descriptors and items).
    Once the caller drops `dataset`, the other users' sequences are freed: about 1/world of the data stays."""
    train = dataset.train_sequences()
    if d.world == 1:
        return dataset, Windows(train, max_len, stride)
    lengths = np.fromiter((len(s) for s in train), dtype=np.int64, count=len(train))
    users = shard_users(dataset.num_users, d)
    windows = Windows([train[u] for u in users], max_len, stride, users=users, all_lengths=lengths)
    return dataset.subset(users), windows


def shard_batch(windows: Windows, rows: np.ndarray, d: Dist):
    """This rank's share of the global batch `rows` (the rows of its users): (x, y, loss scale) on its
    device. The scale, world * local targets / global targets, makes DDP's average the gradient of the
    global batch's per-target mean. A rank with no targets in the batch runs a one-target forward scaled by
    0 (every rank must join each gradient all-reduce; its gradient is exactly 0). Batches are at least two
    columns wide (a left padding column changes nothing): on one column the recurrence's parameters would
    take no part in the graph on this rank only, and DDP's all-reduce would miss their gradients."""
    if d.world == 1:
        x, y = windows.batch(rows)
        return torch.from_numpy(x).to(d.device), torch.from_numpy(y).to(d.device), 1.0
    mine = rows[windows.owned(rows)]
    local, total = int(windows.lengths[mine].sum()), int(windows.lengths[rows].sum())
    if local == 0 or total == 0:
        x, y, scale = np.zeros((1, 2), dtype=np.int64), np.array([[0, 1]], dtype=np.int64), 0.0
    else:
        (x, y), scale = windows.batch(mine), d.world * local / total
        if x.shape[1] < 2:
            x, y = (np.pad(a, ((0, 0), (1, 0))) for a in (x, y))
    return torch.from_numpy(x).to(d.device), torch.from_numpy(y).to(d.device), scale


def sum_counts(counts: np.ndarray, d: Dist) -> np.ndarray:
    """Element-wise sum of int64 counts over ranks (exact), identical on every rank."""
    if d.world == 1:
        return counts
    t = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64)).to(d.device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def sum_across(values: list[float], d: Dist) -> list[float]:
    """Element-wise sum over ranks (float64), identical on every rank."""
    if d.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    dist.broadcast(t, 0)  # every rank takes rank 0's bytes, so decisions (early stopping) agree
    return t.tolist()


def broadcast_text(text: str, d: Dist) -> str:
    """Rank 0's string on every rank (e.g. a run directory named after the time)."""
    if d.world == 1:
        return text
    data = torch.zeros(4096, dtype=torch.uint8, device=d.device)
    raw = text.encode()[:4096]
    data[:len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(data, 0)
    return bytes(data.cpu().tolist()).rstrip(b"\0").decode()


def gather(tensor: torch.Tensor, d: Dist) -> list[torch.Tensor]:
    """Every rank's copy of an equally shaped tensor, on the CPU."""
    if d.world == 1:
        return [tensor.cpu()]
    local = tensor.to(d.device)
    out = [torch.empty_like(local) for _ in range(d.world)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def replicas_in_sync(model: torch.nn.Module, d: Dist) -> bool:
    """True when every rank's parameters are bitwise identical (sha256 of their bytes)."""
    if d.world == 1:
        return True
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    digests = gather(torch.tensor(list(h.digest()), dtype=torch.uint8), d)
    return all(torch.equal(digests[0], x) for x in digests[1:])


class HostView:
    """A model on an accelerator seen from `evaluate`, which builds its batches on the CPU: inputs go to
    the device, hidden states and the item table come back (scoring then runs on the CPU)."""

    def __init__(self, model):
        self.model, self.cfg, self._table = model, model.cfg, None

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def item_table(self) -> torch.Tensor:
        self._table = self.model.item_table()
        return self._table.cpu()

    def __call__(self, items: torch.Tensor, table=None, at: torch.Tensor | None = None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(items.to(device), self._table, None if at is None else at.to(device)).cpu()


def evaluate_on(model, dataset: Dataset, split: str, max_len: int, batch_size: int, d: Dist,
                progress=None, users: np.ndarray | None = None, sharded: bool = False) -> dict[int, dict[str, float]]:
    """`evaluate` over users split across ranks (exact means over all targets, identical on every rank).

    sharded: `dataset` holds only this rank's users (`shard`), each rank scores all of them; otherwise it
    holds every user and each rank scores a contiguous share. users: score only these users (global
    positions, ascending; a validation sample); None: every user.
    """
    viewed = HostView(model) if d.cuda else model
    if d.world == 1:
        mine = dataset if users is None else dataset.subset(users)
        return evaluate(viewed, mine, split, max_len, batch_size, progress=progress)
    if sharded:
        local = np.arange(dataset.num_users) if users is None else \
            np.asarray(users, dtype=np.int64)[np.asarray(users) % d.world == d.rank] // d.world
    else:
        everyone = np.arange(dataset.num_users) if users is None else np.asarray(users, dtype=np.int64)
        local = np.array_split(everyone, d.world)[d.rank]
    whole = sharded and users is None
    sums, count = evaluation_sums(viewed, dataset if whole else dataset.subset(local), split, max_len, batch_size,
                                  progress=progress) if len(local) else (None, 0)
    sizes, names = list(model.cfg.sizes), metric_names()
    flat = [sums[s][n] if sums else 0.0 for s in sizes for n in names]
    *totals, count = sum_across(flat + [float(count)], d)
    totals = iter(totals)
    return {s: {n: next(totals) / max(1.0, count) for n in names} for s in sizes}
