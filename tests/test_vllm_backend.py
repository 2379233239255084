"""--generation_backend vllm: a clear error where it cannot run (no GPU here), and its plumbing
(worker process per rank, seeds, order, caching) tested with a CPU stand-in for vLLM's API
(tests/stubs/vllm). Real vLLM needs a GPU: docs/scaling.md says what was and was not run."""

import json
from pathlib import Path

import pytest
from conftest import REPO, SMALL, run_cli

from itertrain import cli, tinymodel, vllm_backend

STUBS = str(Path(__file__).parent / "stubs")


@pytest.fixture
def stub_vllm(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", f"{STUBS}:{REPO / 'src'}")
    monkeypatch.setenv("VLLM_STUB_LOG", str(tmp_path / "workers.log"))
    return tmp_path / "workers.log"


def test_without_a_gpu_the_flag_is_one_clear_line_and_nothing_is_written(tmp_path):
    proc = run_cli(tmp_path / "exp", "--generation_backend", "vllm")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "itertrain: error: --generation_backend vllm needs a CUDA GPU and this machine has none; use the default "
        "--generation_backend hf"]
    assert not (tmp_path / "exp").exists()


def test_an_unknown_backend_is_a_usage_error(tmp_path):
    proc = run_cli(tmp_path / "exp", "--generation_backend", "sglang")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'sglang'" in proc.stderr


def test_worker_samples_in_order_reproducibly_in_its_own_process(tmp_path, stub_vllm):
    model = tmp_path / "m"
    tinymodel.write_base(str(model), seed=0)
    prompts = [f"{a}+{a}=" for a in range(5)]
    kw = dict(num_samples=3, seed=1, max_new_tokens=4, temperature=1.0)
    first = vllm_backend.sample(str(model), prompts, iteration=0, **kw)
    assert len(first) == 5 and all(len(row) == 3 for row in first)
    assert vllm_backend.sample(str(model), prompts, iteration=0, **kw) == first  # same seeds, same samples
    assert vllm_backend.sample(str(model), prompts, iteration=1, **kw) != first  # seeds differ per iteration
    assert len({vllm_backend.prompt_seed(1, 0, i) for i in range(1000)}) == 1000  # a seed of its own per prompt
    workers = stub_vllm.read_text().splitlines()
    assert len(workers) == 3 and all("RANK=None" in w for w in workers)  # a process of its own each time


def test_a_failing_worker_is_one_line_with_its_reason(tmp_path, stub_vllm):
    with pytest.raises(vllm_backend.GenerationError, match=r"vLLM worker for .*nowhere failed with exit code 1: "):
        vllm_backend.sample(str(tmp_path / "nowhere"), ["1+1="], num_samples=1, seed=0, iteration=0,
                            max_new_tokens=2, temperature=1.0)


@pytest.mark.slow
def test_a_run_with_the_vllm_backend_records_it_and_reuses_its_samples(tmp_path, stub_vllm, monkeypatch, capsys):
    monkeypatch.setattr(vllm_backend, "require", lambda: None)  # this machine has no GPU: the stub stands in
    out = tmp_path / "exp"
    args = ["--output_dir", str(out), *SMALL, "--generation_backend", "vllm"]
    assert cli.main(args) == 0
    settings = json.loads((out / "samples_1" / "itertrain.json").read_text())["extra"]["settings"]
    assert settings["backend"] == "vllm"
    assert len(stub_vllm.read_text().splitlines()) == 2  # one worker per generate phase
    capsys.readouterr()
    (out / "iter_1").rename(out / "gone")  # iteration 1 again: its samples are reused, not regenerated
    assert cli.main([*args, "--resume_from", "auto", "--resume_from_iteration", "auto"]) == 0
    assert "reusing committed samples_1" in capsys.readouterr().out
    assert len(stub_vllm.read_text().splitlines()) == 2
