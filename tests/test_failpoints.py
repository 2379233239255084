"""Failpoint matching (ITERTRAIN_FAILPOINTS): which value and which rank a point is armed for."""

import pytest

from itertrain.core import failpoints


@pytest.fixture
def arm(monkeypatch):
    def set_(spec, rank="0"):
        monkeypatch.setenv(failpoints.ENV, spec)
        monkeypatch.setenv("RANK", rank)
    return set_


def test_unarmed_points_never_match(arm):
    arm("")
    assert not failpoints.matches("train.step", 25)
    assert failpoints.on_this_rank("train.step") is None


def test_exact_value_and_any_value(arm):
    arm("train.step=25, checkpoint.write")
    assert failpoints.matches("train.step", 25)
    assert not failpoints.matches("train.step", 24) and not failpoints.matches("train.step", 26)
    assert failpoints.matches("checkpoint.write", 7) and failpoints.matches("checkpoint.write")
    assert not failpoints.matches("iteration.write", 0)


def test_at_least_is_for_counters_that_move_in_steps(arm):
    arm("generate=10")
    assert not failpoints.matches("generate", 8, at_least=True)
    assert failpoints.matches("generate", 16, at_least=True)
    assert not failpoints.matches("generate", 16)


@pytest.mark.parametrize("rank,hit", [("0", False), ("1", True)])
def test_a_rank_suffix_arms_one_rank(arm, rank, hit):
    arm("generate=3@1", rank)
    assert failpoints.matches("generate", 3) is hit
    assert failpoints.on_this_rank("generate") == ("3" if hit else None)


def test_signal_points_send_the_named_signal(arm, monkeypatch):
    sent = []
    monkeypatch.setattr(failpoints.os, "kill", lambda pid, sig: sent.append(sig))
    arm("signal.iteration=1:SIGUSR1")
    failpoints.send_signal("iteration", 0)
    failpoints.send_signal("iteration", 1)
    import signal

    assert sent == [signal.SIGUSR1]
