"""Several processes under torchrun: rank-0 logging, barriers and agreeing on one answer.

Everything goes through accelerate's PartialState (gloo on CPU, nccl on GPU), the same state the
HF Trainer uses, so there is one process group. Single-process runs pay nothing.
"""

from __future__ import annotations

import sys

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object


def state() -> PartialState:
    return PartialState()


def is_main() -> bool:
    return state().is_main_process


def world_size() -> int:
    return state().num_processes


def log0(msg: str = "", *, err: bool = False) -> None:
    """The one way to print: rank 0 only, flushed (so output survives os._exit)."""
    if is_main():
        stream = sys.stderr if err else sys.stdout
        print(msg, file=stream, flush=True)


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


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    return gather_object([obj])
