"""progress.py: the live record a run keeps for `itertrain status --watch`, and what --watch shows."""

import os
from datetime import datetime, timedelta, timezone

from itertrain.app import settings, status
from itertrain.core import progress


def read(directory):
    return settings.read_json(os.path.join(directory, progress.NAME)) or None


def test_a_run_records_its_phase_and_steps_and_each_phase_counts_its_own(tmp_path):
    p = progress.Progress(str(tmp_path), 5)
    p.note(True, iteration=1, phase="generate", global_step=300)
    p.note(True, done=512, total=2000, unit="prompts")
    state = read(str(tmp_path))
    assert (state["iteration"], state["phase"], state["done"], state["total"]) == (1, "generate", 512, 2000)
    p.note(True, phase="train", done=0, total=300, unit="steps")
    p.note(done=7, global_step=307, loss=0.5)  # within EVERY seconds of the last write: kept, not written
    assert read(str(tmp_path))["done"] == 0
    p.note(True)
    assert read(str(tmp_path))["done"] == 7 and read(str(tmp_path))["loss"] == 0.5
    p.note(True, phase="evaluate")
    assert read(str(tmp_path))["done"] is None  # a new phase
    assert not [f for f in os.listdir(tmp_path) if f != progress.NAME]  # its temporary file renamed over it


def test_progress_outside_a_run_or_on_other_ranks_is_a_no_op(tmp_path):
    progress._current = None
    progress.note(True, iteration=0)
    assert read(str(tmp_path)) is None


def _state(**kw):
    started = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    return {"pid": os.getpid(), "num_iterations": 5, "iteration": 2, "phase": "train", "done": 150, "total": 300,
            "unit": "steps", "global_step": 750, "loss": 0.25, "iteration_started": started.isoformat(),
            "updated": (started + timedelta(seconds=40)).isoformat(), **kw}


def test_watch_lines_say_what_the_run_does_and_estimate_the_time_left():
    now = datetime(2026, 12, 1, 12, 0, 42, tzinfo=timezone.utc)
    lines = progress.describe(_state(), [100.0, 120.0], now=now)
    assert lines[0].startswith("now: iteration 2 (of 0-4), train: 150/300 steps, global step 750, loss 0.2500 "
                               "(updated 2 s ago")
    # 110 s per iteration: 68 s left of this one (42 s in), then 2 more
    assert lines[1] == "time: 110 s per iteration (mean of 2), this one 42 s so far, about 4 min 48 s left"
    gone = _state(pid=2 ** 22 + 12345)
    assert progress.describe(gone, [], now=now) == [
        "now: no run is active (the last one ended without finishing (killed or crashed) in the train phase; last "
        f"heard from at {gone['updated']})"]
    assert progress.describe(gone, [], now=now, stopped=True)[0].startswith(
        "now: no run is active (the last one stopped in the train phase; ")
    assert progress.describe(_state(phase="finished"), [], now=now) == [
        f"now: no run is active (the last one finished at {gone['updated']})"]
    assert progress.describe(None, []) == ["now: no run has recorded progress here yet"]


def test_watch_redraws_the_report_with_the_runs_progress(tmp_path, capsys):
    progress.Progress(str(tmp_path), 5).note(True, iteration=0, phase="generate", global_step=0)
    args = status._parser().parse_args([str(tmp_path), "--watch", "0.5"])
    slept = []
    assert status.watch(args, count=2, sleep=slept.append) == 0
    out = capsys.readouterr().out
    assert slept == [0.5] and out.count("itertrain status:") == 2 and out.count("now: iteration 0 (of 0-4), generate") == 2


def test_a_progress_record_that_cannot_be_written_warns_once_and_never_stops_the_run(tmp_path):
    import pytest

    p = progress.Progress(str(tmp_path / "gone"), 5)
    with pytest.warns(UserWarning, match="cannot record progress"):
        p.note(True, iteration=0)
    p.note(True, phase="train")  # no second warning, no error
