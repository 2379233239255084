"""TRL's DPOTrainer with itertrain's recovery (trainer.Recovering)."""

from __future__ import annotations

from trl import DPOTrainer

from itertrain.training.trainer import Recovering


class IterDPOTrainer(Recovering, DPOTrainer):
    def __init__(self, *args, step_keys=(), **kwargs):
        self._taken: dict[str, int] = {}  # TRL's per-micro-batch values already read, by key
        self.step_keys = tuple(step_keys)  # TRL's per-step values kept with the loss curve
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # tokenized by the objective (objectives/dpo.py), as sft's examples are

    def step_metrics(self) -> dict[str, float]:
        """The mean over the step's micro-batches of TRL's values (each already gathered over ranks)."""
        out = {}
        for key in self.step_keys:
            values = self._metrics["train"].get(key, [])
            new = values[self._taken.get(key, 0):]
            self._taken[key] = len(values)
            if new:
                out[key] = sum(new) / len(new)
        return out

    def log(self, logs, start_time=None):
        super().log(logs, start_time)
        self._taken = {}  # TRL cleared its values
