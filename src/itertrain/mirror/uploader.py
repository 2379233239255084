"""The background uploader: one thread, one bounded queue, rank 0 only.

What is queued, in the order it happened under --output_dir: a committed unit (uploaded from a
snapshot of hard links taken at its commit, so that local retention or a rename aside cannot pull
it away mid-upload), a top-level record (its bytes as written), a rename aside, a delete (a
generation shard once its samples_K is assembled). Each unit's data files go first, its manifest
last; each file is checked after it lands (store.py).

Nothing waits for the store: a commit only queues. A checkpoint still waiting when a newer one is
committed is dropped (the newer one supersedes it), and so is one of iteration K still waiting when
iter_K is committed (a resume takes iter_K then; not with --carry_optimizer_state, whose next
iteration resumes that checkpoint's optimizer state). When WAITING items wait (a store down for long),
what the queue cannot hold is not lost: it is on the local disk, and once the queue has drained the
uploader compares the local directory with the mirror again (`resync`) and queues what is missing,
iteration models first among equals as they come in order.

A store that fails is retried with backoff, forever, without ending training: said once, then
counted, and said again when it answers.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque

from itertrain.core import commit, mirrored
from itertrain.core.names import (
    CHECKPOINT,
    COMPLETE,
    ITERATION,
    MANIFEST_NAME,
    SEED_BASE_MODEL,
    SUPERSEDED,
    UNIVERSAL_SUFFIX,
    aside_suffix,
    parse_name,
)

WAITING = 16  # units and records that may wait for the store before a commit waits for room
NICE = 10  # the uploading thread's priority below training's
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds between tries, the last repeated


def is_checkpoint(rel: str) -> bool:
    parsed = parse_name(rel)
    return parsed is not None and parsed[0] == CHECKPOINT


def is_iteration(rel: str) -> bool:
    parsed = parse_name(rel)
    return parsed is not None and parsed[0] == ITERATION and rel != SEED_BASE_MODEL


class Uploader:
    def __init__(self, store, output_dir: str, units: dict, files: dict, keep: int, log, carry: bool = False):
        self.store, self.output_dir, self.keep, self.log = store, output_dir, keep, log
        self.units = units  # {unit: index entry}: what the mirror holds, as this process knows it
        self.files = files  # {unit: {file: size}} on the mirror (for renames and deletes)
        self.protect: set[str] = set()  # what the run resumed from: never pruned
        self.carry = carry  # --carry_optimizer_state: an iteration's last checkpoint is still needed
        self.queue: deque = deque()
        self.busy: tuple | None = None
        self.cond = threading.Condition()
        self.closed = threading.Event()
        self.failures, self.down = 0, False
        self.snapshots = 0
        self.seconds = 0.0  # spent uploading (the thread busy with the store)
        self.dropped: list[str] = []
        self.behind = False  # the queue overflowed: compare the local directory with the mirror once drained
        self.resync = None  # () -> None, queues what the local directory has and the mirror lacks
        self.thread = threading.Thread(target=self._run, name="itertrain-mirror", daemon=True)

    # -- the committing threads' side -------------------------------------------------------

    def on_change(self, event: str, *paths: str) -> None:
        """commit.watch: queue what a change under --output_dir means for the mirror."""
        rels = [os.path.relpath(p, self.output_dir) for p in paths]
        if any(r.startswith((".", "..")) for r in rels):
            return  # staging, the lock, the progress record, or outside the experiment
        if rels[0].split("/")[0].endswith(UNIVERSAL_SUFFIX):
            return  # a conversion of a checkpoint the mirror has: made again from it where needed
        if event == "commit":
            self.enqueue(("unit", rels[0], *self._snapshot(rels[0])))
        elif event == "write" and "/" not in rels[0]:
            with open(paths[0], "rb") as f:
                self.enqueue(("file", rels[0], f.read()))
        elif event == "aside":
            self.enqueue(("move", rels[0], rels[1]))
        elif event == "remove" and "/" in rels[0]:  # a shard once its samples are assembled
            self.enqueue(("delete", rels[0]))

    def _snapshot(self, rel: str) -> tuple[str, dict]:
        src = os.path.join(self.output_dir, rel)
        with self.cond:
            self.snapshots += 1
            snap = os.path.join(self.output_dir, commit.STAGING, "mirror", f"{self.snapshots}-{rel.replace('/', '-')}")
        from itertrain.core import manifest

        m = manifest.read(src)
        for f in [*m["files"], MANIFEST_NAME]:
            os.makedirs(os.path.dirname(os.path.join(snap, f)), exist_ok=True)
            try:
                os.link(os.path.join(src, f), os.path.join(snap, f))
            except OSError:  # a file system without hard links: a copy
                shutil.copy2(os.path.join(src, f), os.path.join(snap, f))
        return snap, m

    def enqueue(self, item: tuple) -> None:
        with self.cond:
            if item[0] == "unit" and (is_checkpoint(item[1]) or (is_iteration(item[1]) and not self.carry)):
                for old in [q for q in self.queue if q[0] == "unit" and is_checkpoint(q[1])
                            and (is_checkpoint(item[1]) or q[3].get("iteration") == item[3].get("iteration"))]:
                    self.queue.remove(old)
                    self.dropped.append(old[1])
                    shutil.rmtree(old[2], ignore_errors=True)
                    self.log(f"☁️  mirror: {old[1]} not uploaded: {item[1]} supersedes it before its upload began")
            if item[0] == "file":  # a record: only its newest content matters
                for old in [q for q in self.queue if q[0] == "file" and q[1] == item[1]]:
                    self.queue.remove(old)
            if len(self.queue) >= WAITING:  # found again on the local disk once the queue drains
                if item[0] == "unit":
                    shutil.rmtree(item[2], ignore_errors=True)
                if not self.behind:
                    self.log(f"☁️  mirror: {WAITING} uploads wait for the store: the rest are taken from the local "
                             "disk once they are done (training does not wait)")
                self.behind = True
                return
            self.queue.append(item)
            self.cond.notify_all()

    def pending(self) -> list[str]:
        with self.cond:
            return [q[1] for q in ([self.busy] if self.busy else []) + list(self.queue) if q[0] != "resync"]

    def wait(self, timeout: float | None) -> bool:
        """Until everything queued is on the mirror (True), or `timeout` seconds (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.queue or self.busy:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(min(left, 1.0) if left is not None else 1.0)
        return True

    def close(self) -> None:
        self.closed.set()
        with self.cond:
            self.cond.notify_all()

    # -- the uploading thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:  # Linux: a thread's own nice value; the uploads take the CPU that training leaves
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (AttributeError, OSError):
            pass
        while True:
            with self.cond:
                while not self.queue and not self.closed.is_set():
                    self.cond.wait(1.0)
                if self.closed.is_set():
                    return
                self.busy = self.queue.popleft()
                self.cond.notify_all()
            while self.busy is not None:
                began = time.monotonic()
                self._retrying(self.busy)
                self.seconds += time.monotonic() - began
                with self.cond:
                    if self.busy[0] == "unit":
                        shutil.rmtree(self.busy[2], ignore_errors=True)
                    # drained after an overflow: the catch-up from the local disk, still "busy" to wait()
                    again = not self.queue and self.behind and self.resync is not None
                    self.behind = self.behind and not again
                    self.busy = ("resync", "") if again else None
                    self.write_index()
                    self.cond.notify_all()

    def _retrying(self, item: tuple) -> None:
        tries = 0
        while not self.closed.is_set():
            try:
                self._do(item)
            except Exception as e:  # noqa: BLE001 - a store's failure never ends training: said, retried
                self.failures += 1
                if not self.down:
                    self.down = True
                    self.log(f"⚠️  mirror: {self.store.url} failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}): "
                             "the uploads wait and are retried; training goes on")
                self.closed.wait(BACKOFF[min(tries, len(BACKOFF) - 1)])
                tries += 1
                continue
            if self.down:
                self.down = False
                self.log(f"☁️  mirror: {self.store.url} answers again after {self.failures} failed tries: "
                         f"{len(self.queue) + 1} uploads caught up from here")
                self.failures = 0
            return

    def _do(self, item: tuple) -> None:
        kind, rel = item[0], item[1]
        if kind == "unit":
            self._upload(rel, item[2], item[3])
            if is_checkpoint(rel):
                self._prune()
        elif kind == "file":
            self.store.put_bytes(rel, item[2])
        elif kind == "move":
            if rel in self.units:
                self._move(rel, item[2])
        elif kind == "delete":
            self._delete(rel)
        elif kind == "resync":
            self.resync()

    def _upload(self, rel: str, snap: str, m: dict) -> None:
        there = self.units.get(rel)
        if there and there["state"] == COMPLETE and mirrored.same(there["manifest"], m):
            return  # already on the mirror (an artifact fetched from it, or uploaded before a crash)
        if there:
            ours = set(self.files.get(rel, {})) <= {*m["files"], MANIFEST_NAME} and there["state"] != COMPLETE
            if not ours:  # another commit of this name: kept, renamed aside on the mirror
                why = SUPERSEDED if there["state"] == COMPLETE else there["state"]
                self._move(rel, f"{rel}.{aside_suffix(why, commit.utc_stamp())}")
        self.units[rel] = {"state": "incomplete", "why": "uploading", "manifest": None}
        done = self.files.setdefault(rel, {})
        for f in sorted(m["files"]):
            self.store.put(os.path.join(snap, f), f"{rel}/{f}")
            done[f] = m["files"][f]["size"]
        self.store.put(os.path.join(snap, MANIFEST_NAME), f"{rel}/{MANIFEST_NAME}")
        done[MANIFEST_NAME] = os.path.getsize(os.path.join(snap, MANIFEST_NAME))
        self.units[rel] = {"state": COMPLETE, "why": "", "manifest": m}

    def _free(self, name: str) -> str:
        to, n = name, 1
        while to in self.units:
            to, n = f"{name}.{n}", n + 1
        return to

    def _move(self, src: str, dst: str) -> None:
        """Rename on the mirror: copy (the manifest last), then delete (the manifest first), so that
        neither name is ever complete without all its files."""
        dst = self._free(dst)
        files = self.files.get(src, {})
        for f in sorted(files, key=lambda f: f == MANIFEST_NAME):
            self.store.copy(f"{src}/{f}", f"{dst}/{f}")
        self.units[dst], self.files[dst] = self.units[src], dict(files)
        self._delete(src)

    def _delete(self, rel: str) -> None:
        if MANIFEST_NAME in self.files.get(rel, {}):
            self.store.remove(f"{rel}/{MANIFEST_NAME}")
        self.store.remove(rel)
        self.units.pop(rel, None)
        self.files.pop(rel, None)

    def _prune(self) -> None:
        waiting = {q[1] for q in list(self.queue) if q[0] == "unit"}
        top = {n: e for n, e in self.units.items() if "/" not in n}
        for name in mirrored.doomed(top, self.keep, self.protect | waiting):
            self.log(f"🗑  mirror_keep={self.keep}: deleting {name} on the mirror")
            self._delete(name)

    def write_index(self) -> None:
        commit.atomic_write_json(os.path.join(self.output_dir, mirrored.INDEX),
                                 {"url": self.store.url, "units": self.units, "uploading": self.pending(),
                                  "dropped": self.dropped[-20:]})
