"""Tasks: training prompts, held-out prompts, optional gold examples, and a verifier.

Sources: the built-in `addition`; `--task package.module:make_task` (a callable returning a Task);
or `--train_prompts` / `--eval_prompts` files (JSONL, JSON, CSV, parquet or a datasets save_to_disk
directory: files.py) with a verifier (verifiers.py). Prompts then go through the chat template
(chat.py) when the tokenizer has one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable


class TaskError(ValueError):
    """Bad task input: one line naming the file and line or the function (exit 2)."""


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


def exact(example: Example, completion: str) -> bool:
    return completion.strip() == example.answer.strip()


def numeric(example: Example, completion: str) -> bool:
    try:
        return abs(float(completion.strip()) - float(example.answer.strip())) <= 1e-6
    except ValueError:
        return False


def import_object(spec: str, flag: str):
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise TaskError(f"{flag} {spec!r}: use package.module:name")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise TaskError(f"{flag} {spec!r}: cannot import ({type(e).__name__}: {e})") from None


def read_data(path: str, it=None) -> list[Example]:
    from itertrain.tasks.files import read

    fields = {} if it is None else {"prompt_field": it.prompt_field, "answer_field": it.answer_field}
    return read(path, **fields)


def load_task(it, seed: int, tokenizer=None) -> Task:
    """The task the flags describe (`it` is config.IterArguments), its prompts rendered for
    `tokenizer` (chat.py; None: as written)."""
    from itertrain import verifiers
    from itertrain.tasks import chat

    if it.train_prompts or it.eval_prompts:
        if not (it.train_prompts and it.eval_prompts):
            raise TaskError("--train_prompts and --eval_prompts go together")
        task = Task(read_data(it.train_prompts, it), read_data(it.eval_prompts, it), verifiers.named(it.verifier),
                    name="files")
    elif it.task == "addition":
        from itertrain.tasks import addition

        task = addition.make_task(seed, num_gold=it.num_gold, num_prompts=it.num_prompts, num_eval=it.num_eval)
    else:
        make = import_object(it.task, "--task")
        try:
            task = make()
        except Exception as e:  # noqa: BLE001 - the user's function: name it and say what it raised
            raise TaskError(f"--task {it.task}: raised {type(e).__name__}: {e}") from None
        if not isinstance(task, Task):
            raise TaskError(f"--task {it.task}: returned {type(task).__name__}, not itertrain.tasks.Task")
    if it.sft_data:
        task.gold = read_data(it.sft_data, it)
    if not task.train_prompts and not task.gold:
        raise TaskError("the task has no training prompts and no gold data")
    for part, source in (("train_prompts", it.train_prompts or f"--task {it.task}"),
                         ("eval_prompts", it.eval_prompts or f"--task {it.task}"), ("gold", it.sft_data or "--sft_data")):
        setattr(task, part, chat.render(getattr(task, part), tokenizer, it.chat_template, source))
    return task
