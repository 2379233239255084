"""Command-line configuration: our own flags plus every HF TrainingArguments option.

The defaults are the tuned CPU demo: `train_iterative.py --output_dir D` with nothing else trains
the built-in tiny model on the built-in task. Errors are UsageError: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from itertrain.app import needs, settings
from itertrain.core import defaults, elastic
from itertrain.core.errors import UsageError
from itertrain.core.selectors import (
    Selector,
    parse_checkpoint_selector,
    parse_iteration_selector,
)
from itertrain.mirror import MirrorArguments
from itertrain.mirror import validate as validate_mirror
from itertrain.tasks import verifiers
from itertrain.tasks.types import builtin_task
from itertrain.training import adapters, objectives
from itertrain.training.adapters import PeftArguments
from itertrain.training.flags import Parser, flag_words
from itertrain.training.objectives import ObjectiveArguments

DEFAULT_SHARD_PROMPTS = 512


@dataclass
class IterArguments:
    model_name: str | None = field(default=None, metadata={
        "help": "Local HF causal-LM directory to start from. Default: a tiny Llama and a character "
                "tokenizer made from --seed and written to <output_dir>/base."})
    resume_from: str = field(default="none", metadata={
        "help": "Trainer checkpoint to resume (full state): none, auto (newest complete) or N (checkpoint-N)."})
    resume_from_iteration: str = field(default="none", metadata={
        "help": "Iteration model to resume (weights only): none, auto (newest complete) or iter_K."})
    strict_resume: bool = field(default=False, metadata={
        "help": "Turn every fallback (a skipped or unloadable artifact) into an error exit."})
    change_experiment: bool = field(default=False, metadata={
        "help": "Let a resume change a setting that defines the experiment (the model, objective, adapter, task "
                "data, verifier or seed; see the end of this page): the rest of the run is a branch, warned and "
                "recorded. Without it such a change is refused."})
    async_save: bool = field(default=True, metadata={
        "help": "Write trainer checkpoints in the background: training is blocked only while the state is "
                "copied into memory (one extra host copy of model and optimizer state). false: write them "
                "synchronously."})
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGINT"], metadata={
        "help": "Signals that ask the run to stop at the next safe point, commit, and exit with status 75 "
                "(stopped, resumable); a second SIGINT exits at once. none: no signal is caught."})
    stop_after: str | None = field(default=None, metadata={
        "help": "Stop the same way once the run has lasted this long (23h30m, 90m, 45s, or seconds): for "
                "schedulers with a time limit."})
    tracker_log_model: bool = field(default=False, metadata={
        "help": "Once the last iteration is saved, log its model to the --report_to trackers by path, not "
                "copied: a W&B reference artifact (file://, nothing uploaded), an MLflow tag and "
                "final_model.json artifact."})
    dry_run: bool = field(default=False, metadata={
        "help": "Print the recovery banner and the plan as one JSON line, write nothing, exit."})
    num_iterations: int = field(default=defaults.NUM_ITERATIONS, metadata={"help": "Number of iterations (iter_0 .. iter_{N-1})."})
    carry_optimizer_state: bool = field(default=False, metadata={
        "help": "Carry optimizer and LR-scheduler state from one iteration to the next (one schedule over "
                "the whole experiment) instead of a fresh optimizer each iteration."})
    task: str = field(default="addition", metadata={
        "help": "Built-in task name (addition) or package.module:make_task returning an itertrain.tasks.Task."})
    train_prompts: str | None = field(default=None, metadata={
        "help": "Prompts and answers to generate for (with --eval_prompts and --verifier): a .jsonl, .json, .csv "
                "or .parquet file or a datasets save_to_disk directory, local. A prompt is a string or a list "
                "of chat messages."})
    eval_prompts: str | None = field(default=None, metadata={"help": "Held-out prompts and answers (same formats)."})
    sft_data: str | None = field(default=None, metadata={
        "help": "Gold prompts and answers trained on (same formats; see --gold_iterations)."})
    prompt_field: str = field(default="prompt", metadata={"help": "The data's prompt column."})
    answer_field: str = field(default="answer", metadata={"help": "The data's answer column."})
    chat_template: str = field(default="auto", metadata={
        "choices": ["auto", "none"],
        "help": "auto: when the tokenizer has a chat template, every prompt goes through it (with the generation "
                "prompt) for generation, evaluation and training; none: prompts are used as written."})
    verifier: str = field(default="exact", metadata={
        "help": "exact, numeric, gsm8k, math (math-verify), regex:PATTERN or package.module:function(example, "
                "completion) (docs/tasks.md)."})
    verifier_workers: int | None = field(default=None, metadata={
        "help": "Processes that run the verifier, each call under --verifier_timeout (0: in the training "
                "process, no timeout). Default: 0 for exact, numeric and gsm8k, else 2."})
    verifier_timeout: float = field(default=10.0, metadata={
        "help": "Seconds a verifier call may take in the pool; past it, the completion counts as rejected."})
    strict_verifier: bool = field(default=False, metadata={
        "help": "A verifier that raises or times out stops the run (one line) instead of counting as a rejection."})
    num_samples: int = field(default=4, metadata={"help": "Completions sampled per training prompt."})
    max_per_prompt: int = field(default=1, metadata={"help": "Correct completions kept per prompt (deduplicated)."})
    reuse_previous: bool = field(default=True, metadata={"help": "Also train on earlier iterations' kept samples."})
    gold_iterations: int = field(default=-1, metadata={
        "help": "Mix gold data into the first N iterations' training (-1: every iteration, 0: never)."})
    train_from: str = field(default="previous", metadata={
        "help": "Fine-tune each iteration from the previous iteration's model (previous) or from the base (base)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the generate phase and of --objective grpo's rollouts."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Longest completion generated or evaluated. Default: 8 for the built-in task, else 512."})
    generation_batch_size: int = field(default=256, metadata={"help": "Prompts per generate call."})
    generation_order: str = field(default="length", metadata={"choices": ["length", "file"], "help": (
        "The order prompts are batched in for generation: length (longest first, by tokens: a batch pads little "
        "and its samples end at similar times) or file. The samples are kept in file order either way.")})
    generation_backend: str = field(default="hf", metadata={
        "choices": ["hf", "vllm"],
        "help": "Who samples the generate phase: hf (batched HF generate, in the training process) or vllm "
                "(a vLLM process per rank and generate phase, its memory freed before training; on a GPU or "
                "the CPU, with the vLLM of --vllm_python)."})
    generation_shard_size: int | None = field(default=None, metadata={
        "help": "Prompts per committed shard of the generate phase: a stopped or crashed phase keeps its "
                "committed shards and makes only the rest. Default: 512 rounded up to whole "
                "--generation_batch_size batches (minutes of work per shard on a GPU)."})
    vllm_python: str | None = field(default=None, metadata={
        "help": "The interpreter whose vLLM samples with --generation_backend vllm (make vllm builds "
                ".venv-vllm/bin/python). Default: the one running itertrain."})
    vllm_gpu_memory_utilization: float = field(default=0.85, metadata={
        "help": "Share of the GPU's memory vLLM may take during the generate phase (freed before training)."})
    vllm_enforce_eager: bool = field(default=False, metadata={
        "help": "vLLM runs the model eagerly, without torch.compile or CUDA graphs: its engine starts in "
                "seconds, not tens of seconds, and generates more slowly. Recorded with the samples (a "
                "compiled engine's may differ in the last bits)."})
    num_gold: int = field(default=700, metadata={"help": "Built-in task: gold (supervised) examples."})
    num_prompts: int = field(default=2000, metadata={"help": "Built-in task: unlabelled training prompts."})
    num_eval: int = field(default=500, metadata={"help": "Built-in task: held-out prompts."})


@dataclass
class IterTrainingArguments(TrainingArguments):
    """HF TrainingArguments with the demo's defaults. --max_steps / --num_train_epochs are per iteration."""

    output_dir: str | None = field(default=None, metadata={"help": "The experiment directory (required)."})
    max_steps: int = field(default=defaults.MAX_STEPS, metadata={"help": "Optimizer steps of each iteration."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate."})
    warmup_steps: float = field(default=5, metadata={"help": "Warm-up steps of each iteration's schedule."})
    save_steps: float = field(default=100, metadata={"help": "Commit a trainer checkpoint every N steps."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    elastic_batch: str = field(default=elastic.KEEP, metadata={
        "choices": [elastic.KEEP, elastic.ALLOW],
        "help": "A resume on another number of processes keeps the experiment's global batch (examples per "
                "optimizer step) by changing the accumulation, then the per-device batch; where none can, keep "
                "refuses and allow continues with the nearest global batch (recorded; docs/scaling.md)."})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={
        "help": "Where to report besides metrics.jsonl, one or more: tensorboard, wandb, mlflow (one run per "
                "experiment each, docs/status.md), any other HF integration, all, or none."})


@dataclass(frozen=True)
class Config:
    it: IterArguments
    train: IterTrainingArguments
    resume_from: Selector
    resume_from_iteration: Selector
    peft: PeftArguments = field(default_factory=PeftArguments)
    obj: ObjectiveArguments = field(default_factory=ObjectiveArguments)
    objective_args: dict = field(default_factory=dict)  # each objective's own Arguments, by name
    mirror: MirrorArguments = field(default_factory=MirrorArguments)
    given: dict = field(default_factory=dict)  # {flag: value as given}: command line, config file, or the record
    carried: dict = field(default_factory=dict)  # {flag: value} a resume took from the experiment's record
    batch: elastic.Batch | None = None  # the batch trained with, set at start-up: the flags', or the experiment's kept
    batch_note: str | None = None  # what start-up changed in the batch, and why (startup.fit_batch)

    @property
    def output_dir(self) -> str:
        return self.train.output_dir

    def iteration_steps(self, world_size: int, num_examples: int | None = None) -> int:
        """Optimizer steps of one iteration: --max_steps, or with --num_train_epochs, from the size of
        that iteration's training set and the global batch (training/order.py: an epoch is whole
        global batches). An estimate when the size is not known yet: only used to place foreign
        checkpoints without a manifest."""
        a = self.train
        if a.max_steps > 0:
            return a.max_steps
        n = max(num_examples if num_examples is not None else self.it.num_gold + self.it.num_prompts, 1)
        size = self.batch.size if self.batch else a.per_device_train_batch_size * world_size * a.gradient_accumulation_steps
        per_epoch = max(n // size if a.dataloader_drop_last else math.ceil(n / size), 1)
        return max(1, math.ceil(a.num_train_epochs * per_epoch))


def arguments() -> tuple[type, ...]:
    """Every flag dataclass: ours, HF's TrainingArguments, PEFT's, and each objective's own."""
    return (IterArguments, IterTrainingArguments, PeftArguments, ObjectiveArguments, MirrorArguments,
            *objectives.argument_classes())


def parser(prog: str | None = None) -> HfArgumentParser:
    return Parser(arguments(), prog=prog)


def config_file_args(path: str) -> list[str]:
    """A YAML or JSON file of {flag: value} as command-line words, to go before the real command
    line so that flags given there override the file (as HfArgumentParser users expect)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except OSError as e:
        raise UsageError(f"config file {path}: {e.strerror}") from None
    except (ValueError, yaml.YAMLError) as e:
        raise UsageError(f"config file {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                         f"({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path}: expected a mapping of flag names to values")
    known = {f.name for dc in arguments() for f in dataclasses.fields(dc)}
    for key in data:
        if key not in known:
            raise UsageError(f"config file {path}: unknown setting {key!r} (see docs/config.md)")
    return flag_words(data)


def given_flags(argv: list[str]) -> dict:
    """{flag: value} of the flags `argv` gives (abbreviations and --no_X included), parsed alone."""
    return vars(_given_parser(arguments()).parse_args(argv))


@functools.lru_cache(maxsize=4)  # (an HfArgumentParser takes milliseconds to build; argparse keeps no state)
def _given_parser(classes: tuple) -> HfArgumentParser:
    p = Parser(classes)
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return p


DEFAULTS_ENV = "ITERTRAIN_DEFAULTS"  # a config file under every command line (the docs' test sets small sizes so)


def parse(argv: list[str], prog: str | None = None) -> Config:
    if argv and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
        argv = [*config_file_args(argv[0]), *argv[1:]]
    helping = any(a in ("-h", "--help") for a in argv)
    given = {} if helping else given_flags(argv)
    defaults = config_file_args(os.environ[DEFAULTS_ENV]) if os.environ.get(DEFAULTS_ENV) else []
    from_defaults = {} if helping or not defaults else given_flags(defaults)  # applied where they mean something
    defaulted = set(from_defaults) - set(given)
    argv, given = [*defaults, *argv], {**from_defaults, **given}
    record = settings.recorded(given)
    carry = settings.carried(record, given)
    argv = [*flag_words(carry), *argv]
    if not any(a.startswith("--disable_tqdm") for a in argv):
        # Progress bars only where someone watches them: a terminal (a log file gets no \r lines).
        argv = [*argv, "--disable_tqdm", str(not sys.stderr.isatty()).lower()]
    if not helping and not any(a == "--output_dir" or a.startswith("--output_dir=") for a in argv):
        # HF would quietly default to ./trainer_output: an experiment directory is never guessed.
        raise UsageError("--output_dir is required (the experiment directory)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not any(a.startswith("--use_cpu") for a in argv):
        import torch

        if not torch.cuda.is_available():
            # torchrun on a machine without an accelerator: accelerate only forms a gloo process
            # group when told the run is on CPU (else every rank thinks it is alone).
            argv = [*argv, "--use_cpu", "true"]
    if any(a.startswith("--num_train_epochs") for a in argv) and not any(a.startswith("--max_steps") for a in argv):
        argv = [*argv, "--max_steps", "-1"]  # epochs asked for: the demo's step default must not override them
    try:
        try:
            it, train, peft, obj, mirror, *own = parser(prog).parse_args_into_dataclasses(args=argv)
        except (ValueError, TypeError, ImportError) as e:  # TrainingArguments.__post_init__ checks
            raise UsageError(str(e).strip().splitlines()[0]) from None
        cfg = validate(it, train, peft, obj, own_arguments(own), mirror)
        return settle(cfg, record, given, carry, defaulted)
    except Exception:
        # TrainingArguments made transformers' global DeepSpeed config live: a refused one must not
        # leave it, or this process's next from_pretrained would start a ZeRO-3 init.
        unset_hf_deepspeed_config()
        raise


def settle(cfg: Config, record: dict, given: dict, carry: dict, defaulted: set) -> Config:
    """`cfg` against the experiment's record (a resume's): a defining change refused unless asked for,
    a flag without what it needs refused; records what was given and carried."""
    # a recorded flag that a change on purpose left without meaning (--dpo_beta once the objective is
    # sft) is not carried on, nor is a default of ITERTRAIN_DEFAULTS that means nothing in this run
    idle = needs.unused(cfg, {**carry, **dict.fromkeys(defaulted)})
    if record and (why := settings.refusal(record, resolved(cfg), {k: v for k, v in given.items() if k not in idle},
                                           cfg.it.change_experiment)):
        raise UsageError(why)
    if cfg.it.change_experiment and not record:
        raise UsageError("--change_experiment true: only a resume of an experiment with recorded settings can "
                         "change what defines it; drop it")
    needs.check(cfg, set(given) - defaulted)
    kept = {k: v for k, v in {**given, **carry}.items() if k not in settings.PER_RUN and k not in idle}
    return dataclasses.replace(cfg, given=kept, carried={k: v for k, v in carry.items() if k not in idle})


def own_arguments(parsed: list | None = None) -> dict:
    """Each objective's own Arguments by its name: `parsed` in registry order, or the defaults."""
    declared = {name: c.Arguments for name, c in objectives.classes().items() if c.Arguments is not None}
    if parsed is None:
        return {name: cls() for name, cls in declared.items()}
    return dict(zip(declared, parsed, strict=True))


def validate(it: IterArguments, train: IterTrainingArguments, peft: PeftArguments | None = None,
             obj: ObjectiveArguments | None = None, own: dict | None = None,
             mirror: MirrorArguments | None = None) -> Config:
    if not train.output_dir:
        raise UsageError("--output_dir is required (the experiment directory)")
    ckpt_sel = parse_checkpoint_selector(it.resume_from)
    iter_sel = parse_iteration_selector(it.resume_from_iteration)
    if it.num_iterations < 1:
        raise UsageError(f"--num_iterations must be at least 1, got {it.num_iterations}")
    if min(it.num_gold, it.num_prompts, it.num_eval) < 0 or it.num_gold + it.num_prompts < 1:
        raise UsageError("--num_gold, --num_prompts and --num_eval must be >= 0, and some training data is needed")
    if it.max_new_tokens is None:
        it.max_new_tokens = 8 if builtin_task(it) else 512
    if it.verifier_workers is None:  # a --task plug-in brings its own verifier, which may hang
        plugin = it.task != "addition" and not it.train_prompts
        it.verifier_workers = 0 if it.verifier in verifiers.SAFE and not plugin else 2
    if it.verifier_workers < 0 or it.verifier_timeout <= 0:
        raise UsageError("--verifier_workers must be >= 0 and --verifier_timeout > 0")
    if it.num_samples < 1 or it.max_per_prompt < 1 or it.generation_batch_size < 1 or it.max_new_tokens < 1:
        raise UsageError("--num_samples, --max_per_prompt, --generation_batch_size and --max_new_tokens must be >= 1")
    if it.generation_shard_size is None:
        it.generation_shard_size = math.ceil(DEFAULT_SHARD_PROMPTS / it.generation_batch_size) * it.generation_batch_size
    elif it.generation_shard_size < 1:
        raise UsageError(f"--generation_shard_size must be >= 1, got {it.generation_shard_size}")
    elif it.generation_backend == "hf" and it.generation_shard_size % it.generation_batch_size:
        raise UsageError(f"--generation_shard_size {it.generation_shard_size} must be a multiple of "
                         f"--generation_batch_size {it.generation_batch_size} (each batch is seeded by its place "
                         "among the prompts, so a shard holds whole batches)")
    if it.vllm_enforce_eager and it.generation_backend != "vllm":
        raise UsageError("--vllm_enforce_eager needs --generation_backend vllm")
    if it.vllm_python is None:
        it.vllm_python = sys.executable
    if not 0 < it.vllm_gpu_memory_utilization <= 1:
        raise UsageError(f"--vllm_gpu_memory_utilization must be in (0, 1], got {it.vllm_gpu_memory_utilization}")
    if not it.temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {it.temperature}")
    if it.train_from not in ("previous", "base"):
        raise UsageError(f"--train_from {it.train_from!r}: use previous or base")
    if it.train_from == "base" and it.carry_optimizer_state:
        raise UsageError("--train_from base with --carry_optimizer_state is not supported (the carried "
                         "optimizer state belongs to the previous iteration's weights)")
    if train.max_steps <= 0 and train.num_train_epochs <= 0:
        raise UsageError("set --max_steps (> 0) or --num_train_epochs (> 0) for each iteration's training")
    from itertrain.runtime import stop

    it.stop_signals = stop.signal_names(it.stop_signals)
    if it.stop_after is not None:
        stop.parse_duration(it.stop_after)
    if train.enable_jit_checkpoint and "SIGTERM" not in it.stop_signals:
        raise UsageError("--enable_jit_checkpoint asks for a checkpoint on SIGTERM: itertrain does that in every "
                         "phase when SIGTERM is among --stop_signals (the default); add it there instead")
    if train.save_only_model:
        raise UsageError("--save_only_model is not supported: checkpoints must hold the full training state")
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    from itertrain import trackers

    if unknown := [r for r in train.report_to if r not in INTEGRATION_TO_CALLBACK]:
        raise UsageError(f"--report_to {unknown[0]}: not an integration HF knows (tensorboard, wandb, mlflow, "
                         f"{', '.join(sorted(set(INTEGRATION_TO_CALLBACK) - set(trackers.KINDS)))}, all or none)")
    if found := trackers.problems(train.report_to):
        raise UsageError(found[0])
    if it.tracker_log_model and not {"wandb", "mlflow"} & set(train.report_to):
        raise UsageError("--tracker_log_model logs the final model to W&B or MLflow: add --report_to wandb "
                         "and/or mlflow")
    if train.load_best_model_at_end:
        raise UsageError("--load_best_model_at_end is not supported by iterative training")
    if it.model_name is not None:
        if not os.path.isdir(it.model_name):
            raise UsageError(f"--model_name {it.model_name}: not a local directory (nothing is downloaded "
                             "from a hub; give a local HF model directory)")
        present = set(os.listdir(it.model_name))
        if "config.json" not in present:
            raise UsageError(f"--model_name {it.model_name}: no config.json (not an HF model directory)")
        if not any(f.endswith((".safetensors", ".bin", ".index.json")) for f in present):
            raise UsageError(f"--model_name {it.model_name}: no model weights (*.safetensors or *.bin)")
        if not present & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"}:
            raise UsageError(f"--model_name {it.model_name}: no tokenizer files (save the tokenizer with the model)")
    peft = peft or PeftArguments()
    adapters.validate(peft, train, it)
    obj = obj or ObjectiveArguments()
    own = own_arguments() if own is None else own
    objectives.validate(obj, train, own, it)
    validate_mirror(mirror := mirror or MirrorArguments())
    return Config(it, train, ckpt_sel, iter_sel, peft, obj, own, mirror=mirror)


def resolved(cfg: Config) -> dict:
    """Every setting of this run, as saved in the experiment directory."""
    own = {k: v for args in cfg.objective_args.values() for k, v in dataclasses.asdict(args).items()}
    return {**dataclasses.asdict(cfg.it), **dataclasses.asdict(cfg.peft), **dataclasses.asdict(cfg.obj), **own,
            **dataclasses.asdict(cfg.mirror), **cfg.train.to_dict()}
