"""The commit protocol: how anything under --output_dir becomes durable, all or nothing.

A directory artifact is written into <output_dir>/.staging/<name>, every file fsynced, the manifest
written last, then renamed to its final name and the parent directory fsynced (Megatron's habit:
write, fsync, rename, fsync the directory). A crash at any moment leaves either no <name> at all or a
complete one. Single files (metrics.jsonl, the saved config) go through `atomic_write_*`.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil

from itertrain.core import failpoints, manifest
from itertrain.core.names import MANIFEST_NAME, aside_suffix

STAGING = ".staging"

# Who is told of each change under an experiment (the object-storage mirror): fn(event, *paths) with
# "commit" (a committed directory), "write" (a file written atomically), "aside" (from, to) and
# "remove" (a committed directory deleted). Called in the thread that made the change.
_watchers: list = []


def watch(fn) -> None:
    _watchers.append(fn)


def unwatch(fn) -> None:
    if fn in _watchers:
        _watchers.remove(fn)


def _tell(event: str, *paths: str) -> None:
    for fn in list(_watchers):
        fn(event, *paths)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb+") as fh:
                os.fsync(fh.fileno())
        fsync_dir(root)


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    _tell("write", path)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def staging_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, STAGING, name)


def fresh_staging(output_dir: str, name: str) -> str:
    """An empty staging directory for `name` (a leftover from a crash is never committed: dropped)."""
    path = staging_path(output_dir, name)
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def clear_staging(output_dir: str) -> None:
    """Drop everything staged by an earlier, crashed process (only ever uncommitted writes)."""
    path = os.path.join(output_dir, STAGING)
    if os.path.lexists(path):
        shutil.rmtree(path)


def commit_dir(staged: str, final: str, *, failpoint: tuple[str, int], **provenance) -> dict:
    """fsync `staged`, write its manifest last, rename it to `final`. Returns the manifest."""
    if os.path.lexists(final):
        raise FileExistsError(f"refusing to overwrite {final}: it already exists")
    fsync_tree(staged)
    failpoints.send_signal(*failpoint)  # a stop request while saving: the commit goes on
    failpoints.hit(*failpoint)  # "half way": files written, manifest not yet
    m = manifest.build(staged, **provenance)
    atomic_write_json(os.path.join(staged, MANIFEST_NAME), m)
    os.rename(staged, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))
    _tell("commit", final)
    return m


def commit_as_is(staged: str, final: str, manifest_bytes: bytes) -> None:
    """Commit `staged` under the manifest it already has elsewhere (an artifact fetched from the
    mirror, its files checked against that manifest): fsync, the manifest last, rename."""
    if os.path.lexists(final):
        raise FileExistsError(f"refusing to overwrite {final}: it already exists")
    fsync_tree(staged)
    atomic_write_bytes(os.path.join(staged, MANIFEST_NAME), manifest_bytes)
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    os.rename(staged, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))
    _tell("commit", final)


def rename_aside(output_dir: str, name: str, to: str) -> None:
    os.rename(os.path.join(output_dir, name), os.path.join(output_dir, to))
    fsync_dir(output_dir)
    _tell("aside", os.path.join(output_dir, name), os.path.join(output_dir, to))


def utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def set_aside(output_dir: str, name: str, why: str) -> str:
    """Rename `name` to the first free `name.SUFFIX[.N]` (SUFFIX: artifacts.aside_suffix of `why`);
    returns the new name. Never deletes."""
    suffix = aside_suffix(why, utc_stamp())
    to, n = f"{name}.{suffix}", 1
    while os.path.lexists(os.path.join(output_dir, to)):
        to, n = f"{name}.{suffix}.{n}", n + 1
    rename_aside(output_dir, name, to)
    return to


def remove_committed(output_dir: str, name: str, staging_root: str | None = None) -> None:
    """Delete an artifact (rotation only): first rename it into staging (the experiment's: pass its
    directory as `staging_root` for an artifact in a subfolder), so that a crash half way through
    the delete never leaves a half artifact under its real name."""
    root = staging_root or output_dir
    doomed = staging_path(root, f"deleting-{os.path.relpath(os.path.join(output_dir, name), root).replace(os.sep, '-')}")
    if os.path.lexists(doomed):
        shutil.rmtree(doomed)
    os.makedirs(os.path.dirname(doomed), exist_ok=True)
    os.rename(os.path.join(output_dir, name), doomed)
    fsync_dir(output_dir)
    shutil.rmtree(doomed)
    _tell("remove", os.path.join(output_dir, name))
