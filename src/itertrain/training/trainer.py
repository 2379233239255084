"""How every Trainer itertrain runs commits, resumes and stops: one mixin (Recovering) over HF's
Trainer (IterTrainer) or over a trainer built on it (an objective's, e.g. TRL's DPOTrainer). Every
override is here, each small, each calling the library's own code.

- _save_checkpoint: HF writes into a staging directory (args.output_dir points there), then rank 0
  commits it as <experiment>/checkpoint-<global step> (commit.py) and applies retention. With
  async_save, _save and _save_optimizer_and_scheduler copy the big state into memory and leave its
  writing, and the commit, to a background thread (async_save.py); train() waits for it at the end.
- _maybe_log_save_evaluate: the `train.step=N` failpoint, after any save of step N has committed.
- create_scheduler: with carried optimizer state, one LR schedule spans the whole experiment.
- _load_from_checkpoint: not a second read of weights (or an adapter) the model was just loaded from.
- _get_train_sampler: the examples' order is the same for any number of processes (order.py);
  _load_rng_state: a checkpoint written by another number of processes (a rank without its own RNG
  file derives one from the seed, rank and step).
- training_step / _maybe_log_save_evaluate: the loss of every optimizer step (and its learning
  rate), averaged over ranks at logging and save points. The curve is saved with each checkpoint,
  so after a resume an iteration's train_loss, its plot and its TensorBoard curve equal the
  uninterrupted run's (HF's own running total restarts at a resume). An objective's own per-step
  values (step_metrics, e.g. DPO's reward margins) are kept beside it the same way.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

from itertrain.core import commit, failpoints, progress, retention
from itertrain.core import curve as curve_file
from itertrain.core.errors import PeerWriteError
from itertrain.core.names import CHECKPOINT, checkpoint_name
from itertrain.runtime import dist, stop, universal
from itertrain.runtime.async_save import Saver
from itertrain.training import adapters, order
from itertrain.training.batches import TokenBudget


class SaveAtLastStep(TrainerCallback):
    """A checkpoint is always committed at an iteration's last step, whatever --save_strategy says."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control


class StopAtStep(TrainerCallback):
    """A stop request, agreed over ranks after every optimizer step: save a checkpoint at exactly
    this step (synchronously) and end training."""

    def __init__(self, trainer: "IterTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        failpoints.send_signal("train.step", self.trainer.step_offset + state.global_step)
        curve = self.trainer.loss_curve
        progress.note(done=state.global_step, global_step=self.trainer.step_offset + state.global_step,
                      loss=curve[-1] if curve else None)
        if reason := stop.agreed():
            self.trainer.stop_reason = reason
            control.should_save = True
            control.should_training_stop = True
        return control


class EpochOrder(TrainerCallback):
    """Each epoch's order from the step count, as HF counts epochs: its set_epoch does not reach a
    sampler under accelerate's sharding and skipping (a resume in a later epoch would replay epoch 0's)."""

    def __init__(self, trainer: "Recovering"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if (o := self.trainer.order) is not None and train_dataloader is not None:
            n, ga = len(train_dataloader), args.gradient_accumulation_steps
            o.set_epoch(state.global_step // max(n // ga + int(n % ga > 0), 1))
        return control


@dataclass
class Recovery:
    """Where a trainer's iteration lies in the experiment and how its checkpoints are committed: what
    Recovering adds to a Trainer's own arguments."""

    experiment_dir: str
    iteration: int
    step_offset: int  # global step before the iteration's first step
    iteration_steps: int
    started_from: str | None = None  # provenance recorded in manifests
    save_total_limit: int | None = None
    protect: set[str] = field(default_factory=set)  # artifacts retention never removes (the run's start)
    schedule_steps: int | None = None  # with carried optimizer state: one schedule over the experiment
    curve: dict | None = None  # per-step loss / lr so far (resuming a checkpoint inside the iteration)
    trackers: object = None  # the --report_to trackers (trackers/), on rank 0, or None
    async_save: bool = False
    weights_from: str | None = None  # the directory the model was just loaded from, if given
    saver: Saver | None = None  # one per run: its host buffers serve every iteration's saves
    manifest_extra: dict = field(default_factory=dict)  # recorded in every checkpoint's manifest
    universal: bool = False  # resumed from a DeepSpeed universal checkpoint: its loaded state is checked


class Recovering:
    """Mixed in before a Trainer class (see IterTrainer)."""

    def __init__(self, *args, recovery: Recovery, **kwargs):
        super().__init__(*args, **kwargs)
        r = recovery
        self.experiment_dir = r.experiment_dir
        self.iteration = r.iteration
        self.step_offset = r.step_offset
        self.iteration_steps = r.iteration_steps
        self.started_from = r.started_from
        self.keep = r.save_total_limit
        self.protect = r.protect
        self.schedule_steps = r.schedule_steps
        curve, trackers, async_save, saver = r.curve or {}, r.trackers, r.async_save, r.saver
        weights_from, manifest_extra = r.weights_from, r.manifest_extra
        self.universal = r.universal
        self.loss_curve: list[float] = list(curve.get("loss", []))  # rank mean, one per step so far
        self.lr_curve: list[float] = list(curve.get("lr", []))
        self.step_curves: dict[str, list[float]] = {k: list(v) for k, v in curve.get("steps", {}).items()}
        self._micro: list[torch.Tensor] = []  # this optimizer step's micro-batch losses
        self._steps: list[torch.Tensor] = []  # this rank's step losses not yet averaged over ranks
        self._lrs: list[float] = []
        self.trackers = trackers  # the --report_to trackers (trackers/), on rank 0, or None
        self.weights_from = weights_from  # the directory `model` was just loaded from, if given
        self.manifest_extra = manifest_extra or {}  # recorded in every checkpoint's manifest
        self.peft = adapters.is_peft(self.model)
        # DeepSpeed and FSDP write their own (sharded) files: saved synchronously, as HF does.
        self.async_save = async_save and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        self.saver = saver or Saver()  # one per run: its host buffers serve every iteration's saves
        self._deferred: list | None = None  # writes left to the background, during an async save
        if self.async_save:
            dist.side_group()  # collective: every rank builds its trainer at the same point
        self.stop_reason: str | None = None  # set when a stop request ended training
        self._fetched: list[list[int]] | None = [] if order.log_path() else None  # ITERTRAIN_BATCH_LOG
        self._step_ids: list[int] = []
        self.order = None  # the training examples' order, a sampler with set_epoch (_get_train_sampler)
        self.add_callback(EpochOrder(self))
        self.add_callback(SaveAtLastStep())
        self.add_callback(StopAtStep(self))

    def floating_point_ops(self, inputs) -> int:
        """HF's count (6 x tokens x parameters without embeddings), with the parameters counted once per
        trainer: HF walks every parameter at every step."""
        main = getattr(self.model, "main_input_name", "input_ids")
        return self._flos_per_token * inputs[main].numel() if main in inputs else 0

    @functools.cached_property
    def _flos_per_token(self) -> int:
        return super().floating_point_ops({getattr(self.model, "main_input_name", "input_ids"): torch.empty(1)})

    def _get_train_sampler(self, train_dataset=None):
        data = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "random" or data is None or not hasattr(data, "__len__") \
                or own_sampler(type(self)):
            return super()._get_train_sampler(train_dataset)
        a = self.args
        self.order = order.GlobalOrder(len(data), a.per_device_train_batch_size * a.world_size * a.gradient_accumulation_steps,
                                       a.data_seed if a.data_seed is not None else a.seed, a.dataloader_drop_last)
        return self.order

    def get_train_dataloader(self):
        if self._fetched is None:
            return super().get_train_dataloader()
        data, collate = self.train_dataset, self.data_collator
        recorded = order.Recorded(data, self._fetched)
        self.train_dataset, self.data_collator = recorded, recorded.collated(collate)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset, self.data_collator = data, collate

    def _load_rng_state(self, checkpoint):
        """HF's, where the checkpoint has this rank's RNG file. Written by another number of processes:
        rank 0 of one process takes rank 0's file (and back); a rank with no file of its own derives its
        state from the seed, its rank and the step, so the run stays a function of its inputs."""
        if checkpoint is None:
            return super()._load_rng_state(checkpoint)
        world, rank = self.args.world_size, self.args.process_index
        mine = "rng_state.pth" if world == 1 else f"rng_state_{rank}.pth"
        other = "rng_state_0.pth" if world == 1 else "rng_state.pth" if rank == 0 else None
        if os.path.isfile(os.path.join(checkpoint, mine)):
            return super()._load_rng_state(checkpoint)
        if other and os.path.isfile(os.path.join(checkpoint, other)):
            with tempfile.TemporaryDirectory() as view:  # HF's own loading, of the file under the name it reads
                os.symlink(os.path.join(os.path.abspath(checkpoint), other), os.path.join(view, mine))
                return super()._load_rng_state(view)
        from transformers.trainer_utils import set_seed

        set_seed(derived_seed(self.args.seed, rank, self.step_offset + self.state.global_step))
        return None

    def training_step(self, *args, **kwargs):
        if self._fetched:
            self._step_ids += self._fetched.pop(0)
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
        if self.trackers is not None and dist.is_main():
            self.trackers.steps(self.step_offset + first + 1, new, self.lr_curve[first:],
                                {k: v[first:] for k, v in self.step_curves.items()})
        return {"loss": list(self.loss_curve), "lr": list(self.lr_curve),
                "steps": {k: list(v) for k, v in self.step_curves.items()}}

    def step_metrics(self) -> dict[str, float]:
        """An objective's own values for the optimizer step that just ended, the same on every rank."""
        return {}

    def step_means(self) -> dict[str, float]:
        """The mean of each step_metrics value over the iteration's steps."""
        return {k: sum(v) / len(v) for k, v in self.step_curves.items() if v}

    def mean_loss(self) -> float:
        curve = self.sync_curve()["loss"]
        return sum(curve) / len(curve) if curve else float("nan")

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(self.schedule_steps or num_training_steps, optimizer)

    def _maybe_log_save_evaluate(self, *args, learning_rate=None, **kwargs):
        self.saver.check()  # a background write that failed stops training here, with its reason
        if self._micro:  # an optimizer step just ended (HF also calls this at an epoch's end)
            self._steps.append(torch.stack(self._micro).sum())
            self._lrs.append(float(learning_rate if learning_rate is not None else self._get_learning_rate()))
            self._micro = []
            for key, value in self.step_metrics().items():  # equal on every rank: no sync needed
                self.step_curves.setdefault(key, []).append(value)
            if self._fetched is not None:
                ids = [i for rank in dist.gather(self._step_ids) for i in rank]
                self._step_ids = []
                if dist.is_main():
                    order.append(order.log_path(), self.iteration, self.step_offset + self.state.global_step, ids)
        if self.control.should_log:
            self.sync_curve()
        super()._maybe_log_save_evaluate(*args, learning_rate=learning_rate, **kwargs)
        step = self.step_offset + self.state.global_step
        if failpoints.matches("train.step", step):  # armed alike on every rank (no @R)
            self.saver.wait()  # the failpoint's promise: every save of a step <= N has committed,
            dist.barrier()  # also rank 0's commit: rank 1 must not die first (torchrun kills rank 0)
        failpoints.hit("train.step", step)

    def train(self, *args, **kwargs):
        """HF's Trainer.train (one iteration's training), returning only once its last checkpoint is committed."""
        try:
            out = super().train(*args, **kwargs)
        except BaseException:
            self._drain()
            raise
        self.saver.wait()  # the last checkpoint is committed before the iteration goes on
        dist.barrier()
        return out

    def _drain(self) -> None:
        """Training failed: still let the write in flight commit; its own error is only logged,
        the first one is what the user sees."""
        try:
            self.saver.wait()
        except BaseException as e:  # noqa: BLE001
            dist.logger().error(f"itertrain: also, {e}")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # HF loads the checkpoint's weights into the model it was given; when that model was just
        # loaded from this very checkpoint (a trainer-strategy resume), they are already there:
        # skip reading them twice (loop.load_model reads them whole, not mapped: see there).
        # (DeepSpeed and FSDP pass `model` and load their own files.)
        # A PEFT model was built with the adapter the resume starts from (adapters.training_model):
        # HF would read it again, or, given a "both" view, the merged weights beside it into nothing.
        if model is None and self.weights_from and (self.peft or os.path.realpath(self.weights_from) ==
                                                    os.path.realpath(resume_from_checkpoint)):
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.universal and checkpoint is not None:  # the moments must have come through, not assumed
            universal.verify(self, checkpoint)

    def _save_checkpoint(self, model, trial):
        self.saver.wait()  # at most one save in flight (its buffers are about to be reused)
        local = self.state.global_step
        global_step = self.step_offset + local
        name = checkpoint_name(global_step)
        staged = os.path.join(self.args.output_dir, f"checkpoint-{local}")
        if dist.is_main() and os.path.lexists(staged):
            shutil.rmtree(staged)  # a leftover of a crashed save: never committed
        dist.barrier()
        # a stop's checkpoint is written now: the process is about to exit
        self._deferred = [] if self.async_save and not self.stop_reason else None
        try:
            super()._save_checkpoint(model, trial)  # HF writes every rank's files into `staged`
        finally:
            deferred, self._deferred = self._deferred, None
        curve = self.sync_curve()
        if dist.is_main():
            curve_file.write(staged, curve["loss"], curve["lr"], curve["steps"])

        def commit_it():
            commit.commit_dir(
                staged, os.path.join(self.experiment_dir, name), failpoint=("checkpoint.write", global_step),
                kind=CHECKPOINT, name=name, iteration=self.iteration, global_step=global_step,
                local_step=local, iteration_steps=self.iteration_steps, started_from=self.started_from,
                extra={"world_size": dist.world_size(), **self.manifest_extra},
            )
            if self.keep:
                retention.rotate(self.experiment_dir, self.keep, self.protect, self.iteration_steps, log=dist.log0)

        if deferred is None:
            dist.barrier()
            if dist.is_main():
                commit_it()
            dist.barrier()
        else:
            self.saver.submit(name, lambda: _write_then_commit(deferred, commit_it, name, global_step, self.saver))

    def _save(self, output_dir=None, state_dict=None):
        if self._deferred is None or not self.args.should_save:
            return super()._save(output_dir, state_dict)
        if state_dict is None:  # an adapter's checkpoint holds its trainable weights, not the frozen model
            state_dict = adapters.trainable_state(self.model) if self.peft else self.model.state_dict()
        snap = self.saver.buffers.copy(state_dict, "model")
        self._deferred.append(lambda: Trainer._save(self, output_dir, state_dict=snap))

    def _save_optimizer_and_scheduler(self, output_dir):
        if self._deferred is None:
            return super()._save_optimizer_and_scheduler(output_dir)
        if not self.args.should_save:
            return
        # HF's plain branch (no DeepSpeed, FSDP, XLA), on copies taken now
        optimizer = self.saver.buffers.copy(self.optimizer.state_dict(), "optimizer")
        scheduler = copy.deepcopy(self.lr_scheduler.state_dict())

        def write():
            torch.save(optimizer, os.path.join(output_dir, OPTIMIZER_NAME))
            torch.save(scheduler, os.path.join(output_dir, SCHEDULER_NAME))

        self._deferred.append(write)


def own_sampler(cls) -> bool:
    """Whether a trainer built on Recovering orders its examples itself (TRL's GRPOTrainer repeats each
    prompt for its group): then that order is kept, not ours."""
    after = cls.__mro__[cls.__mro__.index(Recovering) + 1:]
    return next(c for c in after if "_get_train_sampler" in c.__dict__) is not Trainer


def derived_seed(seed: int, rank: int, step: int) -> int:
    """A rank's seed where the checkpoint holds no RNG state for it (one more rank than wrote it)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{rank}:{step}".encode()).digest()[:4], "little")


def _write_then_commit(writes: list, commit_it, name: str, step: int, saver: Saver) -> None:
    """The background half of an async save, on every rank: write this rank's files, agree with
    the other ranks (over the side group) that all of them did, then rank 0 commits."""
    if failpoints.matches("checkpoint.background", step):
        saver.stepped.wait(timeout=120)  # die only once training has gone on without this save
        failpoints.hit("checkpoint.background", step)
    error = None
    try:
        for write in writes:
            write()
    except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
        error = e
    told = dist.gather_on(dist.side_group(), None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, why) for rank, why in enumerate(told) if why]
    if failed:
        rank, why = failed[0]
        raise PeerWriteError(f"rank {rank} could not write its part of {name}: {why}")
    if dist.is_main():
        commit_it()


class IterTrainer(Recovering, TokenBudget, Trainer):
    """HF's Trainer with itertrain's recovery: the supervised (sft) objective's trainer."""
