"""The sft objective: fine-tune on the accepted completions (and gold data) with HF's Trainer."""

from __future__ import annotations

from itertrain.core.errors import TaskError
from itertrain.training.objectives import TrainSet


class Sft:
    name = "sft"
    Arguments = None  # no flags of its own: the training arguments are the HF Trainer's
    generates = True  # trains on the generate phase's verified samples
    METRICS = ()  # the loop's own (eval_accuracy, acceptance_rate, train_loss, ...) are all it logs

    def __init__(self, args=None):
        self.args = args

    @staticmethod
    def check(args, train, it=None) -> None:
        """Nothing of its own to refuse."""

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
        from itertrain.training.data import Collator
        from itertrain.training.trainer import IterTrainer

        return IterTrainer(model=model, args=args, train_dataset=train_set.data,
                           data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer, recovery=recovery)

    def iteration_metrics(self, trainer) -> dict:
        return {}

    def describe(self, n: int) -> str:
        return f"{n} examples"
