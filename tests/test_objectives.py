"""Objectives (itertrain/objectives, pairs.py): the pairs builder, the DPO flags and what a resume
must match; then real --objective dpo runs, crashed and resumed bit-identically."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import (
    DPO,
    TORCHRUN,
    assert_damaged_checkpoint_falls_back,
    copy_experiment,
    flip,
    killed_by,
    max_diff,
    reference_run,
    resume_until_done,
    run_cli,
    shared,
    truncate,
)

from itertrain.app import config, settings
from itertrain.core import manifest
from itertrain.core.errors import UsageError
from itertrain.phases import pairs, samples
from itertrain.training import objectives
from itertrain.training.objectives import ObjectiveError, dpo

def parse(*flags):
    return config.parse(["--output_dir", "/tmp/unused", *flags])


# ---- pairs ---------------------------------------------------------------------------------------

def _rows(*prompts):
    """prompts: (prompt, [(completion, correct), ...]) in order."""
    return [{"i": i, "s": s, "prompt": p, "completion": c, "correct": ok}
            for i, (p, outs) in enumerate(prompts) for s, (c, ok) in enumerate(outs)]


def test_pairs_take_accepted_and_rejected_in_turn_cycling_through_the_shorter_list():
    rows = _rows(("1+1=", [("2", True), ("3", False), ("4", False), ("2", True), ("5", False)]))
    got = [(p["chosen"], p["rejected"]) for p in pairs.build(rows, 5)]
    assert got == [("2", "3"), ("2", "4"), ("2", "5")]  # duplicates of "2" collapse; 3 distinct rejected
    assert [(p["chosen"], p["rejected"]) for p in pairs.build(rows, 2)] == [("2", "3"), ("2", "4")]
    two = _rows(("p", [("a", True), ("b", True), ("x", False)]))
    assert [(p["chosen"], p["rejected"]) for p in pairs.build(two, 4)] == [("a", "x"), ("b", "x")]


def test_a_prompt_without_both_an_accepted_and_a_rejected_completion_makes_no_pair():
    rows = _rows(("solved", [("2", True), ("2", True)]), ("failed", [("7", False)]), ("both", [("1", True), ("0", False)]))
    assert [(p["i"], p["prompt"]) for p in pairs.build(rows, 3)] == [(2, "both")]


def test_gold_answers_serve_as_chosen_only_where_no_sample_passed():
    rows = _rows(("failed", [("7", False), ("8", False)]), ("both", [("1", True), ("0", False)]), ("none", []))
    made = pairs.build(rows, 2, gold={0: "5", 1: "1", 2: "9"})
    assert [(p["prompt"], p["chosen"], p["rejected"], p["gold"]) for p in made] == [
        ("failed", "5", "7", True), ("failed", "5", "8", True), ("both", "1", "0", False)]
    assert pairs.stats(made) == {"num_pairs": 3, "prompts_paired": 2, "pairs_gold_chosen": 2}


def test_pairs_are_deduplicated_over_the_phase():
    rows = _rows(("same", [("1", True), ("0", False)]), ("same", [("1", True), ("0", False)]))
    assert len(pairs.build(rows, 2)) == 1


def _samples(out: Path, k: int, rows: list[dict]) -> None:
    samples.save(str(out), k, rows, [], {"num_generated": len(rows)}, "base", "digest", {"num_samples": 2})


def test_pairs_are_committed_reused_and_set_aside_when_built_from_other_samples_or_settings(tmp_path):
    rows = _rows(("a", [("1", True), ("0", False), ("2", False)]))
    _samples(tmp_path, 1, rows)
    settings = {"pairs_per_prompt": 1, "gold_chosen": False}
    first = pairs.ensure(str(tmp_path), 1, settings, None)
    assert first == pairs.build(rows, 1) and manifest.problem(str(tmp_path / "pairs_1")) is None
    recorded = manifest.read(str(tmp_path / "pairs_1"))["extra"]
    assert recorded["stats"]["num_pairs"] == 1 and recorded["settings"] == settings
    assert pairs.ensure(str(tmp_path), 1, settings, None) == first and not list(tmp_path.glob("pairs_1.*"))
    more = pairs.ensure(str(tmp_path), 1, {**settings, "pairs_per_prompt": 2}, None)  # other settings
    assert len(more) == 2 and len(list(tmp_path.glob("pairs_1.superseded*"))) == 1
    shutil.rmtree(tmp_path / "samples_1")
    _samples(tmp_path, 1, _rows(("a", [("1", True), ("9", False)])))  # samples of another branch
    assert [p["rejected"] for p in pairs.ensure(str(tmp_path), 1, {**settings, "pairs_per_prompt": 2}, None)] == ["9"]
    assert len(list(tmp_path.glob("pairs_1.superseded*"))) == 2
    flip(tmp_path / "pairs_1" / "pairs.jsonl")
    assert pairs.ensure(str(tmp_path), 1, {**settings, "pairs_per_prompt": 2}, None)[0]["rejected"] == "9"
    assert len(list(tmp_path.glob("pairs_1.corrupt*"))) == 1


# ---- flags -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--objective", "dpo", "--dpo_loss_type", "sigmoid", "nope"], "--dpo_loss_type nope: not a TRL DPO loss"),
    (["--objective", "dpo", "--dpo_beta", "0"], "--dpo_beta must be > 0, got 0.0"),
    (["--objective", "dpo", "--dpo_learning_rate", "-1"], "--dpo_learning_rate must be > 0, got -1.0"),
    (["--objective", "dpo", "--dpo_args", "[1]"], "--dpo_args: not a JSON object ('[1]')"),
    (["--objective", "dpo", "--dpo_args", '{"max_length": "x"}'],
     "--dpo_args: argument --max_length/--max-length: invalid int value: 'x'"),
    (["--objective", "dpo", "--dpo_args", '{"f_divergence_type": "nope"}'], "--dpo_args: f_divergence_type 'nope' is"),
    (["--objective", "dpo", "--dpo_loss_type", "apo_zero", "--dpo_args", '{"f_divergence_type": "js_divergence"}'],
     "--dpo_args: f_divergence_type 'js_divergence' works only with the losses"),
    (["--objective", "dpo", "--dpo_loss_type", "exo_pair"], "--dpo_loss_type exo_pair needs --dpo_label_smoothing > 0"),
    (["--objective", "dpo", "--dpo_loss_type", "aot", "--dpo_args", '{"use_weighting": true}'],
     "--dpo_args: use_weighting does not work with the aot losses"),
    (["--objective", "dpo", "--dpo_args", "{x"], "--dpo_args: not a JSON object (Expecting property name"),
    (["--objective", "dpo", "--dpo_args", '{"learning_rate": 1}'],
     "--dpo_args: 'learning_rate' is not a DPOConfig option of its own"),
    (["--objective", "dpo", "--dpo_args", '{"beta": 1}'], "--dpo_args: 'beta' is set with --dpo_beta"),
    (["--objective", "dpo", "--dpo_args", '{"sync_ref_model": true}'],
     "--dpo_args: 'sync_ref_model' is not supported (the reference must stay fixed)"),
    (["--objective", "dpo", "--dpo_args", '{"loss_weights": [1, 2]}'],
     "`loss_weights` must have the same length as `loss_type`"),
    (["--objective", "dpo", "--deepspeed", str(Path(__file__).parent / "data" / "zero3.json")],
     "--objective dpo runs with DDP or DeepSpeed ZeRO-1/2"),
    (["--objective", "dpo", "--pairs_per_prompt", "0"], "--pairs_per_prompt must be >= 1"),
    (["--objective", "dpo", "--sft_iterations", "-1"], "--sft_iterations must be >= 0"),
    (["--objective", "kto"], "--objective 'kto': not an objective (use one of sft, dpo, grpo)"),
])
def test_dpo_settings_that_cannot_run_are_refused_in_one_line(flags, message):
    with pytest.raises(UsageError) as e:
        parse(*flags)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_dpo_config_copies_every_training_argument_as_set_not_trls_defaults():
    cfg = parse("--objective", "dpo", "--dpo_beta", "0.3", "--dpo_loss_type", "sigmoid", "sft", "--dpo_learning_rate",
                "1e-5", "--dpo_args", '{"max_length": 64}', "--seed", "7")
    made = dpo.config(cfg.train, cfg.objective_args["dpo"])
    assert (made.beta, made.loss_type, made.learning_rate, made.max_length) == (0.3, ["sigmoid", "sft"], 1e-5, 64)
    assert dpo.options(parse("--objective", "dpo", "--dpo_args", '{"max_length": null, "ld_alpha": "0.5"}')
                       .objective_args["dpo"]) == {
        "max_length": None, "ld_alpha": 0.5}  # parsed to the field's type, as on a command line
    assert (made.gradient_checkpointing, made.bf16, made.seed, made.max_steps) == (False, False, 7, cfg.train.max_steps)
    assert made.logging_steps == cfg.train.logging_steps  # TRL's default is 10
    assert dpo.config(cfg.train, parse("--objective", "dpo").objective_args["dpo"]).learning_rate == cfg.train.learning_rate


def test_which_objective_each_iteration_trains_with_and_what_is_a_result():
    obj = parse(*DPO).obj
    assert [objectives.name_for(obj, k) for k in range(3)] == ["sft", "dpo", "dpo"]
    assert [objectives.name_for(parse().obj, k) for k in range(2)] == ["sft", "sft"]
    assert settings.differences(config.resolved(parse(*DPO)), config.resolved(parse(*DPO, "--dpo_beta", "0.5"))) == [
        "dpo_beta: 0.1 -> 0.5"]


def _record(**kw):
    return {"objective": "dpo", "reference_mode": "initial", "reference": "iter_0", "reference_path": "iter_0",
            "reference_digest": "aaaa", "beta": 0.1, "loss_type": ["sigmoid"], **kw}


@pytest.mark.parametrize("was, now, message", [
    (_record(), None, "checkpoint-9 was trained with --objective dpo, this run's iteration trains with sft"),
    (None, _record(), "checkpoint-9 was trained with --objective sft, this run's iteration trains with dpo"),
    (_record(), _record(reference_digest="bbbb"), "checkpoint-9 was trained against the reference iter_0 (initial, "
     "weights aaaa), this run's is iter_0 (initial, weights bbbb): resume with the reference it was trained against"),
    (_record(), _record(reference_mode="previous"), "checkpoint-9 was trained against the reference iter_0 (initial"),
    (_record(), _record(beta=0.5), None),  # a setting, not the reference: the settings warning says it
    (None, None, None),
])
def test_a_resume_whose_objective_or_reference_differs_is_refused(was, now, message):
    if message is None:
        objectives._compare(was, now, "checkpoint-9")
        return
    with pytest.raises(ObjectiveError) as e:
        objectives._compare(was, now, "checkpoint-9")
    assert str(e.value).startswith(message)


# ---- real runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def dpo_ref(tmp_path_factory):
    return reference_run(tmp_path_factory, "dpo_ref")


def same_run(out, ref, last="iter_2"):
    assert max_diff(out / last, ref / last) == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


@pytest.mark.e2e
def test_a_dpo_run_commits_pairs_records_its_reference_and_logs_trls_rewards(dpo_ref):
    out, stdout = dpo_ref
    assert "▶️  iteration 1: training on 45 pairs (dpo) from iter_0, global steps 7-12" in stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "num_pairs" not in rows[0] and rows[1]["num_pairs"] == rows[1]["num_train_samples"] > 0
    assert 0.0 <= rows[2]["dpo_reward_accuracy"] <= 1.0 and isinstance(rows[2]["dpo_reward_margin"], float)
    for name in ("checkpoint-12", "iter_1", "checkpoint-18", "iter_2"):
        record = manifest.read(str(out / name))["extra"]["objective"]
        assert (record["reference"], record["reference_mode"]) == ("iter_0", "initial"), name
    assert "objective" not in manifest.read(str(out / "iter_0"))["extra"]
    extra = manifest.read(str(out / "pairs_1"))["extra"]
    assert extra["samples_digest"] == manifest.read(str(out / "samples_1"))["files"]["generated.jsonl"]["xxh3_64"]
    steps = json.loads((out / "iter_2" / "curve.json").read_text())["steps"]
    assert len(steps["rewards/margins"]) == 6 and sum(steps["rewards/margins"]) / 6 == rows[2]["dpo_reward_margin"]


@pytest.mark.e2e
def test_dpo_metrics_reach_status_plot_and_tensorboard(dpo_ref, capsys):
    from test_users import scalars

    from itertrain.app import cli

    out = dpo_ref[0]
    tb = scalars(out / "tensorboard")
    assert [s for s, _ in tb["iteration/num_pairs"]] == [12, 18]
    assert [s for s, _ in tb["iteration/dpo_reward_margin"]] == [12, 18]
    assert cli.main(["status", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["iterations"]
    assert [r["objective"] for r in rows] == ["sft", "dpo", "dpo"] and rows[1]["num_pairs"] == 45
    assert cli.main(["status", str(out)]) == 0
    assert "dpo: iteration 1: 45 pairs, reward margin" in capsys.readouterr().out
    assert cli.main(["plot", str(out), "--output", str(out.parent / "p.png")]) == 0 and (out.parent / "p.png").stat().st_size


@pytest.mark.e2e
@pytest.mark.parametrize("point", ["train.step=9", "pairs.write=1", "train.step=12", "checkpoint.write=15",
                                   "iteration.write=1", "train.step=16", "signal.train.step=10", "signal.iteration=2"])
def test_dpo_crash_or_stop_anywhere_resumes_bit_identically(dpo_ref, tmp_path, point):
    out = tmp_path / "exp"
    assert run_cli(out, *DPO, failpoints=point).returncode == (75 if point.startswith("signal.") else 137)
    proc = resume_until_done(out, *DPO)
    same_run(out, dpo_ref[0])
    if point == "train.step=9":
        assert "♻️  iteration 1: reusing committed pairs_1 (45 pairs)" in proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("flags, reference", [
    (["--dpo_reference", "previous", "--carry_optimizer_state", "true"], "iter_1"),  # iteration 2 resumes as "both"
    (["--sft_iterations", "0", "--async_save", "false"], "base"),  # dpo from the base, which is its reference
    (["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "all-linear"], "iter_0"),  # LoRA trained by DPO
])
def test_dpo_variants_crash_and_resume_bit_identically(tmp_path, flags, reference):
    ref, out = tmp_path / "ref", tmp_path / "exp"
    assert run_cli(ref, *DPO, *flags).returncode == 0
    killed_by(run_cli(out, *DPO, *flags, failpoints="train.step=13"), "train.step=13")
    resume_until_done(out, *DPO, *flags)
    same_run(out, ref)
    assert manifest.read(str(ref / "iter_2"))["extra"]["objective"]["reference"] == reference


@pytest.fixture(scope="session")
def dpo_crashed(tmp_path_factory):
    """A dpo run killed at step 9 (iteration 1, its first dpo iteration), after checkpoint-9 committed."""
    def build(work):
        out = work / "exp"
        killed_by(run_cli(out, *DPO, failpoints="train.step=9"), "train.step=9")
        return out
    return shared(tmp_path_factory, "dpo_crashed", build)


@pytest.mark.e2e
@pytest.mark.parametrize("flags, message", [
    (["--dpo_reference", "previous"], "checkpoint-9 was trained against the reference iter_0 (initial, weights"),
    # (the objective defines the experiment: changed only on purpose; DPO's recorded flags are then not carried)
    (["--objective", "sft", "--change_experiment", "true"],
     "checkpoint-9 was trained with --objective dpo, this run's iteration trains with sft"),
    (["--sft_iterations", "2"], "checkpoint-9 was trained with --objective dpo, this run's iteration trains with sft"),
])
def test_a_dpo_checkpoint_resumes_only_with_its_objective_and_reference(tmp_path, dpo_crashed, flags, message):
    out = copy_experiment(dpo_crashed, tmp_path / "exp")
    before = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    proc = run_cli(out, *flags, "--resume_from", "auto", "--resume_from_iteration", "auto", small=())
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    # refused before anything was renamed or written
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == before


DPO_CHECKPOINT_FILES = ["config.json", "curve.json", "generation_config.json", "itertrain.json", "model.safetensors",
                        "optimizer.pt", "rng_state.pth", "scheduler.pt", "tokenizer.json", "tokenizer_config.json",
                        "trainer_state.json", "training_args.bin"]


@pytest.mark.e2e
def test_the_corruption_matrix_names_every_file_of_a_dpo_checkpoint(dpo_crashed):
    assert sorted(p.name for p in (dpo_crashed / "checkpoint-9").iterdir()) == DPO_CHECKPOINT_FILES


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
@pytest.mark.parametrize("victim", [f for f in DPO_CHECKPOINT_FILES if f != "itertrain.json"])
def test_dpo_checkpoint_file_damaged_falls_back_to_the_iteration_model(tmp_path, dpo_crashed, victim, damage):
    assert_damaged_checkpoint_falls_back(dpo_crashed, tmp_path, victim, damage, *DPO)


@pytest.mark.e2e
@pytest.mark.parametrize("victim, damage", [("checkpoint-9/curve.json", flip), ("checkpoint-9/optimizer.pt", truncate),
                                            ("pairs_1/pairs.jsonl", flip)])
def test_a_damaged_dpo_checkpoint_or_pairs_file_is_set_aside_and_the_run_ends_as_the_uninterrupted_one(
        tmp_path, dpo_crashed, dpo_ref, victim, damage):
    out = copy_experiment(dpo_crashed, tmp_path / "exp")
    damage(out / victim)
    proc = resume_until_done(out, *DPO)
    same_run(out, dpo_ref[0])
    assert len(list(out.glob(victim.split("/")[0] + ".corrupt*"))) == 1, proc.stdout[-2000:]


@pytest.mark.dist
def test_dpo_on_two_ranks_crashed_and_resumed_ends_bit_identically(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "exp"
    flags = [*DPO, "--num_iterations", "2"]
    proc = run_cli(ref, *flags, launcher=TORCHRUN, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed_by(run_cli(out, *flags, launcher=TORCHRUN, failpoints="train.step=9", timeout=600), "train.step=9",
              leaves=out / "checkpoint-9")
    resume_until_done(out, *flags, launcher=TORCHRUN, timeout=600)
    same_run(out, ref, last="iter_1")
    assert manifest.read(str(out / "checkpoint-12"))["extra"]["world_size"] == 2


def test_dpo_on_a_task_without_training_prompts_is_one_line():
    import types

    from itertrain.tasks import TaskError

    cfg = parse(*DPO)
    with pytest.raises(TaskError, match="the task has no training prompts to sample and pair"):
        dpo.Dpo(cfg.objective_args["dpo"]).train_set(cfg, 1, {}, types.SimpleNamespace(train_prompts=[]), None)


@pytest.mark.e2e
def test_a_toy_objective_in_one_file_and_one_line(tmp_path, monkeypatch, capsys):
    """tests/toy_objective.py (one file) and the registration line below: its flag is parsed and refused
    like any other, it trains through the real command line (in this process, so that the registry
    line reaches it), and its declared metrics reach metrics.jsonl, the trackers' scalars, status and
    the plot, with no other module changed."""
    import matplotlib.axes
    from conftest import SMALL

    from itertrain.app import cli
    from itertrain.trackers import values

    monkeypatch.setitem(objectives.REGISTRY, "toy", "toy_objective:Toy")  # the one registration line
    with pytest.raises(UsageError, match="--toy_gold_limit must be >= 1, got 0"):
        parse("--objective", "toy", "--toy_gold_limit", "0")
    out = tmp_path / "exp"
    assert cli.main(["train", "--output_dir", str(out), *SMALL, "--objective", "toy", "--sft_iterations", "1",
                     "--toy_gold_limit", "16"]) == 0
    assert "iteration 1: training on 16 gold examples (toy) from iter_0" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "toy_examples" not in rows[0] and rows[1]["toy_examples"] == rows[1]["num_train_samples"] == 16
    assert rows[1]["toy_gold_share"] == 16 / 64
    assert values.iteration_values(rows[1])["iteration/toy_gold_share"] == 0.25
    assert cli.main(["status", str(out)]) == 0
    assert "toy: iteration 1: 16 gold examples, gold share 0.25" in capsys.readouterr().out
    labels = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **kw: labels.append(kw.get("label")) or
                        real(self, *a, **kw))
    assert cli.main(["plot", str(out), "--output", str(tmp_path / "p.png")]) == 0
    assert "toy: share of the gold data trained on" in labels

