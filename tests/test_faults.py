"""Faults beyond a crash: branches that crash, an unwritable directory, a model directory
without weights. (Two ranks whose views or loads differ: test_models_and_ranks.py.)"""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SMALL, copy_experiment, killed_by, max_diff, resume_until_done, run_cli

pytestmark = pytest.mark.e2e

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
OLD = ["checkpoint-3", "checkpoint-6", "checkpoint-9", "checkpoint-12", "iter_0", "iter_1"]


def test_scratch_branch_sets_everything_aside_and_its_crash_resumes_itself(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    killed_by(run_cli(out, "--resume_from", "none", "--resume_from_iteration", "none", failpoints="train.step=4"),
              "train.step=4", leaves=out / "checkpoint-3")
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
    killed_by(run_cli(out, "--resume_from", "3", "--resume_from_iteration", "none", failpoints="train.step=8"),
              "train.step=8")
    assert sorted(p.name for p in out.glob("checkpoint-*") if "." not in p.name) == [
        "checkpoint-3", "checkpoint-6"]
    assert (out / "iter_0").is_dir() and len(list(out.glob("iter_0.superseded-*"))) == 1
    resume_until_done(out)
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


# What root must lose to be refused a directory like anyone else: the capabilities that override file
# permissions. It keeps uid 0, so it still reads this checkout and its environment wherever they lie
# (a private directory of root's too), while a directory owned by another user with mode 0755 is not
# writable to it. An ordinary user needs nothing dropped.
NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"] if os.geteuid() == 0 else []


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="as root, setpriv (util-linux) is needed to drop the capabilities that override permissions")
def test_unwritable_output_dir_is_one_line_error(tmp_path):
    """A directory the run cannot create, and one it cannot write into: one line, exit 2, nothing written."""
    top = tmp_path / "top"  # owned by someone else, mode 0755: this user may read it, not write in it
    (top / "existing").mkdir(parents=True)
    if os.geteuid() == 0:
        for d in (top, top / "existing"):
            os.chown(d, 65534, 65534)
    for d in (top / "existing", top):
        d.chmod(0o555 if os.geteuid() else 0o755)
    try:
        for target, needle in [(top / "new", "cannot create it"), (top / "existing", "not writable")]:
            proc = subprocess.run([*NO_OVERRIDE, sys.executable, str(REPO / "train_iterative.py"), "--output_dir",
                                   str(target), *SMALL], cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr and needle in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert os.listdir(top / "existing") == [] and not (top / "new").exists()
    finally:
        for d in (top, top / "existing"):
            d.chmod(0o755)


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
