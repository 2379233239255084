"""--generation_backend vllm: the generate phase sampled by vLLM, in a process of its own.

vLLM does not give back its GPU memory when its engine is deleted (vllm #1908), and training needs
that memory right after the generate phase. So every rank runs `python -m itertrain.vllm_worker`
on its share of the prompts (prompt i goes to rank i mod W), on its own GPU; the worker exits and
its memory goes with it. vllm is an optional extra (`pip install 'itertrain[vllm]'`), imported only
in that process.

Seeds: prompt i is sampled with its own vLLM seed, derived from (--seed, iteration, i), so the
samples do not depend on the number of ranks, and are the same again after a resume as far as
vLLM's seeded sampling is reproducible (same GPU kind, vLLM version and settings). They are not
the HF backend's samples: the samples artifact records the backend, so switching backends makes a
fresh samples_K rather than reusing the other's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import xxhash

from itertrain import dist, failpoints
from itertrain.config import UsageError

WORKER = "itertrain.vllm_worker"


class GenerationError(RuntimeError):
    """The vLLM worker failed (exit 1, with the worker's last line)."""


def require() -> None:
    """--generation_backend vllm on this machine: a one-line error before anything is written."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError("--generation_backend vllm needs a CUDA GPU and this machine has none; use the "
                         "default --generation_backend hf")
    if importlib.util.find_spec("vllm") is None:
        raise UsageError("--generation_backend vllm needs the vllm package: pip install 'itertrain[vllm]'")


def prompt_seed(seed: int, iteration: int, index: int) -> int:
    return xxhash.xxh3_64_intdigest(f"itertrain/vllm/{seed}/{iteration}/{index}".encode()) & (2**31 - 1)


def _device_env() -> dict:
    """This rank's GPU only, for the worker (the physical id when CUDA_VISIBLE_DEVICES lists some)."""
    env = dict(os.environ)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if dist.world_size() > 1:
        env["CUDA_VISIBLE_DEVICES"] = visible[local] if local < len(visible) else str(local)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # vLLM is one process
        env.pop(key, None)
    return env


def sample(model_dir: str, prompts: list[str], *, num_samples: int, seed: int, iteration: int,
           max_new_tokens: int, temperature: float, gpu_memory_utilization: float = 0.85) -> list[list[str]]:
    """completions[i][s]: sample s for prompt i, identical on every rank (as generate.sample)."""
    rank, world = dist.state().process_index, dist.world_size()
    mine = list(range(rank, len(prompts), world))
    with tempfile.TemporaryDirectory(prefix="itertrain-vllm-") as tmp:
        job, out = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        with open(job, "w", encoding="utf-8") as f:
            json.dump({"model": model_dir, "prompts": [prompts[i] for i in mine],
                       "seeds": [prompt_seed(seed, iteration, i) for i in mine], "n": num_samples,
                       "temperature": temperature, "max_tokens": max_new_tokens,
                       "gpu_memory_utilization": gpu_memory_utilization}, f)
        proc = subprocess.run([sys.executable, "-m", WORKER, job, out], env=_device_env(), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise GenerationError(f"the vLLM worker for {model_dir} failed with exit code {proc.returncode}: {last}")
        with open(out, encoding="utf-8") as f:
            texts = json.load(f)
    failpoints.hit("generate", len(mine) * num_samples, at_least=True)
    merged: dict[int, list[str]] = {}
    for part in dist.gather(dict(zip(mine, texts, strict=True))):
        merged.update(part)
    return [merged[i] for i in range(len(prompts))]
