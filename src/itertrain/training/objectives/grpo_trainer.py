"""TRL's GRPOTrainer with itertrain's recovery (trainer.Recovering), and what TRL does not save that an
exact resume needs:

- the generation block: TRL generates once per steps_per_generation x num_iterations micro-steps and
  trains the next ones on that buffer (_buffered_inputs). A checkpoint inside a block saves the buffer
  (each rank its own, grpo_buffer_<rank>.pt) and TRL's micro-step counter; a resume trains on the same
  completions, rewards and advantages instead of generating again with the updated policy.
- the prompts' order: TRL's RepeatSampler draws each epoch's permutation from a generator seeded
  once, so a resume in a later epoch replayed epoch 0's. Each epoch's is now a function of the epoch
  (the one TRL draws in an uninterrupted run), set from the step count.
- the reference model: TRL loads it from the policy's config path, which for a resumed policy is the
  checkpoint; it is loaded from the iteration's start model (the objective records it). Under a LoRA
  adapter TRL copies the adapter it is given, at a resume the checkpoint's: the starting adapter is
  saved with every checkpoint (grpo_reference_adapter.safetensors) and restored.
- the sampling RNG is HF's (generate draws from torch's generator), saved per rank with every checkpoint.
- per-step values: TRL's logged means and itertrain's rollout counts are kept with the loss curve.
"""

from __future__ import annotations

import contextlib
import os

import torch
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from itertrain.runtime import dist
from itertrain.training.objectives.trl_values import TrlStepValues
from itertrain.training.trainer import Recovering

BUFFER = "grpo_buffer_{rank}.pt"
REFERENCE_ADAPTER = "grpo_reference_adapter.safetensors"  # TRL's reference under LoRA: the starting adapter
# A diagnostic: resume as TRL alone would (no block, no step counter restored), to show what it loses
PLAIN_TRL = os.environ.get("ITERTRAIN_PLAIN_TRL_RESUME") == "1"


class EpochRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler whose epoch e is the permutation TRL draws at its (e+1)-th pass."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator = torch.Generator()
            if self.seed is not None:
                self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):
                torch.randperm(self.num_samples, generator=self.generator)
        return super().__iter__()


@contextlib.contextmanager
def _named(model, path: str | None):
    """The policy's config path set to `path` while TRL builds its reference model from it."""
    config = getattr(model, "config", None)
    if path is None or config is None:
        yield
        return
    was = config._name_or_path
    config._name_or_path = path
    try:
        yield
    finally:
        config._name_or_path = was


class IterGRPOTrainer(Recovering, TrlStepValues, GRPOTrainer):
    def __init__(self, *args, model, reference_dir: str | None = None, step_keys=(), **kwargs):
        self.step_keys = tuple(step_keys)
        with _named(model, reference_dir):
            super().__init__(*args, model=model, **kwargs)

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        self.order = EpochRepeatSampler(  # its epoch set by Recovering's EpochOrder
            data_source=dataset, mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation, shuffle=self.shuffle_dataset,
            seed=self.args.seed)
        return self.order

    # --- the generation block, saved and restored with each checkpoint (every rank its own) ---

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        block = self.args.steps_per_generation * self.num_iterations
        inside = self._step % block != 0 and self._buffered_inputs is not None
        torch.save({"iteration": self.iteration, "local_step": self.state.global_step, "micro_step": self._step,
                    "world_size": self.args.world_size, "buffer": self._buffered_inputs if inside else None},
                   os.path.join(output_dir, BUFFER.format(rank=self.args.process_index)))
        if (model := self._reference_adapter()) is not None and self.args.should_save:
            from peft.utils import get_peft_model_state_dict
            from safetensors.torch import save_file

            state = get_peft_model_state_dict(model, adapter_name="ref")
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      os.path.join(output_dir, REFERENCE_ADAPTER))

    def _saved(self, checkpoint) -> dict | None:
        """This rank's block file in `checkpoint`, if it was written inside this iteration (not a view of
        another iteration's checkpoint, whose state an iteration with carried optimizer state starts from).
        Written by another number of processes, the ranks' blocks do not fit this run's: every rank takes
        rank 0's record without a block, and the block is generated again."""
        if checkpoint is None or PLAIN_TRL:
            return None
        first = os.path.join(checkpoint, BUFFER.format(rank=0))
        if not os.path.isfile(first):
            return None
        head = torch.load(first, map_location="cpu", weights_only=True)
        if head["iteration"] != self.iteration:
            return None
        if head.get("world_size", 1) != self.args.world_size:
            # the position in micro-steps of this run's accumulation; TRL generates when it has no block
            return {**head, "buffer": None, "micro_step": head["local_step"] * self.args.gradient_accumulation_steps,
                    "regenerate": True}
        own = os.path.join(checkpoint, BUFFER.format(rank=self.args.process_index))
        return head if own == first else torch.load(own, map_location="cpu", weights_only=True)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        # TRL's reference under a LoRA adapter is a copy ("ref") of the adapter it was given: at a resume, the
        # checkpoint's. The iteration's starting adapter is the one saved with the checkpoint.
        path = os.path.join(resume_from_checkpoint, REFERENCE_ADAPTER)
        if self._reference_adapter() is not None and os.path.isfile(path) and self._saved(resume_from_checkpoint):
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self._reference_adapter(), load_file(path), adapter_name="ref")

    def _reference_adapter(self):
        """The PEFT model whose "ref" adapter is TRL's reference, or None."""
        return self.model if "ref" in getattr(self.model, "peft_config", {}) else None  # (HF's self.model: unwrapped)

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        saved = self._saved(checkpoint)
        if saved is None or saved["local_step"] != self.state.global_step:
            return  # not a checkpoint of this iteration's GRPO: it starts its own blocks
        self._step = saved["micro_step"]
        if saved.get("regenerate") and self._step % (self.args.steps_per_generation * self.num_iterations):
            dist.log0(f"🎲 {checkpoint} was written by {saved['world_size']} processes inside a generation block, "
                      f"and this run has {self.args.world_size}: the block's rest is trained on completions "
                      "generated again")
        device = self.accelerator.device
        self._buffered_inputs = None if saved["buffer"] is None else [
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in part.items()}
            for part in saved["buffer"]]

    # --- per-step values ---

    def step_metrics(self) -> dict[str, float]:
        """TRL's values for the step (the mean of its micro-batches', each already gathered over ranks;
        a step that did not generate takes its block's reward values), and the rollout counts summed
        over ranks."""
        per_function = (k for k in [*self.step_curves, *self._metrics["train"]] if k.startswith("rewards/")
                        and k.endswith("/mean"))
        keys = list(dict.fromkeys([*self.step_keys, *per_function]))
        out = self.fresh_means(keys)
        out.update({k: self.step_curves[k][-1] for k in keys if k not in out and self.step_curves.get(k)})
        taken = [f.take() for f in self.reward_funcs if hasattr(f, "take")]
        seen = [s for t in taken for s in t.pop("seen", [])]
        ranks = dist.gather({"counts": taken, "seen": seen})
        for counts in (c for r in ranks for c in r["counts"]):
            for key, n in counts.items():
                out[key] = out.get(key, 0.0) + float(n)
        solved: dict[int, bool] = {}
        for i, accepted in (s for r in ranks for s in r["seen"]):  # pass@k: a prompt's group spans ranks
            solved[i] = solved.get(i, False) or bool(accepted)
        out["samples/prompts"], out["samples/solved"] = float(len(solved)), float(sum(solved.values()))
        return out

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            for f in self.reward_funcs:
                if hasattr(f, "close"):
                    f.close()
