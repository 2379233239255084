"""Greedy accuracy on held-out prompts, batched through HF generate."""

from __future__ import annotations

import torch

from itertrain.core import failpoints
from itertrain.phases.generate import complete
from itertrain.runtime import dist
from itertrain.tasks.pool import ERRORS, TIMEOUTS, Checker


@torch.no_grad()
def greedy_accuracy(model, tokenizer, examples, check: Checker, batch_size: int = 256, max_new_tokens: int = 8,
                    should_stop=None) -> tuple[float, dict] | None:
    """The share of examples answered correctly, and the verifier's problems counted (a problem is a
    wrong answer); None if `should_stop()` said so between batches (the evaluation is abandoned: it
    is redone on resume)."""
    problems = {TIMEOUTS: 0, ERRORS: 0}
    if not examples:
        return 0.0, problems
    was_training = model.training
    model.eval()
    correct = 0
    starts = range(0, len(examples), batch_size)
    for n, i in enumerate(dist.progress(starts, desc="evaluate"), 1):
        failpoints.send_signal("evaluate", n)
        if should_stop is not None and should_stop():
            model.train(was_training)
            return None
        chunk = examples[i:i + batch_size]
        texts = complete(model, tokenizer, [e.prompt for e in chunk], do_sample=False, max_new_tokens=max_new_tokens)
        verdicts, counted = check.check(chunk, [[t] for t in texts], first=i)
        correct += sum(row[0] for row in verdicts)
        for key, n in counted.items():
            problems[key] += n
    model.train(was_training)
    return correct / len(examples), problems
