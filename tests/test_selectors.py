import pytest

from itertrain.core.selectors import SelectorError, parse_checkpoint_selector, parse_iteration_selector

BAD = ["latest", "-3", "1.5", "iter_x", "iter_-1", "../x", "", " ", "checkpoint-20", "/abs", "iter_1/..", "1e3"]


@pytest.mark.parametrize("value", BAD)
def test_bad_checkpoint_selectors(value):
    with pytest.raises(SelectorError, match="--resume_from .* is not valid: use 'none', 'auto' or a step number N"):
        parse_checkpoint_selector(value)


@pytest.mark.parametrize("value", BAD + ["3", "iter_", "iter_1.5"])
def test_bad_iteration_selectors(value):
    with pytest.raises(SelectorError, match="--resume_from_iteration .* is not valid"):
        parse_iteration_selector(value)


def test_good_selectors():
    assert str(parse_checkpoint_selector("none")) == "none"
    assert str(parse_checkpoint_selector("AUTO")) == "auto"
    assert parse_checkpoint_selector("20").number == 20
    assert parse_iteration_selector("iter_2").number == 2
    assert parse_iteration_selector("auto").mode == "auto"
