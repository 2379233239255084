"""The text a model sees for a prompt. --chat_template auto: when the tokenizer has a chat template,
every prompt (a string becomes one user message) goes through it with the generation prompt, so
generation, evaluation and the training targets (the answer after it, the loss on the answer only)
share one format; none: prompts are used as written, and chat messages are refused."""

from __future__ import annotations

import dataclasses

from itertrain.core.errors import TaskError
from itertrain.tasks.types import Example

MODES = ("auto", "none")


def applies(tokenizer, mode: str) -> bool:
    return mode == "auto" and bool(getattr(tokenizer, "chat_template", None))


def render(examples: list[Example], tokenizer, mode: str, source: str) -> list[Example]:
    if not applies(tokenizer, mode):
        if any(ex.messages for ex in examples):
            why = "--chat_template none" if mode == "none" else "the tokenizer has no chat template"
            raise TaskError(f"{source}: its prompts are chat messages, but {why}: give plain string prompts, "
                            "or a model whose tokenizer has a chat template")
        return examples
    out = []
    for ex in examples:
        messages = [{"role": r, "content": c} for r, c in ex.messages] if ex.messages else \
            [{"role": "user", "content": ex.prompt}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - the template's own complaint (a role it does not know...)
            raise TaskError(f"{source}: the chat template refused a prompt ({type(e).__name__}: {e})") from None
        out.append(dataclasses.replace(ex, prompt=text))
    return out
