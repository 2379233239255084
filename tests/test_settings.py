"""A resume continues the experiment it resumes: the recorded flags it is not given, the three groups of
changes, and one resume command (app/settings.py)."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import (
    DPO,
    PEFT,
    REPO,
    copy_experiment,
    killed_by,
    max_diff,
    reference_run,
    run_cli,
)

from itertrain.app import cli, config, settings
from itertrain.core.errors import UsageError
from itertrain.tasks import tinymodel

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def record(out, given: dict) -> None:
    """A record as a run writes it: the flags `given`, and the resolved settings (defaults plus `given`)."""
    cfg = config.parse(["--output_dir", str(out), *config.flag_words(given)])
    now = config.resolved(cfg)
    out.mkdir(exist_ok=True)
    (out / settings.SAVED_CONFIG).write_text(json.dumps(
        {"args": now, "given": cfg.given, "started_with": now, "world_size": 1}))


def parse(out, *flags):
    return config.parse(["--output_dir", str(out), *flags])


def test_a_resume_takes_every_recorded_flag_it_is_not_given(tmp_path):
    record(tmp_path, {"num_iterations": 2, "max_steps": 6, "num_prompts": 24, "learning_rate": 0.002,
                      "report_to": ["tensorboard"], "stop_after": "1h", "output_dir": str(tmp_path)})
    cfg = parse(tmp_path, *AUTO)
    assert (cfg.it.num_iterations, cfg.train.max_steps, cfg.it.num_prompts, cfg.train.learning_rate) == (2, 6, 24, 0.002)
    assert cfg.train.report_to == ["tensorboard"]
    assert cfg.it.stop_after is None  # one job's deadline, not the experiment's
    assert cfg.carried == {"learning_rate": 0.002, "max_steps": 6, "num_iterations": 2, "num_prompts": 24,
                           "report_to": ["tensorboard"]}
    given = parse(tmp_path, *AUTO, "--max_steps", "9", "--num_iter", "3")  # given (abbreviated too): applied
    assert (given.train.max_steps, given.it.num_iterations, given.it.num_prompts) == (9, 3, 24)
    assert "max_steps" not in given.carried and set(given.given) >= {"max_steps", "num_iterations", "num_prompts"}


@pytest.mark.parametrize("flags", [
    ["--fsdp", "full_shard auto_wrap"],  # (resolved, it reads True, which does not parse back)
    ["--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr": 0.0001}'],
    ["--report_to", "tensorboard", "--stop_signals", "SIGUSR1", "SIGTERM", "--num_train_epochs", "2"],
    ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj", "--no_async_save"],
    ["--objective", "dpo", "--dpo_loss_type", "sigmoid", "sft", "--temperature", "0.7", "--bf16", "false"],
], ids=["fsdp", "scheduler", "lists", "lora", "dpo"])
def test_what_a_run_was_given_comes_back_the_same_on_a_short_resume(tmp_path, flags):
    cfg = parse(tmp_path, *flags)
    (tmp_path / settings.SAVED_CONFIG).write_text(json.dumps({"args": config.resolved(cfg), "given": cfg.given}))
    again = parse(tmp_path, *AUTO)
    assert {k: v for k, v in config.resolved(again).items() if k not in settings.PER_RUN} == {
        k: v for k, v in config.resolved(cfg).items() if k not in settings.PER_RUN}


def test_itertrain_defaults_are_applied_where_they_mean_something(tmp_path, monkeypatch):
    small = tmp_path / "small.yaml"
    small.write_text("max_steps: 6\nnum_prompts: 64\n")
    monkeypatch.setenv(config.DEFAULTS_ENV, str(small))
    cfg = parse(tmp_path / "a")
    assert (cfg.train.max_steps, cfg.it.num_prompts) == (6, 64) and {"max_steps", "num_prompts"} <= set(cfg.given)
    files = parse(tmp_path / "b", "--train_prompts", "t.jsonl", "--eval_prompts", "e.jsonl", "--max_steps", "9")
    assert files.train.max_steps == 9 and "num_prompts" not in files.given  # (the built-in task's: no meaning)
    with pytest.raises(UsageError, match="^--num_prompts needs the built-in task"):  # given: refused as ever
        parse(tmp_path / "c", "--train_prompts", "t.jsonl", "--eval_prompts", "e.jsonl", "--num_prompts", "9")


def test_epochs_given_on_a_resume_replace_the_recorded_steps(tmp_path):
    record(tmp_path, {"max_steps": 6})
    cfg = parse(tmp_path, *AUTO, "--num_train_epochs", "2")
    assert (cfg.train.max_steps, cfg.train.num_train_epochs) == (-1, 2)


def test_only_a_resume_reads_the_record(tmp_path):
    record(tmp_path, {"max_steps": 6})
    assert parse(tmp_path).train.max_steps == config.IterTrainingArguments.max_steps
    assert parse(tmp_path, "--resume_from_iteration", "auto").train.max_steps == 6


@pytest.mark.parametrize("flags, recorded", [
    (["--objective", "dpo"], "objective = 'sft'"),
    (["--use_peft", "true"], "use_peft = False"),
    (["--seed", "7"], "seed = 42"),
    (["--num_prompts", "30"], "num_prompts = 2000"),
])
def test_changing_what_defines_the_experiment_is_refused_unless_asked(tmp_path, flags, recorded):
    record(tmp_path, {"max_steps": 6})
    with pytest.raises(UsageError) as e:
        parse(tmp_path, *AUTO, *flags)
    assert str(e.value).startswith(f"--{flags[0][2:]} ") and recorded in str(e.value)
    assert "--change_experiment true" in str(e.value) and "\n" not in str(e.value)
    assert parse(tmp_path, *AUTO, *flags, "--change_experiment", "true").it.change_experiment


def test_an_adapters_shape_and_the_model_are_defining_and_a_path_is_compared_as_a_path(tmp_path, monkeypatch):
    model = tmp_path / "m"
    tinymodel.write_base(str(model), 0)
    out = tmp_path / "exp"
    record(out, {"model_name": str(model), "use_peft": True, "lora_r": 4})
    monkeypatch.chdir(tmp_path)
    assert parse(out, *AUTO, "--model_name", "m").it.model_name == "m"  # the same directory
    with pytest.raises(UsageError, match=r"^--lora_r 8: this experiment was recorded with lora_r = 4"):
        parse(out, *AUTO, "--lora_r", "8")
    other = tmp_path / "m2"
    tinymodel.write_base(str(other), 0)
    with pytest.raises(UsageError, match="recorded with model_name = "):
        parse(out, *AUTO, "--model_name", str(other))


def test_change_experiment_that_changes_nothing_is_refused(tmp_path):
    with pytest.raises(UsageError, match="only a resume of an experiment with recorded settings"):
        parse(tmp_path, "--change_experiment", "true")
    record(tmp_path, {"max_steps": 6})
    with pytest.raises(UsageError, match="no setting that defines the experiment changes"):
        parse(tmp_path, *AUTO, "--change_experiment", "true", "--learning_rate", "0.1")


def test_the_groups_name_real_settings():
    names = {f.name for dc in config.arguments() for f in dataclasses.fields(dc)} | {"world_size"}
    for group in (settings.FREE, settings.DEFINING, settings.PER_RUN):
        assert group <= names, group - names
    assert not settings.FREE & settings.DEFINING
    assert [settings.group(k) for k in ("num_iterations", "learning_rate", "objective")] == ["free", "branch", "defining"]


# ---- real runs: killed in iteration 1, resumed with the short command -------------------------------

CASES = {"non-default flags": ("reference", ()), "lora": ("peft_ref", tuple(PEFT)), "dpo": ("dpo_ref", tuple(DPO))}


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES)
def test_the_short_resume_continues_the_experiment(tmp_path_factory, tmp_path, case, capsys):
    """Resumed with the command `itertrain status` prints, run as printed: only --output_dir and the two
    resume flags."""
    name, flags = CASES[case]
    ref = reference_run(tmp_path_factory, name)[0]
    out = tmp_path / "exp"
    killed_by(run_cli(out, *flags, failpoints="train.step=10"), "train.step=10", leaves=out / "checkpoint-9")
    command = status_command(out, capsys)
    assert command == f"python train_iterative.py --output_dir {shlex.quote(str(out))} {' '.join(AUTO)}"
    proc = run_printed(command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "settings from the experiment's record: " in proc.stdout and "other settings" not in proc.stdout
    last = sorted(p.name for p in ref.glob("iter_*"))[-1]
    assert sorted(p.name for p in out.glob("iter_*")) == sorted(p.name for p in ref.glob("iter_*"))
    assert max_diff(out / last, ref / last) == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    if case == "lora":
        assert (out / last / "adapter").is_dir()


@pytest.mark.e2e
def test_a_lora_run_resumed_short_at_an_iteration_boundary_keeps_its_adapter(tmp_path_factory, tmp_path):
    ref = reference_run(tmp_path_factory, "peft_ref")[0]
    out = tmp_path / "exp"
    killed_by(run_cli(out, *PEFT, failpoints="iteration.write=1"), "iteration.write=1", leaves=out / "iter_0")
    assert run_cli(out, *AUTO, small=()).returncode == 0
    assert (out / "iter_1" / "adapter").is_dir() and max_diff(out / "iter_1", ref / "iter_1") == 0.0


def status_command(out, capsys) -> str:
    """The resume command of `itertrain status`'s hint, as printed."""
    capsys.readouterr()
    assert cli.main(["status", str(out)]) == 0
    hints = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("hint: ")]
    return hints[0].split(": ")[-1]


def run_printed(command: str) -> subprocess.CompletedProcess:
    """`command` through a shell, in the checkout, with this interpreter as `python`."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ITERTRAIN_FAILPOINTS", None)
    return subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_the_command_status_prints_resumes_an_experiment_on_its_own_model(tmp_path, capsys):
    model = tmp_path / "model"
    tinymodel.write_base(str(model), 3)
    flags = ("--model_name", str(model), "--learning_rate", "0.002", "--num_samples", "3")
    ref, out = tmp_path / "ref", tmp_path / "exp"
    assert run_cli(ref, *flags).returncode == 0
    killed_by(run_cli(out, *flags, failpoints="train.step=10"), "train.step=10", leaves=out / "checkpoint-9")
    command = status_command(out, capsys)
    assert command == (f"python train_iterative.py --model_name {shlex.quote(str(model))} --output_dir "
                       f"{shlex.quote(str(out))} --resume_from auto --resume_from_iteration auto")
    proc = run_printed(command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    more = status_command(out, capsys)  # all done: the same command, one more iteration
    assert more == f"{command} --num_iterations 3"
    assert run_printed(more).returncode == 0 and (out / "iter_2" / "itertrain.json").is_file()


@pytest.mark.e2e
def test_a_stop_prints_the_short_command_and_it_resumes_exactly(tmp_path_factory, tmp_path):
    ref = reference_run(tmp_path_factory, "reference")[0]
    out = tmp_path / "exp"
    proc = run_cli(out, failpoints="signal.train.step=10")
    assert proc.returncode == 75, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("itertrain: stopped"))
    command = line.split("Resume with: ")[1]
    assert command == (f"python train_iterative.py --output_dir {shlex.quote(str(out))} --resume_from auto "
                       "--resume_from_iteration auto")
    assert run_printed(command).returncode == 0
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0


@pytest.mark.e2e
@pytest.mark.parametrize("flags, needle", [
    (["--objective", "dpo"], "--objective dpo: this experiment was recorded with objective = 'sft'"),
    (["--use_peft", "true"], "--use_peft True: this experiment was recorded with use_peft = False"),
])
def test_changing_the_objective_or_the_adapter_is_refused_before_anything_is_written(
        tmp_path, crashed_in_iter1, flags, needle):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    proc = run_cli(out, *AUTO, *flags, small=())
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith(f"itertrain: error: {needle}"), proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
