"""--num_train_epochs: the steps of an iteration are counted as HF's Trainer counts them (its own
set_initial_training_values on a dataloader sharded as accelerate shards it for W ranks)."""

import itertools

import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import Trainer

from itertrain.app import config


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def hf_steps(args, n: int, world: int) -> int:
    """The optimizer steps HF's Trainer counts for `n` examples on `world` ranks under `args` (its TrainingArguments)."""
    batch, drop_last = args.per_device_train_batch_size, args.dataloader_drop_last
    trainer = Trainer(model=_Model(), args=args)
    loader = prepare_data_loader(DataLoader(list(range(n)), batch_size=batch, drop_last=drop_last), num_processes=world,
                                 process_index=0, put_on_device=False)
    return trainer.set_initial_training_values(args, loader)[-1]


# (without a single whole batch under --dataloader_drop_last HF refuses to train: the loop says so)
GRID = [g for g in itertools.product([1, 7, 32, 33, 100], [1, 8], [1, 3, 4], [1, 2, 3], [1.0, 0.5, 2.5], [False, True])
        if not (g[5] and g[0] < g[1] * g[3])]


@pytest.mark.parametrize("n,batch,accumulation,world,epochs,drop_last", GRID)
def test_epoch_steps_match_hf(n, batch, accumulation, world, epochs, drop_last):
    cfg = config.parse(["--output_dir", "/tmp/unused", "--num_train_epochs", str(epochs), "--per_device_train_batch_size",
                        str(batch), "--gradient_accumulation_steps", str(accumulation), "--dataloader_drop_last",
                        str(drop_last).lower()])
    assert cfg.iteration_steps(world, n) == hf_steps(cfg.train, n, world)


def test_the_reported_case():  # 32 examples, batch 8, accumulation 3: HF trains 2 steps, not 1
    cfg = config.parse(["--output_dir", "/tmp/unused", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
                        "--gradient_accumulation_steps", "3"])
    assert cfg.iteration_steps(1, 32) == 2
