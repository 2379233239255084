"""The object-storage mirror (--mirror_to) end to end: real runs against a real S3 server on loopback
(moto's, tests/s3_server.py) and a file:// mirror. The experiment directory is deleted and the run
resumes from the mirror alone; the store refuses, fails, goes down and comes back."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from conftest import (
    DPO,
    PEFT,
    REPO,
    SMALL,
    TORCHRUN,
    killed_by,
    max_diff,
    reference_run,
    resume_until_done,
    run_cli,
    sized,
    zygote,
)
from s3_server import S3Server, require_auth

pytestmark = pytest.mark.e2e
AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())  # what every run of this module reaches the store with
    yield server
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    server.stop()


def bucket(s3, what: str) -> str:
    return s3.bucket(f"it-{what}-{uuid.uuid4().hex[:10]}"[:63]) + "/exp"


def fetched(stdout: str) -> set[str]:
    return set(re.findall(r"☁️  fetched (\S+) from the mirror", stdout))


def same_weights_on_the_mirror(s3, url: str, ref, name: str) -> None:
    from safetensors.torch import load

    there, here = load(s3.get(url, f"{name}/model.safetensors")), load((ref / name / "model.safetensors").read_bytes())
    assert there.keys() == here.keys()
    assert max((there[k] - here[k]).abs().max().item() for k in here) == 0.0


def test_output_dir_deleted_mid_run_resumes_from_the_mirror_alone(s3, reference, tmp_path):
    url = bucket(s3, "deleted")
    out = tmp_path / "exp"
    killed_by(run_cli(out, "--mirror_to", url, failpoints="train.step=10"), "train.step=10")
    shutil.rmtree(out)
    # the short command a user types on a fresh machine: the directory, the mirror, auto auto
    proc = resume_until_done(out, "--mirror_to", url, small=[])
    assert "settings from the experiment's record" in proc.stdout
    # what had reached the mirror when the run was killed depends on how far its uploads had got: the resume
    # goes on from the newest artifact complete there (or, if none, from the base)
    found = re.search(r"Model weights from: \S+/(checkpoint-\d+|iter_\d+) \(from the mirror\)", proc.stdout)
    chosen = found.group(1) if found else "base"
    loads = {"base", "samples_0", "samples_1", chosen}  # only what it loads (or samples_1's shards, if not whole)
    assert {f.split(".shards/")[0] for f in fetched(proc.stdout)} <= loads, proc.stdout
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert s3.get(url, "metrics.jsonl") == (reference / "metrics.jsonl").read_bytes()
    same_weights_on_the_mirror(s3, url, reference, "iter_1")
    listing = s3.listing(url)
    checkpoints = {k.split("/")[0] for k in listing if k.startswith("checkpoint-")}
    newest = sorted(checkpoints, key=lambda n: int(n.split("-")[1]))[-2:]
    assert checkpoints <= {*newest, chosen}  # --mirror_keep 2, and the one this run resumed from is kept
    assert {"iter_0/itertrain.json", "iter_1/itertrain.json"} <= set(listing)
    # status reads the mirror with no local directory
    shown = subprocess.run([sys.executable, "-m", "itertrain", "status", url, "--json"], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    report = json.loads(shown.stdout)
    assert report["plan"]["done"] and [r["state"] for r in report["iterations"]] == ["complete", "complete"]
    assert {a["location"] for a in report["artifacts"]} == {"only on the mirror"}
    assert f"--mirror_to {url}" in report["hints"][0] and f"--output_dir {out}" in report["hints"][0]
    shutil.rmtree(out)  # the command status printed, run as printed on another empty disk
    command = shlex.split(report["hints"][0].split("(change 3 as you like): ")[1])
    again = subprocess.run([sys.executable if w == "python" else w for w in command], cwd=REPO, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert again.returncode == 0 and "iteration 2" in again.stdout, again.stderr[-2000:]


@pytest.mark.parametrize("mirror, says", [
    ("not-a-url", "not a URL"),
    ("nosuchstore://bucket/x", "Protocol not known"),
    ("s3://itertrain-no-such-bucket/x", "does not exist"),
    ("refused", "refused our credentials"),
])
def test_a_mirror_that_cannot_be_used_is_refused_before_anything_is_written(s3, tmp_path, mirror, says):
    if mirror == "refused":
        mirror = bucket(s3, "refused")
        require_auth(True)
    try:
        for flags in ([], AUTO):  # a fresh run, and a resume on a fresh machine (it reads the mirror's record)
            out = tmp_path / f"exp{len(flags)}"
            proc = run_cli(out, "--mirror_to", mirror, *flags)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert proc.stderr.startswith("itertrain: error: ") and proc.stderr.count("\n") == 1, proc.stderr
            assert says in proc.stderr
            assert not out.exists()
    finally:
        require_auth(False)


def wait_for(path, pattern: str, proc, timeout: float = 240) -> str:
    """The run's output in `path` once it matches `pattern` (the run must still be going)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        try:  # waiting on the run itself: one that ended without printing it fails here, at once
            rc = proc.wait(0.05)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"the run ended (exit {rc}) without printing {pattern!r}: {text[-3000:]}")
    raise AssertionError(f"never printed {pattern!r}: {text[-3000:]}")


def spawn(out, *flags, failpoints=None, tmp):
    env = {k: v for k, v in os.environ.items() if k != "ITERTRAIN_FAILPOINTS"}
    if failpoints:
        env["ITERTRAIN_FAILPOINTS"] = failpoints
    argv = ["--output_dir", str(out), *sized(SMALL, flags), *flags]
    return zygote().spawn(argv, env, REPO, str(tmp / "stdout"), str(tmp / "stderr"))


def test_a_store_that_goes_down_and_comes_back_catches_up_without_ending_training(s3, reference, tmp_path):
    url, out = bucket(s3, "down"), tmp_path / "exp"
    run = spawn(out, "--mirror_to", url, tmp=tmp_path)
    wait_for(tmp_path / "stdout", r"☁️  mirror: s3://", run)
    s3.stop()
    try:
        wait_for(tmp_path / "stdout", r"⚠️  mirror: s3://\S+ failed", run)
    finally:
        s3.start()
    assert run.wait(300) == 0, (tmp_path / "stderr").read_text()[-3000:]
    text = (tmp_path / "stdout").read_text()
    assert text.count("failed (") == 1 and "answers again after" in text  # said once, then counted
    assert s3.get(url, "metrics.jsonl") == (reference / "metrics.jsonl").read_bytes()
    same_weights_on_the_mirror(s3, url, reference, "iter_1")


def test_a_stop_while_the_store_is_down_exits_75_in_its_grace_and_a_resume_uploads_the_rest(s3, reference, tmp_path):
    url, out = bucket(s3, "stopdown"), tmp_path / "exp"
    run = spawn(out, "--mirror_to", url, "--mirror_grace", "1", failpoints="signal.train.step=9", tmp=tmp_path)
    wait_for(tmp_path / "stdout", r"☁️  mirror: s3://", run)
    s3.stop()
    try:
        assert run.wait(300) == 75, (tmp_path / "stderr").read_text()[-3000:]
    finally:
        s3.start()
    record = json.loads((out / "itertrain_stop.json").read_text())
    assert record["mirrored"] is False and record["mirror"] == url and record["committed"] == "checkpoint-9"
    shown = json.loads(subprocess.run([sys.executable, "-m", "itertrain", "status", str(out), "--json"], cwd=REPO,
                                      capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout)
    assert shown["last_stop"]["mirrored"] is False
    assert any(c["name"] == "checkpoint-9" and c["location"] in ("uploading", "local") for c in shown["checkpoints"])
    resume_until_done(out, small=[])  # the disk survived: the short command, which uploads what waited
    shutil.rmtree(out)
    proc = resume_until_done(out, "--mirror_to", url, small=[])  # all there: nothing left to train
    assert "every requested iteration is already complete" in proc.stdout
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    same_weights_on_the_mirror(s3, url, reference, "iter_1")


@pytest.mark.parametrize("name, flags, kill", [
    ("peft_ref", PEFT, "train.step=10"),
    ("dpo_ref", (*DPO, "--report_to", "tensorboard"), "train.step=16"),
])
def test_lora_and_dpo_resume_from_the_mirror_alone(s3, tmp_path_factory, tmp_path, name, flags, kill):
    ref = reference_run(tmp_path_factory, name)[0]
    url, out = bucket(s3, name.replace("_", "")), tmp_path / "exp"
    killed_by(run_cli(out, *flags, "--mirror_to", url, failpoints=kill), kill)
    shutil.rmtree(out)
    resume_until_done(out, "--mirror_to", url, small=[])
    last = sorted((p.name for p in ref.glob("iter_*")), key=lambda n: int(n[5:]))[-1]
    assert max_diff(out / last, ref / last) == 0.0
    assert (out / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()


def test_a_file_mirror_and_a_branch_renamed_aside_on_it(reference, tmp_path):
    """file:// (a network file system): a resume from an earlier point sets the later artifacts aside on
    the mirror too, so that a fresh machine continues the branch, not what it replaced."""
    mirror, out = tmp_path / "mirror", tmp_path / "exp"
    url = f"file://{mirror}"
    assert run_cli(out, "--mirror_to", url).returncode == 0
    proc = resume_until_done(out, small=[], *[])  # nothing to do: the same experiment, done
    assert "already complete" in proc.stdout
    branch = run_cli(out, "--resume_from", "none", "--resume_from_iteration", "iter_0", "--learning_rate", "0.002",
                     small=[])
    assert branch.returncode == 0, branch.stderr[-2000:]
    assert [p.name for p in mirror.glob("iter_1.superseded-*")] and (mirror / "iter_1" / "itertrain.json").exists()
    # the record's mirror, dropped on purpose (an iteration more, so that the run records its settings)
    alone = resume_until_done(out, "--mirror_to", "none", "--num_iterations", "3", small=[])
    assert "☁️" not in alone.stdout and not (out / ".itertrain.mirror.json").exists()
    assert "☁️" not in resume_until_done(out, small=[]).stdout  # and so it stays (the record carries none)
    shutil.rmtree(out)
    again = resume_until_done(out, "--mirror_to", url, small=[])
    assert "already complete" in again.stdout  # the branch's iter_1 is the mirror's iter_1
    assert (out / ".itertrain.mirror.json").exists()


@pytest.mark.dist
def test_two_ranks_resume_from_the_mirror_alone(s3, reference_two_ranks, tmp_path):
    url, out = bucket(s3, "ranks"), tmp_path / "exp"
    killed_by(run_cli(out, "--mirror_to", url, launcher=TORCHRUN, failpoints="train.step=10", timeout=600),
              "train.step=10")
    shutil.rmtree(out)
    resume_until_done(out, "--mirror_to", url, launcher=TORCHRUN, small=[], timeout=600)
    assert max_diff(out / "iter_1", reference_two_ranks / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_bytes() == (reference_two_ranks / "metrics.jsonl").read_bytes()

