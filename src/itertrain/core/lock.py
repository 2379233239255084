"""One writer per experiment directory: a second run on the same --output_dir refuses."""

from __future__ import annotations

import fcntl
import os

from itertrain.core.errors import LockedError

LOCK_NAME = ".itertrain.lock"


def acquire(output_dir: str):
    """Hold an exclusive flock on <output_dir>/.itertrain.lock for the life of the process (the
    kernel drops it when the process dies, kill -9 included). Returns the open file."""
    path = os.path.join(output_dir, LOCK_NAME)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise LockedError(f"{output_dir} is in use by another itertrain run (pid {holder}); "
                          "one experiment directory has one writer at a time") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
