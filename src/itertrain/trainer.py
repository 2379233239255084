"""The one HF Trainer subclass. Every override is here, each small, each calling HF's own code.

- _save_checkpoint: HF writes into a staging directory (args.output_dir points there), then rank 0
  commits it as <experiment>/checkpoint-<global step> (commit.py) and applies retention.
- _maybe_log_save_evaluate: the `train.step=N` failpoint, after any save of step N has committed.
- create_scheduler: with carried optimizer state, one LR schedule spans the whole experiment.
- training_step: keeps a running loss sum that is saved with each checkpoint, so an iteration's
  train_loss after a resume equals the uninterrupted run's (HF's own total restarts at resume).
"""

from __future__ import annotations

import os
import shutil

import torch
from transformers import Trainer, TrainerCallback

from itertrain import commit, dist, failpoints, retention
from itertrain.artifacts import CHECKPOINT, checkpoint_name


class SaveAtLastStep(TrainerCallback):
    """A checkpoint is always committed at an iteration's last step, whatever --save_strategy says."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control


class IterTrainer(Trainer):
    def __init__(self, *args, experiment_dir: str, iteration: int, step_offset: int, iteration_steps: int,
                 started_from: str | None, save_total_limit: int | None, protect: set[str],
                 schedule_steps: int | None = None, loss_sum: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.experiment_dir = experiment_dir
        self.iteration = iteration
        self.step_offset = step_offset
        self.iteration_steps = iteration_steps
        self.started_from = started_from
        self.keep = save_total_limit
        self.protect = protect
        self.schedule_steps = schedule_steps
        self.loss_sum = torch.tensor(loss_sum, dtype=torch.float32, device=self.args.device)
        self.add_callback(SaveAtLastStep())

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.loss_sum += loss.detach().to(self.loss_sum.device, torch.float32)
        return loss

    def mean_loss_sum(self) -> float:
        return float(sum(dist.gather(float(self.loss_sum))) / dist.world_size())

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(self.schedule_steps or num_training_steps, optimizer)

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        super()._maybe_log_save_evaluate(*args, **kwargs)
        failpoints.hit("train.step", self.step_offset + self.state.global_step)

    def _save_checkpoint(self, model, trial):
        local = self.state.global_step
        global_step = self.step_offset + local
        staged = os.path.join(self.args.output_dir, f"checkpoint-{local}")
        if dist.is_main() and os.path.lexists(staged):
            shutil.rmtree(staged)  # a leftover of a crashed save: never committed
        dist.barrier()
        super()._save_checkpoint(model, trial)  # HF writes every rank's files into `staged`
        loss_sum = self.mean_loss_sum()
        dist.barrier()
        if dist.is_main():
            name = checkpoint_name(global_step)
            commit.commit_dir(
                staged, os.path.join(self.experiment_dir, name), failpoint=("checkpoint.write", global_step),
                kind=CHECKPOINT, name=name, iteration=self.iteration, global_step=global_step,
                local_step=local, iteration_steps=self.iteration_steps, started_from=self.started_from,
                extra={"loss_sum": loss_sum, "world_size": dist.world_size()},
            )
            if self.keep:
                retention.rotate(self.experiment_dir, self.keep, self.protect, self.iteration_steps)
        dist.barrier()
