"""A fast sample of the kill-at-every-file-event sweep (`make chaos` runs all of them)."""

import pytest
from chaos_harness import random_trial, reference, trial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference(tmp_path_factory.mktemp("chaosref"))


@pytest.mark.parametrize("fraction,torn", [(0.1, False), (0.6, False), (0.5, True), (0.95, True)])
def test_crash_at_file_event_resumes_exactly(tmp_path, ref, fraction, torn):
    out, events = ref
    event = max(1, int(len(events) * fraction))
    result = trial(out, tmp_path, event, torn)
    assert result["verdict"] == "PASS", (events[event - 1], result)


@pytest.mark.parametrize("seed", range(5))
def test_random_sigkills_resume_exactly(tmp_path, ref, seed):
    out, _ = ref
    result = random_trial(out, tmp_path, seed)
    assert result["verdict"] == "PASS", result


def test_crash_at_the_last_metrics_write(tmp_path, ref):
    """Found by the full sweep: iter_1 committed, metrics.jsonl not yet rewritten. The resumed run
    found the experiment complete and left metrics.jsonl one line short."""
    out, events = ref
    last = max(i for i, e in enumerate(events, 1) if "\topen\tmetrics.jsonl" in e)
    result = trial(out, tmp_path, last, torn=False)
    assert result["verdict"] == "PASS", (events[last - 1], result)
