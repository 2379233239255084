"""Named crash points for tests: kill the process where a real crash could, to prove recovery.

ITERTRAIN_FAILPOINTS="train.step=25,checkpoint.write" makes the process die at once with
os._exit(137), as a kill -9 would: no finally blocks, no flushing, no atexit.
  train.step=N        after global step N, once every save of a step <= N has committed
  checkpoint.write[=N] half way through committing a checkpoint (of global step N, or the first)
  checkpoint.background=N
                      in the background write of checkpoint N (async save), once the training
                      thread has taken a step past it
  iteration.write[=K] half way through committing iteration model K (or the first)
  generate=K[@R]      after K generated samples (by this rank, in this generate phase)
  shard.write=F       half way through committing the generate phase's shard that starts at prompt F
  pairs.write=K       half way through committing iteration K's preference pairs (--objective dpo)
  universal.write=N   half way through committing checkpoint-N.universal (DeepSpeed's conversion for
                      another number of processes)
  file.event=N[:torn|:enospc][@R]
                      at the N-th file event under --output_dir (open for write, rename, mkdir,
                      remove, rmdir, rmtree, symlink, truncate; Python audit events, so before the
                      operation happens); with :torn, the file last opened for writing is first cut
                      to half its size (a write that did not reach the disk); with :enospc, the
                      process does not die: that write and every later one fails with ENOSPC, as
                      on a full disk. @R: only on rank R (default: every rank counts its own events)
  mirror.event=N      before the N-th write to the mirror (an upload's file or manifest, a copy, a
                      delete), in the thread that uploads; logged to ITERTRAIN_CHAOS_LOG.mirror
  load.fail=NAME@R     verifying artifact NAME fails on rank R only (as a bad local disk would)
  view.hide=NAME@R     rank R's listing of --output_dir lacks NAME (ranks whose views differ)
  signal.POINT=V[:SIG][@R]
                      the process sends itself SIGTERM (or SIG) at POINT with value V, through the
                      real handler: train.step=N (global step), generate=B (after generation
                      round B, from 1), verify=I (prompt I, from 1), evaluate=B (eval batch B, from
                      1), iteration.write=K / checkpoint.write=N / samples.write=K (half way through
                      that commit), iteration=K (as iteration K starts)
A bare name matches any value. ITERTRAIN_CHAOS_LOG=path appends every file event to `path`
(number, event, path, seconds since the process started).
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time

ENV = "ITERTRAIN_FAILPOINTS"
PROGRESS = ".itertrain.progress.json"  # progress.py's record: written when the clock says, not a fixed event
# The mirror's index and its upload snapshots: written as uploads finish, when the store answers
# (the mirror's own crash points are its writes to the store: mirror.event)
NOT_EVENTS = (PROGRESS, ".itertrain.mirror.json", f".staging{os.sep}mirror")
TRACKER_DIRS = ("wandb",)  # W&B's local files (its client and service write when they choose): not events
LOG_ENV = "ITERTRAIN_CHAOS_LOG"
_PATH_EVENTS = {"os.rename": 0, "os.remove": 0, "os.mkdir": 0, "os.rmdir": 0, "shutil.rmtree": 0,
                "os.symlink": 1, "os.truncate": 0}


def _armed() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in os.environ.get(ENV, "").split(","):
        item = item.strip()
        if item:
            name, _, value = item.partition("=")
            out[name.strip()] = value.strip() or None
    return out


def _rank() -> str:
    return os.environ.get("RANK", "0")  # set by torchrun and accelerate launch


def on_this_rank(name: str) -> str | None:
    """The value of failpoint `name` (`VALUE@R`) if it is armed for this process's rank."""
    v = _armed().get(name)
    if v is None:
        return None
    value, _, rank = v.partition("@")
    return value if not rank or rank == _rank() else None


def matches(name: str, value: int | None = None, *, at_least: bool = False) -> bool:
    """Whether `name` is armed for `value` (or for any value; with at_least, for any armed value
    <= `value`, for counters that move in steps)."""
    armed = _armed()
    if name not in armed:
        return False
    if armed[name] is None:
        return True
    want = on_this_rank(name)  # None: armed for another rank
    return want is not None and value is not None and (str(value) == want or (at_least and value >= int(want)))


def hit(name: str, value: int | None = None, *, at_least: bool = False) -> None:
    """Die here if `name` is armed for `value` (see matches)."""
    if matches(name, value, at_least=at_least):
        sys.stdout.flush()
        sys.stderr.write(f"itertrain: failpoint {name}={value} hit: exiting with 137\n")
        sys.stderr.flush()
        os._exit(137)


def mirror_event(n: int, what: str, rel: str) -> None:
    """The mirror's n-th write (store.py): logged for the chaos harness, and a crash point."""
    if log_path := os.environ.get(LOG_ENV):
        with open(f"{log_path}.mirror", "a", encoding="utf-8") as f:
            f.write(f"{n}\tmirror.{what}\t{rel}\n")
    hit("mirror.event", n)


def send_signal(point: str, value: int) -> None:
    """Armed `signal.POINT=V[:SIG]` for this value and rank: send this process the signal (a stop
    request at an exact point, for tests)."""
    spec = on_this_rank(f"signal.{point}")
    if spec is None:
        return
    want, _, name = spec.partition(":")
    if want == str(value):
        import signal

        os.kill(os.getpid(), getattr(signal, name or "SIGTERM"))


def install_file_events(root: str) -> None:
    """Arm `file.event` and the event log for paths under `root` (tests and the chaos harness)."""
    global _active
    spec = on_this_rank("file.event")  # None here too when aimed at another rank
    log_path = os.environ.get(LOG_ENV)
    _active = None  # an earlier run's hook in this process (in-process callers) counts no more
    if spec is None and not log_path:
        return
    target, _, mode = (spec or "0").partition(":")
    target_n, torn, full_disk = int(target), mode == "torn", mode == "enospc"
    root = os.path.realpath(root) + os.sep
    state = {"n": 0, "last_written": None}
    # The background checkpoint writer (async_save.py) has events too; re-entered by the truncate below.
    lock = threading.RLock()
    if log_path:
        import psutil  # an accelerate dependency

        born = psutil.Process().create_time()
    if log_path and _rank() != "0":
        log_path = f"{log_path}.rank{_rank()}"

    def hook(event, args):
        if event == "open":
            path, mode_, flags = args
            if not (isinstance(mode_, str) and any(c in mode_ for c in "wax+")) and not (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return
        elif event in _PATH_EVENTS:
            path = args[_PATH_EVENTS[event]]
        else:
            return
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if not isinstance(path, (str, os.PathLike)):
            return
        full = os.path.realpath(os.fspath(path))
        if not full.startswith(root) or os.path.basename(full).startswith(PROGRESS):
            return
        if os.path.relpath(full, root).startswith(NOT_EVENTS):
            return
        if os.path.relpath(full, root).split(os.sep)[0] in TRACKER_DIRS:
            return
        with lock:
            counted(event, full)

    def counted(event, full):
        state["n"] += 1
        if log_path:
            with open(log_path, "a", encoding="utf-8") as f:  # outside root: not an event itself
                f.write(f"{state['n']}\t{event}\t{os.path.relpath(full, root)}\t{time.time() - born:.3f}\n")
        if full_disk and state["n"] >= target_n and event in ("open", "os.mkdir"):
            raise OSError(errno.ENOSPC, "No space left on device (injected by file.event)", full)
        if state["n"] == target_n and not full_disk:
            victim = state["last_written"]
            if torn and victim and os.path.isfile(victim):
                os.truncate(victim, os.path.getsize(victim) // 2)
            sys.stderr.write(f"itertrain: failpoint file.event={spec} hit at {event} {full}: exiting with 137\n")
            sys.stderr.flush()
            os._exit(137)
        if event == "open":
            state["last_written"] = full

    _active = hook
    _install_once()


_active = None  # the hook of the newest install_file_events; audit hooks cannot be removed, so one
_installed = False  # dispatcher is added per process and forwards to it


def _dispatch(event, args):
    if _active is not None:
        _active(event, args)


def _install_once() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_dispatch)
        _installed = True
