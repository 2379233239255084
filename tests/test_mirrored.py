"""The mirror's rules without a run: what is complete there, what retention deletes, what status shows,
and the uploader's queue (a file:// store in a temporary directory; no process is started)."""

import json
import os
import threading

import pytest

from itertrain.core import commit, inventory, manifest, mirrored
from itertrain.core.names import COMPLETE, CORRUPT, INCOMPLETE, MANIFEST_NAME
from itertrain.mirror import uploader
from itertrain.mirror.store import open_store


def committed(out, name: str, data: bytes = b"weights", step: int = 3, kind: str = "checkpoint"):
    staged = commit.fresh_staging(str(out), name)
    with open(os.path.join(staged, "model.safetensors"), "wb") as f:
        f.write(data)
    return commit.commit_dir(staged, os.path.join(str(out), name), failpoint=("test", 0), kind=kind, name=name,
                             iteration=0, global_step=step, local_step=step, iteration_steps=6)


def test_a_unit_is_complete_exactly_when_its_manifest_is_there_and_lists_what_is_there():
    m = {"files": {"a.bin": {"size": 3, "xxh3_64": "x"}}, "global_step": 3}
    text = json.dumps(m).encode()
    assert mirrored.judge({"a.bin": 3, MANIFEST_NAME: 9}, text)["state"] == COMPLETE
    assert mirrored.judge({"a.bin": 3}, None)["state"] == INCOMPLETE  # data first, manifest last: not yet
    assert mirrored.judge({"a.bin": 2, MANIFEST_NAME: 9}, text)["state"] == CORRUPT
    assert mirrored.judge({MANIFEST_NAME: 9}, text)["state"] == CORRUPT
    assert mirrored.judge({MANIFEST_NAME: 9}, b"{not json")["state"] == CORRUPT


def test_units_are_top_level_directories_and_shards_one_level_down():
    listing = {"checkpoint-3/a": 1, "checkpoint-3/sub/b": 2, "metrics.jsonl": 5,
               "samples_0.shards/prompts-0-8/generated.jsonl": 7}
    assert mirrored.units(listing) == {"checkpoint-3": {"a": 1, "sub/b": 2},
                                       "samples_0.shards/prompts-0-8": {"generated.jsonl": 7}}


def test_mirror_retention_keeps_the_newest_the_protected_and_everything_not_complete():
    done = {"state": COMPLETE}
    units = {"checkpoint-3": done, "checkpoint-6": done, "checkpoint-9": done, "checkpoint-12": {"state": INCOMPLETE},
             "iter_0": done}
    assert mirrored.doomed(units, keep=1, protect=set()) == ["checkpoint-3", "checkpoint-6"]
    assert mirrored.doomed(units, keep=1, protect={"checkpoint-3"}) == ["checkpoint-6"]
    assert mirrored.doomed(units, keep=0, protect=set()) == ["checkpoint-3", "checkpoint-6"]  # one is always kept


def test_where_each_artifact_lives():
    m = {"files": {"a": {"size": 1}}, "created": "t"}
    index = {"units": {"checkpoint-3": {"state": COMPLETE, "manifest": m}}, "uploading": ["checkpoint-6"]}
    assert mirrored.where_is("checkpoint-3", True, index, m) == mirrored.MIRRORED
    assert mirrored.where_is("checkpoint-3", True, index, {**m, "created": "u"}) == mirrored.LOCAL
    assert mirrored.where_is("checkpoint-6", True, index, None) == mirrored.UPLOADING
    assert mirrored.where_is("checkpoint-9", False, index, None) == mirrored.ONLY_MIRROR


def test_the_inventory_adds_what_only_the_mirror_has(tmp_path):
    out = tmp_path / "exp"
    m = committed(out, "checkpoint-3")
    commit.atomic_write_json(str(out / mirrored.INDEX), {"url": "s3://b/x", "units": {
        "checkpoint-3": {"state": COMPLETE, "manifest": m},
        "checkpoint-6": {"state": COMPLETE, "manifest": {**m, "name": "checkpoint-6", "global_step": 6, "local_step": 6}},
        "checkpoint-9": {"state": INCOMPLETE, "why": "no manifest on the mirror", "manifest": None}}})
    local, _ = inventory.scan(str(out), 6)
    both, names = inventory.scan(str(out), 6, mirror=True)
    assert [a.name for a in local] == ["checkpoint-3"]
    by = {a.name: a for a in both}
    assert by["checkpoint-3"].where == "" and by["checkpoint-6"].where == "s3://b/x"
    assert by["checkpoint-6"].state == COMPLETE and by["checkpoint-9"].state == INCOMPLETE and "checkpoint-9" in names


class Held:
    """A file:// store whose uploads wait until released: the queue's policy while one is in flight."""

    def __init__(self, store):
        self.store, self.release, self.started = store, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put(self, local, rel):
        self.started.set()
        self.release.wait(30)
        self.store.put(local, rel)


def test_a_waiting_checkpoint_is_dropped_for_a_newer_one_and_nothing_else_is(tmp_path):
    out, mirror = tmp_path / "exp", tmp_path / "mirror"
    out.mkdir()
    store = Held(open_store(f"file://{mirror}"))
    logged = []
    up = uploader.Uploader(store, str(out), {}, {}, keep=5, log=logged.append)
    commit.watch(up.on_change)
    try:
        up.thread.start()
        committed(out, "iter_0", kind="iteration", step=0)
        store.started.wait(30)  # iter_0 in flight
        for step in (3, 6, 9):
            committed(out, f"checkpoint-{step}", step=step)
        assert [q[1] for q in up.queue] == ["checkpoint-9"]
        assert up.dropped == ["checkpoint-3", "checkpoint-6"]
        store.release.set()
        assert up.wait(30)
    finally:
        commit.unwatch(up.on_change)
        up.close()
    assert sorted(os.listdir(mirror)) == [".itertrain-probe", "checkpoint-9", "iter_0"] or \
        sorted(os.listdir(mirror)) == ["checkpoint-9", "iter_0"]
    for name in ("checkpoint-9", "iter_0"):
        assert manifest.problem(str(mirror / name)) is None  # whole, its manifest last
    index = mirrored.read_index(str(out))
    assert index["url"] == f"file://{mirror}" and index["uploading"] == []


def test_a_universal_conversion_is_not_mirrored(tmp_path):
    """checkpoint-N.universal is derived from checkpoint-N (which the mirror has): made again where needed."""
    out = tmp_path / "exp"
    out.mkdir()
    up = uploader.Uploader(open_store(f"file://{tmp_path / 'mirror'}"), str(out), {}, {}, keep=5, log=print)
    up.on_change("commit", str(out / "checkpoint-9.universal"))
    up.on_change("commit", str(out / "checkpoint-9.universal" / "x"))
    assert not up.queue


def test_an_overflowing_queue_never_blocks_and_the_disk_fills_the_gap(tmp_path):
    out, mirror = tmp_path / "exp", tmp_path / "mirror"
    out.mkdir()
    store = Held(open_store(f"file://{mirror}"))
    up = uploader.Uploader(store, str(out), {}, {}, keep=5, log=lambda _: None)

    def resync():  # what the session's catch_up does: every local unit the mirror lacks
        for name in sorted(os.listdir(out)):
            if not name.startswith(".") and up.units.get(name, {}).get("state") != COMPLETE:
                up.on_change("commit", str(out / name))

    up.resync = resync
    commit.watch(up.on_change)
    try:
        up.thread.start()
        for k in range(uploader.WAITING + 4):
            committed(out, f"iter_{k}", kind="iteration", step=k)  # never waits for the store
        assert up.behind and len(up.queue) == uploader.WAITING
        store.release.set()
        assert up.wait(30)  # the queue, then the catch-up from the disk, then what it queued
    finally:
        commit.unwatch(up.on_change)
        up.close()
    assert all(manifest.problem(str(mirror / f"iter_{k}")) is None for k in range(uploader.WAITING + 4))


@pytest.mark.parametrize("url, says", [("file:///nonexistent-itertrain-parent/x", "neither it nor its parent"),
                                       ("mirror-without-scheme", "not a URL")])
def test_a_file_mirror_that_cannot_be_used_is_one_line(url, says):
    from itertrain.core.errors import UsageError

    with pytest.raises(UsageError) as e:
        open_store(url)
    assert says in str(e.value) and "\n" not in str(e.value)



@pytest.mark.parametrize("carry", [False, True])
def test_a_waiting_checkpoint_of_a_finished_iteration_is_dropped_unless_its_optimizer_state_carries_on(tmp_path, carry):
    out, mirror = tmp_path / "exp", tmp_path / "mirror"
    out.mkdir()
    store = Held(open_store(f"file://{mirror}"))
    up = uploader.Uploader(store, str(out), {}, {}, keep=5, log=lambda _: None, carry=carry)
    commit.watch(up.on_change)
    try:
        up.thread.start()
        committed(out, "checkpoint-3", step=3)
        store.started.wait(30)  # in flight: never given up
        committed(out, "checkpoint-6", step=6)  # the iteration's last checkpoint, waiting
        committed(out, "iter_0", kind="iteration", step=6)
        assert [q[1] for q in up.queue] == (["checkpoint-6", "iter_0"] if carry else ["iter_0"])
        store.release.set()
        assert up.wait(30)
    finally:
        commit.unwatch(up.on_change)
        up.close()
    assert (mirror / "checkpoint-6").exists() == carry and (mirror / "iter_0" / "itertrain.json").exists()
