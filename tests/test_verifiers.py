"""Each verifier on completions as real models write them, including ones it must reject."""

import pickle

import pytest

from itertrain.tasks import Example, TaskError, verifiers

GSM8K_ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.mark.parametrize("completion,ok", [
    ("She sold 48 in April and 24 in May, so 48 + 24 = 72.\n#### 72", True),
    ("48 + 24 = 72 clips in total.", True),  # no ####: the last number
    ("In total she sold $72.", True),
    ("The answer is 72.00", True),
    ("#### 72\nThat was easy: 3 more than 69.", True),  # #### wins over the last number
    ("She sold 72 clips, then 5 more: 77", False),
    ("#### 71", False),
    ("I don't know.", False),
    ("", False),
])
def test_gsm8k(completion, ok):
    assert verifiers.gsm8k(Example("How many clips?", GSM8K_ANSWER), completion) is ok


def test_gsm8k_plain_answers_and_thousands():
    assert verifiers.gsm8k(Example("q", "1234"), "The farm has 1,234 sheep.")
    assert verifiers.gsm8k(Example("q", "-3"), "The temperature fell to -3 degrees")
    assert verifiers.gsm8k(Example("q", "0.5"), "Half: .5")
    assert not verifiers.gsm8k(Example("q", "not a number"), "#### 5")


@pytest.mark.parametrize("answer,completion,ok", [
    ("\\frac{1}{2}", "Dividing both sides by 4 gives $x = \\frac{2}{4}$, so \\boxed{\\frac{1}{2}}.", True),
    ("0.5", "The probability is \\boxed{\\frac{1}{2}}", True),
    ("\\frac{\\sqrt{2}}{2}", "so $\\sin 45^\\circ = \\boxed{\\frac{1}{\\sqrt{2}}}$", True),
    ("42", "First 41, then one more: the answer is 42", True),  # no box: the last expression
    ("42", "\\boxed{41}, or maybe 42", False),  # the box wins
    ("x^2+2x+1", "Expanding: \\boxed{(x+1)^2}", True),
    ("3", "\\boxed{4}", False),
    ("3", "I cannot solve this.", False),
])
def test_math(answer, completion, ok):
    assert verifiers.math(Example("q", answer), completion) is ok


@pytest.mark.parametrize("completion,ok", [
    ("Reasoning... ANSWER: 17", True),
    ("ANSWER:17 and later ANSWER: 18", True),  # the first match
    ("answer: 17", False),
    ("17", False),
])
def test_regex_first_group(completion, ok):
    assert verifiers.named(r"regex:ANSWER:\s*(\d+)")(Example("q", "17"), completion) is ok


def test_regex_without_group_compares_the_whole_match_and_bad_patterns_are_one_line():
    assert verifiers.named(r"regex:\d+")(Example("q", "17"), "it is 17 or 18")
    with pytest.raises(TaskError, match=r"--verifier regex:\(: not a regular expression"):
        verifiers.named("regex:(")


def test_exact_and_numeric_are_as_before():
    assert verifiers.named("exact")(Example("q", " 975 "), "975\n")
    assert not verifiers.named("exact")(Example("q", "975"), "975 because")
    assert verifiers.named("numeric")(Example("q", "2"), " 2.0000001")
    assert not verifiers.named("numeric")(Example("q", "2"), "2 apples")


@pytest.mark.parametrize("spec", ["exact", "numeric", "gsm8k", "math", r"regex:(\d+)", "itertrain.tasks.verifiers:gsm8k"])
def test_every_verifier_pickles_for_the_pool(spec):
    fn = verifiers.named(spec)
    again = pickle.loads(pickle.dumps(fn))
    assert again(Example("q", "7"), "#### 7") == fn(Example("q", "7"), "#### 7")


@pytest.mark.parametrize("spec,message", [
    ("nomodule", "use package.module:name"),
    ("no.such.module:fn", "cannot import"),
    ("itertrain.tasks.verifiers:SAFE", "is not callable"),
])
def test_bad_plugins_are_one_line(spec, message):
    with pytest.raises(TaskError, match=message):
        verifiers.named(spec)
