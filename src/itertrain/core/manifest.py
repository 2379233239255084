"""The manifest (itertrain.json) that makes an artifact directory complete.

Written LAST into a staged directory: every file with its size and an xxh3-64 checksum, plus the
artifact's provenance. Sizes are checked whenever the inventory is taken (cheap: one stat per
file); checksums when the artifact is about to be loaded.
"""

from __future__ import annotations

import datetime
import functools
import json
import mmap
import os

import xxhash

from itertrain import __version__
from itertrain.core import mirrored
from itertrain.core.errors import ManifestError
from itertrain.core.names import MANIFEST_NAME

FORMAT = "itertrain.core.manifest/1"



def utc_iso() -> str:
    """Now in UTC, ISO 8601 (2026-12-03T21:05:43+00:00): every time a record or a report shows."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

def file_digest(path: str) -> str:
    # Hashed through a read-only mmap: xxh3 reads the page cache directly, 6x faster here than
    # reading 8 MiB chunks into fresh buffers (2.5 ms instead of 16 ms for a 38 MB checkpoint).
    # (A file truncated by someone else while it is hashed would kill the process with SIGBUS;
    # the directory's lock keeps other itertrain runs out, and nothing else writes there.)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:  # mmap refuses empty files
            return xxhash.xxh3_64_hexdigest(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return xxhash.xxh3_64_hexdigest(view)


def list_files(directory: str) -> list[str]:
    """Every regular file under `directory`, relative, sorted; the manifest itself excluded."""
    out = []
    for root, _dirs, files in os.walk(directory):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), directory)
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def build(directory: str, *, kind: str, name: str, iteration: int, global_step: int,
          local_step: int | None = None, iteration_steps: int | None = None,
          started_from: str | None = None, extra: dict | None = None) -> dict:
    files = {}
    for rel in list_files(directory):
        path = os.path.join(directory, rel)
        files[rel] = {"size": os.path.getsize(path), "xxh3_64": file_digest(path)}
    return {
        "format": FORMAT, "kind": kind, "name": name, "iteration": iteration,
        "global_step": global_step, "local_step": local_step, "iteration_steps": iteration_steps,
        "started_from": started_from, "itertrain_version": __version__,
        "created": utc_iso(),
        "files": files, "extra": extra or {},
    }


def read(directory: str) -> dict:
    """The parsed manifest; ManifestError saying why it is not a valid one."""
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{MANIFEST_NAME} unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ManifestError(f"{MANIFEST_NAME} is not an itertrain manifest")
    files = m.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("xxh3_64"), str)
        for v in files.values()
    ):
        raise ManifestError(f"{MANIFEST_NAME} has no valid file list")
    for key in ("iteration", "global_step"):
        if not isinstance(m.get(key), int) or m[key] < 0:
            raise ManifestError(f"{MANIFEST_NAME} has no valid {key}")
    return m


def size_problem(directory: str, manifest: dict) -> str | None:
    """Why the files do not match the manifest's sizes, or None."""
    for rel, meta in manifest["files"].items():
        path = os.path.join(directory, rel)
        if os.path.isabs(rel) or ".." in rel.split("/") or not os.path.isfile(path):
            return f"{rel} is missing"
        size = os.path.getsize(path)
        if size != meta["size"]:
            return f"{rel} has {size} bytes, manifest says {meta['size']}"
    return None


def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, MANIFEST_NAME))


def problem(directory: str) -> str | None:
    """Why `directory` is not an intact committed artifact (manifest, sizes, checksums), or None."""
    try:
        return checksum_problem(directory, read(directory))
    except ManifestError as e:
        return str(e)


def checksum_problem(directory: str, manifest: dict) -> str | None:
    """Why the files do not match the manifest's checksums (sizes included), or None."""
    if problem := size_problem(directory, manifest):
        return problem
    for rel, meta in manifest["files"].items():
        if file_digest(os.path.join(directory, rel)) != meta["xxh3_64"]:
            return f"{rel} fails its checksum"
    return None


def weights_digest(model_dir: str) -> str | None:
    """Identity of a model's weights: from its manifest if it has one, else hashed now (None: the
    directory is gone)."""
    if not os.path.isdir(model_dir):
        # only the mirror has it (a resume on a fresh machine fetches what it loads): its manifest
        entry = mirrored.read_index(os.path.dirname(model_dir)).get("units", {}).get(os.path.basename(model_dir))
        listed = (entry or {}).get("manifest") or {}
        return ",".join(f"{f}:{m['xxh3_64']}" for f, m in sorted(listed.get("files", {}).items())
                        if "/" not in f and f.startswith(("model", "pytorch_model"))) or None
    files = {}
    if exists(model_dir):
        files = {f: m["xxh3_64"] for f, m in read(model_dir)["files"].items()}
    names = sorted(f for f in os.listdir(model_dir) if f.startswith(("model", "pytorch_model")))
    return ",".join(f"{f}:{files.get(f) or _unchanged_digest(os.path.join(model_dir, f))}" for f in names)


def _unchanged_digest(path: str) -> str:
    """file_digest, once per file version in a process (a user's model without a manifest is asked
    for at every start and, as a DPO reference, at every iteration)."""
    st = os.stat(path)
    return _digest_of_version(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest_of_version(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)
