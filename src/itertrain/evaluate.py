"""Greedy accuracy on held-out prompts, batched through HF generate with left padding."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_accuracy(model, tokenizer, examples, is_correct, batch_size: int = 256, max_new_tokens: int = 8) -> float:
    if not examples:
        return 0.0
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    correct = 0
    device = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        enc = tokenizer([e.prompt for e in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(is_correct(e, t) for e, t in zip(chunk, texts, strict=True))
    model.train(was_training)
    return correct / len(examples)
