"""The order of the training examples: a function of the seed and the data, never of the number of
processes.

Each epoch is the seeded permutation of the examples that HF's Trainer draws (accelerate's
SeedableRandomSampler: torch.randperm under seed + epoch), made whole global batches: the last one
is filled from the epoch's start, as torch's DistributedSampler pads (cut to whole global batches
under --dataloader_drop_last). accelerate hands rank r the per-device batches r, r + W, ..., and HF
takes `accumulation` of them per optimizer step, so optimizer step s of an epoch trains exactly
positions [s*G, (s+1)*G) of this sequence, for any split of G into per-device batch x processes x
accumulation; a resume at step N skips exactly the positions before N*G (HF's skip counts
per-device batches). Where G divides the data, the order is HF's own.

ITERTRAIN_BATCH_LOG=FILE (a debug aid, off by default) appends every optimizer step's example
indices, gathered over ranks, to FILE: {"iteration", "step", "ids"} per line, rank 0 writing. A
step written again by a resumed run appears again; its last line is the one trained.
"""

from __future__ import annotations

import json
import os

import torch
from torch.utils.data import Sampler

LOG_ENV = "ITERTRAIN_BATCH_LOG"


class GlobalOrder(Sampler[int]):
    def __init__(self, size: int, global_batch: int, seed: int, drop_last: bool = False):
        self.size, self.global_batch, self.seed, self.drop_last = size, global_batch, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        whole = self.size // self.global_batch if self.drop_last else -(-self.size // self.global_batch)
        return whole * self.global_batch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        while len(order) < len(self):  # (a global batch larger than the data wraps more than once)
            order += order[: len(self) - len(order)]
        yield from order[: len(self)]


def log_path() -> str | None:
    return os.environ.get(LOG_ENV) or None


class Recorded(torch.utils.data.Dataset):
    """The training set, noting which indices each fetched per-device batch holds (only under
    ITERTRAIN_BATCH_LOG, with dataloader_num_workers 0: fetched in this process)."""

    def __init__(self, data, fetched: list):
        self.data, self.fetched, self.pending = data, fetched, []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        self.pending.append(int(i))
        return self.data[i]

    def collated(self, collate):
        def call(features):
            self.fetched.append(self.pending)
            self.pending = []
            return collate(features)
        return call


def append(path: str, iteration: int, step: int, ids: list[int]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"iteration": iteration, "step": step, "ids": sorted(ids)}) + "\n")
