"""The verifier run safely: in-process or in a pool of processes, timeouts and errors counted as
rejected (or a one-line stop with --strict_verifier), verdicts in prompt order."""

from concurrent.futures.process import BrokenProcessPool

import pytest
from plugins import crash, hang, raises, slow_when_first

from itertrain.tasks import Example, TaskError
from itertrain.tasks.pool import ERRORS, TIMEOUTS, Abandoned, Checker
from itertrain.tasks.verifiers import exact

PROMPTS = [Example(f"q{i}", "ok") for i in range(3)]


def test_in_process_errors_are_rejections_counted_and_logged_once():
    said = []
    checker = Checker(raises, "--verifier tests:raises", log=said.append)
    verdicts, counts = checker.check(PROMPTS, [["ok", "raise"], ["raise", "no"], ["ok", "ok"]], first=10)
    assert verdicts == [[True, False], [False, False], [True, True]]
    assert counts == {TIMEOUTS: 0, ERRORS: 2}
    assert len(said) == 1 and said[0].startswith(
        "⚠️  --verifier tests:raises raised ValueError: cannot parse on prompt 10 (sample 1: 'q0')")


def test_strict_verifier_stops_with_one_line_naming_the_prompt():
    with pytest.raises(TaskError) as e:
        Checker(raises, "--verifier x", strict=True).check(PROMPTS, [["ok"], ["raise"], ["ok"]], first=4)
    assert str(e.value) == "--verifier x raised ValueError: cannot parse on prompt 5 (sample 0: 'q1') (--strict_verifier)"


def test_a_stop_request_abandons_before_the_next_prompt():
    asked = iter([None, "SIGTERM"])
    with pytest.raises(Abandoned, match="SIGTERM"):
        Checker(exact, "v").check(PROMPTS, [["ok"], ["ok"], ["ok"]], should_stop=lambda: next(asked))


@pytest.mark.e2e  # starts worker processes
@pytest.mark.parametrize("fn,kind", [(hang, TIMEOUTS), (crash, ERRORS)])
def test_pool_survives_a_hang_or_a_dead_worker_in_order(fn, kind):
    with Checker(fn, "v", workers=2, timeout=2.0) as checker:
        bad = fn.__name__
        verdicts, counts = checker.check(PROMPTS, [["ok", bad], ["no", "ok"], [bad, "ok"]])
    assert verdicts == [[True, False], [False, True], [False, True]]
    assert counts == {TIMEOUTS: 0, ERRORS: 0, kind: 2}


@pytest.mark.e2e
def test_pool_verdicts_come_back_in_prompt_order():
    outs = [[f"ok{i}{j}" for j in range(3)] + ["bad0"] for i in range(4)]
    prompts = [Example(f"q{i}", "ok") for i in range(4)]
    with Checker(slow_when_first, "v", workers=2, timeout=30) as checker:
        verdicts, counts = checker.check(prompts, outs)
    assert verdicts == [[True, True, True, False]] * 4 and counts == {TIMEOUTS: 0, ERRORS: 0}


@pytest.mark.e2e
def test_a_worker_lost_to_a_stop_request_abandons_instead_of_rejecting():
    """A stop signal sent to the whole process group reaches the pool's workers too: a call that
    fails while a stop is requested is the stop's, not the verifier's (no verdict is made up)."""
    asked = iter([None, "SIGTERM"])
    with Checker(crash, "v", workers=2, timeout=30) as checker:
        with pytest.raises(Abandoned, match="SIGTERM"):
            checker.check(PROMPTS[:1], [["crash", "ok"]], should_stop=lambda: next(asked))


@pytest.mark.e2e
def test_math_verify_runs_in_the_pool():
    """math-verify's own timeouts use signals, which work only in a process's main thread: the pool's
    workers run calls there."""
    from itertrain.tasks.verifiers import math

    with Checker(math, "v", workers=1, timeout=60) as checker:
        verdicts, counts = checker.check([Example("q", "\\frac{1}{2}")], [["so \\boxed{0.5}", "\\boxed{2}"]])
    assert verdicts == [[True, False]] and counts == {TIMEOUTS: 0, ERRORS: 0}


class _Broken:
    def result(self):
        raise BrokenProcessPool("All workers expired")

    def cancel(self):
        pass


class _Done(_Broken):
    def __init__(self, verdict):
        self.verdict = verdict

    def result(self):
        return self.verdict


def test_a_broken_pool_is_replaced_and_the_calls_from_there_made_again(monkeypatch):
    """pebble breaks the whole pool when a worker dies before its task's start reached the pool (seen on
    a loaded machine): the call and every later one are made once more, on a new pool."""
    checker, made = Checker(exact, "v", workers=2), []

    def schedule(ex, text):
        made.append(text)
        return _Broken() if len(made) == 2 else _Done(text == ex.answer)

    monkeypatch.setattr(checker, "_schedule", schedule)
    verdicts, counts = checker.check(PROMPTS, [["ok", "no"], ["ok"], ["no", "ok"]])
    assert verdicts == [[True, False], [True], [False, True]] and counts == {TIMEOUTS: 0, ERRORS: 0}
    assert made == ["ok", "no", "ok", "no", "ok"] + ["no", "ok", "no", "ok"]


def test_a_pool_broken_twice_by_one_call_counts_it_as_an_error(monkeypatch):
    checker, said = Checker(exact, "v", workers=2, log=lambda line: said.append(line)), []
    monkeypatch.setattr(checker, "_schedule", lambda ex, text: _Broken() if text == "bad" else _Done(True))
    verdicts, counts = checker.check(PROMPTS, [["ok", "bad"], ["ok"], ["ok"]])
    assert verdicts == [[True, False], [True], [True]] and counts == {TIMEOUTS: 0, ERRORS: 1}
    assert said[0].startswith("⚠️  v broke the verifier pool twice on prompt 0 (sample 1: 'q0')")
