"""Stop requests (stop.py): a signal or --stop_after in every phase stops at the next safe point,
exits 75 after one line, and the resumed run ends exactly as the uninterrupted one.

The signals are real: `signal.POINT=V` failpoints make the process send one to itself at an exact
point (failpoints.py), so where it lands does not depend on timing.
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, SMALL, TORCHRUN, copy_experiment, max_diff, resume_until_done, run_cli

from itertrain.app import status
from itertrain.runtime import stop

pytestmark = pytest.mark.e2e
AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def stopped_line(proc) -> str:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("itertrain: stopped")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def same_as(out, ref):
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


CASES = {
    # failpoint (or flags), phase, iteration, global step, newest commit
    # (its first shard of 8 prompts committed after round 1)
    "generate": ("signal.generate=2", [], "generate", 0, 0, "samples_0.shards/prompts-00000000-00000008"),
    "verify": ("signal.verify=5", [], "verify", 0, 0, "nothing yet"),
    "train": ("signal.train.step=8", [], "train", 1, 8, "checkpoint-8"),
    "train-last-step": ("signal.train.step=6", [], "train", 0, 6, "checkpoint-6"),
    "evaluate": ("signal.evaluate=1", [], "evaluate", 0, 6, "checkpoint-6"),
    "save": ("signal.iteration.write=0", [], "save", 0, 6, "iter_0"),
    "iteration-start": ("signal.iteration=1", [], "generate", 1, 6, "iter_0"),
    "sigusr1": ("signal.train.step=4:SIGUSR1", [], "train", 0, 4, "checkpoint-4"),
    # HF's own flag maps onto the same path (not HF's handler, which let the iteration commit as finished)
    "jit-flag": ("signal.train.step=9", ["--enable_jit_checkpoint", "true"], "train", 1, 9, "checkpoint-9"),
    "stop_after": (None, ["--stop_after", "0.001"], "generate", 0, 0, "nothing yet"),
}


@pytest.mark.parametrize("case", CASES)
def test_stop_in_every_phase_resumes_exactly(tmp_path, reference, case, capsys):
    failpoint, flags, phase, iteration, step, committed = CASES[case]
    out = tmp_path / "exp"
    proc = run_cli(out, *flags, failpoints=failpoint)
    assert proc.returncode == stop.EXIT_STOPPED, proc.stderr[-3000:]
    reason = "stop_after" if case == "stop_after" else "SIGUSR1" if case == "sigusr1" else "SIGTERM"
    assert stopped_line(proc).startswith(
        f"itertrain: stopped ({reason}) in the {phase} phase of iteration {iteration} at global step {step}; "
        f"committed: {committed}. Resume with: python train_iterative.py --output_dir {out} ")
    record = json.loads((out / stop.RECORD).read_text())
    assert {k: record[k] for k in ("reason", "phase", "iteration", "global_step")} == {
        "reason": reason, "phase": phase, "iteration": iteration, "global_step": step}
    if committed.startswith("checkpoint"):  # work lost in training: 0 steps
        assert (out / committed / "itertrain.json").exists()
        assert not any(p.name.startswith("checkpoint-") and int(p.name.split("-")[1]) > step for p in out.iterdir())
    capsys.readouterr()
    assert status.main([str(out), "--json"]) == 0  # (in this process: the console script is tests/test_cli.py's)
    st = json.loads(capsys.readouterr().out)
    assert st["last_stop"]["reason"] == reason
    assert st["iterations"][iteration]["state"].startswith(f"stopped ({reason}, {phase})") or phase == "save"
    assert status.main([str(out), "--stopped"]) == 75
    proc = resume_until_done(out, *[f for f in flags if f not in ("--stop_after", "0.001")])
    same_as(out, reference)
    assert not (out / stop.RECORD).exists()  # a clean finish: not a stopped experiment any more
    assert status.main([str(out), "--stopped"]) == 0


def test_two_stops_in_a_row_then_resume(tmp_path, reference):
    out = tmp_path / "exp"
    assert run_cli(out, failpoints="signal.generate=1").returncode == 75
    assert run_cli(out, *AUTO, failpoints="signal.train.step=10").returncode == 75
    resume_until_done(out)
    same_as(out, reference)


def caught(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (Linux: the SigCgt mask in /proc)."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stop_signal_while_the_resume_still_imports_ends_in_exit_75(tmp_path, reference):
    """As a cluster's requeue does: the resume gets SIGTERM at once, while torch and transformers still
    import (seconds): it must stop at its first safe point with 75, not die of the signal (143)."""
    out = tmp_path / "exp"
    assert run_cli(out, failpoints="signal.train.step=9").returncode == 75
    proc = subprocess.Popen([sys.executable, str(REPO / "train_iterative.py"), "--output_dir", str(out), *AUTO],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "ITERTRAIN_FAILPOINTS"})
    while proc.poll() is None and not caught(proc.pid, signal.SIGTERM):
        pass  # the first moment its handler is there: before the heavy imports
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == stop.EXIT_STOPPED, stderr[-3000:]
    assert "stopped (SIGTERM) in the generate phase of iteration 1" in stdout
    resume_until_done(out, small=[])
    same_as(out, reference)


def test_second_ctrl_c_exits_at_once():
    code = ("import os, signal, time\nfrom itertrain.runtime import stop\nstop.install(['SIGINT'], None)\n"
            "os.kill(os.getpid(), signal.SIGINT)\nassert stop.requested_here() == 'SIGINT'\n"
            "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 130


@pytest.mark.parametrize("flags,needle", [
    (["--stop_signals", "SIGKILL"], "--stop_signals 'SIGKILL': not a signal that can be caught"),
    (["--stop_after", "soon"], "--stop_after 'soon': use a duration such as 23h30m"),
    (["--stop_after", "0"], "--stop_after '0': must be a finite number of seconds, more than 0"),
    (["--stop_after", "nan"], "--stop_after 'nan': must be a finite number of seconds, more than 0"),
    (["--stop_after", "inf"], "--stop_after 'inf': must be a finite number"),
    (["--stop_signals", "none", "--enable_jit_checkpoint", "true"], "--enable_jit_checkpoint asks for a checkpoint"),
])
def test_bad_stop_flags_are_one_line(tmp_path, flags, needle):
    proc = run_cli(tmp_path / "o", *flags)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and needle in err[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_durations():
    assert [stop.parse_duration(t) for t in ("23h30m", "90m", "1d2h", "45s", "3600", "1.5")] == [
        84600, 5400, 93600, 45, 3600, 1.5]
    assert stop.signal_names(["term", "SIGUSR1", "INT"]) == ["SIGTERM", "SIGUSR1", "SIGINT"]
    assert stop.signal_names(["none"]) == []


def test_training_that_ends_early_without_a_stop_request_is_not_committed():
    """Anything else that sets should_training_stop (an early-stopping callback, a user's)."""
    from types import SimpleNamespace

    from itertrain.app.loop import Start, finished_training
    from itertrain.runtime.restore import RecoveryError

    trainer = SimpleNamespace(stop_reason=None, state=SimpleNamespace(global_step=4))
    start = Start(1, "w", None, 6, "iter_0")
    with pytest.raises(RecoveryError, match="iteration 1's training ended after 4 of its 6 steps without a stop "
                                            "request.*iter_1 is not committed"):
        finished_training(trainer, start, 1, 6, stop.Place(1, 6, "iter_0"))
    trainer.state.global_step = 6
    finished_training(trainer, start, 1, 6, stop.Place(1, 6, "iter_0"))


@pytest.mark.dist
@pytest.mark.parametrize("spec", ["signal.train.step=8", "signal.train.step=8@1", "signal.generate=1@0"])
def test_two_ranks_stop_together_whether_one_or_both_are_signalled(tmp_path, reference_two_ranks, spec):
    out = tmp_path / "exp"
    proc = run_cli(out, failpoints=spec, launcher=TORCHRUN)
    assert proc.returncode != 0 and proc.stdout.count("itertrain: stopped (SIGTERM)") == 1, proc.stderr[-3000:]
    # both ranks stopped, resumable; a rank still leaving when torchrun saw the other exit gets its
    # SIGTERM, and must still exit as stopped (not -15)
    assert re.findall(r"exitcode\s+: (-?\d+)", proc.stderr) == ["75", "75"], proc.stderr[-3000:]
    record = json.loads((out / stop.RECORD).read_text())
    if "train" in spec:
        assert record["global_step"] == 8 and (out / "checkpoint-8").is_dir()
    resume_until_done(out, launcher=TORCHRUN)
    same_as(out, reference_two_ranks)


@pytest.mark.dist
def test_sigterm_to_the_torchrun_launcher_ends_committed_within_its_grace(tmp_path, reference_two_ranks):
    """torchrun forwards SIGTERM to its workers and kills them 30 s later: they must have stopped
    and committed by then. The signal goes when iteration 1's training starts (read from the run's
    own output, not from a clock)."""
    out = tmp_path / "exp"
    env = {k: v for k, v in os.environ.items() if k != "ITERTRAIN_FAILPOINTS"}
    cmd = [*TORCHRUN, str(REPO / "train_iterative.py"), "--output_dir", str(out), *SMALL]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if "▶️  iteration 1: training" in line:
            break
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=300)
    assert "itertrain: stopped (SIGTERM)" in rest, err[-3000:]
    assert "Sending process" in err and "forcefully exiting" not in err  # forwarded; nothing SIGKILLed
    assert json.loads((out / stop.RECORD).read_text())["iteration"] == 1
    resume_until_done(out, launcher=TORCHRUN)
    same_as(out, reference_two_ranks)


def test_a_copy_of_a_stopped_experiment_is_still_stopped(tmp_path, reference):
    """Nothing about a stop lives outside the experiment directory."""
    out = tmp_path / "exp"
    assert run_cli(out, failpoints="signal.train.step=3").returncode == 75
    moved = copy_experiment(out, tmp_path / "moved")
    resume_until_done(moved)
    same_as(moved, reference)
