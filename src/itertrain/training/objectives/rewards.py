"""GRPO's rewards, as TRL calls them (f(prompts, completions, **columns) -> list[float]), run so that
none can hang or crash the run.

  Verified   the task's verifier: 1.0 for a completion it accepts, else 0.0, through the run's verifier
             pool (--verifier_workers, --verifier_timeout): a timeout or an error counts as rejected
  Plugin     a --reward_funcs plug-in, in a worker process of its own: a call past --verifier_timeout
             seconds has its worker killed and replaced, and scores 0.0 (counted, as its errors are)

Each keeps the counts of what it saw since they were last taken (take()), for the trainer to sum over
ranks once per optimizer step (grpo_trainer.py).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import TimeoutError as CallTimeout

from itertrain.core.errors import UsageError
from itertrain.runtime import dist
from itertrain.tasks.pool import ERRORS, TIMEOUTS, Checker, _worker_start
from itertrain.tasks.types import import_object


def plugin(spec: str):
    """The function a --reward_funcs entry names (UsageError, one line, if it cannot be imported)."""
    try:
        fn = import_object(spec, "--reward_funcs")
    except Exception as e:  # noqa: BLE001 - TaskError, or the module's own failure at import
        raise UsageError(str(e).splitlines()[0]) from None
    if not callable(fn):
        raise UsageError(f"--reward_funcs {spec!r} is not a function")
    return fn


class Verified:
    """The verifier's verdict as a reward; counts the rollouts, accepted ones, and per prompt whether
    any of its completions was accepted (pass@k)."""

    __name__ = "verifier"  # TRL's metric names: rewards/verifier/mean

    def __init__(self, cfg, task):
        from itertrain.phases import samples

        self.task = task
        self.checker: Checker = samples.checker(cfg, task)
        self.counts = {"samples/generated": 0, "samples/accepted": 0, "verifier/timeouts": 0, "verifier/errors": 0}
        self.seen: list[tuple[int, bool]] = []  # (prompt index, accepted), since take()

    def __call__(self, prompts, completions, index, **columns) -> list[float]:
        examples = [self.task.train_prompts[i] for i in index]
        verdicts, problems = self.checker.check(examples, [[c] for c in completions])
        accepted = [row[0] for row in verdicts]
        self.counts["samples/generated"] += len(accepted)
        self.counts["samples/accepted"] += sum(accepted)
        self.counts["verifier/timeouts"] += problems[TIMEOUTS]
        self.counts["verifier/errors"] += problems[ERRORS]
        self.seen += list(zip(index, accepted, strict=True))
        return [1.0 if a else 0.0 for a in accepted]

    def take(self) -> dict:
        out = {**self.counts, "seen": self.seen}
        self.counts = dict.fromkeys(self.counts, 0)
        self.seen = []
        return out

    def close(self) -> None:
        self.checker.close()


class Plugin:
    """A --reward_funcs plug-in, called in a worker process with TRL's arguments (the prompts, the
    completions, and the columns completion_ids, index and answer)."""

    def __init__(self, spec: str, timeout: float):
        self.fn, self.spec, self.timeout = plugin(spec), spec, timeout
        self.__name__ = spec.rpartition(":")[2]
        self.pool = None
        self.told = False
        self.counts = {"rewards/timeouts": 0, "rewards/errors": 0}

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        if self.pool is None:
            from pebble import ProcessPool

            self.pool = ProcessPool(max_workers=1, context=multiprocessing.get_context("spawn"),
                                    initializer=_worker_start, initargs=(os.getpid(),))
        sent = {k: v for k, v in columns.items() if k in ("completion_ids", "index", "answer")}
        call = self.pool.schedule(self.fn, args=(list(prompts), list(completions)), kwargs=sent, timeout=self.timeout)
        try:
            out = list(call.result())
            if len(out) != len(completions) or not all(v is None or isinstance(v, (int, float)) for v in out):
                raise TypeError(f"returned {len(out)} values for {len(completions)} completions (a list of floats "
                                "or None, one per completion, is expected)")
            return [None if v is None else float(v) for v in out]
        except CallTimeout:
            kind, what = "rewards/timeouts", f"took more than {self.timeout:g} s"
        except Exception as e:  # noqa: BLE001 - the plug-in's own failure: counted
            text = str(e).strip()
            kind, what = "rewards/errors", f"raised {type(e).__name__}: {text.splitlines()[0] if text else ''}"
        self.counts[kind] += 1
        if not self.told:
            self.told = True
            dist.logger().warning(f"⚠️  --reward_funcs {self.spec} {what}: its rewards count as 0.0; later ones are "
                                  "only counted (reward_timeouts, reward_errors in the metrics)")
        return [0.0] * len(completions)

    def take(self) -> dict:
        out = dict(self.counts)
        self.counts = dict.fromkeys(self.counts, 0)
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            self.pool.join()
            self.pool = None
