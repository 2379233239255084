"""Training batches without padding, and micro-batches under a token budget (the sft objective's).

Padding-free: transformers' DataCollatorWithFlattening lays a batch's examples end to end in one row,
position ids restarting at each example and the first token of each left out of the loss (it is a
prompt token, never a target, as in a padded batch). The model's attention has to keep the examples
apart (transformers does it from the position ids for its models built on create_causal_mask, with
SDPA, eager, flex or flash attention). That is checked once per model class and attention on the
model itself: the logits of an example packed after another must equal its own. It is the default
only with flash attention, whose variable-length kernels attend within each example: SDPA and eager
attend over the packed row whole under a mask, which costs more than the padding saved.

--max_tokens_per_batch: a per-device batch holding more real tokens than that is trained as several
forward/backward passes over consecutive runs of whole examples (gradients accumulated, synchronised
once). The loss is still normalised by the step's count of answer tokens, so only float reduction
order differs from one pass; the examples, the steps and the schedule are unchanged.
"""

from __future__ import annotations

import contextlib

import torch

from itertrain.core.errors import UsageError
from itertrain.runtime import dist
from itertrain.training.data import IGNORE, Collator

_verdicts: dict[tuple[str, str], str | None] = {}  # (model class, attention) -> why packing leaks, or None
_said: set[str] = set()  # what was said about padded batches (once per run)


def collator(model, pad_id: int, padding_free: bool | None, use_cache: bool = False):
    """The batch collator: padding-free where asked or by default where the model keeps packed examples
    apart; padded where it cannot (said once, or refused when --padding_free true asked for it)."""
    from transformers import DataCollatorWithFlattening

    if padding_free is False:
        return Collator(pad_id)
    if use_cache:
        why = "--use_cache true keeps a cache while training, and transformers then masks no packed examples apart"
    elif padding_free is None and not varlen(model):  # (no need to check the model: it would not pack)
        why = (f"{attention_of(model)} attention attends over a padding-free batch as one sequence of all its tokens "
               "(flash attention takes its examples one by one); --padding_free true packs anyway")
    elif (why := leaks(model)) is None:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
    if padding_free:
        raise UsageError(f"--padding_free true: {why}; drop the flag to train on padded batches")
    if why not in _said:
        _said.add(why)
        dist.log0(f"ℹ️  padded training batches: {why}")
    return Collator(pad_id)


def attention_of(model) -> str:
    base = getattr(model, "get_base_model", lambda: model)()
    return str(getattr(base.config, "_attn_implementation", None))


def varlen(model) -> bool:
    """Whether the model's attention runs packed examples each on its own (flash attention's variable-length
    kernels), so that a padding-free batch costs what its examples do. SDPA, eager and flex attention take
    the packed row whole, with a mask: a batch of B examples of length L costs B^2 L^2 in attention."""
    return "flash" in attention_of(model)


def leaks(model) -> str | None:
    """Why the model's attention cannot train on packed examples, or None if it can."""
    base = getattr(model, "get_base_model", lambda: model)()
    attention = attention_of(model)
    key = (type(base).__name__, attention)
    if key not in _verdicts:
        _verdicts[key] = _probe(model, f"{type(base).__name__} with {attention} attention")
    return _verdicts[key]


@torch.no_grad()
def _probe(model, what: str) -> str | None:
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitioned weights: no forward outside the engine
        return f"{what} is partitioned by DeepSpeed ZeRO-3, where packing cannot be checked"
    device = params[0].device
    a, b = [3, 4, 5, 6], [7, 8, 9]
    packed_ids = torch.tensor([a + b], device=device)
    positions = torch.tensor([list(range(len(a))) + list(range(len(b)))], device=device)
    was = model.training
    model.eval()
    try:
        # (as the Trainer runs it: without a cache, which would turn transformers' packed masks off)
        packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0, len(a):].float()
        alone = model(input_ids=torch.tensor([b], device=device), use_cache=False).logits[0].float()
        after = model(input_ids=packed_ids, use_cache=False).logits[0, len(a):].float()  # b seeing a: how much context moves it
    except (TypeError, ValueError, RuntimeError) as e:
        return f"{what} does not take packed examples ({type(e).__name__}: {str(e).splitlines()[0]})"
    finally:
        model.train(was)
    # apart: packed equals alone up to float noise, far below what seeing the other example changes
    leak, moved = (packed - alone).abs().max().item(), (after - alone).abs().max().item()
    if leak > 1e-2 * moved or moved == 0.0:
        return f"{what} lets packed examples attend to each other"
    return None


def tokens(inputs: dict) -> list[int]:
    """The real length of each example of a collated batch, in order."""
    if "position_ids" in inputs and "attention_mask" not in inputs:  # flattened: a row of examples end to end
        starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist()
        return [end - start for start, end in zip(starts, [*starts[1:], inputs["input_ids"].shape[1]], strict=True)]
    return inputs["attention_mask"].sum(-1).tolist()


def split(inputs: dict, budget: int) -> list[dict]:
    """The batch as runs of whole examples of at most `budget` real tokens each (an example longer than
    that alone). A padded batch's runs take its examples shortest first, each run padded only to its own
    longest; a padding-free batch's runs are consecutive."""
    lengths, runs, run, held = tokens(inputs), [], [], 0
    padded = "attention_mask" in inputs
    for i in sorted(range(len(lengths)), key=lengths.__getitem__) if padded else range(len(lengths)):
        if run and held + lengths[i] > budget:
            runs.append(run)
            run, held = [], 0
        run.append(i)
        held += lengths[i]
    runs.append(run)
    if len(runs) == 1:
        return [inputs]
    if padded:
        return [{k: v[torch.tensor(r), :max(lengths[i] for i in r)] for k, v in inputs.items()} for r in runs]
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    return [{k: v[:, bounds[r[0]]:bounds[r[-1] + 1]] for k, v in inputs.items()} for r in runs]


class TokenBudget:
    """Mixed in under Recovering: HF's training_step, once per run of examples within the budget."""

    max_tokens_per_batch: int | None = None
    _weight: float = 1.0

    def training_step(self, model, inputs, num_items_in_batch=None):
        parts = split(inputs, self.max_tokens_per_batch) if self.max_tokens_per_batch else [inputs]
        if len(parts) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        total = None
        if num_items_in_batch is None:  # each pass's mean loss, weighted by its share of the batch's answer tokens
            total = sum(int((p["labels"][..., 1:] != IGNORE).sum()) for p in parts)
        loss = None
        try:
            for i, part in enumerate(parts):
                if total is not None:
                    self._weight = int((part["labels"][..., 1:] != IGNORE).sum()) / max(total, 1)
                last = i == len(parts) - 1  # gradients are synchronised once, with the last pass
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    step = super().training_step(model, part, num_items_in_batch)
                loss = step if loss is None else loss + step
        finally:
            self._weight = 1.0
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self._weight == 1.0:
            return out
        return (out[0] * self._weight, out[1]) if return_outputs else out * self._weight
