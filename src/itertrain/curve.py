"""curve.json: the per-step training loss and learning rate that a checkpoint (its iteration so far)
or an iteration model (its whole iteration) carries. A file of its own, listed and checksummed by the
manifest like any other, so that manifests stay small however long an iteration is (every start
parses every manifest)."""

from __future__ import annotations

import json
import os

NAME = "curve.json"


def write(directory: str, loss: list[float], lr: list[float]) -> None:
    """Into a staged directory (commit_dir fsyncs it and lists it in the manifest)."""
    with open(os.path.join(directory, NAME), "w", encoding="utf-8") as f:
        json.dump({"loss": loss, "lr": lr}, f)


def read(directory: str) -> dict | None:
    """{"loss": [...], "lr": [...]} of a committed artifact, or None (none there, or unreadable)."""
    try:
        with open(os.path.join(directory, NAME), encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(c, dict) and isinstance(c.get("loss"), list) and isinstance(c.get("lr"), list)
    return c if ok and len(c["loss"]) == len(c["lr"]) else None
