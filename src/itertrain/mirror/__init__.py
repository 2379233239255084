"""The object-storage mirror (--mirror_to): every committed artifact uploaded in the background, and a
resume on a fresh machine from what the mirror holds.

store (one fsspec store, its checks), uploader (the background thread and its bounded queue),
session (a run's mirror on rank 0: the start, what a resume fetches, catching up, the wait at a stop
or the end). The rules of what is complete there are the core's (core/mirrored.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from itertrain.core.errors import UsageError


@dataclass
class MirrorArguments:
    mirror_to: str | None = field(default=None, metadata={
        "help": "Mirror every committed artifact to this fsspec URL (s3://bucket/prefix, gs://..., az://..., "
                "file:///mnt/shared/...), uploaded in the background; a resume with an empty --output_dir "
                "continues from it. Credentials come the way the store's library reads them. none: no mirror "
                "(a resume takes the experiment's own otherwise)."})
    mirror_keep: int = field(default=2, metadata={
        "help": "Trainer checkpoints kept on the mirror (the newest; iteration models and the one the run "
                "resumed from are always kept). Apart from --save_total_limit, which is the local one."})
    mirror_grace: float = field(default=120.0, metadata={
        "help": "Seconds a stopped run (exit 75) waits for its uploads, the stop checkpoint's included, "
                "before it exits: a spot VM takes its disk with it."})


def validate(args: MirrorArguments) -> None:
    if args.mirror_keep < 1:
        raise UsageError(f"--mirror_keep {args.mirror_keep}: must be 1 or more (the newest checkpoint is always kept)")
    if not 0 <= args.mirror_grace < math.inf:
        raise UsageError(f"--mirror_grace {args.mirror_grace}: must be a finite number of seconds, 0 or more")
    if args.mirror_to is not None and not args.mirror_to.strip():
        raise UsageError("--mirror_to: empty; give a URL such as s3://bucket/prefix, or none")
    if args.mirror_to is not None and args.mirror_to.strip().lower() == "none":
        args.mirror_to = None
