"""Faults beyond a crash: branches that crash, an unwritable directory, a model directory
without weights. (Two ranks whose views or loads differ: test_models_and_ranks.py.)"""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO, SMALL, copy_experiment, max_diff, resume_until_done, run_cli

pytestmark = pytest.mark.e2e

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
OLD = ["checkpoint-3", "checkpoint-6", "checkpoint-9", "checkpoint-12", "iter_0", "iter_1"]


def test_scratch_branch_sets_everything_aside_and_its_crash_resumes_itself(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    proc = run_cli(out, "--resume_from", "none", "--resume_from_iteration", "none", failpoints="train.step=4")
    assert proc.returncode == 137, proc.stderr[-2000:]
    # Before the new branch's first write, every later artifact was renamed aside, none deleted.
    for name in OLD:
        assert len(list(out.glob(f"{name}.superseded-*"))) == 1, name
    assert sorted(p.name for p in out.glob("checkpoint-*") if "." not in p.name) == ["checkpoint-3"]
    proc = resume_until_done(out)
    assert "checkpoint-3" in proc.stdout and "superseded" not in proc.stdout.split("RECOVERY STRATEGY")[0]
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert len(list(out.glob("iter_1.superseded-*"))) == 1  # the old branch is still there, aside


def test_explicit_checkpoint_branch_crash_resumes_the_new_branch(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    proc = run_cli(out, "--resume_from", "3", "--resume_from_iteration", "none", failpoints="train.step=8")
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*") if "." not in p.name) == [
        "checkpoint-3", "checkpoint-6"]
    assert (out / "iter_0").is_dir() and len(list(out.glob("iter_0.superseded-*"))) == 1
    resume_until_done(out)
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


def _as_nobody(argv, env_extra, cwd):
    env = {**os.environ, "HOME": env_extra["HOME"], "HF_HOME": env_extra["HOME"], **env_extra}
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop root")
def test_unwritable_output_dir_is_one_line_error():
    """As an ordinary user (root writes anywhere): a directory it cannot create or write into. The
    dropped user runs this environment's interpreter and packages from where they lie; a checkout in a
    private directory (mktemp -d) hides them from it, and then the test says so and skips."""
    top = tempfile.mkdtemp(prefix="itertrain-perm-")
    try:
        os.chmod(top, 0o755)
        home = os.path.join(top, "home")
        os.makedirs(home)
        os.chown(home, 65534, 65534)
        probe = _as_nobody([sys.executable, "-c", "import transformers, itertrain.app.cli"], {"HOME": home}, top)
        if probe.returncode != 0:
            why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"uid 65534 cannot run this checkout's environment ({REPO}: a private directory?): {why}")
        existing = os.path.join(top, "existing")
        os.makedirs(existing, mode=0o755)
        for target, needle in [(os.path.join(top, "new"), "cannot create it"), (existing, "not writable")]:
            proc = _as_nobody([sys.executable, str(REPO / "train_iterative.py"), "--output_dir", target, *SMALL],
                              {"HOME": home}, top)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr and needle in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert os.listdir(existing) == []
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_model_dir_without_weights_is_one_line_error(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    proc = run_cli(tmp_path / "exp", "--model_name", str(model))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("no model weights (*.safetensors or *.bin)")
    assert not (tmp_path / "exp").exists()


def test_file_event_hooks_do_not_stack_in_one_process(tmp_path, monkeypatch):
    """Runs in one process (in-process callers) arm the file-event hook each time: one hook counts."""
    from itertrain.core import failpoints

    root, log = tmp_path / "exp", tmp_path / "events.log"  # the log outside the watched directory
    root.mkdir()
    monkeypatch.setenv(failpoints.LOG_ENV, str(log))
    for _ in range(3):
        failpoints.install_file_events(str(root))
    (root / "x").write_text("1")
    assert len(log.read_text().splitlines()) == 1
    monkeypatch.delenv(failpoints.LOG_ENV)
    failpoints.install_file_events(str(root))  # unarmed now: nothing counts
    (root / "y").write_text("1")
    assert len(log.read_text().splitlines()) == 1
