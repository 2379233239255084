"""`make bench`, second part: where the generate phase spends its time (torch profiler), and what
the per-iteration overheads (model reload, tokenizer, dataset build, verification) cost next to
one iteration of the demo. Writes bench/profile.json; bench/run.py puts it into BENCHMARKS.md.
Usage: python bench/profile_phases.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from itertrain.phases.generate import sample  # noqa: E402  (every prompt as one shard)
from itertrain.phases.samples import select  # noqa: E402
from itertrain.tasks import tinymodel  # noqa: E402
from itertrain.tasks.addition import make_task  # noqa: E402
from itertrain.training.data import encode  # noqa: E402


def generate_profile(task, model, tok) -> list[dict]:
    prompts = [e.prompt for e in task.train_prompts]
    sample(model, tok, prompts[:256], num_samples=4, seed=0, iteration=0, batch_size=256, max_new_tokens=8,
           temperature=1.0)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sample(model, tok, prompts, num_samples=4, seed=0, iteration=0, batch_size=256, max_new_tokens=8,
               temperature=1.0)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return [{"op": e.key, "self_share": e.self_cpu_time_total / total, "calls": e.count} for e in top]


def timed(fn, n: int = 3) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def overheads(task, model, tok, model_dir: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = [e.prompt for e in task.train_prompts]
    completions = sample(model, tok, prompts, num_samples=4, seed=0, iteration=0, batch_size=256, max_new_tokens=8,
                         temperature=1.0)
    kept, _verdicts, _stats = select(task.train_prompts, completions, task.verify, 1, "the task's verifier")
    train_set = task.gold + kept
    costs = {
        "model reload (from_pretrained of the iteration model)": timed(lambda: AutoModelForCausalLM.from_pretrained(model_dir)),
        "tokenizer load": timed(lambda: AutoTokenizer.from_pretrained(model_dir)),
        f"dataset build (encode {len(train_set)} examples)": timed(lambda: encode(train_set, tok)),
        f"verification + selection ({len(prompts) * 4} samples)": timed(
            lambda: select(task.train_prompts, completions, task.verify, 1, "the task's verifier")),
        f"generate phase ({len(prompts)} prompts x 4 samples)": timed(
            lambda: sample(model, tok, prompts, num_samples=4, seed=0, iteration=0, batch_size=256, max_new_tokens=8,
                           temperature=1.0), n=1),
    }
    return costs


def iteration_seconds(work: str) -> float:
    """One iteration of the demo (its defaults: 300 steps, 2,000 prompts), end to end in-process."""
    from itertrain.app import cli

    t0 = time.perf_counter()
    assert cli.main(["--output_dir", f"{work}/exp", "--num_iterations", "1", "--disable_tqdm", "true"]) == 0
    return time.perf_counter() - t0


def main() -> int:
    tok = tinymodel.make_tokenizer()
    model = tinymodel.make_model(0, len(tok)).eval()
    task = make_task(seed=0, num_gold=700, num_prompts=2000, num_eval=500)
    with tempfile.TemporaryDirectory() as work:
        tinymodel.write_base(f"{work}/m", seed=0)
        gen = generate_profile(task, model, tok)
        costs = overheads(task, model, tok, f"{work}/m")
        iteration = iteration_seconds(work)
    out = {"generate_top_ops": gen, "overheads_seconds": costs, "iteration_seconds": iteration,
           "how": "torch.profiler (CPU) over one generate phase of the demo (2,000 prompts x 4 samples, batches "
                  "of 256, the built-in 2-layer Llama); overheads: median of 3 timings each, next to one whole "
                  "iteration of `itertrain train --num_iterations 1` (demo defaults) in the same process"}
    (REPO / "bench" / "profile.json").write_text(json.dumps(out, indent=1) + "\n")
    for r in gen:
        print(f"{r['op']:40s} {r['self_share']:6.1%} {r['calls']}")
    for k, v in costs.items():
        print(f"{k:60s} {v:8.3f} s  {v / iteration:6.1%} of an iteration ({iteration:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
