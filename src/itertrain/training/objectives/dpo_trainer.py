"""TRL's DPOTrainer with itertrain's recovery (trainer.Recovering)."""

from __future__ import annotations

from trl import DPOTrainer

from itertrain.training.objectives.trl_values import TrlStepValues
from itertrain.training.trainer import Recovering


class IterDPOTrainer(Recovering, TrlStepValues, DPOTrainer):
    def __init__(self, *args, step_keys=(), **kwargs):
        self.step_keys = tuple(step_keys)  # TRL's per-step values kept with the loss curve
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # tokenized by the objective (objectives/dpo.py), as sft's examples are

    def step_metrics(self) -> dict[str, float]:
        """The mean over the step's micro-batches of TRL's values (each already gathered over ranks)."""
        return self.fresh_means(self.step_keys)
