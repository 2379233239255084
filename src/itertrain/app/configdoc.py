"""docs/config.md, generated from the argument dataclasses: `python -m itertrain.app.configdoc > docs/config.md`.

A test compares the committed page with this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

from transformers import TrainingArguments

from itertrain.app.config import NOT_RESULTS, IterArguments, IterTrainingArguments
from itertrain.training import objectives
from itertrain.training.adapters import PeftArguments
from itertrain.training.objectives import ObjectiveArguments


def _type(dc, f: dataclasses.Field) -> str:
    # From the annotations, not f.type: HfArgumentParser rewrites f.type in place when it is built.
    hint = typing.get_type_hints(dc)[f.name]
    text = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    return text.replace(" | ", " or ")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "(none)" if f.default is None else f"`{f.default}`"
    return "(computed)"


def _row(dc, f: dataclasses.Field) -> str:
    help_ = " ".join(f.metadata.get("help", "").split()).replace("|", "\\|")
    return f"| `--{f.name}` | {_type(dc, f)} | {_default(f)} | {help_} |"


def render() -> str:
    ours = dataclasses.fields(IterArguments)
    hf_names = {f.name for f in dataclasses.fields(TrainingArguments)}
    overridden = [f for f in dataclasses.fields(IterTrainingArguments) if f.name in IterTrainingArguments.__dict__]
    others = sorted(hf_names - {f.name for f in overridden} - {"_n_gpu"})
    lines = [
        "# Configuration reference",
        "",
        "Generated from the argument dataclasses by `python -m itertrain.app.configdoc > docs/config.md`; a test",
        "fails when this page and the code disagree. Every setting is a command-line flag and a key of a",
        "config file (`train_iterative.py config.yaml [--flag value ...]`, flags given on the command line",
        "override the file). The resolved configuration is saved as `<output_dir>/itertrain_config.json`.",
        "",
        "## itertrain's own settings",
        "",
        "| flag | type | default | what it does |",
        "|---|---|---|---|",
        *(_row(IterArguments, f) for f in ours),
        "",
        "## LoRA and other PEFT adapters",
        "",
        "The flags of TRL's `ModelConfig`, built with `peft` (docs/peft.md).",
        "",
        "| flag | type | default | what it does |",
        "|---|---|---|---|",
        *(_row(PeftArguments, f) for f in dataclasses.fields(PeftArguments)),
        "",
        "## Objectives: sft and iterative DPO",
        "",
        "What each iteration trains with; dpo through TRL's `DPOTrainer` (docs/objectives.md).",
        "",
        "| flag | type | default | what it does |",
        "|---|---|---|---|",
        *(_row(ObjectiveArguments, f) for f in dataclasses.fields(ObjectiveArguments)),
        *(_row(dc, f) for dc in objectives.argument_classes() for f in dataclasses.fields(dc)),
        "",
        "## Hugging Face TrainingArguments with itertrain's defaults",
        "",
        "`--max_steps` and `--num_train_epochs` apply to each iteration.",
        "",
        "| flag | type | default | what it does |",
        "|---|---|---|---|",
        *(_row(IterTrainingArguments, f) for f in overridden),
        "",
        "## Every other Hugging Face TrainingArguments option",
        "",
        "Accepted as Hugging Face documents it (`transformers.TrainingArguments`):",
        "",
        ", ".join(f"`--{n}`" for n in others),
        "",
        "## Settings a resume may change without a warning",
        "",
        "Resuming with a setting that differs from the one the experiment was started with prints a",
        "warning naming each difference (also in the `--dry_run` plan's `warnings`), except for these,",
        "which do not change what is computed:",
        "",
        ", ".join(f"`{n}`" for n in sorted(NOT_RESULTS)),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
