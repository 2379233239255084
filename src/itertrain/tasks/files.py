"""Task data from local files, each row a prompt and an answer.

JSONL is read here, so that an error names its file and line; JSON, CSV, parquet and a
`save_to_disk` directory go through the `datasets` library (local only: nothing is downloaded).
A prompt is a string or a list of chat messages ([{"role": "user", "content": ...}, ...]); chat.py
turns either into the text the model sees. --prompt_field and --answer_field name the columns.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

from itertrain.core.errors import TaskError
from itertrain.tasks.types import Example

BUILDERS = {".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read(path: str, *, prompt_field: str = "prompt", answer_field: str = "answer") -> list[Example]:
    out = [_example(where, row, prompt_field, answer_field) for where, row in _rows(path)]
    if not out:
        raise TaskError(f"{path}: no examples (empty {'directory' if os.path.isdir(path) else 'file'})")
    return out


def _rows(path: str):
    """(where, row) for each row: `file:line` for JSONL, `file: row N` otherwise."""
    if not os.path.exists(path) and re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not path.startswith("."):
        raise TaskError(f"{path}: no such file or directory, and hub names are not read (nothing is downloaded at "
                        f"run time): save it locally first, e.g. python -c \"import datasets; datasets.load_dataset("
                        f"'{path}', split='train').to_json('train.jsonl')\", then give train.jsonl")
    if path.endswith(".jsonl"):
        yield from _jsonl(path)
        return
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isdir(path) and ext not in BUILDERS:
        if not os.path.exists(path):
            raise TaskError(f"{path}: cannot read (No such file or directory)")
        raise TaskError(f"{path}: not a .jsonl, .json, .csv or .parquet file, nor a datasets save_to_disk directory")
    for n, row in enumerate(_dataset(path, ext), 1):
        yield f"{path}: row {n}", row


def _jsonl(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{n}: not JSON ({e.msg})") from None


def _dataset(path: str, ext: str) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    try:
        if os.path.isdir(path):
            data = datasets.load_from_disk(path)
        else:
            with tempfile.TemporaryDirectory(prefix="itertrain-data-") as cache:  # no cache left behind
                data = datasets.load_dataset(BUILDERS[ext], data_files=os.path.abspath(path), split="train",
                                             cache_dir=cache)
                return data.to_list()
    except Exception as e:  # noqa: BLE001 - whatever the reader says is the reason, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TaskError(f"{path}: cannot read it with datasets ({type(e).__name__}: {first[:300]})") from None
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise TaskError(f"{path}: a DatasetDict with splits {', '.join(data)}: give one split's directory")
        data = next(iter(data.values()))
    return data.to_list()


def _example(where: str, row, prompt_field: str, answer_field: str) -> Example:
    if not isinstance(row, dict):
        raise TaskError(f"{where}: not an object with a \"{prompt_field}\" field")
    prompt = row.get(prompt_field)
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                 and isinstance(m.get("content"), str) for m in prompt):
            raise TaskError(f"{where}: \"{prompt_field}\" is a list, but not of chat messages "
                            "({\"role\": ..., \"content\": ...})")
        messages = tuple((m["role"], m["content"]) for m in prompt)
        prompt = None
    elif isinstance(prompt, str) and prompt:
        messages = None
    else:
        raise TaskError(f"{where}: needs a non-empty string field \"{prompt_field}\" (or a list of chat messages)")
    answer = row.get(answer_field, "")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer:
        raise TaskError(f"{where}: needs a non-empty string field \"{answer_field}\"")
    return Example(prompt or "", answer, messages=messages)
