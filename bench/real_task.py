"""Speed on a task whose sequences vary in length (part of `make bench`; `python bench/run.py --only real`).

The task: GSM8K-format word problems written by examples/gsm8k/write_problems.py's six templates (more
of them, from another seed), prompts through the example's ChatML template, answers with reasoning
ending in `#### N`, the gsm8k verifier. The model: a 4-layer, 512-wide Llama (15M parameters) with the
example's character tokenizer and chat template, made here from a seed.

  real_iteration_ratio  wall time of a 3-iteration `train_iterative.py` run / `bench/plain_loop.py --task_dir`
                        doing the same work as a user would write it with HF alone (generate in file order,
                        padded training, its own synchronous checkpoints); fresh processes, alternated
  sft_tokens_ratio      real tokens (no pads) per second of one iteration's training, the sft objective's
                        trainer as the loop builds it (padding-free, checkpoints committed) / TRL's SFTTrainer
                        with padding_free=True on the same examples, model and batch (a checkpoint at its
                        last step too), alternated in one process
  generate_real_ratio   samples/s of the generate phase (length order, prompts prefilled once) / one HF
                        generate per batch of the same size, in file order (num_return_sequences)
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SIZES = {"problems": 256, "eval": 64, "num_samples": 2, "max_new_tokens": 96, "batch": 16, "steps": 24,
         "generation_batch": 64}


def formatter(tok):
    """A question as the model sees it: one user turn through the chat template, as --chat_template auto does."""
    return lambda q: tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)


def write_task(d: Path, n: int, n_eval: int, seed: int = 7) -> Path:
    """train.jsonl (question, answer) and eval.jsonl of n and n_eval problems from the example's templates."""
    sys.path.insert(0, str(REPO / "examples" / "gsm8k"))
    import write_problems as w

    w.rng = random.Random(seed)
    kinds = [w.packs, w.change, w.distance, w.share, w.fence, w.discount]
    rows = [kinds[w.rng.randrange(len(kinds))]() for _ in range(n + n_eval)]
    d.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", rows[:n]), ("eval.jsonl", rows[n:])):
        (d / name).write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in part))
    return d


def write_model(d: Path, seed: int = 0) -> Path:
    """The example's tokenizer and chat template on a 4-layer, 512-wide Llama."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from itertrain.tasks.tinymodel import write_chat_model

    write_chat_model(str(d), seed)
    tok = AutoTokenizer.from_pretrained(d)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=None,
                         eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(d)
    return d


def flags(model: Path, task: Path, s: dict = SIZES, iterations: int = 3) -> list[str]:
    return ["--model_name", str(model), "--train_prompts", str(task / "train.jsonl"), "--eval_prompts",
            str(task / "eval.jsonl"), "--sft_data", str(task / "train.jsonl"), "--prompt_field", "question",
            "--verifier", "gsm8k", "--num_iterations", str(iterations), "--max_steps", str(s["steps"]),
            "--save_steps", str(s["steps"] // 2), "--per_device_train_batch_size", str(s["batch"]),
            "--generation_batch_size", str(s["generation_batch"]), "--num_samples", str(s["num_samples"]),
            "--max_new_tokens", str(s["max_new_tokens"]), "--disable_tqdm", "true"]


def plain_flags(model: Path, task: Path, s: dict = SIZES, iterations: int = 3) -> list[str]:
    return ["--task_dir", str(task), "--model", str(model), "--num_iterations", str(iterations), "--max_steps",
            str(s["steps"]), "--save_steps", str(s["steps"] // 2), "--batch", str(s["batch"]), "--generation_batch",
            str(s["generation_batch"]), "--num_samples", str(s["num_samples"]), "--max_new_tokens",
            str(s["max_new_tokens"])]


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def iteration_ratio(work: Path, model: Path, task: Path, n: int) -> dict:
    ours_s, plain_s = [], []

    def ours() -> float:
        d = Path(tempfile.mkdtemp(dir=work))
        ours_s.append(_timed([PY, str(REPO / "train_iterative.py"), "--output_dir", str(d / "exp"), *flags(model, task)]))
        shutil.rmtree(d)
        return ours_s[-1]

    def plain() -> float:
        d = Path(tempfile.mkdtemp(dir=work))
        plain_s.append(_timed([PY, str(REPO / "bench" / "plain_loop.py"), str(d / "exp"), *plain_flags(model, task)]))
        shutil.rmtree(d)
        return plain_s[-1]

    ratios = []
    for i in range(n):
        a, b = (ours(), plain()) if i % 2 == 0 else tuple(reversed((plain(), ours())))
        ratios.append(a / b)
    s = SIZES
    return {"value": statistics.median(ratios), "pairs": ratios, "seconds_ours": statistics.median(ours_s),
            "seconds_plain": statistics.median(plain_s),
            "how": f"wall time of a 3-iteration `train_iterative.py` run on the variable-length GSM8K-format task "
                   f"({s['problems']} prompts x {s['num_samples']} samples of up to {s['max_new_tokens']} tokens, "
                   f"{s['steps']} steps of batch {s['batch']}, the 4-layer 512-wide Llama; median "
                   f"{statistics.median(ours_s):.1f} s) / `bench/plain_loop.py --task_dir` doing the same work with HF "
                   f"alone (generate in file order, padded training; median {statistics.median(plain_s):.1f} s), "
                   f"{n} pairs alternated, fresh processes"}


def tokens_ratio(work: Path, model_dir: Path, task: Path, n: int) -> dict:
    """One iteration's training on the gold examples: ours (the sft objective's trainer) against TRL's
    SFTTrainer with padding_free=True, the same examples, model, batch, steps and learning rate."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    from itertrain.tasks import Example
    from itertrain.training.data import encode
    from itertrain.training.objectives import TrainSet
    from itertrain.training.objectives.sft import Sft
    from itertrain.training.trainer import Recovery

    tok = AutoTokenizer.from_pretrained(model_dir)
    fmt = formatter(tok)
    rows = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]
    examples = [Example(fmt(r["question"]), r["answer"]) for r in rows]
    feats = encode(examples, tok)
    real = sum(len(f["input_ids"]) for f in feats)
    steps, batch = len(feats) // SIZES["batch"], SIZES["batch"]  # one epoch: every example once on both sides
    common = dict(max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3, report_to=[],
                  disable_tqdm=True, logging_steps=10, seed=0, save_strategy="steps", save_steps=steps)

    def ours() -> float:
        d = tempfile.mkdtemp(dir=work)
        args = TrainingArguments(output_dir=str(Path(d) / ".staging"), **common)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        trainer = Sft().trainer(model=model, args=args, tokenizer=tok, train_set=TrainSet(feats, len(feats), {}),
                                reference=None, load=None,
                                recovery=Recovery(experiment_dir=d, iteration=0, step_offset=0, iteration_steps=steps,
                                                  started_from="base"))
        used.add(type(trainer.data_collator).__name__)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        shutil.rmtree(d)
        return seconds

    used: set[str] = set()
    data = Dataset.from_list([{"prompt": e.prompt, "completion": e.answer} for e in examples])

    def trl(padding_free: bool = True) -> float:
        d = tempfile.mkdtemp(dir=work)
        args = SFTConfig(output_dir=d, padding_free=padding_free, max_length=None, bf16=False, **common)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        shutil.rmtree(d)
        return seconds

    ours(), trl()  # warm: first-call costs (imports, kernels) on neither side's clock
    ratios, times = [], {"ours": [], "trl": []}
    for i in range(n):
        for side in (("ours", ours), ("trl", trl)) if i % 2 == 0 else (("trl", trl), ("ours", ours)):
            times[side[0]].append(side[1]())
        ratios.append(times["trl"][-1] / times["ours"][-1])  # the same real tokens on both sides
    padded = trl(padding_free=False)  # recorded beside: TRL with padded batches
    return {"value": statistics.median(ratios), "pairs": ratios,
            "tokens_per_second_trl_padded": real * steps * batch / len(feats) / padded,
            "tokens_per_second_ours": real * steps * batch / len(feats) / statistics.median(times["ours"]),
            "tokens_per_second_trl": real * steps * batch / len(feats) / statistics.median(times["trl"]),
            "how": f"real tokens per second of one iteration's training ({steps} steps of {batch} of the task's "
                   f"{len(feats)} gold examples, {real} real tokens, lengths {min(len(f['input_ids']) for f in feats)}-"
                   f"{max(len(f['input_ids']) for f in feats)}; the sft objective's trainer as the loop builds it, "
                   f"collator {', '.join(sorted(used))} (SDPA attention: padded by default), its checkpoint "
                   f"committed at the last step) / TRL's SFTTrainer with padding_free=True (prompt-"
                   f"completion data, loss on the completion, a checkpoint at its last step); {n} pairs alternated "
                   f"in one process after one warm run of each"}


def _sampling(model_dir: Path, task: Path):
    """The model in eval mode, its tokenizer and the task's train prompts through its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    fmt = formatter(tok)
    prompts = [fmt(json.loads(line)["question"]) for line in (task / "train.jsonl").read_text().splitlines()]
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), tok, prompts


def generate_ratio(model_dir: Path, task: Path, n: int) -> dict:
    """The generate phase's own sampling against one HF generate per batch in file order."""
    from plain_loop import complete

    from itertrain.phases.generate import sample
    from itertrain.phases.samples import generation_order

    model, tok, prompts = _sampling(model_dir, task)
    s = SIZES
    kw = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=s["max_new_tokens"])

    def ours() -> float:
        t0 = time.perf_counter()
        order = generation_order(prompts, tok, "length")
        sample(model, tok, [prompts[i] for i in order], num_samples=s["num_samples"], seed=0, iteration=0,
               batch_size=s["generation_batch"], max_new_tokens=s["max_new_tokens"], temperature=1.0)
        return len(prompts) * s["num_samples"] / (time.perf_counter() - t0)

    def plain() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(prompts), s["generation_batch"]):
            complete(model, tok, prompts[i:i + s["generation_batch"]], num_return_sequences=s["num_samples"], **kw)
        return len(prompts) * s["num_samples"] / (time.perf_counter() - t0)

    ratios = pairs_rate(n, ours, plain)
    return {"value": statistics.median(ratios), "pairs": ratios,
            "how": f"samples/s of the generate phase's sampling ({len(prompts)} variable-length prompts x "
                   f"{s['num_samples']} samples, up to {s['max_new_tokens']} new tokens, batches of "
                   f"{s['generation_batch']} in length order, each prompt prefilled once) / one HF generate per "
                   f"batch of {s['generation_batch']} in file order (num_return_sequences), the 4-layer 512-wide "
                   f"Llama, {n} pairs alternated"}


def rounds_ratio(model_dir: Path, task: Path, n: int) -> dict:
    """What finished sequences leaving the batch gains alone: the generate phase's sampling with rounds
    of generate.ROUND tokens / the same with one round of max_new_tokens (finished rows stay to the end)."""
    from itertrain.phases import generate
    from itertrain.phases.samples import generation_order

    model, tok, prompts = _sampling(model_dir, task)
    prompts = [prompts[i] for i in generation_order(prompts, tok, "length")]
    s, every = SIZES, generate.ROUND
    seconds: dict[int, list[float]] = {every: [], s["max_new_tokens"]: []}

    def rate(round_tokens: int) -> float:
        generate.ROUND = round_tokens
        try:
            t0 = time.perf_counter()
            generate.sample(model, tok, prompts, num_samples=s["num_samples"], seed=0, iteration=0,
                            batch_size=s["generation_batch"], max_new_tokens=s["max_new_tokens"], temperature=1.0)
            seconds[round_tokens].append(time.perf_counter() - t0)
        finally:
            generate.ROUND = every
        return len(prompts) * s["num_samples"] / seconds[round_tokens][-1]

    ratios = pairs_rate(n, lambda: rate(every), lambda: rate(s["max_new_tokens"]))
    return {"value": statistics.median(ratios), "pairs": ratios,
            "seconds": {f"rounds of {k}": [round(x, 1) for x in v] for k, v in seconds.items()},
            "how": f"samples/s of the generate phase's sampling with finished sequences leaving the batch every "
                   f"{every} tokens / the same with one round of {s['max_new_tokens']} (they stay to the end); "
                   f"{len(prompts)} prompts in length order x {s['num_samples']} samples, batches of "
                   f"{s['generation_batch']}, the 4-layer 512-wide Llama, {n} pairs alternated"}


def pairs_rate(n: int, a, b) -> list[float]:
    out = []
    for i in range(n):
        ra, rb = (a(), b()) if i % 2 == 0 else tuple(reversed((b(), a())))
        out.append(ra / rb)
    return out


def markdown(results: dict) -> str:
    keys = ("real_iteration_ratio", "sft_tokens_ratio", "generate_real_ratio")
    if not all(k in results for k in keys):
        return "(not measured yet: python bench/run.py --only real)"
    rows = []
    for k in keys:
        r = results[k]
        rows.append(f"- `{k}` {r['value']:.3f} (pairs: {', '.join(f'{x:.3f}' for x in r['pairs'])}; target "
                    f"{r['target']}): {r['how']}.")
    t = results["sft_tokens_ratio"]
    rows.append(f"- Real tokens per second in that training: ours {t['tokens_per_second_ours']:.0f}, TRL's "
                f"padding-free {t['tokens_per_second_trl']:.0f}, TRL's with padded batches "
                f"{t['tokens_per_second_trl_padded']:.0f} (one run).")
    return "\n".join(rows)


def figures(work: Path, quick: bool) -> dict:
    model, task = write_model(work / "real_model"), write_task(work / "real_task", SIZES["problems"], SIZES["eval"])
    n = 1 if quick else 2
    return {"generate_real_ratio": generate_ratio(model, task, 2 if quick else 3),
            "sft_tokens_ratio": tokens_ratio(work, model, task, n + 1),
            "real_iteration_ratio": iteration_ratio(work, model, task, n)}


if __name__ == "__main__":
    w = Path(tempfile.mkdtemp(prefix="itertrain-real-"))
    if "--rounds" in sys.argv:  # not a target: where generate_real_ratio's gain comes from
        print(json.dumps(rounds_ratio(write_model(w / "real_model"), write_task(w / "real_task", SIZES["problems"],
                                                                               SIZES["eval"]), 3), indent=1))
    else:
        print(json.dumps(figures(w, "--quick" in sys.argv), indent=1))
    shutil.rmtree(w, ignore_errors=True)
