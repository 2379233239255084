"""W&B and MLflow (--report_to wandb / mlflow) with the real libraries: W&B offline, read back from
its own transaction logs; MLflow with a real file store and a real local server. One run per
experiment across kills, stops and resumes, every step once and equal to what was committed; a new
branch starts a new run; a missing package or a refused store is one line before anything is written."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from chaos_harness import committed_rows, tracker_problem
from conftest import killed_by, run_cli

from itertrain import trackers
from itertrain.app import cli
from itertrain.trackers import wandb_run

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
NONE = ["--resume_from", "none", "--resume_from_iteration", "none"]


def crash_stop_resume(out, *flags) -> None:
    """Killed in training, stopped (SIGTERM) in evaluation, then resumed with auto auto to the end."""
    killed_by(run_cli(out, *flags, failpoints="train.step=4"), "train.step=4")
    stopped = run_cli(out, *AUTO, *flags, failpoints="signal.evaluate=1")
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    done = run_cli(out, *AUTO, *flags)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    for var in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.e2e
def test_wandb_one_run_across_kill_and_stop_and_new_branch(tmp_path, wandb_env):
    out = tmp_path / "exp"
    crash_stop_resume(out, "--report_to", "wandb")
    run_id = json.loads((out / trackers.RECORD).read_text())["wandb"]["id"]
    starts = sorted((out / "wandb").glob(f"offline-run-*-{run_id}*"))
    assert len(starts) == 3  # one W&B run, resumed by each start
    assert tracker_problem(out, committed_rows(out)) is None  # every committed step once, nothing else
    configs = [sorted(i.key for r in wandb_run.records(str(s / f"run-{run_id}.wandb"))
                      for i in (r.config.update if r.WhichOneof("record_type") == "config" else [])
                      if not i.key.startswith("_")) for s in starts]
    assert [bool(c) for c in configs].count(True) == 1 and "learning_rate" in max(configs)  # logged once

    # a torn transaction log (a write cut short) is read up to its last whole record
    log = starts[-1] / f"run-{run_id}.wandb"
    whole = list(wandb_run.records(str(log)))
    log.write_bytes(log.read_bytes()[:-5])
    assert [r.SerializeToString() for r in wandb_run.records(str(log))] == [r.SerializeToString() for r in whole[:-1]]

    branch = run_cli(out, *NONE, "--report_to", "wandb")
    assert branch.returncode == 0, branch.stderr[-2000:]
    assert "new branch" in branch.stdout + branch.stderr
    record = json.loads((out / trackers.RECORD).read_text())
    assert record["wandb"]["id"] != run_id and record["earlier"] == [{"wandb": {"id": run_id, "project": "itertrain"}}]
    assert tracker_problem(out, committed_rows(out)) is None  # the new run holds the new branch


def mlflow_check(out, uri: str, last_model: bool = False) -> None:
    from mlflow import MlflowClient

    assert tracker_problem(out, committed_rows(out), uri) is None
    run = MlflowClient(tracking_uri=uri).get_run(json.loads((out / trackers.RECORD).read_text())["mlflow"]["id"])
    assert run.data.params["learning_rate"] == "0.003"  # the settings, as parameters
    if last_model:
        assert run.data.tags["itertrain.final_model"] == str(out / "iter_1")


@pytest.mark.e2e
def test_mlflow_file_store_one_run_across_kill_and_stop(tmp_path, monkeypatch):
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "exp"
    crash_stop_resume(out, "--report_to", "mlflow", "--tracker_log_model", "true")
    mlflow_check(out, uri, last_model=True)


@pytest.mark.e2e
def test_mlflow_server_one_run_across_kill(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to a minute on a loaded machine; ends as soon as it answers
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                time.sleep(0.1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        out = tmp_path / "exp"
        killed_by(run_cli(out, "--report_to", "mlflow", failpoints="train.step=8"), "train.step=8")
        done = run_cli(out, *AUTO, "--report_to", "mlflow")
        assert done.returncode == 0, done.stderr[-2000:]
        mlflow_check(out, uri)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_missing_tracker_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert cli.main(["--output_dir", str(tmp_path / "o"), "--report_to", "wandb"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "itertrain: error: --report_to wandb needs wandb: pip install 'itertrain[wandb]'"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--report_to", "bogus"], "--report_to bogus: not an integration HF knows"),
    (["--report_to", "wandb", "bogus"], "--report_to bogus"),
    (["--tracker_log_model", "true"], "add --report_to wandb and/or mlflow"),
    (["--report_to", "tensorboard", "--tracker_log_model", "true"], "add --report_to wandb and/or mlflow"),
])
def test_bad_report_flags_are_one_line_before_anything_is_written(tmp_path, capsys, flags, needle):
    """--report_to bogus used to reach HF's own check only when the first Trainer was built: after
    the base model and the whole generate phase, as a traceback."""
    assert cli.main(["--output_dir", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.e2e  # importing mlflow runs `uname -p` (platform.processor)
def test_mlflow_file_store_without_its_opt_in_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert cli.main(["--output_dir", str(tmp_path / "o"), "--report_to", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MLFLOW_ALLOW_FILE_STORE=true" in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "mlruns").exists()


def test_unreadable_tracker_record_is_one_line(tmp_path):
    (tmp_path / trackers.RECORD).write_text("{not json")
    with pytest.raises(trackers.TrackerError, match="cannot be read"):
        trackers.read_record(str(tmp_path))
    assert os.path.exists(tmp_path / trackers.RECORD)  # left for the user to mend


@pytest.mark.dist
def test_two_ranks_log_from_rank_0_only(tmp_path, wandb_env, monkeypatch):
    from test_models_and_ranks import torchrun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "exp"
    flags = ("--report_to", "wandb", "mlflow")
    killed_by(torchrun(out, *flags, failpoints="train.step=8"), "train.step=8", leaves=out / "checkpoint-6")
    done = torchrun(out, *AUTO, *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = json.loads((out / trackers.RECORD).read_text())["wandb"]["id"]
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}*"))) == 2  # one W&B process a start: rank 0's
    assert tracker_problem(out, committed_rows(out), uri) is None


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_line(capsys):
    """A dashboard gone away does not stop training; the next start catches it up."""
    class Broken:
        kind = "mlflow"

        def steps(self, *a):
            raise ConnectionError("server at http://127.0.0.1:5000 is gone")

    class Fine:
        kind = "wandb"
        seen: list = []

        def steps(self, first, losses, lrs, extra=None):
            self.seen.append(first)

        def close(self, outcome):
            self.seen.append(outcome)

    both = trackers.Trackers([Broken(), Fine()])
    both.steps(1, [0.5], [0.1])
    both.steps(2, [0.4], [0.1])
    both.close("finished")
    assert Fine.seen == [1, 2, "finished"]
    said = [line for line in capsys.readouterr().out.splitlines() if "mlflow" in line]
    assert len(said) == 1 and "ConnectionError" in said[0] and "catches it up" in said[0], said


@pytest.mark.e2e  # importing mlflow runs `uname -p` (platform.processor)
def test_a_tracker_that_cannot_be_opened_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """Seen in a random-kill sweep: a kill during MLflow's creation of its sqlite database left it
    half made, and every resume stopped on it. A store that cannot be opened is now one line; the
    run goes on, and a later start that can open it catches it up from the committed curves."""
    (tmp_path / "broken.db").write_bytes(b"not a database at all, " * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'broken.db'}")
    opened = trackers.open_all(str(tmp_path), ["mlflow"], [], False, {"learning_rate": 0.1}, "exp")
    assert opened.opened == []
    said = [line for line in capsys.readouterr().out.splitlines() if "mlflow" in line]
    assert len(said) == 1 and "cannot be opened" in said[0] and "catches it up" in said[0], said
