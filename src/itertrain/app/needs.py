"""Flags that only mean something with another: given without it, they are refused in one line, never
accepted and ignored. One table, checked by config.parse and listed in docs/config.md."""

from __future__ import annotations

import dataclasses

from itertrain.core.errors import UsageError
from itertrain.tasks.types import builtin_task
from itertrain.training import objectives
from itertrain.training.adapters import LORA_FLAGS


def _files(c) -> bool:
    return bool(c.it.train_prompts)


def _gold(c) -> bool:  # the built-in task and a --task plug-in may bring gold data; files only with --sft_data
    return not c.it.train_prompts or bool(c.it.sft_data)


# (flags, whether the run gives them a meaning, what they need)
RULES = [
    (("verifier",), _files, "--train_prompts (the built-in task and a --task plug-in bring their own verifier)"),
    (("prompt_field", "answer_field"), lambda c: bool(c.it.train_prompts or c.it.sft_data),
     "--train_prompts or --sft_data (the columns they name)"),
    (("chat_template",), lambda c: bool(c.it.model_name), "--model_name (the built-in tokenizer has no chat template)"),
    (("num_gold", "num_prompts", "num_eval"), lambda c: builtin_task(c.it),
     "the built-in task (no --train_prompts, no --task plug-in)"),
    (("gold_iterations",), _gold, "gold data: --sft_data with --train_prompts"),
    (("vllm_python", "vllm_gpu_memory_utilization", "vllm_enforce_eager"),
     lambda c: c.it.generation_backend == "vllm", "--generation_backend vllm"),
    ((*LORA_FLAGS, "peft_iteration"), lambda c: c.peft.use_peft, "--use_peft true (or --peft_config)"),
    (("bnb_4bit_quant_type", "use_bnb_nested_quant"), lambda c: c.peft.load_in_4bit, "--load_in_4bit true"),
    (("sft_iterations",), lambda c: c.obj.objective != objectives.SFT, "an --objective other than sft"),
    (("num_samples", "max_per_prompt", "generation_batch_size", "generation_order", "generation_shard_size",
      "reuse_previous"),
     lambda c: objectives.classes()[c.obj.objective].generates or c.obj.sft_iterations > 0,
     "an iteration with a generate phase (--objective grpo samples while it trains: give --sft_iterations N)"),
    (("mirror_keep", "mirror_grace"), lambda c: bool(c.mirror.mirror_to), "--mirror_to (the mirror they govern)"),
]


def rules() -> list[tuple[tuple[str, ...], object, str]]:
    """RULES, and each objective's own flags, which need that objective."""
    own = [(tuple(f.name for f in dataclasses.fields(cls.Arguments)), _objective_is(name), f"--objective {name}")
           for name, cls in objectives.classes().items() if cls.Arguments is not None]
    return [*RULES, *own]


def _objective_is(name: str):
    """Some iteration trains with it (sft: also the --sft_iterations of another objective)."""
    return lambda c: c.obj.objective == name or (name == objectives.SFT and c.obj.sft_iterations > 0)


def unused(cfg, given) -> dict[str, str]:
    """{flag: what it needs} for each flag in `given` that the run gives no meaning."""
    return {f: needs for flags, applies, needs in rules() if not applies(cfg) for f in flags if f in given}


def check(cfg, given) -> None:
    """UsageError for the first flag in `given` that the run gives no meaning."""
    if found := unused(cfg, given):
        flag, needs = next(iter(found.items()))
        raise UsageError(f"--{flag} needs {needs}; without it the flag would be ignored")
