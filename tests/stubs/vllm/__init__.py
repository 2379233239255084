"""A stand-in for vLLM's offline API (LLM, SamplingParams), for testing itertrain's vLLM plumbing on
a machine without a GPU: the worker process, the seeds, the order, the caching. It samples with HF
generate on the CPU. It says nothing about real vLLM, which needs a GPU (see docs/scaling.md)."""

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    max_tokens: int = 16
    seed: int | None = None


class LLM:
    def __init__(self, model: str, seed: int = 0, gpu_memory_utilization: float = 0.9):
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        log = os.environ.get("VLLM_STUB_LOG")
        if log:  # what the worker was started with, for the tests
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} "
                        f"RANK={os.environ.get('RANK')}\n")

    def get_tokenizer(self):
        return self.tokenizer

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        outs = []
        for prompt, p in zip(prompts, params, strict=True):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            torch.manual_seed(p.seed)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=None,
                                      top_p=None, temperature=p.temperature, max_new_tokens=p.max_tokens,
                                      num_return_sequences=p.n, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id)
            texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=t) for t in texts]))
        return outs
