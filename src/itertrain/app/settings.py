"""An experiment's recorded settings: what a resume takes from them, and which changes it applies,
warns about, or refuses.

Every run records its settings in <output_dir>/itertrain_config.json: the resolved values (`args`),
the flags given with their values as given (`given`: on the command line, in a config file, or
carried from the record; resolved values do not always parse back, e.g. --fsdp) and
the settings the experiment was started with (`started_with`). A resume (`--resume_from` or
`--resume_from_iteration` other than none) takes every recorded flag it is not given, so that
`--output_dir D --resume_from auto --resume_from_iteration auto` continues the same experiment. A
flag given that differs from the record is applied if it is FREE, applied and warned about (a branch
of the experiment) by default, and refused if it DEFINES the experiment, unless --change_experiment.
"""

from __future__ import annotations

import json
import os
import shlex

from itertrain.core import elastic

SAVED_CONFIG = "itertrain_config.json"

# Given for one attempt only, never taken from the record.
# --stop_after is the deadline of the job that gives it, not of the experiment.
PER_RUN = {"output_dir", "resume_from", "resume_from_iteration", "dry_run", "strict_resume", "change_experiment",
           "stop_after", "disable_tqdm", "use_cpu"}

# Expected to change between attempts; they do not change what the experiment computes: applied and
# recorded, no warning.
FREE = PER_RUN | {
    "num_iterations", "async_save", "stop_signals", "enable_jit_checkpoint", "generation_shard_size",
    "vllm_python", "vllm_gpu_memory_utilization", "verifier_workers", "report_to", "run_name", "logging_steps",
    "logging_strategy", "logging_first_step", "save_steps", "save_strategy", "save_total_limit", "log_level",
    "log_level_replica", "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_pin_memory", "hub_token", "tracker_log_model", "world_size", "mirror_to", "mirror_keep",
    "mirror_grace", "elastic_batch"}

# What the saved state means: changing one mixes two experiments (an adapter trained on another model,
# samples of another task, DPO state under an SFT run). Refused unless --change_experiment.
DEFINING = {
    "model_name", "objective", "use_peft", "peft_config", "lora_r", "lora_alpha", "lora_target_modules",
    "lora_modules_to_save", "use_rslora", "use_dora", "peft_iteration", "load_in_4bit", "load_in_8bit",
    "task", "train_prompts", "eval_prompts", "sft_data", "prompt_field", "answer_field", "chat_template",
    "verifier", "num_gold", "num_prompts", "num_eval", "seed"}

PATHS = {"model_name", "train_prompts", "eval_prompts", "sft_data", "peft_config"}

FREE_WHAT = "applied and recorded"
BRANCH_WHAT = "applied, warned in the banner and recorded: a branch of the experiment"
DEFINING_WHAT = "refused in one line naming the recorded value, unless --change_experiment true"


def group(key: str) -> str:
    return "free" if key in FREE else "defining" if key in DEFINING else "branch"


def read_json(path: str) -> dict:
    """A JSON object written by itertrain, or {} if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def saved(output_dir: str) -> dict:
    """The experiment's record, or {}."""
    return read_json(os.path.join(output_dir, SAVED_CONFIG))


def recorded(given: dict) -> dict:
    """The record a resume continues: its --output_dir's, or on a fresh machine (no record there) the
    one on its --mirror_to; {} for a run that does not resume."""
    out = given.get("output_dir")
    if not resuming(given) or not out:
        return {}
    if os.path.exists(os.path.join(out, SAVED_CONFIG)) or str(given.get("mirror_to") or "none").lower() == "none":
        return saved(out)
    from itertrain.mirror.session import remote_record

    return remote_record(given["mirror_to"], SAVED_CONFIG)


def resuming(given: dict) -> bool:
    return any(str(given.get(k, "none")).lower() != "none" for k in ("resume_from", "resume_from_iteration"))


def carried(record: dict, given: dict) -> dict:
    """{flag: value as given then} of every recorded flag a resume is not given. Epochs given without steps
    leave the recorded --max_steps behind (steps would override them)."""
    recorded = record.get("given", {})
    leave = set(given) | PER_RUN | ({"max_steps"} if "num_train_epochs" in given and "max_steps" not in given else set())
    return {k: v for k, v in recorded.items() if k not in leave} if isinstance(recorded, dict) else {}


def _same(key: str, a, b) -> bool:
    if key in PATHS and isinstance(a, str) and isinstance(b, str):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def refusal(record: dict, now: dict, given: dict, change: bool) -> str | None:
    """Why this resume may not run as given: a defining setting differs from the record (without
    --change_experiment), or --change_experiment changes none."""
    args = record.get("args", {})
    changed = [k for k in sorted(DEFINING & set(given) & set(args)) if not _same(k, args[k], now.get(k))]
    if changed and not change:
        k = changed[0]
        return (f"--{k} {now.get(k)}: this experiment was recorded with {k} = {args[k]!r}, and changing it would "
                "mix two experiments in one directory; drop the flag, or pass --change_experiment true to branch "
                "the experiment on purpose (docs/config.md)")
    if change and not changed:
        return ("--change_experiment true: no setting that defines the experiment changes (model, objective, "
                "adapter, task data, verifier, seed); drop it")
    return None


def differences(started_with: dict, now: dict) -> list[str]:
    """One line per setting that changes results and differs from how the experiment was started."""
    out = []
    for key in sorted(set(started_with) & set(now)):  # (a setting newer than the experiment: not a change)
        if key not in FREE and started_with.get(key) != now.get(key):
            out.append(f"{key}: {started_with.get(key)!r} -> {now.get(key)!r}")
    return out


def batch_target(record: dict, per_device: int, accumulation: int, world_size: int) -> tuple[int, int]:
    """(the experiment's global batch, the number of processes it last ran on) that this run keeps: the
    record's, unless this run's batch flags differ from the recorded ones (a change on purpose:
    the flags are taken as given, and the banner warns as for any branch)."""
    args = record.get("args", {})
    if not record or (args.get("per_device_train_batch_size"), args.get("gradient_accumulation_steps")) != (
            per_device, accumulation):
        return per_device * accumulation * world_size, world_size
    if prior := elastic.Batch.from_json(record.get("batch")):
        return prior.target, prior.world_size
    ran_on = record.get("world_size") or 1
    return per_device * accumulation * ran_on, ran_on


def resume_command(output_dir: str, record: dict, *extra: str) -> str:
    """The one command that resumes an experiment: its launcher, model and directory, the resume
    flags and `extra` (what the user is to change); every other setting comes from the record."""
    ws = record.get("world_size") or 1
    words = [*(["torchrun", f"--nproc_per_node={ws}"] if ws > 1 else ["python"]), "train_iterative.py"]
    if record.get("model_name"):
        words += ["--model_name", record["model_name"]]
    words += ["--output_dir", output_dir, "--resume_from", "auto", "--resume_from_iteration", "auto"]
    mirror = record.get("given", {}).get("mirror_to") or record.get("mirror_to")
    if mirror and str(mirror).lower() != "none":
        words += ["--mirror_to", mirror]  # a fresh machine has no record but the mirror's
    words += extra
    return " ".join(shlex.quote(w) for w in words)
