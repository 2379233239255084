"""The one HF Trainer subclass. Every override is here, each small, each calling HF's own code.

- _save_checkpoint: HF writes into a staging directory (args.output_dir points there), then rank 0
  commits it as <experiment>/checkpoint-<global step> (commit.py) and applies retention.
- _maybe_log_save_evaluate: the `train.step=N` failpoint, after any save of step N has committed.
- create_scheduler: with carried optimizer state, one LR schedule spans the whole experiment.
- training_step / _maybe_log_save_evaluate: the loss of every optimizer step (and its learning
  rate), averaged over ranks at logging and save points. The curve is saved with each checkpoint,
  so after a resume an iteration's train_loss, its plot and its TensorBoard curve equal the
  uninterrupted run's (HF's own running total restarts at a resume).
"""

from __future__ import annotations

import os
import shutil

import torch
from transformers import Trainer, TrainerCallback

from itertrain import commit, dist, failpoints, retention
from itertrain import curve as curve_file
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
                 schedule_steps: int | None = None, curve: dict | None = None, board=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.experiment_dir = experiment_dir
        self.iteration = iteration
        self.step_offset = step_offset
        self.iteration_steps = iteration_steps
        self.started_from = started_from
        self.keep = save_total_limit
        self.protect = protect
        self.schedule_steps = schedule_steps
        curve = curve or {}
        self.loss_curve: list[float] = list(curve.get("loss", []))  # rank mean, one per step so far
        self.lr_curve: list[float] = list(curve.get("lr", []))
        self._micro: list[torch.Tensor] = []  # this optimizer step's micro-batch losses
        self._steps: list[torch.Tensor] = []  # this rank's step losses not yet averaged over ranks
        self._lrs: list[float] = []
        self.board = board  # TensorBoard (board.py) or None
        self.add_callback(SaveAtLastStep())

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self._micro.append(loss.detach())  # HF already divided it by the accumulation steps
        return loss

    def sync_curve(self) -> dict:
        """Average the steps since the last sync over ranks (every rank calls this at the same
        points) and extend the curve; new points go to TensorBoard. Returns the curve so far."""
        local = [float(x) for x in self._steps]
        self._steps = []
        rows = dist.gather(local)
        new = [sum(vals) / len(vals) for vals in zip(*rows, strict=True)]
        first = len(self.loss_curve)
        self.loss_curve += new
        self.lr_curve += self._lrs
        self._lrs = []
        if self.board is not None and dist.is_main():
            self.board.steps(self.step_offset + first + 1, new, self.lr_curve[first:])
        return {"loss": list(self.loss_curve), "lr": list(self.lr_curve)}

    def mean_loss(self) -> float:
        curve = self.sync_curve()["loss"]
        return sum(curve) / len(curve) if curve else float("nan")

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(self.schedule_steps or num_training_steps, optimizer)

    def _maybe_log_save_evaluate(self, *args, learning_rate=None, **kwargs):
        if self._micro:  # an optimizer step just ended (HF also calls this at an epoch's end)
            self._steps.append(torch.stack(self._micro).sum())
            self._lrs.append(float(learning_rate if learning_rate is not None else self._get_learning_rate()))
            self._micro = []
        if self.control.should_log:
            self.sync_curve()
        super()._maybe_log_save_evaluate(*args, learning_rate=learning_rate, **kwargs)
        failpoints.hit("train.step", self.step_offset + self.state.global_step)

    def _save_checkpoint(self, model, trial):
        local = self.state.global_step
        global_step = self.step_offset + local
        staged = os.path.join(self.args.output_dir, f"checkpoint-{local}")
        if dist.is_main() and os.path.lexists(staged):
            shutil.rmtree(staged)  # a leftover of a crashed save: never committed
        dist.barrier()
        super()._save_checkpoint(model, trial)  # HF writes every rank's files into `staged`
        curve = self.sync_curve()
        dist.barrier()
        if dist.is_main():
            curve_file.write(staged, curve["loss"], curve["lr"])
            name = checkpoint_name(global_step)
            commit.commit_dir(
                staged, os.path.join(self.experiment_dir, name), failpoint=("checkpoint.write", global_step),
                kind=CHECKPOINT, name=name, iteration=self.iteration, global_step=global_step,
                local_step=local, iteration_steps=self.iteration_steps, started_from=self.started_from,
                extra={"world_size": dist.world_size()},
            )
            if self.keep:
                retention.rotate(self.experiment_dir, self.keep, self.protect, self.iteration_steps)
        dist.barrier()
