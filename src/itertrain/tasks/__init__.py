"""Tasks: training prompts, held-out prompts, optional gold examples, and a verifier.

Sources: the built-in `addition`; `--task package.module:make_task` (a callable returning a Task);
or `--train_prompts` / `--eval_prompts` files (JSONL, JSON, CSV, parquet or a datasets save_to_disk
directory: files.py) with a verifier (verifiers.py, run in a pool with timeouts: pool.py). Prompts
then go through the chat template (chat.py) when the tokenizer has one. types.py holds the types;
tinymodel.py makes the built-in task's tiny Llama and its character tokenizer.
"""

from __future__ import annotations

from itertrain.core.errors import TaskError
from itertrain.tasks import addition, chat, verifiers
from itertrain.tasks.types import Example, Task, Verifier, builtin_task, import_object
from itertrain.tasks.verifiers import exact, numeric

# what a --task or --verifier plug-in imports: `from itertrain.tasks import Example, Task, exact`
__all__ = ["Example", "Task", "TaskError", "Verifier", "builtin_task", "exact", "import_object", "load_task", "numeric",
           "read_data"]


def read_data(path: str, it=None) -> list[Example]:
    from itertrain.tasks.files import read

    fields = {} if it is None else {"prompt_field": it.prompt_field, "answer_field": it.answer_field}
    return read(path, **fields)


def load_task(it, seed: int, tokenizer=None) -> Task:
    """The task the flags describe (`it` is config.IterArguments), its prompts rendered for
    `tokenizer` (chat.py; None: as written)."""
    if it.train_prompts or it.eval_prompts:
        if not (it.train_prompts and it.eval_prompts):
            raise TaskError("--train_prompts and --eval_prompts go together")
        task = Task(read_data(it.train_prompts, it), read_data(it.eval_prompts, it), verifiers.named(it.verifier),
                    name="files")
    elif it.task == "addition":
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
