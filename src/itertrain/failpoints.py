"""Named crash points for tests (SPEC section 8).

ITERTRAIN_FAILPOINTS="train.step=25,checkpoint.write" makes the process die at once with
os._exit(137), as a kill -9 would: no finally blocks, no flushing, no atexit.
  train.step=N        after global step N, once every save of a step <= N has committed
  checkpoint.write[=N] half way through committing a checkpoint (of global step N, or the first)
  iteration.write[=K] half way through committing iteration model K (or the first)
  generate=K          after K generated samples
A bare name matches any value.
"""

from __future__ import annotations

import os
import sys

ENV = "ITERTRAIN_FAILPOINTS"


def _armed() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in os.environ.get(ENV, "").split(","):
        item = item.strip()
        if item:
            name, _, value = item.partition("=")
            out[name.strip()] = value.strip() or None
    return out


def hit(name: str, value: int | None = None, *, at_least: bool = False) -> None:
    """Die here if `name` is armed for `value` (or for any value; with at_least, for any armed
    value <= `value`, for counters that move in steps)."""
    armed = _armed()
    if name not in armed:
        return
    want = armed[name]
    if want is None or (value is not None and (str(value) == want or (at_least and value >= int(want)))):
        sys.stdout.flush()
        sys.stderr.write(f"itertrain: failpoint {name}={value} hit: exiting with 137\n")
        sys.stderr.flush()
        os._exit(137)
