"""The sft objective: fine-tune on the accepted completions (and gold data) with HF's Trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from itertrain.core.errors import TaskError, UsageError
from itertrain.training.objectives import TrainSet


@dataclass
class SftArguments:
    padding_free: bool | None = field(default=None, metadata={
        "help": "Train on batches without padding (TRL's SFTConfig.padding_free; transformers' "
                "DataCollatorWithFlattening: a batch's examples end to end, positions restarting at each). "
                "Default: on with flash attention (its kernels take packed examples one by one) where the model "
                "keeps packed examples apart (checked on the model); else padded batches, said once (SDPA and eager "
                "attention attend over a packed batch whole, which costs more than the padding saved). true: packed "
                "wherever the model keeps them apart, refused where it cannot; false: padded."})
    max_tokens_per_batch: int | None = field(default=None, metadata={
        "help": "The most real tokens one forward/backward pass of a device holds: a per-device batch with more "
                "is trained in several passes of whole examples, gradients accumulated. The global batch stays a "
                "count of examples (--per_device_train_batch_size x processes x --gradient_accumulation_steps), so "
                "the steps, the schedule and the examples' order are the same as without it (and after a restart "
                "on another number of processes): it bounds memory, not what a step trains on. Not with "
                "DeepSpeed or FSDP (they count micro-steps themselves)."})


class Sft:
    name = "sft"
    Arguments = SftArguments  # besides the HF Trainer's training arguments
    generates = True  # trains on the generate phase's verified samples
    METRICS = ()  # the loop's own (eval_accuracy, acceptance_rate, train_loss, ...) are all it logs

    def __init__(self, args=None):
        self.args = args or SftArguments()

    @staticmethod
    def check(args, train, it=None) -> None:
        if args is None or args.max_tokens_per_batch is None:
            return
        if args.max_tokens_per_batch < 1:
            raise UsageError(f"--max_tokens_per_batch must be >= 1, got {args.max_tokens_per_batch}")
        if train.deepspeed or train.fsdp:
            raise UsageError("--max_tokens_per_batch splits a batch into passes under DDP or one process: DeepSpeed "
                             "and FSDP count micro-steps themselves (use --per_device_train_batch_size there)")

    def train_set(self, cfg, k: int, kept: dict, task, tokenizer) -> TrainSet:
        """Its own kept samples, earlier iterations' (--reuse_previous) and gold (--gold_iterations)."""
        from itertrain.phases import samples
        from itertrain.training.data import encode

        examples = samples.training_set(k, kept, task.gold, reuse_previous=cfg.it.reuse_previous,
                                        gold_iterations=cfg.it.gold_iterations)
        if not examples:
            raise TaskError(f"iteration {k} has nothing to train on: no completion passed the verifier and "
                            "no gold data is mixed in (--sft_data, --gold_iterations)")
        features = encode(examples, tokenizer)
        return TrainSet(features, len(features), {})

    def reference(self, cfg, models: dict, base_dir: str, k: int) -> dict | None:
        """What every manifest of the iteration records about the objective (nothing for sft)."""
        return None

    def inputs(self, cfg, models: dict, base_dir: str, k: int) -> list[str]:
        """Model directories it loads besides the one it trains: none."""
        return []

    def trainer(self, *, model, args, tokenizer, train_set: TrainSet, reference, load, recovery):
        from itertrain.training import batches
        from itertrain.training.trainer import IterTrainer

        # (an objective built on this one, with flags of its own, trains its batches as sft's defaults)
        own = self.args if isinstance(self.args, SftArguments) else SftArguments()
        collate = batches.collator(model, tokenizer.pad_token_id, own.padding_free, args.use_cache)
        trainer = IterTrainer(model=model, args=args, train_dataset=train_set.data, data_collator=collate,
                              processing_class=tokenizer, recovery=recovery)
        trainer.max_tokens_per_batch = own.max_tokens_per_batch
        return trainer

    def iteration_metrics(self, trainer) -> dict:
        return {}

    def describe(self, n: int) -> str:
        return f"{n} examples"
