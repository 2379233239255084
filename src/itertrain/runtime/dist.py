"""Several processes under torchrun: rank-0 logging, barriers and agreeing on one answer.

Everything goes through accelerate's PartialState (gloo on CPU, nccl on GPU), the same state the
HF Trainer uses, so there is one process group. Single-process runs pay nothing.
"""

from __future__ import annotations

import logging
import sys

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object


def state() -> PartialState:
    return PartialState()


def is_main() -> bool:
    return state().is_main_process


def world_size() -> int:
    return state().num_processes


class _Stdout(logging.StreamHandler):
    """Whatever sys.stdout is at the time of the record (tests and tools replace it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def progress(iterable=None, *, desc: str, total: int | None = None, initial: int = 0):
    """A progress bar on rank 0 when stderr is a terminal (starting from `initial` done); a silent
    one otherwise."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, initial=initial, leave=False,
                disable=not (is_main() and sys.stderr.isatty()))


def logger() -> logging.Logger:
    """The `itertrain` logger: rank 0 logs to stdout, one line per record, flushed at once (so
    output survives os._exit); other ranks log only errors, so no line appears once per rank."""
    log = logging.getLogger("itertrain")
    if not log.handlers:
        handler = _Stdout()  # flushes after every record
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.INFO if is_main() else logging.ERROR)
    return log


def log0(msg: str = "") -> None:
    """The one way to report progress: rank 0 only."""
    if is_main():
        logger().info(msg)


def barrier() -> None:
    if world_size() > 1:
        state().wait_for_everyone()


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def on_main(fn, *args, **kwargs):
    """fn(*args, **kwargs) run on rank 0 alone: its value on every rank, or its exception raised on
    every rank (the one way for rank 0 to decide for all)."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    result = None
    if is_main():
        try:
            result = (True, fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - raised again below, on every rank
            result = (False, e)
    ok, value = broadcast(result)
    if not ok:
        raise value
    return value


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    return gather_object([obj])


_side_group = None


def side_group():
    """A gloo process group of its own for the background checkpoint writer (async_save.py): the
    training group's collectives must stay on the training thread. Every rank must call this at the
    same point (it is collective); made once per process. None in a single process."""
    global _side_group
    if world_size() > 1 and _side_group is None:
        import torch.distributed as tdist

        _side_group = tdist.new_group(backend="gloo")
    return _side_group


def gather_on(group, obj) -> list:
    """Every rank's `obj` in rank order, over `group` (from any thread; single process: [obj])."""
    if group is None:
        return [obj]
    import torch.distributed as tdist

    out = [None] * tdist.get_world_size(group)
    tdist.all_gather_object(out, obj, group=group)
    return out


def finish() -> None:
    """Every rank leaves together and closes the process group. (A rank that exits while another
    still talks gloo can abort with "terminate called without an active exception", and torchrun
    then fails the whole run: 3 of about 14 two-rank runs on a loaded 2-core machine before this.)"""
    global _side_group
    if world_size() > 1:
        barrier()
        state().destroy_process_group()
    _side_group = None  # it belonged to the process group just destroyed
