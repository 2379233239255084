"""--num_train_epochs: the steps of an iteration are counted as HF's Trainer counts them (its own
set_initial_training_values on our sampler's dataloader, sharded as accelerate shards it for W ranks),
and the examples of every optimizer step are the same for any split of the global batch."""

import dataclasses
import itertools

import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import Trainer

from itertrain.app import config
from itertrain.core.elastic import Batch
from itertrain.training.order import GlobalOrder


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def loader(n: int, batch: int, accumulation: int, world: int, rank: int, drop_last: bool, seed: int = 42):
    order = GlobalOrder(n, batch * accumulation * world, seed, drop_last)
    return prepare_data_loader(DataLoader(list(range(n)), batch_size=batch, sampler=order, drop_last=drop_last),
                               num_processes=world, process_index=rank, put_on_device=False)


def hf_steps(args, n: int, world: int) -> int:
    """The optimizer steps HF's Trainer counts for `n` examples on `world` ranks under `args` (its TrainingArguments)."""
    trainer = Trainer(model=_Model(), args=args)
    data = loader(n, args.per_device_train_batch_size, args.gradient_accumulation_steps, world, 0,
                  args.dataloader_drop_last)
    return trainer.set_initial_training_values(args, data)[-1]


def steps_of(n, batch, accumulation, world, drop_last, epoch=0) -> list[list[int]]:
    """The examples of each optimizer step of one epoch, over every rank, as HF takes them (accumulation
    per-device batches per step and rank)."""
    ranks = []
    for rank in range(world):
        data = loader(n, batch, accumulation, world, rank, drop_last)
        data.set_epoch(epoch)
        ranks.append([b.tolist() for b in data])
    steps = []
    for s in range(len(ranks[0]) // accumulation):
        steps.append(sorted(i for r in ranks for b in r[s * accumulation:(s + 1) * accumulation] for i in b))
    return steps


@pytest.mark.parametrize("n,drop_last", [(100, False), (100, True), (24, False), (7, False)])
def test_every_split_of_a_global_batch_trains_the_same_examples_per_step(n, drop_last):
    splits = [(12, 1, 1), (6, 2, 1), (3, 4, 1), (6, 1, 2), (4, 1, 3), (2, 2, 3), (1, 3, 4)]  # 12 examples per step
    for epoch in (0, 1):
        seen = [steps_of(n, b, a, w, drop_last, epoch) for b, a, w in splits]
        assert all(s == seen[0] for s in seen), (epoch, seen)
    assert steps_of(n, 12, 1, 1, drop_last, 0) != steps_of(n, 12, 1, 1, drop_last, 1)  # each epoch its own order


# (without one whole global batch under --dataloader_drop_last nothing trains: the loop says so)
GRID = [g for g in itertools.product([1, 7, 32, 33, 100], [1, 8], [1, 3, 4], [1, 2, 3], [1.0, 0.5, 2.5], [False, True])
        if not (g[5] and g[0] < g[1] * g[2] * g[3])]


@pytest.mark.parametrize("n,batch,accumulation,world,epochs,drop_last", GRID)
def test_epoch_steps_match_hf(n, batch, accumulation, world, epochs, drop_last):
    cfg = config.parse(["--output_dir", "/tmp/unused", "--num_train_epochs", str(epochs), "--per_device_train_batch_size",
                        str(batch), "--gradient_accumulation_steps", str(accumulation), "--dataloader_drop_last",
                        str(drop_last).lower()])
    cfg = dataclasses.replace(cfg, batch=Batch(batch, accumulation, world, batch * accumulation * world))
    assert cfg.iteration_steps(world, n) == hf_steps(cfg.train, n, world)


def test_the_reported_case():  # 32 examples, batch 8, accumulation 3: HF trains 2 steps, not 1
    cfg = config.parse(["--output_dir", "/tmp/unused", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
                        "--gradient_accumulation_steps", "3"])
    assert cfg.iteration_steps(1, 32) == 2
