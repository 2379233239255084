"""The generate phase: sample completions with HF `generate` (batched, KV cache, each prompt prefilled
once, finished sequences leaving the batch every few tokens).

Prompts are cut into batches by their index in generation order (samples.generation_order), and
batch b is sampled under a seed derived from (--seed, iteration, b). Under torchrun each rank makes
whole shards of the phase (samples.py), batch after batch, so the samples are the same with one
process or several, shard by shard or all at once, and again after a resume.
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
    """Batched `generate` (left padding, KV cache); the decoded completions, in order
    (num_return_sequences of them per prompt)."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    width, n = enc["input_ids"].shape[1], generate_kwargs.pop("num_return_sequences", 1)
    # synced_gpus=False: every rank's model is whole and ranks run different batches (HF would turn
    # it on by itself under DeepSpeed ZeRO-3 and wait for the other ranks at every token)
    kw = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, synced_gpus=False,
              **generate_kwargs)
    if width > 1 and _prefills_once(model, generate_kwargs.get("use_cache")):
        enc = prefill_once(model, enc, n)
        return tokenizer.batch_decode(_finished_leave(model, enc, width, tokenizer.eos_token_id, kw),
                                      skip_special_tokens=True)
    out = model.generate(**enc, num_return_sequences=n, **kw)
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


ROUND = 16  # new tokens between the moments finished sequences leave a batch


def _finished_leave(model, enc: dict, width: int, eos, kw: dict) -> list[list[int]]:
    """`generate` in rounds of ROUND tokens over the prompts' cache (prefill_once); after a round, the
    sequences that ended leave the batch (their rows of the cache too), so they stop costing compute:
    HF's generate runs every row until the last one ends. Each row's new tokens, in order."""
    budget, done = kw.pop("max_new_tokens"), {}
    ids, mask, cache = enc["input_ids"], enc["attention_mask"], enc["cache"]
    rows = torch.arange(ids.shape[0], device=ids.device)
    ends = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=ids.device)
    while True:
        left = budget - (ids.shape[1] - width)
        out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, max_new_tokens=min(ROUND, left),
                             return_dict_in_generate=True, **kw)
        seqs, cache = out.sequences, out.cache
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], seqs.shape[1] - mask.shape[1])], dim=1)
        ended = torch.isin(seqs[:, width:], ends).any(-1) if len(ends) else torch.zeros_like(rows, dtype=torch.bool)
        if seqs.shape[1] - width >= budget or bool(ended.all()) or seqs.shape[1] == ids.shape[1]:
            done.update(zip(rows.tolist(), seqs[:, width:], strict=True))
            break
        done.update(zip(rows[ended].tolist(), seqs[ended, width:], strict=True))
        keep = (~ended).nonzero().flatten()
        if len(keep) < len(rows):
            cache.batch_select_indices(keep)
            rows, seqs, mask = rows[keep], seqs[keep], mask[keep]
        ids = seqs
    return [done[i].tolist() for i in range(len(done))]


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
