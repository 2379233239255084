"""Where an iteration's training starts: from an iteration model, a checkpoint inside it, or both
(weights from one, optimizer state from the other). A fresh run, an uninterrupted one and a resumed
one make their starts here, so that they take the same path to the same bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from transformers import TrainerState
from transformers.trainer_callback import ExportableState

from itertrain.app.config import Config
from itertrain.core import commit, curve, manifest
from itertrain.core.names import checkpoint_name, iteration_name, model_before, universal_name
from itertrain.core.plan import BOTH, TRAINER, Plan
from itertrain.runtime import dist, engines


@dataclass
class Start:
    """Where one iteration's training starts."""

    iteration: int
    weights: str  # directory to load the model from
    resume: str | None  # directory given to trainer.train(resume_from_checkpoint=...)
    step_offset: int  # global step before this iteration's first step
    started_from: str  # provenance recorded in manifests
    curve: dict | None = None  # per-step loss / lr so far (trainer strategy: from the checkpoint)
    training_finished: bool = False
    engine_weights: str | None = None  # a checkpoint whose weights only the engine reads (FSDP shards)
    view_of: tuple[str, str] | None = None  # (iteration model, checkpoint) for a "both" view
    done_steps: int = 0  # steps of this iteration already trained (resuming a checkpoint inside it)
    universal: bool = False  # the optimizer state comes from the checkpoint's DeepSpeed universal conversion

    def describe(self, k: int, steps: int, what: str) -> str:
        """The progress line: what this iteration trains (`what`: the objective's words for its training
        set) from what, and the global steps it will run."""
        end = self.step_offset + steps
        if self.training_finished:
            return f"▶️  iteration {k}: {self.resume_name} already trained all {steps} steps (global step {end}): " \
                   "evaluating and saving"
        first = self.step_offset + self.done_steps + 1
        resumed = f", resuming {self.resume_name}" if self.resume_name else ""
        return (f"▶️  iteration {k}: training on {what} from {self.started_from}{resumed}, "
                f"global steps {first}-{end}")

    @property
    def resume_name(self) -> str | None:
        where = self.resume or self.engine_weights
        return os.path.basename(where) if where else None


def first_start(cfg: Config, plan: Plan, base_dir: str, steps: int) -> Start:
    out = cfg.output_dir
    if plan.strategy == TRAINER:
        ckpt = os.path.join(out, plan.state_from)
        m = manifest.read(ckpt) if manifest.exists(ckpt) else {}
        local = m.get("local_step", plan.next_step - plan.next_iteration * steps)
        # a checkpoint we did not write records no provenance: it trained from what ours would have
        origin = "base" if cfg.it.train_from == "base" else model_before(cfg.output_dir, plan.models, base_dir, plan.next_iteration)[1]
        # FSDP's SHARDED_STATE_DICT checkpoints hold no HF model: the model is built from the base
        # and FSDP's loader puts the checkpoint's weights in
        sharded = engines.fsdp_shards_only(ckpt)
        resume = os.path.join(out, universal_name(plan.state_from)) if plan.convert else ckpt
        return Start(plan.next_iteration, base_dir if sharded else ckpt, resume, plan.next_step - local,
                     m.get("started_from") or origin, curve=curve.read(ckpt),
                     training_finished=plan.training_finished, engine_weights=ckpt if sharded else None,
                     done_steps=local, universal=bool(plan.convert))
    if plan.strategy == BOTH:
        return Start(plan.next_iteration, os.path.join(out, plan.weights_from), None, plan.next_step,
                     plan.weights_from, view_of=(plan.weights_from, plan.state_from), universal=bool(plan.convert))
    if plan.weights_from:  # iteration
        return Start(plan.next_iteration, os.path.join(out, plan.weights_from), None, plan.next_step, plan.weights_from)
    return Start(0, base_dir, None, 0, "base")


def next_start(cfg: Config, done: int, global_step: int) -> Start:
    """Iteration done+1 of an uninterrupted run: the same starts a resume would make."""
    prev = iteration_name(done)
    weights = os.path.join(cfg.output_dir, prev)
    if cfg.it.carry_optimizer_state:
        return Start(done + 1, weights, None, global_step, prev, view_of=(prev, checkpoint_name(global_step)))
    return Start(done + 1, weights, None, global_step, prev)


def both_view(cfg: Config, start: Start, trainer, steps: int) -> str:
    """A checkpoint directory that HF's own resume path reads as: weights and config from the
    iteration model, optimizer/scheduler/RNG from the checkpoint, and a fresh trainer state (step 0
    of the new iteration). Symlinks; built by rank 0 in staging."""
    it_name, ckpt_name = start.view_of

    def build() -> str:
        view = commit.fresh_staging(cfg.output_dir, "resume-view")
        it_dir = os.path.join(cfg.output_dir, it_name)
        ck_dir = os.path.join(cfg.output_dir, universal_name(ckpt_name) if start.universal else ckpt_name)
        for f in os.listdir(it_dir):
            if f.startswith("model") or f == "config.json":
                os.symlink(os.path.abspath(os.path.join(it_dir, f)), os.path.join(view, f))
        for f in os.listdir(ck_dir):
            # + the sharding engines' own state (DeepSpeed: latest, global_step*/; FSDP: optimizer_0/
            # or optimizer.bin, pytorch_model_fsdp_0/ or .bin), which their resume reads with the module
            # weights it holds: the same as the iteration model's at the iteration's last step, the
            # only pair plan.py lets them combine
            if f in ("scheduler.pt", "scaler.pt", "latest", "latest_universal") or f.startswith(
                    ("rng_state", "global_step", "optimizer", "pytorch_model_fsdp")):
                os.symlink(os.path.abspath(os.path.join(ck_dir, f)), os.path.join(view, f))
        callbacks = trainer.callback_handler.callbacks + [trainer.control]
        state = TrainerState(train_batch_size=trainer.args.train_batch_size,
                             stateful_callbacks=[cb for cb in callbacks if isinstance(cb, ExportableState)])
        state.compute_steps(trainer.args, steps)
        state.save_to_json(os.path.join(view, "trainer_state.json"))
        return view

    return dist.on_main(build)
