"""Experiments itertrain did not write, adopted and run to the end with `auto auto`.

An uninterrupted 3-iteration run is cut back to what the seed system or a plain HF Trainer leaves
(weights-only models without manifest or config.json, checkpoints without manifest); resumed,
it must end exactly where the uninterrupted run ended, touching the adopted directories only as
the plan announces.
"""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, dry_run, max_diff, run_cli, run_once, shared

pytestmark = pytest.mark.e2e
AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
THREE = ["--num_iterations", "3"]
KEEP = ("model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _write_start(work):
    from itertrain.tasks import tinymodel

    tinymodel.write_base(str(work / "model"), 42)
    return work / "model"


@pytest.fixture(scope="session")
def start(tmp_path_factory):
    """A real HF model directory to start from (--model_name)."""
    return shared(tmp_path_factory, "adopt_start", _write_start)


@pytest.fixture(scope="session")
def ref(tmp_path_factory, start):
    return shared(tmp_path_factory, "adopt_ref", run_once(*THREE, "--model_name", str(start)))[0]


def strip(d, keep=KEEP):
    """What the seed system leaves: weights and tokenizer, no manifest, no config.json."""
    for f in d.iterdir():
        if f.name not in keep:
            f.unlink()


def cut(ref, out, keep: dict):
    """A copy of `ref` holding only the artifacts in `keep` ({name: how to adopt it})."""
    shutil.copytree(ref, out, ignore=shutil.ignore_patterns(".itertrain.lock"))
    for p in list(out.iterdir()):
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for name, how in keep.items():
        if how == "seed":  # weights-only, as the seed wrote it
            strip(out / name)
        elif how == "hf":  # a plain HF checkpoint: ours, less the manifest
            (out / name / "itertrain.json").unlink()
    if "iter_0" in keep and keep["iter_0"] == "seed":
        (out / "iter_0").rename(out / "base_model")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def files(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


LAYOUTS = {
    # the issue's layout: base_model (iteration 0, no config.json) and iteration 0's last checkpoint
    "base_model+checkpoint": ({"iter_0": "seed", "checkpoint-6": "hf"}, 1, "base_model", [1, 2]),
    # the seed's own layout: base_model and iter_1, weights only
    "base_model+iter_1": ({"iter_0": "seed", "iter_1": "seed"}, 2, "iter_1", [2]),
    # mixed with ours: a checkpoint inside iteration 2 whose samples iter_1 (adopted) must generate again
    "ours+iter_1+checkpoint": ({"iter_0": "ours", "samples_0": "ours", "samples_1": "ours", "iter_1": "seed",
                                "checkpoint-15": "ours", "base": "ours"}, 2, "iter_1", [0, 2]),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_adopted_layout_ends_exactly_as_the_uninterrupted_run(tmp_path, start, ref, layout):
    keep, first, generator, metrics = LAYOUTS[layout]  # (adopted models have no metrics)
    out = tmp_path / "exp"
    cut(ref, out, keep)
    adopted = {p.name: files(p) for p in out.iterdir() if p.is_dir()}
    proc = run_cli(out, *THREE, "--model_name", str(start), *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_diff(out / "iter_2", ref / "iter_2") == 0.0
    assert rows(out) == [r for r in rows(ref) if r["iteration"] in metrics]
    for k in range(first, 3):
        for f in ("generated.jsonl", "selected.jsonl"):
            assert (out / f"samples_{k}" / f).read_bytes() == (ref / f"samples_{k}" / f).read_bytes()
    assert f"generating 2 samples for each of 24 prompts with {generator}" in proc.stdout
    if layout == "ours+iter_1+checkpoint":
        assert "iteration 2: training on 65 examples from iter_1, resuming checkpoint-15, global steps 16-18" in proc.stdout
    # nothing adopted changed but the config.json the plan announced
    for name, before in adopted.items():
        after = files(out / name)
        announced = {"config.json"} if "config.json" not in before and name in ("base_model", "iter_1") else set()
        assert set(after) - set(before) == announced, name
        assert all(after[f] == before[f] for f in before), name
        if announced:
            assert f"Create {name}/config.json from --model_name" in proc.stdout


def test_status_names_adopted_artifacts(tmp_path, ref, capsys):
    from itertrain.app import status

    out = tmp_path / "exp"
    cut(ref, out, LAYOUTS["base_model+checkpoint"][0])
    capsys.readouterr()
    assert status.main([str(out), "--json", "--max_steps", "6", "--num_iterations", "3"]) == 0  # (in this process)
    d = json.loads(capsys.readouterr().out)
    assert [(r["iteration"], r["state"], r["artifact"]) for r in d["iterations"]] == [
        (0, "complete (unverified)", "base_model"), (1, "pending", None), (2, "pending", None)]
    assert d["plan"]["weights_from"] == "base_model" and d["plan"]["iteration_models"] == {"0": "base_model"}


def test_adopted_model_that_fails_to_load_is_set_aside_and_the_run_falls_back(tmp_path, start, ref):
    """base_model's weights are torn: it is renamed aside (never deleted), the banner says why, and
    iteration 0's last checkpoint, which holds the same weights, takes its place."""
    out = tmp_path / "exp"
    cut(ref, out, LAYOUTS["base_model+checkpoint"][0])
    w = out / "base_model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    proc = run_cli(out, *THREE, "--model_name", str(start), *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fallback: base_model failed to load (model.safetensors unreadable" in proc.stdout
    assert (out / "base_model.corrupt" / "model.safetensors").stat().st_size == 1000
    assert max_diff(out / "iter_2", ref / "iter_2") == 0.0
    assert rows(out)[1:] == rows(ref)[1:]


def test_plain_hf_trainer_output_directory(tmp_path, start):
    """A plain HF Trainer run stopped after checkpoint-4 of 8: itertrain resumes it at step 4 as
    iteration 0, says so, and leaves that checkpoint as it was, also once it is no longer the
    one resumed from (retention deletes only its own)."""
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "plain_hf.py"), str(start), str(out), "8", "4"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(out / "checkpoint-8")
    before = files(out / "checkpoint-4")
    args = ["--model_name", str(start), "--max_steps", "8", "--save_steps", "2", "--save_total_limit", "1"]
    proc = run_cli(out, *args, "--resume_from", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iteration 0: training on 64 examples from base, resuming checkpoint-4, global steps 5-8" in proc.stdout
    assert "iteration 1: training on 65 examples from iter_0, global steps 9-16" in proc.stdout
    assert files(out / "checkpoint-4") == before
    assert [r["global_step"] for r in rows(out)] == [8, 16]
    proc = run_cli(out, *args, "--num_iterations", "3", *AUTO)  # checkpoint-4 is not protected now
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deleting checkpoint-16" in proc.stdout and "deleting checkpoint-4" not in proc.stdout
    assert files(out / "checkpoint-4") == before
    # another --max_steps would put it inside iteration 1, which its own step count (4) is not
    again = tmp_path / "again"
    shutil.copytree(out, again, ignore=shutil.ignore_patterns("iter_*", "checkpoint-[!4]*", "samples_*", ".*"))
    names = sorted(p.name for p in again.iterdir())
    proc = run_cli(again, *args[:2], "--max_steps", "3", "--resume_from", "auto")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "itertrain: error: checkpoint-4 is a plain HF checkpoint at step 4 of a 8-step run (its trainer_state.json), "
        "but --max_steps 3 places it at step 1 of iteration 1: pass the --max_steps of the run that wrote it (8) to "
        "continue it as iteration 0, or --resume_from none to leave it out"]
    assert sorted(p.name for p in again.iterdir() if not p.name.startswith(".")) == names


def test_checkpoint_past_iteration_0_without_the_model_that_generates_its_samples_stops_first(tmp_path, ref, start):
    out = tmp_path / "exp"
    cut(ref, out, {"checkpoint-9": "ours"})
    proc = run_cli(out, *THREE, "--model_name", str(start), *AUTO)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
        "itertrain: error: iteration 1 cannot start: its samples (samples_1) are not here, and neither is "
        "iteration 0's model"), proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["checkpoint-9"]
    plan, _ = dry_run(out, *THREE, "--model_name", str(start), *AUTO)
    assert plan["state_from"] == "checkpoint-9"


def test_adopted_base_model_with_carried_optimizer_state(tmp_path, start):
    """--carry_optimizer_state: base_model's weights with the adopted checkpoint's optimizer, as
    the uninterrupted run starts iteration 1."""
    ref, out = tmp_path / "ref", tmp_path / "exp"
    args = [*THREE, "--model_name", str(start), "--carry_optimizer_state"]
    assert run_cli(ref, *args).returncode == 0
    cut(ref, out, LAYOUTS["base_model+checkpoint"][0])
    proc = run_cli(out, *args, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights from base_model with the optimizer state of checkpoint-6" in proc.stdout
    assert max_diff(out / "iter_2", ref / "iter_2") == 0.0
    assert rows(out) == rows(ref)[1:]
