"""The self-training loop a user would write with HF alone: the baseline of `iteration_ratio`.

The same work as `train_iterative.py` on its defaults: the built-in tiny Llama and addition task
(the same prompts, gold examples and exact-match verifier), per iteration 4 samples per prompt at
temperature 1 in batches of 256 prompts, the correct ones kept (one per prompt, deduplicated, and
every earlier iteration's kept too, plus the gold examples), 300 optimizer steps of batch 64 at
3e-3 with HF's Trainer and its own synchronous checkpoints every 100 steps, greedy evaluation on the
held-out prompts, save_pretrained. No recovery, no manifests, no fsync: the model stays in memory
from one iteration to the next, as the plainest script would have it.

With --task_dir D --model M: the same loop on a task of files (D/train.jsonl and D/eval.jsonl of
{"question", "answer"}, GSM8K's format; the questions through M's chat template, train.jsonl also the
gold examples, the gsm8k verifier), as bench/real_task.py runs it: batches in file order, padded.

Usage: python bench/plain_loop.py OUTPUT_DIR [--num_iterations 5] [--max_steps 300]
           [--task_dir D --model M --save_steps N --batch B --generation_batch G --num_samples S --max_new_tokens T]
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


def generate_and_select(model, tok, task, k, kept, batch=256, n=4, new=8):
    """n samples per prompt, the correct ones kept in `kept` (one per prompt, deduplicated)."""
    model.eval()
    prompts = [e.prompt for e in task.train_prompts]
    accepted, solved = 0, 0
    for i in range(0, len(prompts), batch):
        torch.manual_seed(SEED * 1000 + k * 100 + i // batch)
        texts = complete(model, tok, prompts[i:i + batch], do_sample=True, temperature=1.0, top_k=None,
                         top_p=None, num_return_sequences=n, max_new_tokens=new)
        for j, ex in enumerate(task.train_prompts[i:i + batch]):
            good = [t for t in dict.fromkeys(texts[j * n:(j + 1) * n]) if task.verify(ex, t)]
            accepted += sum(task.verify(ex, t) for t in texts[j * n:(j + 1) * n])
            solved += bool(good)
            kept += [(ex.prompt, t) for t in good[:1]]
    return accepted, solved


def evaluate(model, tok, task, batch=256, new=8) -> int:
    """Greedy completions of the held-out prompts: how many are correct."""
    model.eval()
    correct = 0
    for i in range(0, len(task.eval_prompts), batch):
        chunk = task.eval_prompts[i:i + batch]
        texts = complete(model, tok, [e.prompt for e in chunk], do_sample=False, max_new_tokens=new)
        correct += sum(task.verify(e, t) for e, t in zip(chunk, texts))
    return correct


def file_task(directory: str, tok):
    """The task of --task_dir: questions through the chat template, the gsm8k verifier."""
    from types import SimpleNamespace

    from itertrain.tasks import Example
    from itertrain.tasks.verifiers import gsm8k

    def read(name):
        rows = [json.loads(line) for line in open(os.path.join(directory, name), encoding="utf-8")]
        return [Example(tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                                add_generation_prompt=True), r["answer"]) for r in rows]

    train = read("train.jsonl")
    return SimpleNamespace(train_prompts=train, eval_prompts=read("eval.jsonl"), gold=train, verify=gsm8k)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("output_dir")
    p.add_argument("--num_iterations", type=int, default=5)
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--task_dir")
    p.add_argument("--model")
    p.add_argument("--save_steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--generation_batch", type=int, default=256)
    p.add_argument("--num_samples", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=8)
    args = p.parse_args()
    began = time.monotonic()
    base = args.model or os.path.join(args.output_dir, "base")
    if not args.model:
        tinymodel.write_base(base, SEED)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    task = file_task(args.task_dir, tok) if args.task_dir else make_task(SEED)
    gold = [(e.prompt, e.answer) for e in task.gold]
    kept: list[tuple[str, str]] = []
    for k in range(args.num_iterations):
        t0 = time.monotonic()
        # generate and filter
        accepted, solved = generate_and_select(model, tok, task, k, kept, args.generation_batch, args.num_samples,
                                               args.max_new_tokens)
        train = list(dict.fromkeys(gold + kept))
        t1 = time.monotonic()
        # train
        targs = TrainingArguments(output_dir=os.path.join(args.output_dir, f"trainer_{k}"), max_steps=args.max_steps,
                                  per_device_train_batch_size=args.batch, learning_rate=3e-3,
                                  warmup_steps=5, save_steps=args.save_steps, logging_steps=50, seed=SEED, report_to=[], use_cpu=True,
                                  disable_tqdm=True, optim="adamw_torch_fused")
        model.train()
        trainer = Trainer(model=model, args=targs, train_dataset=features(train, tok), data_collator=collate(tok.pad_token_id))
        result = trainer.train()
        t2 = time.monotonic()
        # evaluate
        correct = evaluate(model, tok, task, args.generation_batch, args.max_new_tokens)
        t3 = time.monotonic()
        # save
        model.save_pretrained(os.path.join(args.output_dir, f"iter_{k}"))
        tok.save_pretrained(os.path.join(args.output_dir, f"iter_{k}"))
        print(json.dumps({"iteration": k, "eval_accuracy": correct / len(task.eval_prompts),
                          "acceptance_rate": accepted / (args.num_samples * len(task.train_prompts)),
                          "pass_at_k": solved / len(task.train_prompts),
                          "num_train_samples": len(train), "train_loss": result.training_loss,
                          "seconds": round(time.monotonic() - began, 3), "iteration_seconds": time.monotonic() - t0,
                          "phases": {"generate": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2}}), flush=True)


if __name__ == "__main__":
    main()
