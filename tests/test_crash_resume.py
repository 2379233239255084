"""A run killed at a failpoint and resumed with auto auto ends with the uninterrupted run's weights
(max abs diff 0.0) and metrics."""

import pytest
from conftest import copy_experiment, killed_by, max_diff, resume_until_done, run_cli

pytestmark = pytest.mark.e2e

POINTS = [
    "train.step=2",  # iteration 0, before its first checkpoint
    "train.step=6",  # iteration 0's last step: checkpoint-6 committed, iter_0 not yet
    "train.step=8",  # iteration 1, after iter_0, before checkpoint-9
    "checkpoint.write=9",  # half way through committing checkpoint-9
    "checkpoint.background=9",  # checkpoint-9's background write, training already at step 10
    "train.step=11",  # iteration 1, after checkpoint-9
    "iteration.write=1",  # half way through writing iter_1
]


@pytest.mark.parametrize("failpoint", POINTS)
def test_crash_then_auto_resume_is_bit_identical(tmp_path, reference, failpoint):
    out = tmp_path / "exp"
    killed_by(run_cli(out, failpoints=failpoint), failpoint)
    resume_until_done(out)
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert not list(out.glob("*.corrupt*")) and not list(out.glob("*.superseded*"))


def test_carry_optimizer_state_crash_in_both_mode(tmp_path, reference_carry):
    out = tmp_path / "exp"
    killed_by(run_cli(out, "--carry_optimizer_state", failpoints="train.step=8"), "train.step=8")
    proc = resume_until_done(out, "--carry_optimizer_state")
    assert "BOTH checkpoints found" in proc.stdout
    assert max_diff(out / "iter_1", reference_carry / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (reference_carry / "metrics.jsonl").read_text()


def test_carry_differs_from_fresh_optimizer(reference, reference_carry):
    """The carry mode is really a different training (else the test above proves nothing)."""
    assert max_diff(reference / "iter_1", reference_carry / "iter_1") > 0


def test_completed_experiment_exits_0_without_training(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    proc = run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto")
    assert proc.returncode == 0
    assert "already complete" in proc.stdout
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
