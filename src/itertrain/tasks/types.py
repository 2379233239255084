"""The task's types: examples, a task, a verifier's signature; and how a plug-in is named."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from itertrain.core.errors import TaskError


@dataclass(frozen=True)
class Example:
    prompt: str  # the text the model sees (rendered by the chat template, where one applies)
    answer: str  # the reference answer (verifier input); for gold examples, the training target
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs, for a chat prompt


Verifier = Callable[[Example, str], bool]


@dataclass
class Task:
    train_prompts: list[Example]  # generated for; answers are seen only by the verifier
    eval_prompts: list[Example]  # held out: greedy accuracy after each iteration
    verify: Verifier
    gold: list[Example] = field(default_factory=list)  # supervised examples (warm-up)
    name: str = "task"


def import_object(spec: str, flag: str):
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise TaskError(f"{flag} {spec!r}: use package.module:name")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise TaskError(f"{flag} {spec!r}: cannot import ({type(e).__name__}: {e})") from None


def builtin_task(it) -> bool:
    """The built-in addition task (no data files, no --task plug-in); `it`: the run's IterArguments."""
    return it.task == "addition" and not it.train_prompts
