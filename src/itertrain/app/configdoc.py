"""docs/config.md, generated from the argument dataclasses: `python -m itertrain.app.configdoc > docs/config.md`.

A test compares the committed page with this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

from transformers import TrainingArguments

from itertrain.app import needs, settings
from itertrain.app.config import IterArguments, IterTrainingArguments
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


def _names(keys) -> str:
    return ", ".join(f"`{n}`" for n in sorted(keys))


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
        "## Flags that need another",
        "",
        "Given without what they need, these are refused in one line before anything is written (never",
        "accepted and ignored):",
        "",
        "| flags | need |",
        "|---|---|",
        *(f"| {', '.join(f'`--{n}`' for n in flags)} | {what} |" for flags, _, what in needs.rules()),
        "",
        "## What a resume takes from the experiment, and what it may change",
        "",
        "Every run records its settings in `<output_dir>/itertrain_config.json`. A resume (`--resume_from` or",
        "`--resume_from_iteration` other than `none`) takes every flag the experiment was given that the",
        "command line does not give again, so the short command continues the same experiment:",
        "",
        "    python train_iterative.py --output_dir D --resume_from auto --resume_from_iteration auto",
        "",
        "(plus `--model_name M` for your own model; `itertrain status D` prints this command, with the",
        "launcher). The banner lists what was taken from the record. A flag given that differs from the",
        "record falls in one of three groups:",
        "",
        "| group | what happens | settings |",
        "|---|---|---|",
        f"| free | {settings.FREE_WHAT} | {_names(settings.FREE - settings.PER_RUN)}; given for one run only, never "
        f"taken from the record: {_names(settings.PER_RUN)} |",
        f"| branch | {settings.BRANCH_WHAT} | every other setting (learning rate, steps, sampling, ...) |",
        f"| defining | {settings.DEFINING_WHAT} | {_names(settings.DEFINING)} |",
        "",
        "An experiment recorded before itertrain kept the flags given (no `given` in its record) takes",
        "nothing from its record: repeat its flags on the command line.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
