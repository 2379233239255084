"""The global batch across a change of the number of processes.

An experiment trains with one global batch: per-device batch x processes x accumulation steps. A
resume on another number of processes keeps it, so that every optimizer step sees the same examples
(training/order.py) and the run stays the same experiment: the accumulation changes first, the
per-device batch only where the accumulation cannot absorb the change. Where no split keeps it,
the run is refused unless --elastic_batch allow, which continues with the nearest global batch a
split can make and records it. Pure arithmetic: start-up applies it and records it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from itertrain.core.errors import UsageError

KEEP, ALLOW = "keep", "allow"


@dataclass(frozen=True)
class Batch:
    """The batch this run trains with, and the global batch of the experiment it belongs to."""

    per_device: int
    accumulation: int
    world_size: int
    target: int  # the experiment's global batch (examples per optimizer step)

    @property
    def size(self) -> int:
        return self.per_device * self.accumulation * self.world_size

    def to_json(self) -> dict:
        return {**asdict(self), "global_batch": self.size}

    @classmethod
    def from_json(cls, data) -> Batch | None:
        try:
            return cls(*(int(data[k]) for k in ("per_device", "accumulation", "world_size", "target")))
        except (TypeError, KeyError, ValueError):
            return None


def processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def split(target: int, world_size: int, per_device: int, accumulation: int) -> tuple[int, int] | None:
    """(per-device batch, accumulation) that make `target` on `world_size` processes, changing the
    accumulation first, then the per-device batch (the largest that fits, never above the given one:
    a larger one may not fit the device); None if `target` is no multiple of `world_size`."""
    if target % world_size:
        return None
    per_rank = target // world_size
    if per_device * accumulation == per_rank:
        return per_device, accumulation
    if per_rank % per_device == 0:
        return per_device, per_rank // per_device
    b = max(d for d in range(1, min(per_device, per_rank) + 1) if per_rank % d == 0)
    return b, per_rank // b


def sizes_that_keep(target: int, up_to: int = 64) -> list[int]:
    """The numbers of processes (up to `up_to`) that can keep a global batch of `target`."""
    return [w for w in range(1, min(target, up_to) + 1) if target % w == 0]


def nearest(target: int, world_size: int) -> int:
    """The global batch nearest `target` that `world_size` processes can make (ties: the smaller)."""
    lower = max(world_size, target // world_size * world_size)
    upper = lower + world_size
    return lower if target - lower <= upper - target else upper


def decide(target: int, written_by: int, world_size: int, per_device: int, accumulation: int,
           policy: str) -> tuple[Batch, str | None]:
    """This run's batch for an experiment of global batch `target` last run on `written_by`
    processes, and the line the banner shows when it differs from the flags (None when not)."""
    fits = split(target, world_size, per_device, accumulation)
    if fits is None and policy != ALLOW:
        keep = ", ".join(map(str, sizes_that_keep(target)))
        raise UsageError(
            f"{processes(world_size)} cannot keep this experiment's global batch of {target} examples per optimizer "
            f"step (it was run on {written_by}): resume on {keep} processes, or pass --elastic_batch allow to "
            f"continue with a global batch of {nearest(target, world_size)} (recorded: another experiment from here)")
    made = target if fits else nearest(target, world_size)
    b, a = fits or split(made, world_size, per_device, accumulation)
    batch = Batch(b, a, world_size, target)
    if (b, a) == (per_device, accumulation) and made == target:
        return batch, None
    how = ", ".join([*([f"per-device batch {per_device} -> {b}"] if b != per_device else []),
                     *([f"gradient accumulation {accumulation} -> {a}"] if a != accumulation else [])])
    if made != target:
        return batch, (f"batch: {processes(world_size)} cannot make the experiment's global batch of {target}: "
                       f"--elastic_batch allow continues with {made} ({how} on {processes(world_size)})")
    return batch, (f"batch: the experiment's global batch of {target} examples per step, run before on "
                   f"{processes(written_by)}, is kept on {world_size}: {how}")
