"""HF's continuous batching (`generate_batch`, where a finished sequence stops costing compute) against
the generate phase's own call (`complete`: one batch, prompts prefilled once, finished sequences
leaving every 16 tokens), on the GSM8K example's 32 prompts and tiny instruct model, sampled.

    .venv/bin/python bench/continuous_batching.py

Prints the seconds of each (best of 2). On this project's 2-core CPU, continuous batching was the slower
one by far (its scheduler's per-token work outweighs a tiny model's), so the generate phase keeps
`generate` on length-ordered batches."""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from itertrain.phases.generate import complete
from itertrain.tasks.tinymodel import write_chat_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gsm8k"


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        write_chat_model(d, seed=0)
        tok = AutoTokenizer.from_pretrained(d)
        questions = [json.loads(line)["question"] for line in (EXAMPLE / "train.jsonl").read_text().splitlines()]
        texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
                 for q in questions]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        paged = AutoModelForCausalLM.from_pretrained(d, attn_implementation="paged|sdpa").eval()
        plain = AutoModelForCausalLM.from_pretrained(d).eval()
        config = GenerationConfig(max_new_tokens=64, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        times = {"continuous": [], "generate": []}
        for _ in range(2):
            torch.manual_seed(0)
            t = time.perf_counter()
            paged.generate_batch(ids, generation_config=config)
            times["continuous"].append(time.perf_counter() - t)
            torch.manual_seed(0)
            t = time.perf_counter()
            complete(plain, tok, texts, do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=64)
            times["generate"].append(time.perf_counter() - t)
        best = {k: min(v) for k, v in times.items()}
        json.dump({**best, "ratio": best["continuous"] / best["generate"]}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
