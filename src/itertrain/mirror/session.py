"""A run's mirror, on rank 0: open it, fetch what a plan loads, catch up, wait for it at the end.

begin() lists the mirror and keeps its view in the index (core/mirrored.py); the inventory then
plans over the union of the local and mirror artifacts. fetch() brings what the plan loads into
--output_dir through the commit protocol, each file checked against the mirror's manifest. sync()
queues what the local directory has and the mirror lacks. settle() waits for the queue: without end
at a normal finish, --mirror_grace seconds at a stop.
"""

from __future__ import annotations

import json
import os
import time

from itertrain.core import commit, manifest, mirrored
from itertrain.core.errors import RecoveryError
from itertrain.core.names import CHECKPOINT, COMPLETE, MANIFEST_NAME, parse_name
from itertrain.mirror.store import Store, open_store
from itertrain.mirror.uploader import Uploader
from itertrain.runtime import stop

_active: Session | None = None
TRIES = 4  # a download that fails this many times in a row stops the start (nothing is changed)


def remote_record(url: str, name: str) -> dict:
    """The experiment's settings record as the mirror has it ({} if none): for a resume whose
    --output_dir has none (a fresh machine)."""
    data = open_store(url, write=False).cat(name)
    try:
        record = json.loads(data) if data else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def view(store: Store) -> tuple[dict, dict, dict]:
    """What the mirror holds now: its listing {path: size}, each unit's files, and each unit's index
    entry (state, why, manifest: one read of each manifest there)."""
    listing = store.listing()
    files = mirrored.units(listing)
    units = {u: mirrored.judge(fs, store.cat(f"{u}/{MANIFEST_NAME}") if MANIFEST_NAME in fs else None)
             for u, fs in files.items()}
    return listing, files, units


def begin(store: Store, output_dir: str, keep: int, grace: float, record: str, log, dry: bool = False,
          carry: bool = False) -> Session:
    """Rank 0's mirror for this run (a dry run: only its view, in memory, for the plan to show)."""
    global _active
    _active = Session(store, output_dir, keep, grace, record, log, dry, carry)
    return _active


def active() -> Session | None:
    return _active


def forget(output_dir: str) -> None:
    """A run without a mirror: the view of one an earlier run had is dropped (a cache, not an artifact),
    so that nothing plans from what no store will fetch."""
    path = os.path.join(output_dir, mirrored.INDEX)
    if os.path.exists(path):
        os.remove(path)


class Session:
    def __init__(self, store: Store, output_dir: str, keep: int, grace: float, record: str, log, dry: bool = False,
                 carry: bool = False):
        self.store, self.output_dir, self.grace, self.log = store, output_dir, grace, log
        listing, files, units = view(store)
        self.up = Uploader(store, output_dir, units, files, keep, log, carry)
        self.top_files = {rel for rel in listing if "/" not in rel}
        self.fetched_bytes, self.dry, self.records, self.waited = 0, dry, (), 0.0
        if dry:
            mirrored.VIEWS[output_dir] = {"url": store.url, "units": units, "uploading": []}
            return
        local = os.path.join(output_dir, record)
        if not os.path.exists(local) and record in self.top_files:
            commit.atomic_write_bytes(local, store.cat(record))  # (before watching: not uploaded back)
        self.up.write_index()
        commit.watch(self.up.on_change)
        self.up.thread.start()
        complete = sum(1 for e in units.values() if e["state"] == COMPLETE)
        log(f"☁️  mirror: {store.url} ({complete} complete artifacts there"
            f"{f', {len(units) - complete} incomplete' if len(units) > complete else ''})")

    # -- a resume that starts from what only the mirror has -----------------------------------

    def fetch(self, names: set[str], plan) -> dict[str, str]:
        """Bring every unit of `names` (an artifact, or samples_K.shards for its shards) that only the
        mirror has; {unit: why} of those whose files fail their manifest there (now marked corrupt)."""
        wanted = sorted({u for n in names if n for u in list(self.up.units) if u == n or u.startswith(f"{n}/")})
        failed = {}
        for u in wanted:
            entry = self.up.units[u]
            if os.path.lexists(os.path.join(self.output_dir, u)) or entry["state"] != COMPLETE:
                continue
            if why := self._fetch_one(u, entry["manifest"], plan):
                with self.up.cond:
                    self.up.units[u] = {**entry, "state": "corrupt", "why": why}
                failed[u] = why
        with self.up.cond:
            self.up.write_index()
        if self.fetched_bytes:
            self.log(f"☁️  read from the mirror: {self.store.read_bytes} bytes in all ({self.fetched_bytes} of "
                     "them the files of what the plan loads)")
        return failed

    def _fetch_one(self, u: str, m: dict, plan) -> str | None:
        began, size = time.monotonic(), 0
        staged = commit.fresh_staging(self.output_dir, f"fetch-{u.replace('/', '-')}")
        for f, meta in sorted(m["files"].items()):
            if reason := stop.requested_here():
                raise stop.Stopped(reason, "fetch", plan.next_iteration, plan.next_step, "nothing new")
            dst = os.path.join(staged, f)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            self._download(f"{u}/{f}", dst)
            if os.path.getsize(dst) != meta["size"] or manifest.file_digest(dst) != meta["xxh3_64"]:
                return f"{f} fails its checksum after download from the mirror"
            size += meta["size"]
        commit.commit_as_is(staged, os.path.join(self.output_dir, u),
                            (json.dumps(m, indent=1, sort_keys=True) + "\n").encode())
        self.fetched_bytes += size
        self.log(f"☁️  fetched {u} from the mirror ({size / 1e6:.1f} MB in {time.monotonic() - began:.1f} s)")
        return None

    def _download(self, rel: str, dst: str) -> None:
        for attempt in range(TRIES):
            try:
                self.store.get(rel, dst)
                return
            except Exception as e:  # noqa: BLE001 - retried; then the start stops with the reason
                if attempt + 1 == TRIES:
                    raise RecoveryError(f"cannot fetch {rel} from the mirror {self.store.url} ({type(e).__name__}: "
                                        f"{str(e).splitlines()[0][:160] if str(e) else ''}): nothing was changed; "
                                        "resume again once the store answers") from None
                time.sleep(2 ** attempt)

    # -- catching up: what the local directory has and the mirror lacks -----------------------

    def sync(self, plan, records: tuple[str, ...]) -> None:
        """Once the plan is carried out: protect what the run resumed from, rename on the mirror what
        the plan set aside there, and queue what the local directory has and the mirror lacks."""
        self.up.protect = {plan.weights_from, plan.state_from} - {None}
        for r in plan.remote_renames:
            self.up.enqueue(("move", r.artifact, r.to))
        self.records = records
        self.up.resync = self.catch_up
        self.catch_up()
        if stop.RECORD in self.top_files:
            self.up.enqueue(("delete", stop.RECORD))  # the last run's: this one has not stopped

    def catch_up(self) -> None:
        """Queue what the local directory has and the mirror lacks (at the start, and after the queue
        overflowed): renames aside made here, committed units, the records."""
        up, out = self.up, self.output_dir
        local = sorted(os.listdir(out)) if os.path.isdir(out) else []
        for name in local:  # renamed aside here, still under its own name there
            if (was := mirrored.aside_of(name)) and was not in local and manifest.exists(os.path.join(out, name)):
                there = up.units.get(was, {})
                if there.get("state") == COMPLETE and mirrored.same(there["manifest"], _manifest(out, name)):
                    up.enqueue(("move", was, name))
        checkpoints = sorted(int(n.split("-")[1]) for n, e in list(up.units.items())
                             if "/" not in n and e["state"] == COMPLETE and _kind(n) == CHECKPOINT)
        for rel in _committed_units(out, local):
            if _kind(rel) == CHECKPOINT and len([s for s in checkpoints if s > int(rel.split("-")[1])]) >= up.keep:
                continue  # the mirror keeps newer ones: it would be pruned on arrival
            there = up.units.get(rel, {})
            if not (there.get("state") == COMPLETE and mirrored.same(there["manifest"], _manifest(out, rel))):
                try:
                    up.on_change("commit", os.path.join(out, rel))
                except (OSError, manifest.ManifestError):
                    continue  # renamed or deleted here meanwhile: the change itself is queued
        for rel in list(up.units):  # shards of samples the mirror has whole, gone here
            if "/" in rel and up.units.get(rel.split(".shards/")[0], {}).get("state") == COMPLETE \
                    and not os.path.lexists(os.path.join(out, rel)):
                up.enqueue(("delete", rel))
        for name in self.records:
            if os.path.isfile(os.path.join(out, name)):
                up.on_change("write", os.path.join(out, name))

    # -- the end --------------------------------------------------------------------------------

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for the uploads: `timeout` seconds, or (None) until done; a stop request during an
        unbounded wait turns it into --mirror_grace seconds."""
        if self.dry:
            return True
        began = time.monotonic()
        try:
            if timeout is not None:
                return self.up.wait(timeout)
            while not self.up.wait(60):
                if stop.requested_here():
                    return self.up.wait(self.grace)
                self.log(f"☁️  mirror: waiting for {len(self.up.pending())} uploads before exiting"
                         f"{' (the store is not answering)' if self.up.down else ''}")
            return True
        finally:
            self.waited += time.monotonic() - began

    def close(self) -> None:
        global _active
        if _active is self:
            _active = None
        if self.dry:
            mirrored.VIEWS.pop(self.output_dir, None)
            return
        self.up.close()
        commit.unwatch(self.up.on_change)
        with self.up.cond:
            self.up.write_index()
        if self.store.written_bytes:
            self.log(f"☁️  mirror: {self.store.written_bytes / 1e6:.1f} MB uploaded in {self.up.seconds:.1f} s of "
                     f"uploading; the exit waited {self.waited:.1f} s for the last uploads")


def _kind(name: str) -> str | None:
    parsed = parse_name(name)
    return parsed[0] if parsed else None


def _manifest(out: str, rel: str) -> dict | None:
    try:
        return manifest.read(os.path.join(out, rel))
    except manifest.ManifestError:
        return None


def _committed_units(out: str, local: list[str]) -> list[str]:
    """The units of the local directory the mirror should have: every top-level directory with a
    manifest whose files have their sizes (set-aside names left out: they are this disk's evidence),
    and the generation shards in samples_K.shards/."""
    found = []
    for name in local:
        path = os.path.join(out, name)
        if name.startswith(".") or mirrored.aside_of(name) or not os.path.isdir(path):
            continue
        if name.endswith(mirrored.SHARDS):
            found += [f"{name}/{s}" for s in sorted(os.listdir(path)) if not mirrored.aside_of(s)
                      and _intact(os.path.join(path, s))]
        elif _intact(path):
            found.append(name)
    return found


def _intact(path: str) -> bool:
    m = _manifest(os.path.dirname(path), os.path.basename(path))
    return m is not None and manifest.size_problem(path, m) is None
