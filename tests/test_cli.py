"""Bad input: one line, exit 2, no traceback. Plus the other entry points, status, and the lock."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SMALL, copy_experiment, run_cli

MALFORMED = [("--resume_from", v) for v in ("latest", "-3", "1.5", "../x", "")] + [
    ("--resume_from_iteration", v) for v in ("iter_x", "iter_-1", "../x", "", "3")]


@pytest.mark.parametrize("flag,value", MALFORMED)
def test_malformed_selector_exits_2_one_line(tmp_path, capsys, flag, value):
    from itertrain.app.cli import main

    assert main(["--output_dir", str(tmp_path / "x"), flag, value]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("flag,value", [("--resume_from", "latest"), ("--resume_from_iteration", "iter_x")])
def test_malformed_selector_in_a_real_process_is_one_line(tmp_path, flag, value):
    proc = subprocess.run([sys.executable, str(REPO / "train_iterative.py"), "--output_dir", str(tmp_path / "x"),
                           flag, value], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()


def test_error_message_is_one_line(tmp_path, capsys):
    from itertrain.app.cli import main

    assert main(["--output_dir", str(tmp_path), "--resume_from", "latest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["itertrain: error: --resume_from 'latest' is not valid: use 'none', 'auto' or a step "
                   "number N (for checkpoint-N)"]


@pytest.mark.parametrize("argv,needle", [
    ([], "--output_dir is required"),
    (["--output_dir", "X", "--model_name", "/nonexistent/model"], "not a local directory"),
    (["--output_dir", "X", "--num_iterations", "0"], "--num_iterations must be at least 1"),
    (["--output_dir", "X", "--save_only_model", "true"], "--save_only_model is not supported"),
])
def test_bad_arguments(tmp_path, capsys, argv, needle):
    from itertrain.app.cli import main

    argv = [str(tmp_path / "o") if a == "X" else a for a in argv]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.e2e
def test_explicit_missing_artifact_lists_what_exists(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    proc = run_cli(out, "--resume_from", "7", "--resume_from_iteration", "none")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "checkpoint-7 does not exist; usable here: checkpoint-3, checkpoint-6, checkpoint-9, checkpoint-12" in proc.stderr
    proc = run_cli(out, "--resume_from", "none", "--resume_from_iteration", "iter_5")
    assert proc.returncode == 2 and "iter_5 does not exist; usable here: iter_0, iter_1" in proc.stderr


# The console script pip installed beside this interpreter (whatever the environment is called).
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "itertrain")


@pytest.mark.e2e
def test_status_json_and_table(tmp_path, crashed_in_iter1):
    proc = subprocess.run([CONSOLE_SCRIPT, "status", str(crashed_in_iter1), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    states = {a["name"]: (a["kind"], a["iteration"], a["global_step"], a["state"]) for a in d["artifacts"]}
    assert states == {"checkpoint-3": ("checkpoint", 0, 3, "complete"), "checkpoint-6": ("checkpoint", 0, 6, "complete"),
                      "checkpoint-9": ("checkpoint", 1, 9, "complete"), "iter_0": ("iteration", 0, 6, "complete")}
    assert d["plan"]["strategy"] == "trainer" and d["plan"]["state_from"] == "checkpoint-9"
    proc = subprocess.run([sys.executable, "-m", "itertrain", "status", str(crashed_in_iter1)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "checkpoint-9" in proc.stdout and "trainer" in proc.stdout


@pytest.mark.e2e
def test_second_run_on_same_dir_refuses(tmp_path, crashed_in_iter1):
    from itertrain.core import lock

    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    held = lock.acquire(str(out))
    try:
        proc = run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto")
    finally:
        held.close()
    assert proc.returncode == 1 and "in use by another itertrain run" in proc.stderr
    assert not (out / "iter_1").exists()


@pytest.mark.e2e
def test_console_script_and_module_entry_points(tmp_path):
    for i, entry in enumerate([(CONSOLE_SCRIPT, "train"), (sys.executable, "-m", "itertrain")]):
        out = tmp_path / f"e{i}"
        proc = subprocess.run([*entry, "--output_dir", str(out), "--dry_run"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["strategy"] == "scratch"
        assert "CHECKPOINT RECOVERY SYSTEM" in proc.stdout


def test_no_load_path_unpickles_arbitrary_objects():
    src = REPO / "src" / "itertrain"
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert "weights_only=False" not in text, f
        assert "pickle.load" not in text, f


def test_fsdp_without_a_distributed_launch_is_one_line_before_anything_is_written(tmp_path, capsys):
    from itertrain.app.cli import main

    # HF's Trainer would raise "Using fsdp only works in distributed training" after iteration 0's samples
    assert main(["--output_dir", str(tmp_path / "exp"), *SMALL, "--fsdp", "full_shard auto_wrap"]) == 2
    # (transformers' own deprecation of --fsdp as a string, once per process, is not ours)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[transformers]")]
    assert len(err) == 1 and err[0].startswith("itertrain: error: --fsdp needs a distributed launch"), err
    assert not (tmp_path / "exp").exists()


@pytest.mark.e2e
def test_the_collector_skips_start_up_objects_during_a_run_and_is_given_back_after(tmp_path, monkeypatch):
    import gc

    from itertrain.app import cli, loop

    seen = []
    real = loop.run_iterations
    monkeypatch.setattr(loop, "run_iterations", lambda *a, **k: seen.append((gc.isenabled(), gc.get_freeze_count()))
                        or real(*a, **k))
    assert cli.main(["--output_dir", str(tmp_path / "exp"), *SMALL, "--num_iterations", "1"]) == 0
    assert seen and seen[0][0] and seen[0][1] > 100_000  # on, with the imports out of its way
    assert gc.isenabled() and gc.get_freeze_count() == 0  # an in-process caller gets it back as it was
    assert cli.main(["--output_dir", str(tmp_path / "x"), "--resume_from", "latest"]) == 2  # a refusal too
    assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.parametrize("prog", ["itertrain", "python -m itertrain"])
def test_help_lists_the_subcommands_then_the_train_flags_under_the_programs_name(capsys, prog):
    from itertrain.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"], prog=prog)
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: {prog} {{train,status,plot}} ...")
    for command in ("train", "status", "plot"):
        assert f"\n  {command}  " in out
    assert f"usage: {prog} train [-h]" in out and "--resume_from_iteration" in out and "__main__" not in out


@pytest.mark.e2e
def test_python_dash_m_itertrain_help_names_itself():
    proc = subprocess.run([sys.executable, "-m", "itertrain", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m itertrain {train,status,plot}")
    assert "__main__.py" not in proc.stdout
