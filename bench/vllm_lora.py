"""vLLM sampling from a --use_peft run's merged iteration model against the base with vLLM's LoRA
support (enable_lora + LoRARequest of the iteration's adapter), side by side.

    .venv-vllm/bin/python bench/vllm_lora.py EXPERIMENT K [--prompts 512] [--samples 4] [--pairs 3]

EXPERIMENT is a finished --use_peft experiment in continue mode (its iter_K/adapter applies to its
base). Runs in the vLLM environment (make vllm) and imports nothing of itertrain. Prints one JSON
object: engine start-up seconds and sampled completions per second of each side (the median of
--pairs alternated measurements each), and the share of prompts whose greedy completion is the same
on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("k", type=int)
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max_tokens", type=int, default=8)
    p.add_argument("--pairs", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.platforms import current_platform

    it = os.path.join(args.experiment, f"iter_{args.k}")
    with open(os.path.join(it, "itertrain.json"), encoding="utf-8") as f:
        record = json.load(f)["extra"]["peft"]
    if record["mode"] != "continue":
        raise SystemExit(f"{it} was made in {record['mode']} mode: its adapter applies to iter_{args.k - 1}, not the base")
    adapter, base, rank = os.path.join(it, "adapter"), record["base"], record["config"]["r"]
    rng = random.Random(0)
    prompts = [f"{rng.randrange(100)}+{rng.randrange(100)}=" for _ in range(args.prompts)]
    cpu = {"enable_chunked_prefill": False} if current_platform.device_type == "cpu" else {}
    sampled = SamplingParams(n=args.samples, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens)
    sides = {}
    t0 = time.perf_counter()
    sides["merged"] = {"llm": LLM(model=it, seed=0, **cpu), "lora": None}
    sides["merged"]["start_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sides["lora"] = {"llm": LLM(model=base, seed=0, enable_lora=True, max_lora_rank=max(rank, 8), **cpu),
                     "lora": LoRARequest(f"iter_{args.k}", 1, adapter)}
    sides["lora"]["start_s"] = time.perf_counter() - t0
    for side in sides.values():  # warm-up (the adapter is loaded on its first request)
        side["llm"].generate(prompts[:8], sampled, lora_request=side["lora"], use_tqdm=False)
    rates = {name: [] for name in sides}
    for i in range(args.pairs):
        for name in (("merged", "lora") if i % 2 == 0 else ("lora", "merged")):
            t0 = time.perf_counter()
            sides[name]["llm"].generate(prompts, sampled, lora_request=sides[name]["lora"], use_tqdm=False)
            rates[name].append(args.prompts * args.samples / (time.perf_counter() - t0))
    texts = {name: [o.outputs[0].text for o in side["llm"].generate(prompts, greedy, lora_request=side["lora"],
                                                                      use_tqdm=False)]
             for name, side in sides.items()}
    same = sum(a == b for a, b in zip(texts["merged"], texts["lora"])) / len(prompts)
    import vllm

    print(json.dumps({
        "vllm": vllm.__version__, "device": current_platform.device_type, "prompts": args.prompts,
        "samples": args.samples, "max_tokens": args.max_tokens, "lora_rank": rank,
        "start_seconds": {n: round(s["start_s"], 2) for n, s in sides.items()},
        "samples_per_second": {n: round(statistics.median(r), 1) for n, r in rates.items()},
        "lora_over_merged": round(statistics.median(rates["lora"]) / statistics.median(rates["merged"]), 3),
        "greedy_same_share": same}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
