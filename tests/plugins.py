"""Plug-in verifiers that misbehave, importable by the verifier pool's worker processes."""

import os
import time


def hang(example, completion):
    if completion == "hang":
        time.sleep(3600)
    return completion == example.answer


def crash(example, completion):
    if completion == "crash":
        os._exit(3)  # the worker dies, as a segfault in native code would kill it
    return completion == example.answer


def raises(example, completion):
    if completion == "raise":
        raise ValueError("cannot parse\nsecond line")
    return completion == example.answer


def slow_when_first(example, completion):
    """Later calls finish first: the verdicts must still come back in order."""
    time.sleep(0.3 if completion.endswith("0") else 0)
    return completion.startswith(example.answer)


def closure_task():
    """A --task plug-in whose verifier is a closure: the verifier pool cannot import it by name."""
    from itertrain.tasks import Example, Task

    def verify(example, completion):
        return completion == example.answer

    return Task([Example("1+1=", "2")], [Example("2+2=", "4")], verify, name="closure")


def flaky(example, completion):
    """gsm8k, except that some completions (fixed by their text) hang and others raise."""
    import zlib

    from itertrain.tasks.verifiers import gsm8k

    h = zlib.crc32(completion.encode())
    if h % 29 == 0:
        time.sleep(3600)
    if h % 29 == 1:
        raise ValueError("cannot parse")
    return gsm8k(example, completion)


def digits(prompts, completions, **columns):
    """A GRPO reward plug-in (TRL's signature): the share of a completion's characters that are digits,
    so that a group's rewards differ even when the verifier rejects all of them."""
    assert len(columns["index"]) == len(completions) and len(columns["answer"]) == len(completions)
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def hang_reward(prompts, completions, **columns):
    """A GRPO reward plug-in that never returns."""
    time.sleep(3600)
