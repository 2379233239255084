"""status.py's pure parts, in-process: the hints, the resume command, the iteration rows, the report."""

import dataclasses
import re
from pathlib import Path

import pytest

from itertrain.app import settings, status
from itertrain.core.names import CHECKPOINT, COMPLETE, CORRUPT, ITERATION, UNVERIFIED, Artifact
from itertrain.phases import shards


def ckpt(step, state=COMPLETE, steps=6):
    it = (step - 1) // steps
    return Artifact(f"checkpoint-{step}", CHECKPOINT, state, it, step, step - it * steps, steps, why="x")


def model(k, state=COMPLETE, steps=6):
    return Artifact(f"iter_{k}", ITERATION, state, k, (k + 1) * steps, why="x")


SETTINGS = {"num_iterations": 3, "world_size": 1, "model_name": None}


def plan(strategy="scratch", done=False, **kw):
    return {"strategy": strategy, "done": done, **kw}


def test_resume_command_names_the_launcher_the_model_and_what_changes():
    assert settings.resume_command("exp", SETTINGS) == (
        "python train_iterative.py --output_dir exp --resume_from auto --resume_from_iteration auto")
    assert settings.resume_command("e x", {"world_size": 4, "model_name": "/m"}, "--num_iterations", "5") == (
        "torchrun --nproc_per_node=4 train_iterative.py --model_name /m --output_dir 'e x' "
        "--resume_from auto --resume_from_iteration auto --num_iterations 5")


def test_hints_for_each_kind_of_plan():
    cmd = settings.resume_command("exp", SETTINGS)
    assert status.hints("exp", SETTINGS, [], plan(), []) == [f"nothing to resume here yet: start (or resume) with: {cmd}"]
    assert status.hints("exp", SETTINGS, [model(2)], plan("iteration", done=True), []) == [
        f"all 3 iterations are complete; to run more (change 4 as you like): {cmd} --num_iterations 4"]
    assert status.hints("exp", SETTINGS, [ckpt(9)], plan("trainer", state_from="checkpoint-9"), []) == [
        f"iteration 1 was interrupted at step 3 of 6 (global step 9): resume with: {cmd}"]
    assert status.hints("exp", SETTINGS, [ckpt(12)], plan("trainer", state_from="checkpoint-12"), []) == [
        f"iteration 1 finished training at global step 12 but was not saved: resume with: {cmd}"]
    assert status.hints("exp", SETTINGS, [model(0)], plan("both", weights_from="iter_0", next_iteration=1), []) == [
        f"iter_0 is done and iteration 1 has not saved a checkpoint yet: resume with: {cmd}"]
    assert status.hints("exp", SETTINGS, [], {"error": "bad flags"}, []) == [
        "the flags given do not fit this experiment: bad flags"]


def test_hints_name_broken_and_set_aside_artifacts():
    arts = [model(0), ckpt(9, CORRUPT)]
    aside = [f"checkpoint-{s}.corrupt" for s in range(1, 7)]
    out = status.hints("exp", SETTINGS, arts, plan("iteration", weights_from="iter_0", next_iteration=1), aside)
    assert out[1] == "1 broken artifact(s) (checkpoint-9): the next run renames them aside, nothing is deleted"
    assert out[2].startswith("6 artifact(s) set aside earlier (checkpoint-1.corrupt, checkpoint-2.corrupt, "
                             "checkpoint-3.corrupt, checkpoint-4.corrupt, ...)")


def test_iteration_rows_from_artifacts(tmp_path):
    arts = [model(0, UNVERIFIED), ckpt(9), ckpt(3)]
    rows = status.iteration_rows(str(tmp_path), arts, 3)
    assert [(r["iteration"], r["state"], r["artifact"], r["global_step"]) for r in rows] == [
        (0, "complete (unverified)", "iter_0", 6), (1, "interrupted at step 3/6", "checkpoint-9", 9),
        (2, "pending", None, None)]


def test_iteration_rows_show_generation_progress(tmp_path):
    shards.write(str(tmp_path), 0, (0, 8), [], source="base", digest="d", settings={"num_prompts": 24})
    (row,) = status.iteration_rows(str(tmp_path), [], 1)
    assert (row["state"], row["prompts_done"], row["prompts_total"]) == ("generating: 8/24 prompts", 8, 24)


def test_build_on_an_empty_directory(tmp_path):
    report = status.build(status._parser().parse_args([str(tmp_path)]))
    assert report["plan"]["strategy"] == "scratch" and report["set_aside"] == []
    assert [r["state"] for r in report["iterations"]] == ["pending"] * 5  # the default --num_iterations
    assert report["hints"][0].startswith("nothing to resume here yet")


@pytest.mark.parametrize("bad", ["latest", "iter_x"])
def test_build_refuses_a_bad_selector(tmp_path, bad):
    args = status._parser().parse_args([str(tmp_path), "--resume_from", bad, "--resume_from_iteration", bad])
    with pytest.raises(ValueError):
        status.build(args)


def _report():
    """A report as build() makes it, with the widest cells a week-long run shows."""
    it = {"iteration": 0, "state": "complete", "artifact": "iter_0", "eval_accuracy": 0.994, "acceptance_rate": 0.25,
          "num_generated": 80000, "num_kept": 19988, "global_step": 30000, "train_loss": 0.0583, "seconds": 14321.5,
          "finished": "2026-12-01T18:31:18+00:00", "verifier_timeouts": 0, "verifier_errors": 0}
    stopped = {**it, "iteration": 1, "state": "stopped (SIGTERM, train): interrupted at step 2999/30000",
               "eval_accuracy": None, "train_loss": None, "seconds": None, "finished": None}
    why = ("no itertrain manifest (written by plain HF or TRL): accepted as unverified after a weights-only "
           "trial load, its trainer_state.json gives global step 33000")
    ck = {"name": "checkpoint-33000", "iteration": 1, "local_step": 3000, "iteration_steps": 30000,
          "state": "unverified", "size": 16_123_456_789, "why": why}
    return {"output_dir": "/scratch/experiments/a-rather-long-experiment-name", "iterations": [it, stopped],
            "last_stop": None, "checkpoints": [ck, {**ck, "name": "checkpoint-30000", "why": ""}],
            "plan": {"strategy": "trainer", "weights_from": "checkpoint-33000", "state_from": "checkpoint-33000",
                     "next_iteration": 1, "next_step": 33000, "done": False, "reason": "the newest", "warnings": []},
            "hints": ["iteration 1 was interrupted: resume with: torchrun --nproc_per_node=4 train_iterative.py "
                      "--output_dir /scratch/experiments/a --resume_from auto --resume_from_iteration auto"]}


@pytest.mark.parametrize("width", [80, 120])
def test_status_reads_at_80_columns_and_piped_nothing_cut_notes_below_on_one_line(width):
    import io

    from rich.console import Console

    buf = io.StringIO()
    status.show(_report(), Console(file=buf, width=width))  # a file: what a pipe gets
    text = buf.getvalue()
    lines = text.splitlines()
    assert "…" not in text
    for line in lines:
        assert len(line.rstrip()) <= width or line.startswith(("hint:", "[1] ")), line
    for word in ("stopped", "(SIGTERM,", "train):", "interrupted", "2999/30000", "19988/80000", "30000",
                 "12-01 18:31", "unverified", "16123.5 MB"):
        assert word in text, word  # whole, never cut
    assert sum(line.startswith("[1] checkpoint-33000: no itertrain manifest") for line in lines) == 1
    assert lines[[i for i, line in enumerate(lines) if line.startswith("[1] ")][0]].endswith("global step 33000")


def schema_rows() -> dict[str, set[str]]:
    """docs/status.md's `--json` schema table: {key: every `name` its row mentions}."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "status.md").read_text()
    table = text.split("### `--json` schema", 1)[1].split("\n## ", 1)[0]
    rows = [ln.split(" | ") for ln in table.splitlines() if ln.startswith("| `")]
    return {r[0].strip("|` "): set(re.findall(r"`([a-z_]+)`", r[-1])) for r in rows}


def test_the_json_schema_table_lists_every_artifact_field():
    fields = {f.name for f in dataclasses.fields(Artifact)}
    assert fields - schema_rows()["checkpoints"] == set()


def test_a_record_without_the_flags_given_says_to_repeat_them(tmp_path):
    import json

    (tmp_path / settings.SAVED_CONFIG).write_text(json.dumps({"num_iterations": 2, "world_size": 1}))
    args = status._parser().parse_args([str(tmp_path)])
    assert status.build(args)["hints"][-1] == status.OLD_RECORD
    (tmp_path / settings.SAVED_CONFIG).write_text(json.dumps({"num_iterations": 2, "given": {}}))
    assert status.OLD_RECORD not in status.build(args)["hints"]
