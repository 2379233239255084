"""DeepSpeed ZeRO-2 and ZeRO-3 through the HF Trainer, two ranks on CPU (DeepSpeed's CPU
accelerator over gloo): sharded checkpoints committed whole, a crash resumed bit-identically,
"both" with sharded optimizer state, consolidated iteration models, and a world-size refusal.
(FSDP cannot run here: accelerate turns it on only for GPU-like devices; see docs/scaling.md.)"""

import json
import sys
from pathlib import Path

import pytest
from conftest import batches, copy_experiment, killed_by, max_diff, run_cli, shared

from itertrain.core import curve, manifest
from itertrain.core.elastic import processes

pytest.importorskip("deepspeed", reason="make test installs DeepSpeed (Makefile); run it from there")
pytestmark = pytest.mark.dist

DATA = Path(__file__).parent / "data"
AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def ds_run(out, stage, *extra, nproc=2, failpoints=None, batch_log=None):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}")
    return run_cli(out, "--deepspeed", str(DATA / f"zero{stage}.json"), *extra, failpoints=failpoints,
                   launcher=launcher, timeout=600, batch_log=batch_log)


def _zero3_runs(root):
    ref, crashed = root / "ref", root / "crashed"
    proc = ds_run(ref, 3, batch_log=root / "ref.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed_by(ds_run(crashed, 3, failpoints="train.step=11", batch_log=root / "crashed.jsonl"), "train.step=11",
              leaves=crashed / "checkpoint-9")
    return ref, crashed


@pytest.fixture(scope="session")
def zero3(tmp_path_factory):
    """An uninterrupted ZeRO-3 run, and the same run killed after step 11 (checkpoint-9 committed)."""
    return shared(tmp_path_factory, "zero3", _zero3_runs)


def test_zero3_checkpoints_hold_every_ranks_shards_and_iteration_models_are_whole(zero3):
    ref, _ = zero3
    files = json.loads((ref / "checkpoint-9" / "itertrain.json").read_text())["files"]
    for rank in (0, 1):  # each rank's partition of the weights and of the optimizer, under the manifest
        assert f"global_step3/zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in files
        assert f"global_step3/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
    it = sorted(p.name for p in (ref / "iter_1").iterdir())
    assert "model.safetensors" in it and not any(n.startswith("global_step") for n in it)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ref / "iter_1")  # an ordinary, consolidated model
    assert sum(p.numel() for p in model.parameters()) > 0


def test_zero3_crash_resumes_bit_identically(zero3, tmp_path):
    ref, crashed = zero3
    out = copy_experiment(crashed, tmp_path / "exp")
    proc = ds_run(out, 3, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRAINER checkpoint" in proc.stdout and "checkpoint-9" in proc.stdout
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


@pytest.mark.parametrize("world", [1, 3])
def test_zero3_shards_resumed_on_another_number_of_processes_through_a_universal_checkpoint(zero3, tmp_path, world):
    """Converted by DeepSpeed's ds_to_universal into checkpoint-9.universal (checkpoint-9 kept as it was),
    loaded with its moments checked, and the run ends as the two-process one: the same examples in
    every step, the loss within 1e-3, the weights within 1e-5."""
    ref, crashed = zero3
    out = copy_experiment(crashed, tmp_path / "exp")
    before = manifest.read(str(out / "checkpoint-9"))
    proc = ds_run(out, 3, *AUTO, nproc=world, batch_log=tmp_path / "resumed.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "converted with DeepSpeed's universal checkpoint into checkpoint-9.universal" in proc.stdout
    assert f"checkpoint-9.universal: loaded on {processes(world)}; fp32 weights and Adam moments of every " \
           "parameter equal the checkpoint's" in proc.stdout
    assert manifest.read(str(out / "checkpoint-9")) == before and manifest.problem(str(out / "checkpoint-9")) is None
    assert manifest.problem(str(out / "checkpoint-9.universal")) is None
    assert {**batches(crashed.parent / "crashed.jsonl"), **batches(tmp_path / "resumed.jsonl")} == \
        batches(ref.parent / "ref.jsonl")
    mine, theirs = curve.read(str(out / "checkpoint-12"))["loss"], curve.read(str(ref / "checkpoint-12"))["loss"]
    assert all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(mine, theirs, strict=True)), (mine, theirs)
    assert max_diff(out / "iter_1", ref / "iter_1") <= 1e-5


def test_a_kill_while_converting_leaves_checkpoint_9_as_it_was_and_the_resume_converts_again(zero3, tmp_path):
    ref, crashed = zero3
    out = copy_experiment(crashed, tmp_path / "exp")
    killed_by(ds_run(out, 3, *AUTO, nproc=1, failpoints="universal.write=9"), "universal.write=9")
    assert not (out / "checkpoint-9.universal").exists() and manifest.problem(str(out / "checkpoint-9")) is None
    proc = ds_run(out, 3, *AUTO, nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert manifest.problem(str(out / "checkpoint-9.universal")) is None
    assert max_diff(out / "iter_1", ref / "iter_1") <= 1e-5


def test_zero_state_the_conversion_cannot_carry_is_refused_in_one_line_before_anything_is_written(zero3, tmp_path):
    out = copy_experiment(zero3[1], tmp_path / "exp")
    (out / "checkpoint-9" / "global_step3" / "offloaded_tensors").mkdir()  # NVMe offload state
    before = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    proc = ds_run(out, 3, *AUTO, nproc=1)
    assert proc.returncode != 0
    assert ("itertrain: error: checkpoint-9 holds NVMe-offloaded optimizer state, which DeepSpeed's universal "
            "checkpoint does not carry: it cannot be converted for 1 process; resume on 2 processes") in proc.stderr
    assert "src/itertrain" not in proc.stderr  # one line from us; the traceback after it is torchrun's own
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == before  # nothing written


def test_zero2_one_process_resumed_on_two(reference, tmp_path):
    """ZeRO-2 on one process, killed inside iteration 1 and resumed on two: the same examples in every
    step as the one-process (plain) reference, whose order no engine changes, the loss within 1e-3."""
    out = tmp_path / "exp"
    killed_by(ds_run(out, 2, nproc=1, failpoints="train.step=10", batch_log=tmp_path / "crashed.jsonl"),
              "train.step=10", leaves=out / "checkpoint-9")
    proc = ds_run(out, 2, *AUTO, batch_log=tmp_path / "resumed.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is kept on 2: per-device batch 6 -> 3" in proc.stdout
    assert "checkpoint-9.universal: loaded on 2 processes; fp32 weights and Adam moments" in proc.stdout
    assert {**batches(tmp_path / "crashed.jsonl"), **batches(tmp_path / "resumed.jsonl")} == batches(reference)
    for last in ("checkpoint-6", "checkpoint-12"):
        mine, theirs = curve.read(str(out / last))["loss"], curve.read(str(reference / last))["loss"]
        assert all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(mine, theirs, strict=True)), (last, mine, theirs)


def test_zero2_carry_optimizer_state_both_resumes_bit_identically(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "exp"
    assert ds_run(ref, 2, "--carry_optimizer_state").returncode == 0
    killed_by(ds_run(out, 2, "--carry_optimizer_state", failpoints="train.step=8"), "train.step=8",
              leaves=out / "checkpoint-6")
    proc = ds_run(out, 2, "--carry_optimizer_state", *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BOTH checkpoints found" in proc.stdout
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def as_fsdp_sharded(ckpt: Path) -> None:
    """Rewrite a committed checkpoint as FSDP's SHARDED_STATE_DICT leaves one (what accelerate's
    save_fsdp_model writes, seen on a GPU: no config.json or model.safetensors, the module weights
    in pytorch_model_fsdp_0/ through torch.distributed.checkpoint, keyed "model"), committed again."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    from itertrain.core import commit, manifest

    m = manifest.read(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(ckpt / "pytorch_model_fsdp_0"))
    for f in ("config.json", "model.safetensors", "generation_config.json", "itertrain.json"):
        (ckpt / f).unlink()
    staged = ckpt.parent / ".staging" / ckpt.name
    shutil.move(ckpt, staged)
    commit.commit_dir(str(staged), str(ckpt), failpoint=("none", 0), **{k: m[k] for k in (
        "kind", "name", "iteration", "global_step", "local_step", "iteration_steps", "started_from", "extra")})


@pytest.mark.e2e  # one process: not in the multi-process group
def test_fsdp_sharded_checkpoint_at_an_iterations_last_step_gives_the_same_iteration_model(tmp_path, reference):
    # killed after checkpoint-12 (iteration 1's last step) committed, before iter_1 did: the resume
    # trains nothing, so the weights must come from FSDP's files without FSDP's loader
    out = tmp_path / "exp"
    killed_by(run_cli(out, failpoints="iteration.write=1"), "iteration.write=1")
    as_fsdp_sharded(out / "checkpoint-12")
    proc = run_cli(out, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-12" in proc.stdout
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


def test_zero2_peft_adapter_with_carried_optimizer_state_resumes_bit_identically(tmp_path):
    """--use_peft under ZeRO-2: DeepSpeed's checkpoints hold the adapter (frozen weights excluded) and
    its sharded optimizer state; "both" pairs iter_0's adapter with checkpoint-6's state."""
    peft = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "all-linear", "--carry_optimizer_state"]
    ref, out = tmp_path / "ref", tmp_path / "exp"
    assert ds_run(ref, 2, *peft).returncode == 0
    assert not any(f.name.startswith("model") for f in (ref / "checkpoint-12").iterdir())
    killed_by(ds_run(out, 2, *peft, failpoints="train.step=8"), "train.step=8", leaves=out / "checkpoint-6")
    proc = ds_run(out, 2, *peft, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights from iter_0 with the optimizer state of checkpoint-6" in proc.stdout
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "iter_1" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (ref / "iter_1" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def test_zero2_dpo_crash_resumes_bit_identically(tmp_path):
    """--objective dpo under ZeRO-2: TRL's DPOTrainer prepares the reference model for DeepSpeed; a
    checkpoint inside the dpo iteration resumes to the uninterrupted run's model and metrics."""
    dpo = ["--objective", "dpo", "--sft_iterations", "1", "--dpo_gold_chosen", "true"]
    ref, out = tmp_path / "ref", tmp_path / "exp"
    proc = ds_run(ref, 2, *dpo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed_by(ds_run(out, 2, *dpo, failpoints="train.step=9"), "train.step=9", leaves=out / "checkpoint-9")
    proc = ds_run(out, 2, *dpo, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
