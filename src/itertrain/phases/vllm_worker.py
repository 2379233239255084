"""The vLLM worker process (vllm_backend.py): PYTHON -I vllm_worker.py JOB.json OUT_DIR

It runs in the interpreter that --vllm_python names (vLLM in an environment of its own: it pins its
own torch and transformers), so it imports nothing but the standard library and vllm. It loads the
model once, samples the job's shards one after the other and writes OUT_DIR/<n>.json (the token ids
of every completion, a list per prompt) atomically as each shard is done, so the training process
commits shards while the next one is sampled (OUT_DIR/ready.json: the engine's start-up time). A failure is written to OUT_DIR/error.txt as one line
before the exit.

PYTHON -I vllm_worker.py --probe MODEL_DIR prints what this vLLM is and why it cannot sample
MODEL_DIR, if it cannot (one JSON line), without starting an engine.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

STARTED = time.monotonic()


def _write(path: str, obj) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def probe(model_dir: str) -> dict:
    import vllm
    from vllm.platforms import current_platform

    out = {"version": vllm.__version__, "device": current_platform.device_type, "problem": None}
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config["hidden_size"] // heads if heads and config.get("hidden_size") else None)
    dtype = config.get("dtype") or config.get("torch_dtype")
    if dtype in ("float16", "bfloat16", "float32"):
        import torch

        if getattr(torch, dtype) not in current_platform.supported_dtypes:
            supported = ", ".join(str(d).removeprefix("torch.") for d in current_platform.supported_dtypes)
            out["problem"] = f"its weights are {dtype} and vLLM {vllm.__version__} on this {current_platform.device_type} " \
                             f"supports {supported}"
            return out
    if current_platform.device_type == "cpu" and head_dim is not None:
        try:  # the sizes vLLM's CPU attention has kernels for (it refuses others only inside the engine)
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            sizes = CPUAttentionBackend.get_supported_head_sizes()
        except (ImportError, AttributeError):
            sizes = None
        if sizes and head_dim not in sizes:
            out["problem"] = (f"its attention head size is {head_dim} and vLLM {vllm.__version__}'s CPU attention "
                              f"supports {', '.join(map(str, sizes))}")
    return out


def guard(parent: int) -> None:
    """This process and all that vLLM starts die with the training process (its kill -9 must not
    leave vLLM holding a device): on SIGTERM (the parent-death signal set before exec, or the
    parent's own stop) and when the parent is gone, the whole process group is killed."""
    def end(*_):
        os.killpg(0, signal.SIGKILL)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        end()

    signal.signal(signal.SIGTERM, end)
    threading.Thread(target=watch, daemon=True).start()


def main(job_path: str, out_dir: str) -> int:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    guard(job["parent"])
    try:
        from vllm.platforms import current_platform

        if current_platform.device_type == "cpu":
            # vLLM on a CPU refuses to start without a KV cache size; and its engine in this process
            # starts in half the time of a separate one (nothing to overlap on a CPU)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", job["cpu_kv_cache_gib"])
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # a prompt whose prefill is split over steps makes vLLM rewind its seeded generator, which
            # a CPU generator cannot do ("CPU Generator does not use offset"): prefill whole prompts
            job["engine"].setdefault("enable_chunked_prefill", False)
        from vllm import LLM, SamplingParams

        llm = LLM(model=job["model"], seed=0, **job["engine"])
        _write(os.path.join(out_dir, "ready.json"), {"seconds": time.monotonic() - STARTED, "device":
                                                     current_platform.device_type})
        for n, shard in enumerate(job["shards"]):
            # one request per (prompt, sample), each with its own seed: with n > 1 vLLM seeds sample s
            # with seed + s, and prompts whose seeds lie close together would share samples
            requests = [{"prompt_token_ids": ids} for ids, seeds in zip(shard["prompts"], shard["seeds"])
                        for _ in seeds]
            params = [SamplingParams(n=1, temperature=job["temperature"], max_tokens=job["max_tokens"], seed=s,
                                     detokenize=False) for seeds in shard["seeds"] for s in seeds]
            outs = llm.generate(requests, params, use_tqdm=False) if requests else []
            ids, at = [], 0
            for seeds in shard["seeds"]:
                ids.append([list(o.outputs[0].token_ids) for o in outs[at:at + len(seeds)]])
                at += len(seeds)
            _write(os.path.join(out_dir, f"{n}.json"), ids)
    except BaseException as e:
        with open(os.path.join(out_dir, "error.txt"), "w", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}\n")
        raise
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe(sys.argv[2])))
        raise SystemExit(0)
    raise SystemExit(main(*sys.argv[1:]))
