"""Stop requests: a signal (SIGTERM, SIGUSR1, SIGINT by default) or --stop_after asks the run to
stop at the next safe point of whatever phase it is in, commit what that phase allows, and exit
with status 75 (EX_TEMPFAIL: stopped, resumable).

The handler only records the request. Every rank asks `check` at the same points (each training
step, each generation round, each phase boundary); the request is agreed over all ranks there, so
they stop together at the same point whether the signal reached every process or only one.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import time

from itertrain.core import commit, manifest
from itertrain.core.errors import UsageError

EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: a scheduler requeues on it
RECORD = "itertrain_stop.json"  # how the last run stopped, for `itertrain status`; cleared as a run starts
STOP_AFTER = "stop_after"
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
_STOP_AFTER_CODE = 1000  # beside signal numbers, in the agreed code

_requested: int = 0  # 0, a signal number, or _STOP_AFTER_CODE
_deadline: float | None = None


class Stopped(Exception):
    """Raised on every rank at the same safe point once a stop was agreed."""

    def __init__(self, reason: str, phase: str, iteration: int, global_step: int, committed: str):
        self.record = {"reason": reason, "phase": phase, "iteration": iteration, "global_step": global_step,
                       "committed": committed, "time": manifest.utc_iso()}
        super().__init__(f"stopped ({reason}) in the {phase} phase of iteration {iteration} at global step "
                         f"{global_step}; committed: {committed}")


def signal_names(names: list[str]) -> list[str]:
    """Canonical names (SIGTERM) of --stop_signals; ValueError naming a bad one. `none`: no signal."""
    if [n.lower() for n in names] == ["none"]:
        return []
    out = []
    for n in names:
        name = n.upper() if n.upper().startswith("SIG") else f"SIG{n.upper()}"
        if name in ("SIGKILL", "SIGSTOP") or not isinstance(getattr(signal, name, None), signal.Signals):
            raise UsageError(f"--stop_signals {n!r}: not a signal that can be caught (e.g. SIGTERM SIGUSR1 SIGINT, "
                             "or none)")
        out.append(name)
    return out


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> float:
    """Seconds in `23h30m`, `90m`, `1d2h`, `45s` or a plain number of seconds; ValueError otherwise."""
    t = text.strip().lower()
    try:
        seconds = float(t)
    except ValueError:
        m = _DURATION.match(t)
        if not t or not m:
            raise UsageError(f"--stop_after {text!r}: use a duration such as 23h30m, 90m, 45s or a number of "
                             "seconds") from None
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = float(((d * 24 + h) * 60 + mi) * 60 + s)
    if not 0 < seconds < math.inf:  # (nan and inf too: a budget that never ends is no budget)
        raise UsageError(f"--stop_after {text!r}: must be a finite number of seconds, more than 0")
    return seconds


def _handler(signum, _frame) -> None:
    global _requested
    if _requested and signum == signal.SIGINT:
        os._exit(130)  # a second Ctrl-C: leave at once (every commit is atomic: nothing is torn)
    if not _requested:
        _requested = signum


_early: dict = {}  # the handlers early() replaced, until install() settles them


def early() -> None:
    """Catch the default stop signals from the first moment of a run, before the heavy imports: a
    scheduler's SIGTERM while torch imports must end in exit 75 too, not in death by the signal. The
    request is acted on at the run's first safe point."""
    for name in DEFAULT_SIGNALS:
        handler = signal.signal(getattr(signal, name), _handler)
        _early.setdefault(name, handler)


def drop_early() -> None:
    """The run never started (its flags were refused): the process's own handlers again."""
    global _requested
    for name, handler in _early.items():
        signal.signal(getattr(signal, name), handler)
    _early.clear()
    _requested = 0


def install(names: list[str], stop_after: str | None) -> dict:
    """Catch these signals as stop requests, and request one after the --stop_after duration from
    now. Returns the handlers it replaced, for `uninstall`. A signal early() caught that is not
    among `names` gets its own handler back, and one that came already is delivered to it now."""
    global _deadline, _requested
    previous = {name: _early.get(name, signal.signal(getattr(signal, name), _handler)) for name in names}
    for name in names:
        signal.signal(getattr(signal, name), _handler)
    for name in set(_early) - set(names):
        signal.signal(getattr(signal, name), _early[name])
        if _requested == getattr(signal, name):
            _requested = 0
            os.kill(os.getpid(), getattr(signal, name))
    _early.clear()
    _deadline = time.monotonic() + parse_duration(stop_after) if stop_after else None
    return previous


def uninstall(previous: dict) -> None:
    """The run is over: the process's own handlers again, and no request pending (callers that
    run several trainings in one process, such as tests)."""
    global _requested, _deadline
    for name, handler in previous.items():
        signal.signal(getattr(signal, name), handler)
    _requested, _deadline = 0, None


def _local() -> int:
    if not _requested and _deadline is not None and time.monotonic() >= _deadline:
        return _STOP_AFTER_CODE
    return _requested


def _name(code: int) -> str | None:
    if not code:
        return None
    return STOP_AFTER if code == _STOP_AFTER_CODE else signal.Signals(code).name


def requested_here() -> str | None:
    """This process's own request (no agreement): for work only rank 0 does, where the others wait."""
    return _name(_local())


def agreed() -> str | None:
    """The stop request of any rank, on every rank (collective: every rank calls it at the same point)."""
    from itertrain.runtime import dist  # (torch: not for `itertrain status`, which reads the stop record

    code = _local()
    if dist.world_size() > 1:
        import torch
        import torch.distributed as tdist

        t = torch.tensor([code], dtype=torch.int64, device=dist.state().device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        code = int(t.item())
    return _name(code)


class Place:
    """Where the run stands (iteration, global step, newest commit), for its safe points."""

    def __init__(self, iteration: int, global_step: int, committed: str):
        self.iteration, self.global_step, self.committed = iteration, global_step, committed

    def check(self, phase: str, reason: str | None = None) -> None:
        """A safe point, reached by every rank: raise Stopped on all of them if any rank was asked
        to stop (or with `reason`: a stop that rank 0 found alone and every rank now knows)."""
        if reason := reason or agreed():
            raise Stopped(reason, phase, self.iteration, self.global_step, self.committed)


def record(output_dir: str, stopped: Stopped) -> None:
    commit.atomic_write_json(os.path.join(output_dir, RECORD), stopped.record)


def clear(output_dir: str) -> None:
    """A run starts: the record is of the run before it."""
    path = os.path.join(output_dir, RECORD)
    if os.path.exists(path):
        os.remove(path)


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """In a child process (a vLLM worker before exec, a verifier pool worker at start): receive `sig`
    when the process that started it dies, kill -9 included, so that no child outlives the run; if
    that parent (`parent`, a pid) is already gone, exit now."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    if parent is not None and os.getppid() != parent:
        os._exit(0)
