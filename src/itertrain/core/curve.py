"""curve.json: the per-step training loss and learning rate that a checkpoint (its iteration so far)
or an iteration model (its whole iteration) carries. A file of its own, listed and checksummed by the
manifest like any other, so that manifests stay small however long an iteration is (every start
parses every manifest)."""

from __future__ import annotations

import json
import os

from itertrain.core import inventory

NAME = "curve.json"


def write(directory: str, loss: list[float], lr: list[float], steps: dict[str, list[float]] | None = None) -> None:
    """Into a staged directory (commit_dir fsyncs it and lists it in the manifest). `steps`: an
    objective's own per-step values (e.g. DPO's reward margins), by name."""
    with open(os.path.join(directory, NAME), "w", encoding="utf-8") as f:
        json.dump({"loss": loss, "lr": lr, **({"steps": steps} if steps else {})}, f)


def read(directory: str) -> dict | None:
    """{"loss": [...], "lr": [...]} of a committed artifact, or None (none there, or unreadable)."""
    try:
        with open(os.path.join(directory, NAME), encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(c, dict) and isinstance(c.get("loss"), list) and isinstance(c.get("lr"), list)
    return c if ok and len(c["loss"]) == len(c["lr"]) else None


def committed(output_dir: str, max_steps: int) -> list[dict]:
    """Every complete iteration model, oldest first: iteration, its metrics, its curve (or None),
    and the global steps it trained (offset, end]."""
    out = []
    for m in inventory.committed_iterations(output_dir, max_steps):
        steps = read(os.path.join(output_dir, m["name"]))
        out.append({"iteration": m["iteration"], "metrics": m.get("extra", {}).get("metrics", {}), "curve": steps,
                    "offset": m["global_step"] - len(steps["loss"] if steps else []), "end": m["global_step"]})
    return out
