"""The seed guide's five scenarios through the real CLI: the --dry_run plan, then the run itself."""

import json
import re

import pytest
from conftest import copy_experiment, dry_run, killed_by, max_diff, run_cli, weights

pytestmark = pytest.mark.e2e


def dry(out, rf, ri, *extra):
    return dry_run(out, "--resume_from", rf, "--resume_from_iteration", ri, *extra)[0]


def test_1_scratch(tmp_path, reference):
    out = tmp_path / "new"
    plan = dry(out, "none", "none")
    assert (plan["strategy"], plan["weights_from"], plan["state_from"], plan["next_iteration"],
            plan["next_step"]) == ("scratch", None, None, 0, 0)
    assert not out.exists()  # --dry_run writes nothing
    assert sorted(p.name for p in reference.iterdir() if not p.name.startswith(".")) == [
        "base", "checkpoint-12", "checkpoint-3", "checkpoint-6", "checkpoint-9", "iter_0", "iter_1",
        "itertrain_config.json", "metrics.jsonl", "samples_0", "samples_1"]
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["global_step"]) for r in rows] == [(0, 6), (1, 12)]


def test_2_trainer_only(tmp_path, crashed_in_iter1, reference):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    plan = dry(out, "auto", "none")
    assert (plan["strategy"], plan["weights_from"], plan["state_from"], plan["next_iteration"],
            plan["next_step"]) == ("trainer", "checkpoint-9", "checkpoint-9", 1, 9)
    proc = run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


def test_3_iteration_only(tmp_path, crashed_in_iter1, reference):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    plan = dry(out, "none", "auto")
    assert (plan["strategy"], plan["weights_from"], plan["state_from"], plan["next_iteration"],
            plan["next_step"]) == ("iteration", "iter_0", None, 1, 6)
    (action,) = [a for a in plan["actions"] if a.get("rename") == "checkpoint-9"]
    assert re.fullmatch(r"checkpoint-9\.superseded-\d{8}T\d{6}Z", action["to"]), action
    assert action["why"] == "later than the starting point (iteration 1, step 6)", action
    proc = run_cli(out, "--resume_from", "none", "--resume_from_iteration", "auto")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Iteration 1 restarted from iter_0 with a fresh optimizer: exactly what the uninterrupted run did.
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert len(list(out.glob("checkpoint-9.superseded-*"))) == 1  # set aside, not lost


def test_4_both_auto(tmp_path, crashed_in_iter1, reference):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    plan = dry(out, "auto", "auto")
    # checkpoint-9 was saved in iteration 1, after iter_0: newer weights, so resumed in full.
    assert (plan["strategy"], plan["state_from"], plan["next_iteration"], plan["next_step"]) == (
        "trainer", "checkpoint-9", 1, 9)
    # With carried optimizer state after iter_0 completes, "both": iter_0 + checkpoint-6.
    out2 = tmp_path / "carry"
    killed_by(run_cli(out2, "--carry_optimizer_state", failpoints="train.step=7"), "train.step=7")
    plan = dry(out2, "auto", "auto", "--carry_optimizer_state")
    assert (plan["strategy"], plan["weights_from"], plan["state_from"], plan["next_iteration"],
            plan["next_step"]) == ("both", "iter_0", "checkpoint-6", 1, 6)


def test_5_explicit_pair(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    plan = dry(out, "3", "iter_0")
    assert (plan["strategy"], plan["weights_from"], plan["state_from"], plan["next_iteration"],
            plan["next_step"]) == ("both", "iter_0", "checkpoint-3", 1, 3)
    assert any("not the last step" in w for w in plan["warnings"])
    renamed = {a["rename"] for a in plan["actions"] if "rename" in a}
    assert renamed == {"checkpoint-6", "checkpoint-9", "checkpoint-12", "iter_1"}
    before = weights(reference / "iter_1")
    proc = run_cli(out, "--resume_from", "3", "--resume_from_iteration", "iter_0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The real run shows the dry run's warning, in the banner, before it trains
    (mismatch,) = [w for w in plan["warnings"] if "not the last step" in w]
    assert proc.stdout.index(f"Warning: {mismatch}") < proc.stdout.index("iteration 1: training")
    # The new branch wrote iter_1 and checkpoints 4..9; the old ones are aside, byte for byte.
    old = next(out.glob("iter_1.superseded-*"))
    assert all((weights(old)[k] == before[k]).all() for k in before)
    assert (out / "iter_1").is_dir() and (out / "checkpoint-9").is_dir()
    # A crash of the new branch resumes the new branch, never the superseded one.
    plan = dry(out, "auto", "auto")
    assert plan["done"] and plan["weights_from"] == "iter_1"
