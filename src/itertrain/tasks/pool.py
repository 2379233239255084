"""A verifier run so that it cannot hang or crash the run.

With workers (`--verifier_workers N`, the default for `math`, `regex:` and plug-ins), each call runs
in a pool of N processes (pebble: a call past `--verifier_timeout` seconds has its worker killed
and replaced). Without (`exact`, `numeric` and `gsm8k`, pure string work, by default), calls run in
this process. Either way, a timeout, an exception or a worker that died counts as "rejected", is
counted (`verifier_timeouts`, `verifier_errors`) and logged once with the prompt's index;
`--strict_verifier` makes it a one-line error instead. Verdicts come back in prompt order whatever
order the workers finish in, so the samples kept never depend on the pool.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from concurrent.futures import TimeoutError as CallTimeout
from concurrent.futures.process import BrokenProcessPool

from itertrain.core import failpoints
from itertrain.core.errors import TaskError
from itertrain.runtime import stop

TIMEOUTS, ERRORS = "verifier_timeouts", "verifier_errors"


class Abandoned(Exception):
    """Verification was left for a stop request; the reason is the message."""


class Checker:
    def __init__(self, fn, name: str, *, workers: int = 0, timeout: float = 10.0, strict: bool = False,
                 log=print):
        self.fn, self.name, self.workers, self.timeout, self.strict, self.log = fn, name, workers, timeout, strict, log
        self.pool = None
        self.told = False

    def check(self, prompts: list, completions: list[list[str]], first: int = 0,
              should_stop=None) -> tuple[list[list[bool]], dict]:
        """Every completion's verdict, and the problems counted ({TIMEOUTS: n, ERRORS: m}).
        `should_stop()` is asked before each prompt: a stop request abandons the verdicts."""
        counts = {TIMEOUTS: 0, ERRORS: 0}
        pairs = list(zip(prompts, completions, strict=True))
        calls = [[self._schedule(ex, text) for text in outs] for ex, outs in pairs] if self.workers else None
        try:
            verdicts = []
            for i, (ex, outs) in enumerate(pairs):
                failpoints.send_signal("verify", first + i + 1)
                if should_stop is not None and (reason := should_stop()):
                    raise Abandoned(reason)
                row = []
                for j, text in enumerate(outs):
                    try:
                        row.append(self._verdict(calls[i][j] if calls else None, ex, text, j, first + i, counts,
                                                 should_stop, again=True))
                    except BrokenProcessPool:
                        # pebble breaks the whole pool when a worker dies before its task's start reached
                        # it (a loaded machine): a new pool for this call and every later one, once
                        calls = self._reschedule(pairs, calls, i, j)
                        row.append(self._verdict(calls[i][j], ex, text, j, first + i, counts, should_stop))
                verdicts.append(row)
        except BaseException:
            for call in (c for row in calls or [] for c in row):
                call.cancel()
            raise
        return verdicts, counts

    def _schedule(self, ex, text):
        if self.pool is None:
            from pebble import ProcessPool

            # spawn: a fork of this process (torch's threads, locks held by other threads) is not safe
            self.pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context("spawn"),
                                    initializer=_worker_start, initargs=(os.getpid(),))
        return self.pool.schedule(self.fn, args=(ex, text), timeout=self.timeout)

    def _reschedule(self, pairs: list, calls: list, i: int, j: int) -> list:
        """`calls` with completion (i, j) and every later one scheduled again, on a new pool."""
        self.close()
        for k in range(i, len(pairs)):
            ex, outs = pairs[k]
            for m in range(j if k == i else 0, len(outs)):
                calls[k][m] = self._schedule(ex, outs[m])
        return calls

    def _verdict(self, call, ex, text: str, j: int, i: int, counts: dict, should_stop=None, again=False) -> bool:
        """The verdict on one completion: from the pool's `call`, or (None) computed here. `again`: a
        broken pool is raised, for the call to be made again (else it counts as the verifier's error)."""
        try:
            return bool(self.fn(ex, text) if call is None else call.result())
        except BrokenProcessPool:
            if again:
                raise
            kind, what = ERRORS, "broke the verifier pool twice"
        except CallTimeout:
            kind, what = TIMEOUTS, f"took more than {self.timeout:g} s"
        except Exception as e:  # noqa: BLE001 - the verifier's own failure: counted, or the stop below
            kind, what = ERRORS, f"raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if should_stop is not None and (reason := should_stop()):
            raise Abandoned(reason)  # the stop signal may have reached the worker too: not the verifier's fault
        counts[kind] += 1
        where = f"on prompt {i} (sample {j}: {ex.prompt[:60]!r})"
        if self.strict:
            raise TaskError(f"{self.name} {what} {where} (--strict_verifier)")
        if not self.told:
            self.told = True
            self.log(f"⚠️  {self.name} {what} {where}: counted as rejected; later ones are only counted "
                     f"({TIMEOUTS}, {ERRORS} in the metrics)")
        return False

    def require_sendable(self) -> None:
        """The pool's workers import the verifier by name: one they cannot is refused before the run
        writes anything (else every call would fail, and every completion count as rejected)."""
        if not self.workers:
            return
        try:
            pickle.dumps(self.fn)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise TaskError(f"{self.name} cannot run in the verifier pool ({type(e).__name__}: {e}): define it "
                            "at module level, or pass --verifier_workers 0 (no timeout)") from None

    def __enter__(self) -> "Checker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            self.pool.join()
            self.pool = None


def _worker_start(parent: int) -> None:
    """A pool worker dies with the run (kill -9 included) and leaves Ctrl-C and SIGUSR1, which are
    the run's stop requests, to the run (a stop is handled there, between prompts)."""
    stop.die_with_parent(signal.SIGKILL, parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
