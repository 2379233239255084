"""The generate phase: sample completions with HF `generate` (batched, KV cache).

Prompts are cut into batches by their global index, and batch b is sampled under a seed derived
from (--seed, iteration, b). Under torchrun rank r runs batches r, r+W, r+2W, ... and rank 0
gathers them in order, so no prompt is dropped or duplicated and the samples are the same with
one process or several, and again after a resume.
"""

from __future__ import annotations

import math

import torch
import xxhash

from itertrain import dist, failpoints


def batch_seed(seed: int, iteration: int, batch: int) -> int:
    return xxhash.xxh3_64_intdigest(f"itertrain/generate/{seed}/{iteration}/{batch}".encode()) & (2**63 - 1)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], **generate_kwargs) -> list[str]:
    """One batched `generate` call (left padding, KV cache); the decoded completions, in order
    (num_return_sequences of them per prompt)."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    # synced_gpus=False: every rank's model is whole and ranks run different batches (HF would turn
    # it on by itself under DeepSpeed ZeRO-3 and wait for the other ranks at every token)
    out = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         synced_gpus=False, **generate_kwargs)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, num_samples: int, seed: int, iteration: int,
           batch_size: int, max_new_tokens: int, temperature: float, safe_point=None) -> list[list[str]]:
    """completions[i][s]: sample s for prompt i, identical on every rank. `safe_point()` is called
    on every rank after each round (one batch per rank): a stop request ends the phase there."""
    model.eval()
    device = next(model.parameters()).device
    rank, world = dist.state().process_index, dist.world_size()
    mine: dict[int, list[list[str]]] = {}
    produced = 0
    rounds = math.ceil(math.ceil(len(prompts) / batch_size) / world)
    for r in dist.progress(range(rounds), desc=f"generate (iteration {iteration})"):
        b = r * world + rank
        chunk = prompts[b * batch_size:(b + 1) * batch_size]
        if not chunk:  # the last round has fewer batches than ranks
            _round_end(safe_point, r)
            continue
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(batch_seed(seed, iteration, b))
            texts = complete(model, tokenizer, chunk, do_sample=True, temperature=temperature, top_k=None,
                             top_p=None, num_return_sequences=num_samples, max_new_tokens=max_new_tokens)
        mine[b] = [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(chunk))]
        produced += len(texts)
        failpoints.hit("generate", produced, at_least=True)
        _round_end(safe_point, r)
    merged: dict[int, list[list[str]]] = {}
    for part in dist.gather(mine):
        merged.update(part)
    return [row for b in sorted(merged) for row in merged[b]]


def _round_end(safe_point, r: int) -> None:
    failpoints.send_signal("generate", r + 1)
    if safe_point is not None:
        safe_point()
