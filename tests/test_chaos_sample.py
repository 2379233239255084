"""A fast sample of the kill-at-every-file-event sweep (`make chaos` runs all of them)."""

from contextlib import contextmanager

import chaos_harness
import pytest
from chaos_harness import adopted_reference, random_trial, reference, trial
from conftest import PEFT, events, reference_run, shared, zygote

pytestmark = pytest.mark.chaos
chaos_harness.ZYGOTE = zygote  # one-rank runs fork from the test worker's zygote, not a fresh interpreter


@pytest.fixture(scope="session")
def ref(reference):
    """The suite's reference run (conftest.REFERENCES), its file events, where random kills land."""
    return reference, events(reference), chaos_harness._window(events(reference))


@pytest.mark.parametrize("fraction,torn", [(0.1, False), (0.6, False), (0.5, True), (0.95, True)])
def test_crash_at_file_event_resumes_exactly(tmp_path, ref, fraction, torn):
    out, events, _ = ref
    event = max(1, int(len(events) * fraction))
    result = trial(out, tmp_path, event, torn)
    assert result["verdict"] == "PASS", (events[event - 1], result)


@pytest.mark.parametrize("seed", range(5))
def test_random_sigkills_resume_exactly(tmp_path, ref, seed):
    out, _, window = ref
    result = random_trial(out, tmp_path, seed, window=window)
    assert result["verdict"] == "PASS", result


@pytest.fixture(scope="session")
def adopted(ref, tmp_path_factory):
    return shared(tmp_path_factory, "chaos_adopted", lambda work: adopted_reference(ref[0], work))


@pytest.mark.parametrize("fraction,torn", [(0.05, False), (0.3, True), (0.7, False)])
def test_crash_while_resuming_an_adopted_experiment_resumes_exactly(tmp_path, ref, adopted, fraction, torn):
    """The seed's layout (base_model/ without config.json, a checkpoint without manifest) killed in
    its own resume: among the first events is the creation of base_model/config.json."""
    layout, events, _ = adopted
    event = max(1, int(len(events) * fraction))
    result = trial(ref[0], tmp_path, event, torn, layout=layout)
    assert result["verdict"] == "PASS", (events[event - 1], result)


@pytest.mark.parametrize("seed", range(3))
def test_random_sigterms_stop_and_resume_exactly(tmp_path, ref, seed):
    out, _, window = ref
    result = random_trial(out, tmp_path, seed, window=window, sig="SIGTERM")
    assert result["verdict"] == "PASS", result


def test_crash_at_the_last_metrics_write(tmp_path, ref):
    """Found by the full sweep: iter_1 committed, metrics.jsonl not yet rewritten. The resumed run
    found the experiment complete and left metrics.jsonl one line short."""
    out, events, _ = ref
    last = max(i for i, e in enumerate(events, 1) if "\topen\tmetrics.jsonl" in e)
    result = trial(out, tmp_path, last, torn=False)
    assert result["verdict"] == "PASS", (events[last - 1], result)


def test_full_disk_during_a_save_keeps_everything_and_resumes(tmp_path, ref):
    """ENOSPC from the first write of iteration 1's first checkpoint on (the disk stays full): one
    clear line, exit 1, every committed artifact intact; with space again, resume ends exactly."""
    from chaos_harness import AUTO, _compare, _run

    from itertrain.core import manifest

    out_ref, events, _ = ref
    after_iter0 = next(i for i, e in enumerate(events, 1) if e.split("\t")[1:3] == ["os.rename", ".staging/iter_0"])
    first = next(i for i, e in enumerate(events, 1) if i > after_iter0 and "checkpoint-3" in e)
    out = tmp_path / "exp"
    proc = _run(out, env_extra={"ITERTRAIN_FAILPOINTS": f"file.event={first}:enospc"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith("itertrain: error: No space left on device"), last
    committed = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert {p.name for p in committed} >= {"base", "samples_0", "checkpoint-6", "iter_0", "samples_1"}
    assert all(manifest.problem(str(p)) is None for p in committed), committed
    assert not (out / "checkpoint-9").exists()
    assert _run(out, *AUTO).returncode == 0
    assert _compare(out, out_ref) is None


FLAVOURS = {"peft": ("PEFT", PEFT), "dpo": ("OBJECTIVE", chaos_harness.DPO),
            "trackers": ("TRACKERS", chaos_harness.TRACKER_FLAGS)}


@contextmanager
def harness_flags(flavour: str):
    """The harness's runs with a flavour's flags (its --peft, its --objective), for one test."""
    attr, flags = FLAVOURS[flavour]
    getattr(chaos_harness, attr)[:] = flags
    try:
        yield
    finally:
        getattr(chaos_harness, attr).clear()


@pytest.fixture(scope="session", params=["peft", "dpo"])
def flavoured_ref(request, tmp_path_factory):
    if request.param == "peft":  # the registry's LoRA run (tests/test_adapters.py's too)
        out = reference_run(tmp_path_factory, "peft_ref")[0]
        return "peft", (out, events(out), chaos_harness._window(events(out)))

    def build(work):
        with harness_flags(request.param):
            return reference(work)
    return request.param, shared(tmp_path_factory, f"chaos_{request.param}_ref", build)


@pytest.mark.parametrize("fraction,torn", [(0.2, False), (0.55, True), (0.9, False)])
def test_peft_and_dpo_crash_at_file_event_resumes_exactly(tmp_path, flavoured_ref, fraction, torn):
    """--use_peft (the merged model, its adapter) and --objective dpo (the pairs): end as the uninterrupted run."""
    flavour, (out, events, _) = flavoured_ref
    assert (out / "iter_1" / ("adapter/adapter_model.safetensors" if flavour == "peft" else "model.safetensors")).exists()
    event = max(1, int(len(events) * fraction))
    with harness_flags(flavour):
        result = trial(out, tmp_path, event, torn)
    assert result["verdict"] == "PASS", (events[event - 1], result)


@pytest.mark.parametrize("seed", range(2))
def test_peft_and_dpo_random_sigkills_resume_exactly(tmp_path, flavoured_ref, seed):
    flavour, (out, _, window) = flavoured_ref
    with harness_flags(flavour):
        result = random_trial(out, tmp_path, seed, window=window)
    assert result["verdict"] == "PASS", result


@pytest.fixture(scope="session")
def trackers_ref(tmp_path_factory):
    def build(work):
        with harness_flags("trackers"):
            return reference(work)
    return shared(tmp_path_factory, "chaos_trackers_ref", build)


@pytest.mark.parametrize("where", ["middle", "last"])
def test_trackers_crash_at_file_event_hold_every_step_once(tmp_path, trackers_ref, where):
    """TensorBoard, W&B (offline) and MLflow on: killed mid-run, or at the last file event (found
    by the sweep: the resume found the experiment complete and never sent W&B the last row)."""
    out, events, _ = trackers_ref
    event = len(events) if where == "last" else len(events) // 2
    with harness_flags("trackers"):
        result = trial(out, tmp_path, event, torn=False)
    assert result["verdict"] == "PASS", (events[event - 1], result)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """--mirror: runs mirror to a loopback S3 server; an uninterrupted one, and its writes to the mirror."""
    from s3_server import S3Server

    chaos_harness.MIRROR["server"] = server = S3Server()
    try:
        out, events, window = reference(tmp_path_factory.mktemp("mirror-ref"))
        yield out, events, window
    finally:
        chaos_harness.MIRROR.clear()
        server.stop()


@pytest.mark.parametrize("fraction", [0.6])
def test_crash_at_a_mirror_write_then_resume_from_the_mirror_alone(tmp_path, mirrored, fraction):
    out, events, _ = mirrored
    event = max(1, int(len(events) * fraction))
    result = trial(out, tmp_path, event, torn=False)
    assert result["verdict"] == "PASS", (events[event - 1], result)


@pytest.mark.parametrize("seed", range(1))
def test_random_sigkills_during_uploads_then_resume_from_the_mirror_alone(tmp_path, mirrored, seed):
    out, _, window = mirrored
    result = random_trial(out, tmp_path, seed, window=window)
    assert result["verdict"] == "PASS", result


@pytest.fixture
def elastic():
    chaos_harness.ELASTIC.extend([1, 2, 3])
    yield
    chaos_harness.ELASTIC.clear()


@pytest.mark.dist
@pytest.mark.parametrize("seed", [3])
def test_random_sigkills_resumed_on_another_number_of_processes(tmp_path, ref, elastic, seed):
    """--elastic: each resume after a kill runs on 1, 2 or 3 processes (the seed's short command with
    another --nproc_per_node): the same examples in every step, weights within ELASTIC_TOL."""
    out, _, window = ref
    result = random_trial(out, tmp_path, seed, window=window)
    assert result["verdict"] == "PASS" and len(set(result["launch_ranks"])) > 1, result
