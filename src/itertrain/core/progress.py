"""Where a run is right now, for `itertrain status --watch`: `.itertrain.progress.json` in the
experiment, rewritten by rank 0 (to a temporary file, then renamed) at most every few seconds.

It is not an artifact: nothing plans from it, a crash may leave it stale (its pid then names no live
process), and the failpoints' file events leave it out, since when it is written follows the clock.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from datetime import datetime, timezone

from itertrain.core.failpoints import PROGRESS as NAME  # (left out of the file events there)
from itertrain.core.manifest import utc_iso

EVERY = 2.0  # seconds between two writes, at most one

_current: Progress | None = None


class Progress:
    def __init__(self, output_dir: str, num_iterations: int):
        self.path = os.path.join(output_dir, NAME)
        self.state = {"pid": os.getpid(), "num_iterations": num_iterations, "started": utc_iso()}
        self.written = 0.0

    def note(self, force: bool = False, **fields) -> None:
        """Update fields (iteration, phase, global_step, done, total, loss, ...); written now if
        `force` or the last write is older than EVERY seconds."""
        new_iteration = "iteration" in fields and fields["iteration"] != self.state.get("iteration")
        if new_iteration:
            self.state["iteration_started"] = utc_iso()
        if new_iteration or fields.get("phase") not in (None, self.state.get("phase")):
            self.state.update(done=None, total=None, unit=None)  # a new phase counts its own progress
        self.state.update(fields, updated=utc_iso())
        if self.written != float("inf") and (force or time.monotonic() - self.written >= EVERY):
            tmp = f"{self.path}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(self.state, f)
                os.replace(tmp, self.path)
            except OSError as e:  # (a full disk stops the run at its next commit, with the reason)
                self.written = float("inf")  # no more tries, one warning
                warnings.warn(f"itertrain: cannot record progress in {self.path} ({e.strerror}): --watch will "
                              "not see this run", stacklevel=2)
                return
            self.written = time.monotonic()


def start(output_dir: str, num_iterations: int) -> None:
    """Rank 0, as the iterations begin."""
    global _current
    _current = Progress(output_dir, num_iterations)


def finish() -> None:
    """The iterations are all done."""
    global _current
    note(True, phase="finished")
    _current = None


def note(force: bool = False, **fields) -> None:
    """Record progress (a no-op on other ranks and outside a run)."""
    if _current is not None:
        _current.note(force, **fields)


def alive(pid) -> bool:
    """Whether the process that wrote the record still runs (on this machine)."""
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def seconds_since(iso: str | None, now: datetime | None = None) -> float | None:
    if not iso:
        return None
    return ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(iso)).total_seconds()


def describe(state: dict | None, per_iteration: list[float], now: datetime | None = None,
             stopped: bool = False) -> list[str]:
    """Lines for --watch: what the run is doing, its step and loss, the time per iteration and an
    estimate of the time left (from the finished iterations' times). `stopped`: the last run stopped
    on request (its stop record is there)."""
    if not state:
        return ["now: no run has recorded progress here yet"]
    age = seconds_since(state.get("updated"), now)
    if state.get("phase") == "finished":
        return [f"now: no run is active (the last one finished at {state.get('updated')})"]
    if not alive(state.get("pid")):
        how = "stopped" if stopped else "ended without finishing (killed or crashed)"
        return [f"now: no run is active (the last one {how} in the {state.get('phase')} phase; last heard from "
                f"at {state.get('updated')})"]
    k, n = state.get("iteration"), state.get("num_iterations")
    what = f"now: iteration {k} (of 0-{(n or 0) - 1}), {state.get('phase')}"
    if state.get("total"):
        what += f": {state.get('done')}/{state['total']} {state.get('unit', '')}".rstrip()
    if state.get("global_step") is not None:
        what += f", global step {state['global_step']}"
    if state.get("loss") is not None:
        what += f", loss {state['loss']:.4f}"
    lines = [f"{what} (updated {age:.0f} s ago; the plan above is for when this run, pid {state['pid']}, "
             "stops)" if age is not None else what]
    if per_iteration:
        mean = sum(per_iteration) / len(per_iteration)
        elapsed = seconds_since(state.get("iteration_started"), now) or 0.0
        left = max(mean - elapsed, 0.0) + mean * max((n or 0) - (k or 0) - 1, 0)
        lines.append(f"time: {mean:.0f} s per iteration (mean of {len(per_iteration)}), this one {elapsed:.0f} s "
                     f"so far, about {_duration(left)} left")
    return lines


def _duration(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h} h {rest // 60} min" if h else f"{rest // 60} min {rest % 60} s" if rest >= 60 else f"{rest} s"
