"""A second architecture (GPT-2) as --model_name, retention, and two ranks under torchrun (gloo)."""

import json
import sys

import pytest
from conftest import copy_experiment, killed_by, max_diff, resume_until_done, run_cli, shared

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    return shared(tmp_path_factory, "gpt2", _write_gpt2)


def _write_gpt2(d):
    from transformers import GPT2Config, GPT2LMHeadModel

    from itertrain.tasks.tinymodel import make_tokenizer

    tok = make_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_gpt2_model_dir_crash_and_resume(tmp_path, gpt2_dir):
    ref, out = tmp_path / "ref", tmp_path / "exp"
    assert run_cli(ref, "--model_name", str(gpt2_dir)).returncode == 0
    killed_by(run_cli(out, "--model_name", str(gpt2_dir), failpoints="train.step=10"), "train.step=10")
    resume_until_done(out, "--model_name", str(gpt2_dir))
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert json.loads((out / "iter_1" / "config.json").read_text())["model_type"] == "gpt2"
    assert not (out / "base").exists()  # --model_name given: no built-in base written


def test_save_total_limit_rotates_after_commit_and_resumes(tmp_path, reference):
    out = tmp_path / "exp"
    killed_by(run_cli(out, "--save_total_limit", "1", failpoints="train.step=10"), "train.step=10")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-9"]
    resume_until_done(out, "--save_total_limit", "1")
    # checkpoint-9 was resumed from, so this run never deletes it; the newest is kept too.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-9"]
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


def torchrun(out, *extra, failpoints=None):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    return run_cli(out, *extra, failpoints=failpoints, launcher=launcher, timeout=600)


AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


@pytest.mark.dist
def test_two_ranks_crash_and_resume_bit_identical(tmp_path, reference, two_rank_runs):
    ref, crashed = two_rank_runs
    assert (ref / "checkpoint-6" / "rng_state_1.pth").exists()
    # Sharded generation over 2 ranks gives exactly the one-process samples (same base model).
    assert (ref / "samples_0" / "generated.jsonl").read_text() == (reference / "samples_0" / "generated.jsonl").read_text()
    out = copy_experiment(crashed, tmp_path / "exp")
    proc = torchrun(out, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-9 was saved while training iteration 1" in proc.stdout
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0


@pytest.mark.dist
def test_load_failing_on_one_rank_makes_all_fall_back_together(tmp_path, two_rank_runs):
    ref, crashed = two_rank_runs
    out = copy_experiment(crashed, tmp_path / "exp")
    proc = torchrun(out, *AUTO, failpoints="load.fail=checkpoint-9@1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-9 failed to load (load failed on this rank (failpoint load.fail) (rank 1))" in proc.stdout
    assert len(list(out.glob("checkpoint-9.corrupt*"))) == 1  # renamed once, by rank 0
    # Both ranks fell back to iter_0 + a fresh iteration 1: what the uninterrupted run did.
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0


@pytest.mark.dist
def test_ranks_with_different_views_load_one_plan(tmp_path, two_rank_runs):
    """Rank 1 cannot see checkpoint-9; rank 0 plans for both, so both resume it in full."""
    ref, crashed = two_rank_runs
    out = copy_experiment(crashed, tmp_path / "exp")
    proc = torchrun(out, *AUTO, failpoints="view.hide=checkpoint-9@1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-9 was saved while training iteration 1" in proc.stdout
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0


@pytest.mark.dist
def test_accelerate_launch_two_processes_matches_torchrun(tmp_path, two_rank_runs):
    """`accelerate launch` (2 CPU processes through its multi-process launcher) is the same run."""
    ref, _ = two_rank_runs
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    proc = run_cli(tmp_path / "acc", launcher=launcher, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "acc" / "checkpoint-6" / "rng_state_1.pth").exists()
    assert max_diff(tmp_path / "acc" / "iter_1", ref / "iter_1") == 0.0


@pytest.mark.dist
def test_two_nodes_on_loopback_match_one_node(tmp_path, two_rank_runs):
    """torchrun --nnodes 2 --rdzv_backend c10d, one process per "node", one shared directory."""
    import socket
    import subprocess

    from conftest import REPO, SMALL

    ref, _ = two_rank_runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "itertrain-test",
           str(REPO / "train_iterative.py"), "--output_dir", str(tmp_path / "exp"), *SMALL]
    nodes = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    assert sum(o[0].count("CHECKPOINT RECOVERY SYSTEM") for o in outs) == 1  # global rank 0 only
    assert max_diff(tmp_path / "exp" / "iter_1", ref / "iter_1") == 0.0


@pytest.mark.dist
def test_ranks_that_do_not_share_the_directory_refuse(tmp_path):
    proc = torchrun(tmp_path / "exp", failpoints="view.hide=.itertrain.shared-check@1")
    assert proc.returncode != 0
    assert "must be one directory shared by every node (a shared file system): rank 1 on" in proc.stderr
    assert not (tmp_path / "exp" / "samples_0").exists()
