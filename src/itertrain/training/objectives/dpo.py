"""The dpo objective: TRL's DPOTrainer on (chosen, rejected) pairs from the verifier's verdicts.

Pairs come from the committed samples_K (pairs.py) and are committed as pairs_K. The reference model
is the model the first dpo iteration starts from (initial) or the previous iteration's (previous);
its name, path and a digest of its weights go into every checkpoint's and iteration model's manifest,
and a resume whose reference differs is refused (check_start). TRL's per-step reward margins and
accuracies are kept with the loss curve, so an iteration's values after a resume are the
uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from itertrain.core.errors import TaskError, UsageError
from itertrain.core.names import model_before
from itertrain.training import adapters
from itertrain.training.objectives import REFERENCE_INITIAL, REFERENCE_PREVIOUS, Metric, TrainSet, extra_options

# TRL 1.16's DPOConfig.loss_type values
LOSS_TYPES = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}
# DPOConfig options that --dpo_args may not set: ours have their own flags; a reference that moves during
# training (TR-DPO) would have to be in every checkpoint, and is not
OWN_FLAGS = {"beta": "--dpo_beta", "loss_type": "--dpo_loss_type", "label_smoothing": "--dpo_label_smoothing",
             "sync_ref_model": None, "ref_model_mixup_alpha": None, "ref_model_sync_steps": None,
             "model_init_kwargs": None}
# TRL's per-step values kept with the loss curve, and the per-iteration metrics made from their means
STEP_KEYS = {"rewards/margins": "dpo_reward_margin", "rewards/accuracies": "dpo_reward_accuracy",
             "rewards/chosen": "dpo_reward_chosen", "rewards/rejected": "dpo_reward_rejected"}


@dataclass
class DpoArguments:
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


# What TRL 1.16's DPOTrainer refuses only once it is built (after a generate phase) or at the first loss:
# checked with the flags instead, so that a run never stops on them half way
F_DIVERGENCES = {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"}
F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}


def check(args: DpoArguments, train, it=None) -> None:
    """UsageError (one line) for DPO settings that cannot run."""
    if args.pairs_per_prompt < 1:
        raise UsageError("--pairs_per_prompt must be >= 1")
    losses = set(args.dpo_loss_type)
    if unknown := sorted(losses - LOSS_TYPES):
        raise UsageError(f"--dpo_loss_type {' '.join(unknown)}: not a TRL DPO loss (use one of "
                         f"{', '.join(sorted(LOSS_TYPES))})")
    if not args.dpo_beta > 0:
        raise UsageError(f"--dpo_beta must be > 0, got {args.dpo_beta}")
    if args.dpo_learning_rate is not None and not args.dpo_learning_rate > 0:
        raise UsageError(f"--dpo_learning_rate must be > 0, got {args.dpo_learning_rate}")
    if train.deepspeed and adapters._zero_stage(train.deepspeed) == 3 or train.fsdp:
        raise UsageError("--objective dpo runs with DDP or DeepSpeed ZeRO-1/2: ZeRO-3 and FSDP would shard the "
                         "reference model too, which is not supported yet")
    try:
        made = config(train, args)  # DPOConfig's own checks (e.g. loss_weights against loss_type)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:  # TRL's own refusal, in its words
        raise UsageError(str(e).strip().splitlines()[0]) from None
    if made.f_divergence_type not in F_DIVERGENCES:
        raise UsageError(f"--dpo_args: f_divergence_type {made.f_divergence_type!r} is not one of "
                         f"{', '.join(sorted(F_DIVERGENCES))}")
    if made.f_divergence_type != "reverse_kl" and not losses <= F_DIVERGENCE_LOSSES:
        raise UsageError(f"--dpo_args: f_divergence_type {made.f_divergence_type!r} works only with the losses "
                         f"{', '.join(sorted(F_DIVERGENCE_LOSSES))}")
    if "exo_pair" in losses and made.label_smoothing == 0:
        raise UsageError("--dpo_loss_type exo_pair needs --dpo_label_smoothing > 0 (the EXO paper: 1e-3)")
    if made.use_weighting and losses & {"aot", "aot_unpaired"}:
        raise UsageError("--dpo_args: use_weighting does not work with the aot losses")


def options(args: DpoArguments) -> dict:
    """--dpo_args as DPOConfig options, each parsed to its field's type as the command line would be."""
    from trl import DPOConfig

    def refused(key: str) -> str | None:
        if key in OWN_FLAGS:
            flag = OWN_FLAGS[key]
            return f"is set with {flag}" if flag else "is not supported (the reference must stay fixed)"
        return None

    return extra_options(args.dpo_args, "--dpo_args", DPOConfig, refused)


def config(train, args: DpoArguments):
    """The iteration's TrainingArguments as TRL's DPOConfig, with the DPO options. Every training
    argument is copied as set (TRL's own defaults, e.g. gradient checkpointing, do not apply)."""
    from transformers import TrainingArguments
    from trl import DPOConfig

    copied = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    if args.dpo_learning_rate is not None:
        copied["learning_rate"] = args.dpo_learning_rate
    return DPOConfig(**copied, beta=args.dpo_beta, loss_type=list(args.dpo_loss_type),
                     label_smoothing=args.dpo_label_smoothing, **options(args))


def reference_dir(cfg, args: DpoArguments, models: dict, base_dir: str, k: int) -> tuple[str, str]:
    """(directory, name) of iteration k's reference model."""
    first = k if args.dpo_reference != REFERENCE_INITIAL else cfg.obj.sft_iterations
    return model_before(cfg.output_dir, models, base_dir, first)


class Dpo:
    name = "dpo"
    Arguments = DpoArguments
    generates = True
    METRICS = (Metric("num_pairs", status="{} pairs"), Metric("prompts_paired", tracker=False),
               Metric("pairs_gold_chosen", tracker=False), Metric("dpo_reward_margin", status="reward margin {:.3f}"),
               Metric("dpo_reward_accuracy", status="reward accuracy {:.3f} (train)",
                      plot="DPO reward accuracy (train, chosen > rejected)"),
               Metric("dpo_reward_chosen", tracker=False), Metric("dpo_reward_rejected", tracker=False),
               *(Metric(key, per="step") for key in STEP_KEYS))
    check = staticmethod(check)

    def __init__(self, args: DpoArguments):
        self.args = args

    def train_set(self, cfg, k: int, kept: dict, task, tokenizer) -> TrainSet:
        """This iteration's pairs (on-policy: earlier iterations' are not reused), tokenized as SFT's
        examples are: prompt without special tokens, completion + EOS."""
        from datasets import Dataset

        from itertrain.phases import pairs

        if not task.train_prompts:
            raise TaskError(f"iteration {k} trains with --objective dpo, but the task has no training prompts to "
                            "sample and pair (give --train_prompts)")
        gold = {i: ex.answer for i, ex in enumerate(task.train_prompts)} if self.args.dpo_gold_chosen else None
        settings = {"pairs_per_prompt": self.args.pairs_per_prompt, "gold_chosen": self.args.dpo_gold_chosen}
        made = pairs.ensure(cfg.output_dir, k, settings, gold)
        if not made:
            raise TaskError(f"iteration {k} has no preference pairs: no prompt had both an accepted and a rejected "
                            "completion (train a model that solves some prompts first with --sft_iterations, or "
                            "pair rejected samples with the gold answers: --dpo_gold_chosen true)")

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        rows = [{"prompt_ids": ids(p["prompt"]), "chosen_ids": ids(p["chosen"]) + [tokenizer.eos_token_id],
                 "rejected_ids": ids(p["rejected"]) + [tokenizer.eos_token_id]} for p in made]
        return TrainSet(Dataset.from_list(rows), len(rows), pairs.stats(made))

    def inputs(self, cfg, models: dict, base_dir: str, k: int) -> list[str]:
        """The reference model's directory (an SFT iteration before DPO loads none)."""
        return [reference_dir(cfg, self.args, models, base_dir, k)[0]]

    def reference(self, cfg, models: dict, base_dir: str, k: int) -> dict:
        path, name = reference_dir(cfg, self.args, models, base_dir, k)
        inside = os.path.abspath(path).startswith(os.path.abspath(cfg.output_dir) + os.sep)
        return {"objective": self.name, "reference_mode": self.args.dpo_reference, "reference": name,
                "reference_path": name if inside else os.path.abspath(path), "reference_digest":
                adapters.base_digest(path), "beta": self.args.dpo_beta, "loss_type": list(self.args.dpo_loss_type)}

    def trainer(self, *, model, args, tokenizer, train_set: TrainSet, reference: dict, load, recovery):
        from itertrain.training.objectives.dpo_trainer import IterDPOTrainer

        path = reference["reference_path"]
        ref = load(path if os.path.isabs(path) else os.path.join(recovery.experiment_dir, path))
        ref.eval()
        return IterDPOTrainer(model=model, ref_model=ref, args=config(args, self.args), train_dataset=train_set.data,
                              processing_class=tokenizer, step_keys=STEP_KEYS, recovery=recovery)

    def iteration_metrics(self, trainer) -> dict:
        means = trainer.step_means()
        return {name: means[key] for key, name in STEP_KEYS.items() if key in means}

    def describe(self, n: int) -> str:
        return f"{n} pairs ({self.name})"
