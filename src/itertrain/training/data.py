"""Turning (prompt, answer) examples into what the HF Trainer eats."""

from __future__ import annotations

import weakref

import torch

IGNORE = -100


# Per tokenizer, every example encoded so far: with --reuse_previous each iteration trains on all
# earlier iterations' samples again, and tokenizing them again made the per-iteration cost grow.
_encoded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encode(examples, tokenizer) -> list[dict]:
    """Features for causal-LM fine-tuning: the loss is on the answer and the EOS only. (Shared
    between calls: read them, do not change them.)"""
    cache = _encoded.setdefault(tokenizer, {})
    feats = []
    for ex in examples:
        if (key := (ex.prompt, ex.answer)) not in cache:
            p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            cache[key] = {"input_ids": p + a, "labels": [IGNORE] * len(p) + a}
        feats.append(cache[key])
    return feats


class Collator:
    """Right-pads a batch for training (left padding is for generation only)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in batch)
        ids, labels, mask = [], [], []
        for f in batch:
            pad = width - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_id] * pad)
            labels.append(f["labels"] + [IGNORE] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}
