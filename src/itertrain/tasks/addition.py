"""The built-in task: reversed-digit addition. Prompt '123+456=', answer '975' (579 reversed).

Reversed digits let a left-to-right model produce the sum from the lowest digit up, carrying as
it goes, which a tiny model learns in seconds on a CPU.
"""

from __future__ import annotations

import random

from itertrain.tasks.types import Example, Task
from itertrain.tasks.verifiers import exact


def answer(a: int, b: int) -> str:
    return str(a + b)[::-1]


def _pairs(rng: random.Random, n: int, max_digits: int, seen: set) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while len(out) < n:
        a = rng.randrange(10 ** rng.randint(1, max_digits))
        b = rng.randrange(10 ** rng.randint(1, max_digits))
        if (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def make_task(seed: int, num_gold: int = 700, num_prompts: int = 2000, num_eval: int = 500,
              max_digits: int = 2) -> Task:
    """Held-out, gold and unlabelled prompts: disjoint, fixed by the seed."""
    rng = random.Random(f"addition/{seed}")
    seen: set = set()
    held_out, gold, prompts = (_pairs(rng, n, max_digits, seen) for n in (num_eval, num_gold, num_prompts))

    def examples(pairs):
        return [Example(f"{a}+{b}=", answer(a, b)) for a, b in pairs]

    return Task(examples(prompts), examples(held_out), exact, gold=examples(gold), name="addition")
