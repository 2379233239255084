"""The built-in task: reversed-digit addition. Prompt '123+456=', answer '975' (579 reversed).

Reversed digits let a left-to-right model produce the sum from the lowest digit up, carrying as
it goes, which a tiny model learns in seconds on a CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def answer(a: int, b: int) -> str:
    return str(a + b)[::-1]


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def _pairs(rng: random.Random, n: int, max_digits: int, exclude: set) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(out) < n:
        a = rng.randrange(10 ** rng.randint(1, max_digits))
        b = rng.randrange(10 ** rng.randint(1, max_digits))
        if (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def make_splits(seed: int, num_gold: int, num_eval: int, max_digits: int = 2) -> tuple[list[Example], list[Example]]:
    """(gold training examples, held-out evaluation examples), disjoint, fixed by the seed."""
    rng = random.Random(f"addition/{seed}")
    held_out = _pairs(rng, num_eval, max_digits, set())
    gold = _pairs(rng, num_gold, max_digits, set(held_out))
    as_examples = lambda pairs: [Example(f"{a}+{b}=", answer(a, b)) for a, b in pairs]  # noqa: E731
    return as_examples(gold), as_examples(held_out)


def is_correct(example: Example, completion: str) -> bool:
    return completion.strip() == example.answer
