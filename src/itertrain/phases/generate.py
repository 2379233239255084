"""The generate phase: sample completions with HF `generate` (batched, KV cache).

Prompts are cut into batches by their global index, and batch b is sampled under a seed derived
from (--seed, iteration, b). Under torchrun each rank makes whole shards of the phase (samples.py),
batch after batch, so the samples are the same with one process or several, shard by shard or all
at once, and again after a resume.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import xxhash

from itertrain.core import failpoints
from itertrain.runtime import dist


def batch_seed(seed: int, iteration: int, batch: int) -> int:
    return xxhash.xxh3_64_intdigest(f"itertrain/generate/{seed}/{iteration}/{batch}".encode()) & (2**63 - 1)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], **generate_kwargs) -> list[str]:
    """One batched `generate` call (left padding, KV cache); the decoded completions, in order
    (num_return_sequences of them per prompt)."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    width, n = enc["input_ids"].shape[1], generate_kwargs.pop("num_return_sequences", 1)
    if n > 1 and width > 1 and _prefills_once(model, generate_kwargs.get("use_cache")):
        enc, n = prefill_once(model, enc, n), 1
    # synced_gpus=False: every rank's model is whole and ranks run different batches (HF would turn
    # it on by itself under DeepSpeed ZeRO-3 and wait for the other ranks at every token)
    out = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         synced_gpus=False, num_return_sequences=n, **generate_kwargs)
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def prefill_once(model, enc, n: int) -> dict:
    """The prompts' KV cache, computed once and repeated for the n samples of each: `generate` with
    num_return_sequences=n would run every prompt n times. The last prompt token is left to
    `generate`, which takes up from the cache (so a model generating without a cache is left to HF)."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate numbers left padding
    cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                  use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(n)
    return {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0), "cache": cache}


def _prefills_once(model, use_cache: bool | None = None) -> bool:
    """A decoder-only HF model that generates with a cache (`use_cache`, else its generation config's)
    and whose forward takes the arguments prefill_once gives it."""
    from transformers import PreTrainedModel

    return (isinstance(model, PreTrainedModel) and not model.config.is_encoder_decoder
            and (model.generation_config.use_cache if use_cache is None else use_cache) is not False
            and {"cache", "position_ids", "logits_to_keep"} <= set(inspect.signature(model.forward).parameters))


@dataclass
class Counters:
    """Over a whole generate phase, what the failpoints count."""

    rounds: int = 0
    produced: int = 0


class Generator:
    """The HF backend of the generate phase: one model for the phase. Each round makes up to one shard
    per rank, rank r the r-th; batch b of a shard starting at prompt `first` is batch
    first/batch_size+b of the phase and has that batch's seed, whichever rank makes it."""

    def __init__(self, model, tokenizer, *, num_samples: int, seed: int, iteration: int, batch_size: int,
                 max_new_tokens: int, temperature: float):
        self.model, self.tokenizer = model, tokenizer
        self.num_samples, self.seed, self.iteration, self.batch_size = num_samples, seed, iteration, batch_size
        self.gen_kwargs = dict(do_sample=True, temperature=temperature, top_k=None, top_p=None,
                               num_return_sequences=num_samples, max_new_tokens=max_new_tokens)
        self.counters = Counters()

    @torch.no_grad()
    def round(self, spans: list[tuple[int, int]], prompts: list[str], *, safe_point=None,
              advance=None) -> dict[tuple[int, int], list[list[str]]]:
        """{span: completions[i][s]} for these shards (at most one per rank), on every rank.
        `safe_point()` is called on every rank after each batch (a stop request ends the phase there),
        `advance(n)` with the prompts that batch step covered on all ranks."""
        self.model.eval()
        device = next(self.model.parameters()).device
        rank, size = dist.state().process_index, self.batch_size
        mine = spans[rank] if rank < len(spans) else None
        rows: list[list[str]] = []
        for step in range(max(math.ceil((end - first) / size) for first, end in spans)):
            if mine is not None and mine[0] + step * size < mine[1]:
                start = mine[0] + step * size
                chunk = prompts[start:min(start + size, mine[1])]
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(batch_seed(self.seed, self.iteration, start // size))
                    texts = complete(self.model, self.tokenizer, chunk, **self.gen_kwargs)
                n = self.num_samples
                rows += [texts[i * n:(i + 1) * n] for i in range(len(chunk))]
                self.counters.produced += len(texts)
                failpoints.hit("generate", self.counters.produced, at_least=True)
            self.counters.rounds += 1
            failpoints.send_signal("generate", self.counters.rounds)
            if advance is not None:
                advance(sum(max(0, min(size, end - first - step * size)) for first, end in spans))
            if safe_point is not None:
                safe_point()
        merged: dict[tuple[int, int], list[list[str]]] = {}
        for part in dist.gather({mine: rows} if mine is not None else {}):
            merged.update(part)
        return merged

    def close(self) -> None:
        self.model = None


def sample(model, tokenizer, prompts: list[str], **opts) -> list[list[str]]:
    """Every prompt as one shard, in this process (benchmarks): completions[i][s]."""
    span = (0, len(prompts))
    return Generator(model, tokenizer, **opts).round([span], prompts)[span]
