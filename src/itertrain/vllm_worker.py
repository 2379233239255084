"""The vLLM worker process (vllm_backend.py): python -m itertrain.vllm_worker JOB.json OUT.json.

Reads the prompts, their seeds and the sampling settings, samples with vLLM, writes the completions
(a list per prompt, in order) to OUT.json and exits, which frees every byte of GPU memory vLLM took.
"""

from __future__ import annotations

import json
import os
import sys


def main(job_path: str, out_path: str) -> int:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    from vllm import LLM, SamplingParams

    llm = LLM(model=job["model"], seed=0, gpu_memory_utilization=job["gpu_memory_utilization"])
    tok = llm.get_tokenizer()
    # token ids, as the HF backend feeds them: no special tokens added to the prompt
    prompts = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in job["prompts"]]
    params = [SamplingParams(n=job["n"], temperature=job["temperature"], max_tokens=job["max_tokens"], seed=s)
              for s in job["seeds"]]
    outs = llm.generate(prompts, params, use_tqdm=False) if prompts else []
    texts = [[c.text for c in o.outputs] for o in outs]
    with open(out_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(texts, f)
    os.replace(out_path + ".tmp", out_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
