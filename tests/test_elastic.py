"""A resume on another number of processes: the global batch kept (or refused, or allowed to change),
the same examples in every optimizer step, the RNG of ranks that did not write the checkpoint."""

import json
import os
import sys

import pytest
from conftest import (
    batches,
    copy_experiment,
    run_cli,
    same_experiment,
)

from itertrain.app import settings
from itertrain.core import curve
from itertrain.core.elastic import ALLOW, KEEP, Batch, decide, nearest, sizes_that_keep, split
from itertrain.core.errors import UsageError

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def launcher(world: int) -> tuple:
    if world == 1:
        return (sys.executable,)
    return (sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}")


@pytest.mark.parametrize("target,world,per_device,accumulation,expected", [
    (12, 2, 6, 1, (6, 1)),    # nothing changes
    (12, 1, 6, 1, (6, 2)),    # fewer processes: the accumulation grows
    (12, 3, 6, 1, (4, 1)),    # more: the accumulation cannot shrink below 1, the per-device batch does
    (64, 2, 8, 2, (8, 4)),
    (64, 8, 8, 2, (8, 1)),
    (64, 16, 8, 1, (4, 1)),
    (24, 3, 5, 1, (4, 2)),    # the largest per-device batch not above the given one
    (12, 5, 6, 1, None),      # no split: refused (or allowed)
])
def test_split_changes_the_accumulation_first(target, world, per_device, accumulation, expected):
    assert split(target, world, per_device, accumulation) == expected
    if expected:
        assert expected[0] * expected[1] * world == target and expected[0] <= max(per_device, 1)


def test_a_batch_no_split_keeps_is_refused_in_one_line_naming_the_sizes_that_work():
    with pytest.raises(UsageError) as e:
        decide(64, 4, 3, 8, 2, KEEP)
    assert str(e.value) == (
        "3 processes cannot keep this experiment's global batch of 64 examples per optimizer step (it was run on 4): "
        "resume on 1, 2, 4, 8, 16, 32, 64 processes, or pass --elastic_batch allow to continue with a global batch "
        "of 63 (recorded: another experiment from here)")
    batch, note = decide(64, 4, 3, 8, 2, ALLOW)
    assert (batch.size, batch.target, batch.per_device, batch.accumulation) == (63, 64, 7, 3)
    assert "--elastic_batch allow continues with 63" in note


def test_the_banner_says_what_changed_and_nothing_when_nothing_did():
    assert decide(12, 2, 2, 6, 1, KEEP) == (Batch(6, 1, 2, 12), None)
    assert decide(12, 2, 1, 6, 1, KEEP)[1] == ("batch: the experiment's global batch of 12 examples per step, run "
                                               "before on 2 processes, is kept on 1: gradient accumulation 1 -> 2")
    assert decide(12, 2, 3, 6, 1, KEEP)[1].endswith("is kept on 3: per-device batch 6 -> 4")


def test_nearest_and_the_sizes_that_keep():
    assert nearest(6, 4) == 4 and nearest(7, 4) == 8 and nearest(2, 4) == 4
    assert sizes_that_keep(12) == [1, 2, 3, 4, 6, 12]


def test_the_target_is_the_records_unless_the_batch_flags_change():
    record = {"args": {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1}, "world_size": 3,
              "batch": Batch(4, 1, 3, 12).to_json()}
    assert settings.batch_target(record, 6, 1, world_size=1) == (12, 3)
    assert settings.batch_target(record, 8, 1, world_size=1) == (8, 1)  # a change on purpose: as given
    assert settings.batch_target({**record, "batch": None}, 6, 1, world_size=1) == (18, 3)  # an older record
    assert settings.batch_target({}, 6, 2, world_size=2) == (24, 2)


def _resumed_on(world: int, crashed, tmp_path, **kw):
    out = copy_experiment(crashed, tmp_path / "exp")
    log = tmp_path / "resumed.jsonl"
    proc = run_cli(out, *AUTO, launcher=launcher(world), batch_log=log, timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, {**batches(crashed), **batches(log)}, proc.stdout


def _same_steps(out, ref, seen, expected) -> None:
    """Every step trained the reference's examples, at the reference's loss (1e-3 relative)."""
    assert seen == expected
    for k, last in ((0, "checkpoint-6"), (1, "checkpoint-12")):
        mine, theirs = curve.read(str(out / last))["loss"], curve.read(str(ref / last))["loss"]
        assert len(mine) == len(theirs) == 6
        assert all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(mine, theirs)), (k, mine, theirs)


@pytest.mark.dist
@pytest.mark.parametrize("world", [1, 3])
def test_two_processes_resumed_on_another_number_end_as_the_two_process_run(tmp_path, two_rank_runs, world):
    ref, crashed = two_rank_runs
    out, seen, stdout = _resumed_on(world, crashed, tmp_path)
    how = "gradient accumulation 1 -> 2" if world == 1 else "per-device batch 6 -> 4"
    assert f"global batch of 12 examples per step, run before on 2 processes, is kept on {world}: {how}" in stdout
    rng = "the RNG state of rank 1 is not used" if world == 1 else "rank 2 derives its RNG state from the seed"
    assert f"checkpoint-9 was written by 2 processes and this run has {world}: {rng}" in stdout
    _same_steps(out, ref, seen, batches(ref))
    same_experiment(out, ref)
    record = json.loads((out / "itertrain_config.json").read_text())
    assert record["batch"] == {"per_device": 6 if world == 1 else 4, "accumulation": 2 if world == 1 else 1,
                               "world_size": world, "target": 12, "global_batch": 12}


@pytest.mark.dist
def test_one_process_resumed_on_two_ends_as_the_one_process_run(tmp_path, reference, crashed_in_iter1):
    out, seen, stdout = _resumed_on(2, crashed_in_iter1, tmp_path)
    assert "is kept on 2: per-device batch 6 -> 3" in stdout
    assert "rank 1 derives its RNG state from the seed, the rank and the step" in stdout
    _same_steps(out, reference, seen, batches(reference))
    same_experiment(out, reference)


@pytest.mark.dist
def test_no_split_is_refused_before_anything_is_written_and_allow_continues(tmp_path, crashed_in_iter1):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    record = (out / "itertrain_config.json").read_bytes()
    proc = run_cli(out, *AUTO, launcher=launcher(4), timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("itertrain: error:")]
    assert proc.returncode != 0 and errors == [
        "itertrain: error: 4 processes cannot keep this experiment's global batch of 6 examples per optimizer step "
        "(it was run on 1): resume on 1, 2, 3, 6 processes, or pass --elastic_batch allow to continue with a "
        "global batch of 4 (recorded: another experiment from here)"], proc.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert (out / "itertrain_config.json").read_bytes() == record
    proc = run_cli(out, *AUTO, "--elastic_batch", ALLOW, "--dry_run", "true", launcher=launcher(4), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--elastic_batch allow continues with 4 (per-device batch 6 -> 1 on 4 processes)" in proc.stdout
    assert (out / "itertrain_config.json").read_bytes() == record  # (a dry run writes nothing)


def test_an_allowed_batch_is_recorded_and_status_says_so(tmp_path):
    """What --elastic_batch allow leaves in the record (startup.save_settings) as status reads it."""
    from itertrain.app import status

    batch = Batch(1, 1, 4, 6).to_json()
    saved = {"args": {"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1}, "batch": batch}
    assert batch == {"per_device": 1, "accumulation": 1, "world_size": 4, "target": 6, "global_batch": 4}
    assert status._batch(saved)["note"] == ("a global batch of 4 (1 per device x 1 accumulation x 4 processes), not "
                                            "the experiment's 6: --elastic_batch allow")
    kept = {**saved, "batch": Batch(3, 1, 2, 6).to_json()}
    assert status._batch(kept)["note"] == ("the experiment's global batch of 6 kept on 2 processes (3 per device x 1 "
                                           "accumulation x 2 processes)")
    assert status._batch({**saved, "batch": Batch(6, 1, 1, 6).to_json()})["note"] is None
    assert status._batch({}) is None


def test_the_conversion_refuses_what_it_cannot_do_and_a_disk_too_small(tmp_path, monkeypatch):
    from itertrain.runtime import universal

    ckpt = tmp_path / "checkpoint-9"
    (ckpt / "global_step3").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step3")
    (ckpt / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 1000)
    assert "itertrain did not write (no manifest)" in universal.refusal(str(ckpt), 1, 2)
    (ckpt / "itertrain.json").write_text("{}")
    assert universal.refusal(str(ckpt), 1, 2) is None
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 1000})())
    assert universal.refusal(str(ckpt), 1, 2).startswith(
        "converting checkpoint-9 for 1 process needs about 0.00 GiB on")
    assert universal.refusal(str(ckpt), 1, 2).endswith("GiB free: free space there, or resume on 2 processes")
    monkeypatch.undo()
    (ckpt / "global_step3" / "mp_rank_01_model_states.pt").write_bytes(b"x")
    assert "tensor- or pipeline-parallel shards (mp_rank > 0)" in universal.refusal(str(ckpt), 3, 2)


def test_a_conversion_of_another_checkpoint_of_that_name_is_set_aside_not_reused(tmp_path, monkeypatch):
    from itertrain.core import commit
    from itertrain.runtime import universal

    out = tmp_path / "exp"
    staged = tmp_path / "src"
    (staged / "global_step3").mkdir(parents=True)
    (staged / "latest").write_text("global_step3")
    (staged / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    (staged / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"y")
    out.mkdir()
    commit.commit_dir(str(staged), str(out / "checkpoint-9"), failpoint=("t", 0), kind="checkpoint",
                      name="checkpoint-9", iteration=1, global_step=9, extra={"world_size": 2})
    made = []

    def fake(src, dst):  # DeepSpeed's conversion itself is exercised by the torchrun tests
        os.makedirs(dst)
        open(os.path.join(dst, "zero.pt"), "wb").write(b"z")
        made.append(src)

    monkeypatch.setattr(universal, "_ds_to_universal", fake)
    first = universal.convert(str(out), "checkpoint-9", 1, log=lambda _: None)
    assert universal.convert(str(out), "checkpoint-9", 1, log=lambda _: None) == first and len(made) == 1  # reused
    # a later checkpoint-9 (another branch): its conversion is made again, the old one kept aside
    commit.set_aside(str(out), "checkpoint-9", "superseded")
    staged.mkdir()
    (staged / "global_step3").mkdir()
    (staged / "latest").write_text("global_step3")
    (staged / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"other")
    commit.commit_dir(str(staged), str(out / "checkpoint-9"), failpoint=("t", 0), kind="checkpoint",
                      name="checkpoint-9", iteration=1, global_step=9, extra={"world_size": 1})
    universal.convert(str(out), "checkpoint-9", 2, log=lambda _: None)
    assert len(made) == 2
    assert any(n.startswith("checkpoint-9.universal.superseded") for n in os.listdir(out))


def test_a_trainer_that_orders_its_examples_itself_keeps_its_order():
    from transformers import Trainer

    from itertrain.training.trainer import IterTrainer, Recovering, own_sampler

    assert not own_sampler(IterTrainer) and not own_sampler(type("Plain", (Recovering, type("T", (Trainer,), {})), {}))
    # as TRL's GRPOTrainer, whose RepeatSampler repeats each prompt for its group (importing it starts a process)
    grouped = type("Grouped", (Trainer,), {"_get_train_sampler": lambda self, dataset=None: None})
    assert own_sampler(type("G", (Recovering, grouped), {}))


def test_the_moment_check_names_the_first_tensor_that_differs(tmp_path):
    import torch

    from itertrain.core.errors import RecoveryError
    from itertrain.runtime import universal

    (tmp_path / "w").mkdir()
    for key in ("fp32", "exp_avg", "exp_avg_sq"):
        torch.save({"param": torch.arange(4.0)}, tmp_path / "w" / f"{key}.pt")
    same = {"fp32": torch.arange(4.0).view(2, 2), "exp_avg": torch.arange(4.0), "exp_avg_sq": torch.arange(4.0)}
    assert universal._compare(str(tmp_path), [("w", same)], "checkpoint-9.universal") == 3
    with pytest.raises(RecoveryError, match=r"exp_avg_sq of w is not the checkpoint's \(max abs diff 1\)"):
        universal._compare(str(tmp_path), [("w", {**same, "exp_avg_sq": torch.arange(4.0) + 1})], "c")
    with pytest.raises(RecoveryError, match=r"exp_avg of w is not the checkpoint's \(missing\)"):
        universal._compare(str(tmp_path), [("w", {**same, "exp_avg": None})], "c")
