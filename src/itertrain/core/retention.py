"""--save_total_limit: which committed checkpoints may go. Runs only after a commit."""

from __future__ import annotations

import os

from itertrain.core import commit, inventory
from itertrain.core.names import CHECKPOINT, COMPLETE, Artifact, universal_name


def doomed(artifacts: list[Artifact], keep: int, protect: set[str]) -> list[str]:
    """Names to delete: all but the newest `keep` usable checkpoints (at least one is kept), never a
    protected one (the artifact being resumed from), never anything not usable (that is evidence,
    renamed aside by the planner, not ours to delete), never one itertrain did not write (an adopted
    checkpoint is the user's: it counts towards `keep` but stays)."""
    usable = sorted((a for a in artifacts if a.kind == CHECKPOINT and a.usable), key=Artifact.sort_key)
    kept = usable[-max(keep, 1):]
    return [a.name for a in usable if a not in kept and a.name not in protect and a.state == COMPLETE]


def rotate(output_dir: str, keep: int, protect: set[str], max_steps: int, log=print) -> None:
    """Delete what `doomed` names (rank 0; `log`: how to say so, without importing torch here)."""
    artifacts, _ = inventory.scan(output_dir, max_steps)
    for name in doomed(artifacts, keep, protect):
        log(f"🗑  save_total_limit={keep}: deleting {name}")
        commit.remove_committed(output_dir, name)
        if os.path.lexists(os.path.join(output_dir, universal_name(name))):  # the pair goes together
            commit.remove_committed(output_dir, universal_name(name))
