"""The self-training loop end to end: phases are complete-or-absent artifacts, crashes inside any
phase resume to the uninterrupted run's weights and metrics, and generation is never redone."""

import json

import pytest
from conftest import copy_experiment, killed_by, max_diff, resume_until_done, run_cli

pytestmark = pytest.mark.e2e


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_metrics_rows_have_every_field(reference):
    rows = metrics(reference)
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        assert set(r) >= {"iteration", "eval_accuracy", "acceptance_rate", "pass_at_k", "num_train_samples",
                          "train_loss", "global_step"}
    gen = (reference / "samples_0" / "generated.jsonl").read_text().splitlines()
    assert len(gen) == 24 * 2  # every prompt, every sample: none dropped or duplicated
    assert sorted((r["i"], r["s"]) for r in map(json.loads, gen)) == [(i, s) for i in range(24) for s in range(2)]


def test_crash_inside_generation_of_iteration_1(tmp_path, reference):
    out = tmp_path / "exp"
    assert run_cli(out, "--num_iterations", "1").returncode == 0
    crashed = killed_by(run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto", failpoints="generate=8"),
                        "generate=8")
    assert "generating" in crashed.stdout
    assert not (out / "samples_1").exists()
    resume_until_done(out)
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert metrics(out) == metrics(reference)


def test_crash_in_training_does_not_generate_again(tmp_path, reference):
    out = tmp_path / "exp"
    killed_by(run_cli(out, failpoints="train.step=10"), "train.step=10")
    made = json.loads((out / "samples_1" / "itertrain.json").read_text())["created"]
    proc = resume_until_done(out)
    assert "iteration 1: generating" not in proc.stdout
    assert "iteration 1: reusing committed samples_1" in proc.stdout
    assert json.loads((out / "samples_1" / "itertrain.json").read_text())["created"] == made
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert metrics(out) == metrics(reference)


def test_crash_between_training_and_save_does_not_train_again(tmp_path, reference):
    out = tmp_path / "exp"
    killed_by(run_cli(out, failpoints="train.step=12"), "train.step=12")  # checkpoint-12 committed, iter_1 not
    proc = resume_until_done(out)
    assert "evaluate and save only" in proc.stdout and "generating" not in proc.stdout
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert metrics(out) == metrics(reference)


def test_samples_of_other_weights_are_set_aside(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    # A new branch from iter_0 with other sampling settings: samples_1 no longer matches.
    proc = run_cli(out, "--resume_from", "none", "--resume_from_iteration", "iter_0", "--temperature", "0.7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "made by other weights or settings" in proc.stdout
    assert len(list(out.glob("samples_1.superseded-*"))) == 1


def test_jsonl_task_end_to_end_and_bad_input(tmp_path):
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)[::-1]} for a in range(6) for b in range(6)]
    tr, ev = tmp_path / "tr.jsonl", tmp_path / "ev.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    ev.write_text("".join(json.dumps(r) + "\n" for r in rows[30:]))
    out = tmp_path / "exp"
    proc = run_cli(out, "--train_prompts", str(tr), "--eval_prompts", str(ev), "--sft_data", str(tr),
                   "--verifier", "numeric", "--num_iterations", "1", "--max_new_tokens", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics(out)[0]["num_train_samples"] >= 30
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"answer": "3"}\n')
    proc = run_cli(tmp_path / "exp2", "--train_prompts", str(bad), "--eval_prompts", str(ev))
    assert proc.returncode == 2 and "bad.jsonl:2: needs a non-empty string field \"prompt\"" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "exp2").exists()  # nothing written


def test_verifier_that_raises_stops_cleanly_with_strict_verifier(tmp_path, monkeypatch):
    (tmp_path / "badverifier.py").write_text("def check(example, completion):\n    raise ValueError('nope')\n")
    rows = [{"prompt": "1+1=", "answer": "2"}]
    tr = tmp_path / "tr.jsonl"
    tr.write_text(json.dumps(rows[0]) + "\n")
    out = tmp_path / "exp"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = run_cli(out, "--train_prompts", str(tr), "--eval_prompts", str(tr), "--verifier", "badverifier:check",
                   "--strict_verifier", "true", "--max_new_tokens", "8", "--max_steps", "2", "--num_iterations", "1",
                   "--disable_tqdm", "true", small=())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--verifier badverifier:check raised ValueError: nope" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "samples_0").exists() and not list((out / ".staging").glob("*/itertrain.json"))
