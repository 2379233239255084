"""What the verifier pool costs: the gsm8k verifier over 8,000 GSM8K-style completions (2,000 prompts
x 4 samples, the demo's phase size) in the training process and in pools of 1 and 2 workers, side by
side in one run. Prints one JSON line.

    .venv/bin/python bench/verifier_pool.py
"""

import json
import random
import time

from itertrain.tasks import Example
from itertrain.tasks.pool import Checker
from itertrain.tasks.verifiers import gsm8k


def main() -> None:
    rng = random.Random(0)
    prompts, outs = [], []
    for i in range(2000):
        n = rng.randint(1, 999)
        prompts.append(Example(f"q{i}", f"{n} apples in all.\n#### {n}"))
        outs.append([f"Adding up, {rng.randint(1, 999)}+{rng.randint(1, 999)} gives {rng.choice([n, n + 1])}.\n#### "
                     f"{rng.choice([n, n - 1])}" for _ in range(4)])
    result = {"completions": 8000}
    verdicts = None
    for workers in (0, 1, 2):
        checker = Checker(gsm8k, "gsm8k", workers=workers, timeout=10)
        started = time.perf_counter()
        got, problems = checker.check(prompts, outs)
        result[f"seconds_workers_{workers}"] = round(time.perf_counter() - started, 3)
        checker.close()
        assert problems == {"verifier_timeouts": 0, "verifier_errors": 0}
        assert verdicts is None or got == verdicts  # the same verdicts, in the same order
        verdicts = got
    result["pool_2_over_in_process"] = round(result["seconds_workers_2"] / result["seconds_workers_0"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
