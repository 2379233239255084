"""The self-training loop a user would write with HF alone: the baseline of `iteration_ratio`.

The same work as `train_iterative.py` on its defaults: the built-in tiny Llama and addition task
(the same prompts, gold examples and exact-match verifier), per iteration 4 samples per prompt at
temperature 1 in batches of 256 prompts, the correct ones kept (one per prompt, deduplicated, and
every earlier iteration's kept too, plus the gold examples), 300 optimizer steps of batch 64 at
3e-3 with HF's Trainer and its own synchronous checkpoints every 100 steps, greedy evaluation on the
held-out prompts, save_pretrained. No recovery, no manifests, no fsync: the model stays in memory
from one iteration to the next, as the plainest script would have it.

Usage: python bench/plain_loop.py OUTPUT_DIR [--num_iterations 5] [--max_steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

from itertrain.tasks import tinymodel  # noqa: E402  (the same base model, written from the same seed
from itertrain.tasks.addition import make_task  # noqa: E402  (the same prompts and verifier)

SEED = 42


def complete(model, tok, prompts, **kw):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def features(examples, tok):
    rows = []
    for prompt, answer in examples:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append({"input_ids": p + a, "labels": [-100] * len(p) + a})
    return rows


def collate(pad_id):
    def fn(batch):
        width = max(len(f["input_ids"]) for f in batch)
        pad = [width - len(f["input_ids"]) for f in batch]
        return {"input_ids": torch.tensor([f["input_ids"] + [pad_id] * n for f, n in zip(batch, pad)]),
                "labels": torch.tensor([f["labels"] + [-100] * n for f, n in zip(batch, pad)]),
                "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * n for f, n in zip(batch, pad)])}
    return fn


def generate_and_select(model, tok, task, k, kept):
    """4 samples per prompt, the correct ones kept in `kept` (one per prompt, deduplicated)."""
    model.eval()
    prompts = [e.prompt for e in task.train_prompts]
    accepted, solved = 0, 0
    for i in range(0, len(prompts), 256):
        torch.manual_seed(SEED * 1000 + k * 100 + i // 256)
        texts = complete(model, tok, prompts[i:i + 256], do_sample=True, temperature=1.0, top_k=None,
                         top_p=None, num_return_sequences=4, max_new_tokens=8)
        for j, ex in enumerate(task.train_prompts[i:i + 256]):
            good = [t for t in dict.fromkeys(texts[j * 4:(j + 1) * 4]) if task.verify(ex, t)]
            accepted += sum(task.verify(ex, t) for t in texts[j * 4:(j + 1) * 4])
            solved += bool(good)
            kept += [(ex.prompt, t) for t in good[:1]]
    return accepted, solved


def evaluate(model, tok, task) -> int:
    """Greedy completions of the held-out prompts: how many are correct."""
    model.eval()
    correct = 0
    for i in range(0, len(task.eval_prompts), 256):
        chunk = task.eval_prompts[i:i + 256]
        texts = complete(model, tok, [e.prompt for e in chunk], do_sample=False, max_new_tokens=8)
        correct += sum(task.verify(e, t) for e, t in zip(chunk, texts))
    return correct


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("output_dir")
    p.add_argument("--num_iterations", type=int, default=5)
    p.add_argument("--max_steps", type=int, default=300)
    args = p.parse_args()
    began = time.monotonic()
    base = os.path.join(args.output_dir, "base")
    tinymodel.write_base(base, SEED)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    task = make_task(SEED)
    gold = [(e.prompt, e.answer) for e in task.gold]
    kept: list[tuple[str, str]] = []
    for k in range(args.num_iterations):
        t0 = time.monotonic()
        # generate and filter
        accepted, solved = generate_and_select(model, tok, task, k, kept)
        train = list(dict.fromkeys(gold + kept))
        t1 = time.monotonic()
        # train
        targs = TrainingArguments(output_dir=os.path.join(args.output_dir, f"trainer_{k}"), max_steps=args.max_steps,
                                  per_device_train_batch_size=64, learning_rate=3e-3, warmup_steps=5,
                                  save_steps=100, logging_steps=50, seed=SEED, report_to=[], use_cpu=True,
                                  disable_tqdm=True, optim="adamw_torch_fused")
        model.train()
        trainer = Trainer(model=model, args=targs, train_dataset=features(train, tok), data_collator=collate(tok.pad_token_id))
        result = trainer.train()
        t2 = time.monotonic()
        # evaluate
        correct = evaluate(model, tok, task)
        t3 = time.monotonic()
        # save
        model.save_pretrained(os.path.join(args.output_dir, f"iter_{k}"))
        tok.save_pretrained(os.path.join(args.output_dir, f"iter_{k}"))
        print(json.dumps({"iteration": k, "eval_accuracy": correct / len(task.eval_prompts),
                          "acceptance_rate": accepted / (4 * len(task.train_prompts)),
                          "pass_at_k": solved / len(task.train_prompts),
                          "num_train_samples": len(train), "train_loss": result.training_loss,
                          "seconds": round(time.monotonic() - began, 3), "iteration_seconds": time.monotonic() - t0,
                          "phases": {"generate": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2}}), flush=True)


if __name__ == "__main__":
    main()
