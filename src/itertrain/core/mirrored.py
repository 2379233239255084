"""What the object-storage mirror holds, as the planner and `itertrain status` see it. Pure rules
over listings and manifests; the store itself (fsspec) lives in itertrain.mirror.

The mirror keeps the experiment's tree: each committed unit (an artifact directory such as
checkpoint-N, iter_K, samples_K, base, or one generation shard in samples_K.shards/) under the same
relative path, its data files uploaded first and its manifest last, and the top-level records
(itertrain_config.json, metrics.jsonl, itertrain_stop.json). A unit is complete on the mirror exactly
when its manifest is there and every file it lists has the listed size.

Rank 0 keeps a copy of what the mirror holds in <output_dir>/.itertrain.mirror.json (the index):
the inventory takes the artifacts only the mirror has from it, and status shows where each lives.
"""

from __future__ import annotations

import json
import os

from itertrain.core.names import (
    CHECKPOINT,
    COMPLETE,
    CORRUPT,
    INCOMPLETE,
    MANIFEST_NAME,
    Artifact,
    aside_why,
    parse_name,
)

INDEX = ".itertrain.mirror.json"
SHARDS = ".shards"  # samples_K.shards/: its units are one level down

# Where an artifact lives, for status.
LOCAL, MIRRORED, UPLOADING, ONLY_MIRROR = "local", "mirrored", "uploading", "only on the mirror"


def units(listing: dict[str, int]) -> dict[str, dict[str, int]]:
    """{unit: {file: size}} of a mirror listing {relative path: size}: every top-level directory, and
    every directory inside a samples_K.shards/; top-level files (the records) are left out."""
    out: dict[str, dict[str, int]] = {}
    for rel, size in listing.items():
        parts = rel.split("/")
        if len(parts) < 2:
            continue
        depth = 2 if parts[0].endswith(SHARDS) else 1
        if len(parts) <= depth:
            continue
        out.setdefault("/".join(parts[:depth]), {})["/".join(parts[depth:])] = size
    return out


def judge(files: dict[str, int], manifest_text: bytes | None) -> dict:
    """One unit's entry in the index: its state, why, and its manifest (when it has a valid one)."""
    if manifest_text is None:
        return {"state": INCOMPLETE, "why": "no manifest on the mirror (an upload that did not finish)",
                "manifest": None}
    try:
        m = json.loads(manifest_text)
        listed = m["files"]
        assert isinstance(listed, dict) and isinstance(m.get("global_step"), int)
    except (ValueError, KeyError, TypeError, AssertionError):
        return {"state": CORRUPT, "why": f"{MANIFEST_NAME} on the mirror is not a valid manifest", "manifest": None}
    for rel, meta in listed.items():
        if rel not in files:
            return {"state": CORRUPT, "why": f"{rel} is missing on the mirror", "manifest": m}
        if files[rel] != meta.get("size"):
            return {"state": CORRUPT, "why": f"{rel} has {files[rel]} bytes on the mirror, manifest says "
                                              f"{meta.get('size')}", "manifest": m}
    return {"state": COMPLETE, "why": "", "manifest": m}


def same(a: dict | None, b: dict | None) -> bool:
    """Two manifests of one artifact: the same commit (same files, same checksums, same moment)."""
    return bool(a and b) and a.get("files") == b.get("files") and a.get("created") == b.get("created")


VIEWS: dict[str, dict] = {}  # a dry run's index, kept in memory (a dry run writes nothing)


def read_index(output_dir: str) -> dict:
    if output_dir in VIEWS:
        return VIEWS[output_dir]
    try:
        with open(os.path.join(output_dir, INDEX), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("units"), dict) else {}


def artifact(name: str, entry: dict, where: str, from_manifest) -> Artifact | None:
    """The planner's record of a top-level unit only the mirror has (None: not an artifact name).
    `from_manifest(name, kind, number, manifest, problem)` is the inventory's own reading."""
    parsed = parse_name(name)
    if parsed is None:
        return None
    kind, number = parsed
    if entry.get("state") == COMPLETE and entry.get("manifest"):
        return from_manifest(name, kind, number, entry["manifest"], None, where)
    return Artifact(name, kind, entry.get("state", INCOMPLETE), iteration=number if kind != CHECKPOINT else 0,
                    global_step=number if kind == CHECKPOINT else 0, why=f"{entry.get('why', '')} ({where})",
                    where=where)


def doomed(entries: dict[str, dict], keep: int, protect: set[str]) -> list[str]:
    """Mirror retention: the complete checkpoints beyond the newest `keep` (at least one kept), never a
    protected one (what the run resumed from, what is being uploaded), never anything incomplete (that
    is reported, not deleted), never an iteration model or any other unit."""
    done = sorted((int(name.split("-")[1]), name) for name, e in entries.items()
                  if parse_name(name) and parse_name(name)[0] == CHECKPOINT and e.get("state") == COMPLETE)
    kept = {name for _, name in done[-max(keep, 1):]}
    return [name for _, name in done if name not in kept and name not in protect]


def aside_of(name: str) -> str | None:
    """The artifact name that `name` was renamed aside from (checkpoint-9.superseded-...: checkpoint-9)."""
    return name.split(".", 1)[0] if aside_why(name) else None


def where_is(name: str, local: bool, index: dict, local_manifest: dict | None) -> str:
    """LOCAL, MIRRORED, UPLOADING or ONLY_MIRROR for one artifact, from the index rank 0 keeps."""
    entry = index.get("units", {}).get(name)
    if not local:
        return ONLY_MIRROR
    if name in index.get("uploading", []):
        return UPLOADING
    if entry and entry.get("state") == COMPLETE and (local_manifest is None or same(entry.get("manifest"),
                                                                                   local_manifest)):
        return MIRRORED
    return LOCAL
