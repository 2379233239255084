"""The users' view: status, plot, TensorBoard, config files, settings warnings, quiet output."""

import json
import struct

import pytest
from conftest import REPO, SMALL, copy_experiment, dry_run, killed_by, resume_until_done, run_cli

from itertrain.app import cli, config, settings

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard directory, per tag, in the order written (files by name)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list] = {}
    for f in sorted(logdir.iterdir()):
        data, i = f.read_bytes(), 0
        while i < len(data):  # TFRecord: length (8), its crc (4), the event, its crc (4)
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.e2e
def test_tensorboard_one_run_global_steps_resume_continues_without_duplicates(tmp_path):
    tb = ["--report_to", "tensorboard", "--logging_steps", "2"]
    ref, out = tmp_path / "ref", tmp_path / "exp"
    assert run_cli(ref, *tb).returncode == 0
    killed_by(run_cli(out, *tb, failpoints="train.step=10"), "train.step=10")  # live steps 7-10 written
    resume_until_done(out, *tb)
    want, got = scalars(ref / "tensorboard"), scalars(out / "tensorboard")
    assert [s for s, _ in want["train/loss"]] == list(range(1, 13))  # one axis across both iterations
    assert [s for s, _ in want["iteration/eval_accuracy"]] == [6, 12]
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), (tag, steps)  # no duplicate, no step backwards
    assert got == want  # the resumed run continues the very same curves
    assert not list(out.glob("runs")) and not list((out / ".staging").glob("trainer/runs"))  # HF's own is off


def test_config_file_with_command_line_override(tmp_path):
    yaml_file, json_file = tmp_path / "c.yaml", tmp_path / "c.json"
    yaml_file.write_text("learning_rate: 0.01\nmax_steps: 7\ncarry_optimizer_state: true\nreport_to: [none]\n")
    json_file.write_text(json.dumps({"learning_rate": 0.01, "num_iterations": 3}))
    cfg = config.parse([str(yaml_file), "--output_dir", str(tmp_path / "o"), "--max_steps", "9"])
    assert (cfg.train.learning_rate, cfg.train.max_steps, cfg.it.carry_optimizer_state) == (0.01, 9, True)
    cfg = config.parse([str(json_file), "--output_dir", str(tmp_path / "o")])
    assert (cfg.train.learning_rate, cfg.it.num_iterations) == (0.01, 3)


@pytest.mark.parametrize("text,needle", [
    ("learning_rate: [", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping"),
    ("lerning_rate: 0.1\n", "unknown setting 'lerning_rate'"), ("max_steps: lots\n", "invalid int value"),
])
def test_bad_config_file_is_one_line_error(tmp_path, capsys, text, needle):
    from itertrain.app.cli import main

    f = tmp_path / "c.yaml"
    f.write_text(text)
    assert main([str(f), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_malformed_typed_flag_is_one_line(tmp_path, capsys):
    assert cli.main(["--output_dir", str(tmp_path / "o"), "--num_iterations", "many"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "itertrain: error: argument --num_iterations/--num-iterations: invalid int value: 'many'"]
    assert not (tmp_path / "o").exists()


def test_settings_differences_are_named():
    assert settings.differences({"learning_rate": 0.003, "seed": 1, "save_steps": 100},
                              {"learning_rate": 0.01, "seed": 1, "save_steps": 50}) == ["learning_rate: 0.003 -> 0.01"]


@pytest.mark.e2e
def test_resume_with_other_hyperparameters_warns_and_config_is_saved(tmp_path, crashed_in_iter1):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    saved = json.loads((out / "itertrain_config.json").read_text())
    assert saved["args"]["learning_rate"] == 0.003 and saved["started_with"]["max_steps"] == 6
    plan, _ = dry_run(out, *AUTO, "--learning_rate", "0.01", "--warmup_steps", "2")
    warning = next(w for w in plan["warnings"] if "other settings" in w)
    assert "learning_rate: 0.003 -> 0.01" in warning and "warmup_steps: 5 -> 2" in warning
    plan, _ = dry_run(out, *AUTO)
    assert not any("other settings" in w for w in plan["warnings"])


def _command(main, argv, capsys) -> tuple[int, str, str]:
    """An itertrain subcommand in this process (the console script is tests/test_cli.py's)."""
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.e2e
def test_status_json_schema_hint_and_plot(tmp_path, crashed_in_iter1, capsys):
    from itertrain.app import plot, status

    rc, stdout, _ = _command(status.main, [str(crashed_in_iter1), "--json"], capsys)
    d = json.loads(stdout)
    assert rc == 0 and set(d) == {"output_dir", "settings", "last_stop", "generation", "iterations", "checkpoints",
                                  "artifacts", "mirror", "set_aside", "plan", "hints"}
    assert d["last_stop"] is None
    from test_status import schema_rows

    documented = schema_rows()
    assert set(documented) == set(d)
    for key in ("iterations", "checkpoints", "artifacts", "settings"):
        items = d[key] if isinstance(d[key], list) else [d[key]]
        listed = documented["checkpoints" if key == "artifacts" else key]  # ("in the same form")
        assert {k for item in items for k in item} - listed == set(), key
    assert [(r["iteration"], r["state"]) for r in d["iterations"]] == [(0, "complete"), (1, "interrupted at step 3/6")]
    it0 = d["iterations"][0]
    assert it0["num_generated"] == 48 and it0["global_step"] == 6 and it0["seconds"] > 0 and it0["train_loss"] > 0
    assert [c["name"] for c in d["checkpoints"]] == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    assert d["hints"][0] == (f"iteration 1 was interrupted at step 3 of 6 (global step 9): resume with: python "
                             f"train_iterative.py --output_dir {crashed_in_iter1} --resume_from auto "
                             "--resume_from_iteration auto")
    png = tmp_path / "p.png"
    rc, stdout, stderr = _command(plot.main, [str(crashed_in_iter1), "-o", str(png)], capsys)
    assert rc == 0 and stdout.strip() == str(png), stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, stderr = _command(plot.main, [str(empty)], capsys)
    assert rc == 2 and "nothing to plot yet" in stderr


@pytest.mark.e2e
def test_output_without_a_terminal_has_no_progress_bars(tmp_path):
    quiet = [a for a in SMALL if a not in ("--disable_tqdm", "true")]  # left to the default here
    proc = run_cli(tmp_path / "q", small=quiet)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr and "it/s]" not in proc.stderr
    assert proc.stdout.count("CHECKPOINT RECOVERY SYSTEM") == 1


def test_config_reference_is_generated_from_the_code():
    from itertrain.app import configdoc

    assert (REPO / "docs" / "config.md").read_text() == configdoc.render(), \
        "docs/config.md is stale: python -m itertrain.app.configdoc > docs/config.md"
