"""Training objectives: what an iteration trains on and with which Trainer.

An objective is a small plug-in with two parts, a training-set builder (from the iteration's
committed samples) and a trainer factory (a Trainer class with itertrain's Recovering mixin), plus
what it records in every manifest. The loop, the commit protocol and the recovery rules do not know
which objective runs: a checkpoint is complete, committed and resumed the same way for all of them.

  sft  supervised fine-tuning on the accepted completions (and gold data): HF's Trainer
  dpo  DPO on (chosen, rejected) pairs from the verifier's verdicts: TRL's DPOTrainer

docs/objectives.md explains how to add one (KTO, ORPO, a reward-model-scored variant).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from itertrain import manifest
from itertrain.plan import TRAINER

SFT, DPO = "sft", "dpo"
REFERENCE_INITIAL, REFERENCE_PREVIOUS = "initial", "previous"


class ObjectiveError(ValueError):
    """A start this objective cannot go on from: one line naming both sides."""


@dataclass
class TrainSet:
    """What an objective's train_set gives the loop."""

    data: object  # what the trainer is given as train_dataset
    size: int  # its examples or pairs (num_train_samples)
    metrics: dict  # per-iteration metrics known before training


@dataclass
class ObjectiveArguments:
    objective: str = field(default=SFT, metadata={
        "choices": [SFT, DPO],  # (the names of REGISTRY)
        "help": "sft: fine-tune on the accepted completions; dpo: DPO (TRL) on pairs of an accepted and a "
                "rejected completion of the same prompt (docs/objectives.md)."})
    sft_iterations: int = field(default=0, metadata={
        "help": "With --objective dpo: the first N iterations train with sft (a model that solves some prompts, "
                "so that there are pairs); the later ones with dpo."})
    pairs_per_prompt: int = field(default=1, metadata={
        "help": "With dpo: pairs made per prompt at most (each pairs the next accepted with the next rejected "
                "completion, cycling through the shorter list)."})
    dpo_gold_chosen: bool = field(default=False, metadata={
        "help": "With dpo: a prompt none of whose samples passed the verifier takes its gold answer (the data's "
                "answer, as written) as chosen against its rejected samples."})
    dpo_reference: str = field(default=REFERENCE_INITIAL, metadata={
        "choices": [REFERENCE_INITIAL, REFERENCE_PREVIOUS],
        "help": "With dpo: the reference model is the model the first dpo iteration starts from (initial: the "
                "SFT model) or the previous iteration's model (previous)."})
    dpo_learning_rate: float | None = field(default=None, metadata={
        "help": "With dpo: the peak learning rate of the dpo iterations (DPO wants a far smaller one than SFT). "
                "Default: --learning_rate."})
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO's beta (TRL's DPOConfig.beta)."})
    dpo_loss_type: list[str] = field(default_factory=lambda: ["sigmoid"], metadata={
        "help": "TRL's DPOConfig.loss_type: sigmoid (DPO), ipo, hinge, robust, ... (several combine)."})
    dpo_label_smoothing: float = field(default=0.0, metadata={"help": "TRL's DPOConfig.label_smoothing."})
    dpo_args: str | None = field(default=None, metadata={
        "help": "Any other DPOConfig option as a JSON object, e.g. '{\"loss_weights\": [0.8, 0.2], "
                "\"max_length\": 2048}'."})


def validate(args: ObjectiveArguments, train) -> None:
    """Refuse (UsageError, one line) what cannot run, before anything is written."""
    from itertrain.config import UsageError

    if args.sft_iterations < 0 or args.pairs_per_prompt < 1:
        raise UsageError("--sft_iterations must be >= 0 and --pairs_per_prompt >= 1")
    if args.objective != DPO:
        return
    from itertrain.objectives import dpo

    try:
        dpo.check(args, train)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e).strip().splitlines()[0]) from None


def name_for(args: ObjectiveArguments, k: int) -> str:
    """The objective iteration k trains with."""
    return SFT if args.objective == SFT or k < args.sft_iterations else args.objective


# name -> "module:class"; the class is made with the ObjectiveArguments (imported only when used)
REGISTRY = {SFT: "itertrain.objectives.sft:Sft", DPO: "itertrain.objectives.dpo:Dpo"}


def for_iteration(cfg, k: int):
    """Iteration k's objective."""
    import importlib

    module, cls = REGISTRY[name_for(cfg.obj, k)].split(":")
    return getattr(importlib.import_module(module), cls)(cfg.obj)


def check_start(cfg, plan, base_dir: str) -> None:
    """Rank 0, before anything is renamed: ObjectiveError (one line naming both sides) for a start
    whose checkpoint was trained with another objective or reference, or whose iteration model was
    trained against another fixed (initial) reference."""
    k = plan.next_iteration
    objective = for_iteration(cfg, k)
    now = objective.reference(cfg, plan.models, base_dir, k)
    if now is not None and not os.path.isdir(os.path.join(cfg.output_dir, now["reference_path"])):
        raise ObjectiveError(f"iteration {k}'s reference model {now['reference']} is not here "
                             f"({now['reference_path']}): it cannot be trained with --objective {objective.name}")
    # a checkpoint inside iteration k goes on training it; the state of a "both" start is the previous one's
    for name, checkpoint in ((plan.state_from, plan.strategy == TRAINER), (plan.weights_from, False)):
        path = os.path.join(cfg.output_dir, name) if name else None
        if not path or not manifest.exists(path):
            continue  # (an artifact we did not write records no objective)
        try:
            recorded = manifest.read(path).get("extra", {}).get("objective")
        except manifest.ManifestError:
            continue  # the plan has checked it already
        if checkpoint:
            _compare(recorded, now, name)
        elif recorded and now and recorded["objective"] == now["objective"] \
                and REFERENCE_INITIAL in (recorded["reference_mode"], now["reference_mode"]):
            _compare(recorded, now, name)


def _compare(recorded: dict | None, now: dict | None, name: str) -> None:
    was, this = (recorded or {}).get("objective", SFT), (now or {}).get("objective", SFT)
    if was != this:
        raise ObjectiveError(f"{name} was trained with --objective {was}, this run's iteration trains with "
                             f"{this}: resume with the objective (and --sft_iterations) it was trained with")
    if recorded is None or now is None:
        return
    if (recorded["reference_digest"], recorded["reference_mode"]) != (now["reference_digest"], now["reference_mode"]):
        raise ObjectiveError(
            f"{name} was trained against the reference {recorded['reference']} ({recorded['reference_mode']}, "
            f"weights {recorded['reference_digest']}), this run's is {now['reference']} ({now['reference_mode']}, "
            f"weights {now['reference_digest']}): resume with the reference it was trained against")
