"""A third objective in one file, for tests/test_objectives.py: supervised training on the task's gold
answers only (no generated sample), with a flag and metrics of its own. Registered by one line:
objectives.REGISTRY["toy"] = "toy_objective:Toy"."""

from __future__ import annotations

from dataclasses import dataclass, field

from itertrain.core.errors import TaskError, UsageError
from itertrain.training.objectives import Metric, TrainSet
from itertrain.training.objectives.sft import Sft


@dataclass
class ToyArguments:
    toy_gold_limit: int = field(default=32, metadata={"help": "With toy: gold examples trained per iteration."})


class Toy(Sft):  # Sft's trainer (HF's, with the Recovering mixin) and its empty reference
    name = "toy"
    Arguments = ToyArguments
    METRICS = (Metric("toy_examples", status="{} gold examples"),
               Metric("toy_gold_share", status="gold share {:.2f}", plot="toy: share of the gold data trained on"))

    def __init__(self, args: ToyArguments):
        self.args = args

    @staticmethod
    def check(args: ToyArguments, train, it=None) -> None:
        if args.toy_gold_limit < 1:
            raise UsageError(f"--toy_gold_limit must be >= 1, got {args.toy_gold_limit}")

    def train_set(self, cfg, k: int, kept: dict, task, tokenizer) -> TrainSet:
        from itertrain.training.data import encode

        if not task.gold:
            raise TaskError("the toy objective trains on gold data, and the task has none")
        gold = task.gold[: self.args.toy_gold_limit]
        features = encode(gold, tokenizer)
        return TrainSet(features, len(features), {"toy_examples": len(features),
                                                  "toy_gold_share": len(gold) / len(task.gold)})

    def describe(self, n: int) -> str:
        return f"{n} gold examples (toy)"
