"""The grpo objective: online RL with TRL's GRPOTrainer, the task's verifier as the reward.

An iteration runs --max_steps GRPO steps from model_K (or the base with --train_from base): the
trainer samples --num_generations completions of each training prompt with HF generate, scores them
(1.0 for a completion the verifier accepts, else 0.0, plus any --reward_funcs plug-in, weighted by
--reward_weights) and trains on the group-normalized advantages. There is no generate phase: the
iteration's sampling statistics (acceptance rate, pass@k, verifier timeouts) are its rollouts'.

The flags are TRL's GRPOConfig names and defaults, except --grpo_epochs (GRPOConfig.num_iterations:
--num_iterations already counts itertrain's iterations), --max_completion_length (default: the run's
--max_new_tokens) and --temperature (the run's sampling temperature, TRL's default 1.0). Any other
GRPOConfig option goes through --grpo_args. What TRL does not save, and a resume needs, is saved with
every checkpoint by grpo_trainer.py.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from itertrain.core.errors import TaskError, UsageError
from itertrain.core.names import model_before
from itertrain.training import adapters
from itertrain.training.objectives import Metric, TrainSet, extra_options

LOSS_TYPES = {"grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"}  # TRL 1.16's
SCALE_REWARDS = {"group", "batch", "none"}
# GRPOConfig options --grpo_args may not set: the flag that sets it, or why it is not supported
OWN_FLAGS = {
    "num_generations": "--num_generations", "max_completion_length": "--max_completion_length",
    "temperature": "--temperature", "beta": "--beta", "epsilon": "--epsilon", "epsilon_high": "--epsilon_high",
    "loss_type": "--loss_type", "scale_rewards": "--scale_rewards", "steps_per_generation": "--steps_per_generation",
    "num_iterations": "--grpo_epochs", "mask_truncated_completions": "--mask_truncated_completions",
    "reward_weights": "--reward_weights",
    "sync_ref_model": "not supported (the reference must stay fixed: it is recorded and checked at a resume)",
    "ref_model_mixup_alpha": "not supported (the reference must stay fixed)",
    "ref_model_sync_steps": "not supported (the reference must stay fixed)",
    "model_init_kwargs": "not supported (the policy is loaded by itertrain)",
    "log_completions": "not supported (its tables are written into the trainer's staging directory)",
    "use_vllm": "not supported: GRPO samples with HF generate (docs/objectives.md says why)",
}
# TRL's per-step values kept with the loss curve (each step's own, or its generation block's), and the
# per-iteration metric made from their mean; rewards/<function>/mean is kept for every reward function
STEP_KEYS = {"reward": "grpo_reward", "reward_std": "grpo_reward_std", "kl": "grpo_kl", "entropy": "grpo_entropy",
             "clip_ratio/region_mean": "grpo_clip_ratio", "completions/mean_length": "grpo_completion_length",
             "completions/clipped_ratio": "grpo_clipped_ratio", "frac_reward_zero_std": "grpo_frac_reward_zero_std"}
# itertrain's per-step counts of the rollouts (summed over ranks), and the per-iteration sums
COUNT_KEYS = ("samples/generated", "samples/accepted", "samples/prompts", "samples/solved",
              "verifier/timeouts", "verifier/errors", "rewards/timeouts", "rewards/errors")


@dataclass
class GrpoArguments:
    num_generations: int = field(default=8, metadata={
        "help": "With grpo: completions sampled per prompt (a group; TRL's GRPOConfig.num_generations)."})
    max_completion_length: int | None = field(default=None, metadata={
        "help": "With grpo: the longest completion sampled (TRL's). Default: --max_new_tokens."})
    beta: float = field(default=0.0, metadata={
        "help": "With grpo: the KL coefficient (TRL's; 0.0 loads no reference model)."})
    epsilon: float = field(default=0.2, metadata={"help": "With grpo: the clipping epsilon (TRL's)."})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "With grpo: the upper clipping epsilon (TRL's; DAPO recommends 0.28). Default: --epsilon."})
    loss_type: str = field(default="dapo", metadata={
        "help": "With grpo: TRL's loss formulation: " + ", ".join(sorted(LOSS_TYPES)) + "."})
    scale_rewards: str = field(default="group", metadata={
        "help": "With grpo: scale the advantages by the reward std of the group, the batch, or none (TRL's)."})
    steps_per_generation: int | None = field(default=None, metadata={
        "help": "With grpo: optimizer micro-steps trained on each generation (TRL's). Default: "
                "--gradient_accumulation_steps."})
    grpo_epochs: int = field(default=1, metadata={
        "help": "With grpo: passes over each generation (TRL's GRPOConfig.num_iterations, renamed: "
                "--num_iterations counts itertrain's iterations)."})
    mask_truncated_completions: bool = field(default=False, metadata={
        "help": "With grpo: leave completions cut at --max_completion_length out of the loss (TRL's)."})
    reward_funcs: list[str] = field(default_factory=list, metadata={
        "help": "With grpo: reward plug-ins besides the verifier, each package.module:function with TRL's "
                "signature f(prompts, completions, **kwargs) -> list[float]; run in a worker process, timed out "
                "after --verifier_timeout seconds (counted, and 0.0)."})
    reward_weights: list[float] | None = field(default=None, metadata={
        "help": "With grpo: a weight per reward, the verifier's first, then each --reward_funcs (TRL's). "
                "Default: 1.0 each."})
    grpo_learning_rate: float | None = field(default=None, metadata={
        "help": "With grpo: the peak learning rate of the grpo iterations. Default: --learning_rate."})
    grpo_args: str | None = field(default=None, metadata={
        "help": "Any other GRPOConfig option as a JSON object, e.g. '{\"top_p\": 0.95}'."})


def check(args: GrpoArguments, train, it=None) -> None:
    """UsageError (one line) for GRPO settings that cannot run."""
    if train.max_steps <= 0:
        raise UsageError("--objective grpo trains --max_steps steps in each iteration: give --max_steps (an epoch "
                         "of prompts is not a GRPO unit)")
    if args.loss_type not in LOSS_TYPES:
        raise UsageError(f"--loss_type {args.loss_type!r}: not a TRL GRPO loss (use one of "
                         f"{', '.join(sorted(LOSS_TYPES))})")
    if args.scale_rewards not in SCALE_REWARDS:
        raise UsageError(f"--scale_rewards {args.scale_rewards!r}: use one of {', '.join(sorted(SCALE_REWARDS))}")
    if not args.beta >= 0:
        raise UsageError(f"--beta must be >= 0, got {args.beta}")
    if not args.epsilon > 0:
        raise UsageError(f"--epsilon must be > 0, got {args.epsilon}")
    if args.epsilon_high is not None and not args.epsilon_high >= args.epsilon:
        raise UsageError(f"--epsilon_high ({args.epsilon_high}) must be >= --epsilon ({args.epsilon})")
    if args.grpo_epochs < 1 or (args.steps_per_generation is not None and args.steps_per_generation < 1):
        raise UsageError("--grpo_epochs and --steps_per_generation must be >= 1")
    if args.max_completion_length is not None and args.max_completion_length < 1:
        raise UsageError(f"--max_completion_length must be >= 1, got {args.max_completion_length}")
    if args.grpo_learning_rate is not None and not args.grpo_learning_rate > 0:
        raise UsageError(f"--grpo_learning_rate must be > 0, got {args.grpo_learning_rate}")
    if args.reward_weights is not None and len(args.reward_weights) != 1 + len(args.reward_funcs):
        raise UsageError(f"--reward_weights has {len(args.reward_weights)} weights for {1 + len(args.reward_funcs)} "
                         "rewards (the verifier's first, then each --reward_funcs)")
    from itertrain.training.objectives import rewards

    for spec in args.reward_funcs:
        rewards.plugin(spec)
    if train.deepspeed or train.fsdp:
        raise UsageError("--objective grpo runs with DDP (one or more processes): DeepSpeed and FSDP are not "
                         "supported with it yet")
    if it is not None and it.generation_backend == "vllm":
        raise UsageError("--generation_backend vllm does not reach GRPO's rollouts, which sample with HF generate: "
                         "TRL 1.16 syncs weights to a vLLM server over NCCL (CUDA only) and supports vLLM "
                         "0.22-0.31 (this project's is 0.32); drop the flag")
    try:
        config(train, args, 8)  # GRPOConfig's own checks (the generation batch against num_generations, ...)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:  # TRL's own refusal, in its words
        raise UsageError(str(e).strip().splitlines()[0]) from None


def options(args: GrpoArguments) -> dict:
    """--grpo_args as GRPOConfig options, each parsed to its field's type as the command line would be."""
    from trl import GRPOConfig

    def refused(key: str) -> str | None:
        if key not in OWN_FLAGS and not key.startswith("vllm_"):
            return None
        why = OWN_FLAGS.get(key, OWN_FLAGS["use_vllm"])
        return f"is set with {why}" if why.startswith("--") else f"is {why}"

    return extra_options(args.grpo_args, "--grpo_args", GRPOConfig, refused)


def config(train, args: GrpoArguments, max_new_tokens: int, temperature: float = 1.0):
    """The iteration's TrainingArguments as TRL's GRPOConfig, with the GRPO options. Every training
    argument is copied as set; the dataset's columns are kept (the rewards read them)."""
    from transformers import TrainingArguments
    from trl import GRPOConfig

    copied = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    if args.grpo_learning_rate is not None:
        copied["learning_rate"] = args.grpo_learning_rate
    copied["remove_unused_columns"] = False
    return GRPOConfig(
        **copied, num_generations=args.num_generations, temperature=temperature,
        max_completion_length=args.max_completion_length or max_new_tokens, beta=args.beta, epsilon=args.epsilon,
        epsilon_high=args.epsilon_high, loss_type=args.loss_type, scale_rewards=args.scale_rewards,
        steps_per_generation=args.steps_per_generation, num_iterations=args.grpo_epochs,
        mask_truncated_completions=args.mask_truncated_completions, reward_weights=args.reward_weights,
        **options(args))


def reference_dir(cfg, models: dict, base_dir: str, k: int) -> tuple[str, str]:
    """(directory, name) of GRPO's reference, as in TRL: the model iteration k starts from (under a LoRA
    adapter, TRL keeps a copy of the starting adapter beside the trained one)."""
    if cfg.it.train_from == "base":
        return base_dir, "base"
    return model_before(cfg.output_dir, models, base_dir, k)


class Grpo:
    name = "grpo"
    Arguments = GrpoArguments
    generates = False  # samples inside its trainer: no generate phase
    METRICS = (Metric("grpo_reward", status="reward {:.3f}"), Metric("grpo_reward_std", tracker=False),
               Metric("grpo_kl", status="KL {:.4f}"), Metric("grpo_entropy", status="entropy {:.3f}"),
               Metric("grpo_clip_ratio", status="clipped {:.3f}"),
               Metric("grpo_completion_length", status="length {:.1f}"), Metric("grpo_clipped_ratio", tracker=False),
               Metric("grpo_frac_reward_zero_std", plot="GRPO groups without a signal (one reward for all)"),
               Metric("reward_timeouts", tracker=False), Metric("reward_errors", tracker=False),
               *(Metric(key, per="step") for key in (*STEP_KEYS, *COUNT_KEYS)))
    check = staticmethod(check)

    def __init__(self, args: GrpoArguments):
        self.args = args
        self.run = None  # (cfg, task), from train_set: the rewards need the verifier and its settings

    def train_set(self, cfg, k: int, kept: dict, task, tokenizer) -> TrainSet:
        """The task's training prompts, each with its index and answer (the rewards' inputs)."""
        from datasets import Dataset

        if not task.train_prompts:
            raise TaskError(f"iteration {k} trains with --objective grpo, but the task has no training prompts "
                            "(give --train_prompts)")
        self.run = (cfg, task)
        rows = [{"prompt": ex.prompt, "index": i, "answer": ex.answer} for i, ex in enumerate(task.train_prompts)]
        return TrainSet(Dataset.from_list(rows), len(rows), {})

    def inputs(self, cfg, models: dict, base_dir: str, k: int) -> list[str]:
        """The reference model's directory, where one is loaded (beta > 0)."""
        return [reference_dir(cfg, models, base_dir, k)[0]] if self.args.beta > 0 else []

    def reference(self, cfg, models: dict, base_dir: str, k: int) -> dict:
        out = {"objective": self.name, "reference_mode": "none", "reference": None, "reference_path": None,
               "reference_digest": None, "beta": self.args.beta, "loss_type": self.args.loss_type}
        if self.args.beta > 0:
            path, name = reference_dir(cfg, models, base_dir, k)
            inside = os.path.abspath(path).startswith(os.path.abspath(cfg.output_dir) + os.sep)
            out.update(reference_mode="start", reference=name, reference_path=name if inside else os.path.abspath(path),
                       reference_digest=adapters.base_digest(path))
        return out

    def trainer(self, *, model, args, tokenizer, train_set: TrainSet, reference: dict, load, recovery):
        import copy

        from itertrain.training.objectives import rewards
        from itertrain.training.objectives.grpo_trainer import IterGRPOTrainer

        cfg, task = self.run
        path = reference["reference_path"]
        ref = None if path is None else path if os.path.isabs(path) else os.path.join(recovery.experiment_dir, path)
        ref = None if adapters.is_peft(model) else ref  # TRL copies the starting adapter instead
        funcs = [rewards.Verified(cfg, task),
                 *(rewards.Plugin(s, cfg.it.verifier_timeout) for s in self.args.reward_funcs)]
        made = config(args, self.args, cfg.it.max_new_tokens, cfg.it.temperature)
        # TRL sets the tokenizer's padding side for generation: its own copy, not the run's
        return IterGRPOTrainer(model=model, reward_funcs=funcs, args=made, train_dataset=train_set.data,
                               processing_class=copy.deepcopy(tokenizer), reference_dir=ref,
                               step_keys=tuple(STEP_KEYS), recovery=recovery)

    def iteration_metrics(self, trainer) -> dict:
        means = trainer.step_means()
        out = {name: means[key] for key, name in STEP_KEYS.items() if key in means}
        out.update({f"grpo_reward_{key.split('/')[1]}": v for key, v in means.items()
                    if key.startswith("rewards/") and key.endswith("/mean")})
        out.update({k: v for k, v in self.sample_stats(trainer).items() if k.startswith("reward_")})
        return out

    def sample_stats(self, trainer) -> dict:
        """The iteration's rollouts as the generate phase's statistics: accepted / generated, pass@k
        (prompts with an accepted completion), and the problems counted."""
        n = {key: sum(trainer.step_curves.get(key, [])) for key in COUNT_KEYS}
        return {"acceptance_rate": n["samples/accepted"] / max(n["samples/generated"], 1),
                "pass_at_k": n["samples/solved"] / max(n["samples/prompts"], 1),
                "num_generated": int(n["samples/generated"]), "verifier_timeouts": int(n["verifier/timeouts"]),
                "verifier_errors": int(n["verifier/errors"]), "reward_timeouts": int(n["rewards/timeouts"]),
                "reward_errors": int(n["rewards/errors"])}

    def describe(self, n: int) -> str:
        return f"{n} prompts x {self.args.num_generations} completions ({self.name})"
