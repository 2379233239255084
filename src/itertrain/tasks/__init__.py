"""Tasks: training prompts, held-out prompts, optional gold examples, and a verifier.

Sources: the built-in `addition`; `--task package.module:make_task` (a callable returning a Task);
or `--train_prompts` / `--eval_prompts` JSONL files ({"prompt": ..., "answer": ...}) with
`--verifier exact|numeric|package.module:function`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Callable


class TaskError(ValueError):
    """Bad task input: one line naming the file and line or the function (exit 2)."""


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the reference answer (verifier input); for gold examples, the training target


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


def verifier(spec: str) -> Verifier:
    if spec == "exact":
        return exact
    if spec == "numeric":
        return numeric
    fn = import_object(spec, "--verifier")
    if not callable(fn):
        raise TaskError(f"--verifier {spec!r} is not callable")
    return fn


def read_jsonl(path: str, *, need_answer: bool = True) -> list[Example]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise TaskError(f"{path}:{n}: needs a non-empty string field \"prompt\"")
        answer = row.get("answer", "")
        if need_answer and (not isinstance(answer, str) or not answer):
            raise TaskError(f"{path}:{n}: needs a non-empty string field \"answer\"")
        out.append(Example(row["prompt"], str(answer)))
    if not out:
        raise TaskError(f"{path}: no examples (empty file)")
    return out


def load_task(it, seed: int) -> Task:
    """The task the flags describe (`it` is config.IterArguments)."""
    if it.train_prompts or it.eval_prompts:
        if not (it.train_prompts and it.eval_prompts):
            raise TaskError("--train_prompts and --eval_prompts go together")
        task = Task(read_jsonl(it.train_prompts), read_jsonl(it.eval_prompts), verifier(it.verifier), name="jsonl")
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
        task.gold = read_jsonl(it.sft_data)
    if not task.train_prompts and not task.gold:
        raise TaskError("the task has no training prompts and no gold data")
    return task
