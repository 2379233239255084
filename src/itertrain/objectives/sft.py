"""The sft objective: fine-tune on the accepted completions (and gold data) with HF's Trainer."""

from __future__ import annotations

from itertrain import samples
from itertrain.data import Collator, encode
from itertrain.objectives import TrainSet
from itertrain.tasks import TaskError


class Sft:
    name = "sft"

    def __init__(self, args=None):
        self.args = args  # ObjectiveArguments (sft has no settings of its own)

    def train_set(self, cfg, k: int, kept: dict, task, tokenizer) -> TrainSet:
        """Its own kept samples, earlier iterations' (--reuse_previous) and gold (--gold_iterations)."""
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

    def trainer(self, *, model, args, tokenizer, train_set: TrainSet, reference, load, **recovery):
        from itertrain.trainer import IterTrainer

        return IterTrainer(model=model, args=args, train_dataset=train_set.data,
                           data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer, **recovery)

    def metrics(self, trainer) -> dict:
        return {}
