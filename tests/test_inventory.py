"""What the inventory calls complete / unverified / incomplete / corrupt, the commit protocol and
retention: on small fake artifacts, no torch."""

import json
import os

import pytest

from itertrain.core import commit, inventory, manifest, retention
from itertrain.core.names import CHECKPOINT, COMPLETE, CORRUPT, INCOMPLETE, ITERATION, UNVERIFIED

FILES = {"model.safetensors": b"w" * 100, "optimizer.pt": b"o" * 50, "scheduler.pt": b"s",
         "trainer_state.json": b"{}", "config.json": b"{}"}


def make(root, name, files=FILES, kind=CHECKPOINT, iteration=0, step=3, committed=True):
    staged = commit.fresh_staging(str(root), name)
    for f, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(staged, f)), exist_ok=True)
        with open(os.path.join(staged, f), "wb") as fh:
            fh.write(data)
    final = os.path.join(root, name)
    if committed:
        commit.commit_dir(staged, final, failpoint=("none", 0), kind=kind, name=name, iteration=iteration,
                          global_step=step, local_step=step, iteration_steps=6)
    else:
        os.rename(staged, final)
    return final


def states(root, max_steps=6):
    arts, _ = inventory.scan(str(root), max_steps)
    return {a.name: (a.state, a.why) for a in arts}


def test_committed_artifacts_are_complete(tmp_path):
    make(tmp_path, "checkpoint-3")
    make(tmp_path, "iter_0", {"model.safetensors": b"w", "config.json": b"{}"}, kind=ITERATION, step=6)
    assert {k: v[0] for k, v in states(tmp_path).items()} == {"checkpoint-3": COMPLETE, "iter_0": COMPLETE}
    assert not os.listdir(tmp_path / ".staging")


@pytest.mark.parametrize("damage,why", [
    (lambda d: open(os.path.join(d, "model.safetensors"), "ab").write(b"x"), "model.safetensors has 101 bytes"),
    (lambda d: os.unlink(os.path.join(d, "optimizer.pt")), "optimizer.pt is missing"),
    (lambda d: open(os.path.join(d, "itertrain.json"), "w").write("{"), "itertrain.json unreadable"),
    (lambda d: open(os.path.join(d, "itertrain.json"), "w").write("[]"), "not an itertrain manifest"),
])
def test_damage_is_corrupt_with_a_reason(tmp_path, damage, why):
    d = make(tmp_path, "checkpoint-3")
    damage(d)
    state, reason = states(tmp_path)["checkpoint-3"]
    assert state == CORRUPT and why in reason


def test_manifest_of_another_artifact_is_corrupt(tmp_path):
    d = make(tmp_path, "checkpoint-3")
    os.rename(d, tmp_path / "checkpoint-9")
    state, why = states(tmp_path)["checkpoint-9"]
    assert state == CORRUPT and "not checkpoint-9" in why


def test_checksum_catches_same_size_damage(tmp_path):
    d = make(tmp_path, "checkpoint-3")
    with open(os.path.join(d, "optimizer.pt"), "r+b") as f:
        f.write(b"X")
    assert states(tmp_path)["checkpoint-3"][0] == COMPLETE  # sizes match: the cheap check passes
    assert manifest.checksum_problem(d, manifest.read(d)) == "optimizer.pt fails its checksum"


def test_foreign_hf_checkpoint_and_models(tmp_path):
    make(tmp_path, "checkpoint-9", committed=False)
    make(tmp_path, "checkpoint-12", {k: v for k, v in FILES.items() if k != "optimizer.pt"}, committed=False)
    make(tmp_path, "iter_1", {"model.safetensors": b"w"}, committed=False)
    make(tmp_path, "base_model", {"model.safetensors": b"w", "config.json": b"{}"}, committed=False)
    make(tmp_path, "iter_2", {"config.json": b"{}"}, committed=False)
    arts = {a.name: a for a in inventory.scan(str(tmp_path), 6)[0]}
    ck = arts["checkpoint-9"]
    assert (ck.state, ck.iteration, ck.local_step) == (UNVERIFIED, 1, 3)
    assert arts["checkpoint-12"].state == INCOMPLETE and "optimizer.pt" in arts["checkpoint-12"].why
    assert arts["iter_1"].state == UNVERIFIED and arts["iter_1"].needs_config
    assert (arts["base_model"].kind, arts["base_model"].iteration, arts["base_model"].needs_config) == (ITERATION, 0, False)
    assert arts["iter_2"].state == INCOMPLETE


def test_symlinked_artifact_is_not_followed(tmp_path):
    outside = make(tmp_path / "elsewhere", "checkpoint-3")
    (tmp_path / "exp").mkdir()
    os.symlink(outside, tmp_path / "exp" / "checkpoint-3")
    state, why = states(tmp_path / "exp")["checkpoint-3"]
    assert state == INCOMPLETE and "symbolic link" in why


def test_commit_never_overwrites(tmp_path):
    make(tmp_path, "checkpoint-3")
    with pytest.raises(FileExistsError):
        make(tmp_path, "checkpoint-3")


def test_atomic_write_leaves_old_or_new(tmp_path):
    p = tmp_path / "metrics.jsonl"
    commit.atomic_write_json(str(p), {"a": 1})
    commit.atomic_write_json(str(p), {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2} and os.listdir(tmp_path) == ["metrics.jsonl"]


def test_retention_keeps_newest_and_protected(tmp_path):
    for s in (3, 6, 9, 12):
        make(tmp_path, f"checkpoint-{s}", step=s)
    make(tmp_path, "checkpoint-15", committed=False)  # foreign, unverified: counts as usable
    arts = inventory.scan(str(tmp_path), 6)[0]
    assert retention.doomed(arts, 2, protect={"checkpoint-3"}) == ["checkpoint-6", "checkpoint-9"]
    assert retention.doomed(arts, 0, protect=set())[-1] == "checkpoint-12"  # at least one is kept
    retention.rotate(str(tmp_path), 2, {"checkpoint-3"}, 6)
    assert sorted(os.listdir(tmp_path)) == [".staging", "checkpoint-12", "checkpoint-15", "checkpoint-3"]


def test_retention_deletes_a_checkpoint_and_its_universal_conversion_together(tmp_path):
    for s in (3, 6):
        make(tmp_path, f"checkpoint-{s}", step=s)
    make(tmp_path, "checkpoint-3.universal", step=3)  # (not an artifact of its own to the inventory)
    assert [a.name for a in inventory.scan(str(tmp_path), 6)[0]] == ["checkpoint-3", "checkpoint-6"]
    retention.rotate(str(tmp_path), 1, set(), 6)
    assert sorted(os.listdir(tmp_path)) == [".staging", "checkpoint-6"]


def test_retention_never_deletes_a_checkpoint_it_did_not_write(tmp_path):
    make(tmp_path, "checkpoint-3", committed=False)  # adopted: the user's
    for s in (6, 9):
        make(tmp_path, f"checkpoint-{s}", step=s)
    arts = inventory.scan(str(tmp_path), 6)[0]
    assert retention.doomed(arts, 1, protect=set()) == ["checkpoint-6"]


def test_set_aside_picks_a_free_name(tmp_path):
    for _ in range(3):
        (tmp_path / "samples_1").mkdir()
        commit.set_aside(str(tmp_path), "samples_1", "corrupt")
    assert sorted(os.listdir(tmp_path)) == ["samples_1.corrupt", "samples_1.corrupt.1", "samples_1.corrupt.2"]


# What HF writes for DeepSpeed ZeRO (2 ranks) and for FSDP with SHARDED_STATE_DICT (2 ranks)
DEEPSPEED = {"trainer_state.json": b"{}", "latest": b"global_step6", "model.safetensors": b"w",
             "global_step6/mp_rank_00_model_states.pt": b"m",
             "global_step6/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"o",
             "global_step6/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"o"}
FSDP = {"trainer_state.json": b"{}", "scheduler.pt": b"s", "pytorch_model_fsdp_0/.metadata": b"m",
        "pytorch_model_fsdp_0/__0_0.distcp": b"a", "pytorch_model_fsdp_0/__1_0.distcp": b"b",
        "optimizer_0/.metadata": b"m", "optimizer_0/__0_0.distcp": b"c", "optimizer_0/__1_0.distcp": b"d"}


@pytest.mark.parametrize("files,engine", [(DEEPSPEED, "deepspeed"), (FSDP, "fsdp")])
def test_sharded_checkpoints_name_their_engine_and_world_size(tmp_path, files, engine):
    make(tmp_path, "checkpoint-6", files, committed=False)  # as HF left it: no manifest
    (a,), _ = inventory.scan(str(tmp_path), 6)
    assert (a.state, a.engine, a.world_size) == (UNVERIFIED, engine, 2)
    make(tmp_path, "checkpoint-3", files)  # ours: the manifest covers every rank's shard files
    arts, _ = inventory.scan(str(tmp_path), 6)
    ours = next(a for a in arts if a.name == "checkpoint-3")
    assert (ours.state, ours.engine) == (COMPLETE, engine)
    assert set(manifest.read(str(tmp_path / "checkpoint-3"))["files"]) == set(files)
    (tmp_path / "checkpoint-3" / sorted(f for f in files if "1" in f.rsplit("/", 1)[-1])[0]).unlink()
    assert states(tmp_path)["checkpoint-3"][0] == CORRUPT  # one rank's shard gone: not complete


def test_fsdp_full_state_dict_checkpoints_are_fsdp_of_any_world_size(tmp_path):
    # FULL_STATE_DICT: one file of module weights and one of optimizer state, whatever the ranks
    full = {"trainer_state.json": b"{}", "scheduler.pt": b"s", "model.safetensors": b"w",
            "pytorch_model_fsdp.bin": b"m", "optimizer.bin": b"o"}
    make(tmp_path, "checkpoint-6", full, committed=False)
    make(tmp_path, "checkpoint-3", full)
    arts = {a.name: a for a in inventory.scan(str(tmp_path), 6)[0]}
    assert (arts["checkpoint-6"].state, arts["checkpoint-6"].engine, arts["checkpoint-6"].world_size) == \
        (UNVERIFIED, "fsdp", None)
    assert (arts["checkpoint-3"].state, arts["checkpoint-3"].engine) == (COMPLETE, "fsdp")


def test_plain_checkpoints_have_no_engine(tmp_path):
    make(tmp_path, "checkpoint-3")
    (a,), _ = inventory.scan(str(tmp_path), 6)
    assert a.engine is None


@pytest.mark.e2e  # a fresh interpreter, to see what the imports bring in
def test_the_pure_core_imports_no_torch():
    """Inventory, planner, retention, status and the plot read manifests and the objectives' declarations
    only: no torch, no accelerate."""
    import subprocess
    import sys

    code = ("import sys; import itertrain.core.inventory, itertrain.core.plan, itertrain.core.retention, itertrain.app.status, "
            "itertrain.phases.shards, itertrain.app.plot; from itertrain.training import objectives; objectives.metrics(); heavy = sorted(m for m in ('torch', 'accelerate', 'transformers') if m in sys.modules); "
            "print(heavy); raise SystemExit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
