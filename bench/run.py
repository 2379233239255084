"""`make bench`: itertrain against plain Hugging Face code, side by side in one process.

Every figure is a ratio (or a plain count) measured against a baseline in the same process, the
two sides alternated A/B/A/B and the median of the per-pair ratios reported, because absolute times
on these machines are noise. Writes bench/results.json and BENCHMARKS.md.
Usage: python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import e2e  # noqa: E402
import mirror_bench  # noqa: E402
import elastic_bench  # noqa: E402
import grpo_bench  # noqa: E402
import peft_bench  # noqa: E402
import profile_runs  # noqa: E402
import real_task  # noqa: E402
from generation_bench import generation_markdown, redo_fraction, vllm_vs_hf  # noqa: E402
from plain_loop import complete  # noqa: E402  (HF's own generate call, as a user makes it: the baselines)
from stop_bench import agreement_cost, stop_latency, stop_markdown  # noqa: E402

from itertrain.app.loop import load_model  # noqa: E402
from itertrain.core import inventory  # noqa: E402
from itertrain.core.plan import Request, make_plan  # noqa: E402
from itertrain.core.selectors import Selector  # noqa: E402
from itertrain.phases.generate import sample  # noqa: E402
from itertrain.runtime import dist, restore
from itertrain.tasks.addition import make_task  # noqa: E402
from itertrain.tasks.tinymodel import make_model, make_tokenizer  # noqa: E402
from itertrain.training.data import Collator, encode  # noqa: E402
from itertrain.training.trainer import IterTrainer, Recovery  # noqa: E402

TOK = make_tokenizer()


def llama(hidden: int, layers: int, intermediate: int | None = None, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=len(TOK), hidden_size=hidden, intermediate_size=intermediate or hidden * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                      num_key_value_heads=max(hidden // 64, 1), max_position_embeddings=64, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def _params(hidden: int, layers: int) -> str:
    return f"{sum(p.numel() for p in llama(hidden, layers).parameters()) / 1e6:.2f}M params"


def features(n: int) -> list[dict]:
    task = make_task(seed=0, num_gold=n, num_prompts=1, num_eval=1, max_digits=4 if n > 5000 else 2)
    return encode(task.gold, TOK)


def targs(out: str, steps: int, batch: int, **kw) -> TrainingArguments:
    kw = {"save_strategy": "no", **kw}
    return TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                             report_to=[], disable_tqdm=True, logging_steps=50, seed=0, **kw)


class Clock(TrainerCallback):
    """Times steps warm+1..last (the save at the last step comes after on_step_end: not counted),
    and the first step after a (re)start."""

    def __init__(self, warm: int, stop_after_first: bool = False):
        self.warm, self.t0, self.t1, self.first = warm, None, None, None
        self.stop = stop_after_first
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        if self.first is None:
            self.first = now - self.started
            control.should_training_stop = self.stop
        if state.global_step == self.warm:
            self.t0 = now
        if state.global_step == state.max_steps:
            self.t1 = now


def ours(model, args, data, work: str, **kw) -> IterTrainer:
    return IterTrainer(model=model, args=args, train_dataset=data, data_collator=Collator(0),
                       recovery=Recovery(experiment_dir=work, iteration=0, step_offset=0,
                                         iteration_steps=args.max_steps, started_from="base", **kw))


def plain(model, args, data) -> Trainer:
    return Trainer(model=model, args=args, train_dataset=data, data_collator=Collator(0))


def pairs(n: int, a, b) -> list[float]:
    """n alternated measurements of a() and b(); each returns seconds. Ratios a/b."""
    out = []
    for i in range(n):
        ta, tb = (a(), b()) if i % 2 == 0 else tuple(reversed((b(), a())))
        out.append(ta / tb)
    return out


def train_throughput(work: Path, n: int, steps: int) -> dict:
    data, warm = features(2048), 10

    def run(kind: str) -> float:
        d = tempfile.mkdtemp(dir=work)
        clock = Clock(warm)
        t = (ours if kind == "ours" else lambda m, a, x, _w: plain(m, a, x))(llama(256, 4), targs(d + "/t", steps, 64),
                                                                             data, d)
        t.add_callback(clock)
        t.train()
        shutil.rmtree(d)
        return clock.t1 - clock.t0

    ratios = pairs(n, lambda: run("plain"), lambda: run("ours"))  # HF time / our time = our tokens/s / HF's
    return {"value": statistics.median(ratios), "pairs": ratios,
            "how": f"{steps} steps (first {warm} not timed), 4-layer 256-wide Llama ({_params(256, 4)}), batch 64, "
                   "same data, seed and arguments; checkpointing off (ours commits one at the last step, after "
                   "the timed window)"}


class SaveClock:
    """Wraps a trainer's _save_checkpoint and records how long the training loop was blocked."""

    def __init__(self, trainer):
        self.seconds, inner = [], trainer._save_checkpoint

        def timed(*a, **k):
            t = time.perf_counter()
            inner(*a, **k)
            self.seconds.append(time.perf_counter() - t)

        trainer._save_checkpoint = timed


SIZES = [(384, 6, 1024), (512, 8, 1408), (768, 12, 2048), (1024, 16, 2816)]  # ~10M, 26M, 86M, 202M params
MAIN_SIZE = SIZES[2]  # the issue's ~86M-param Llama


def checkpoint_stall(work: Path, n: int, hidden: int, layers: int, inter: int, every: int) -> dict:
    """Three saves in one training run (every `every` steps, the last at the last step); the time
    the loop is blocked per save, ours (async: snapshot, then write + fsync + commit on a thread)
    over HF's synchronous save. Also the whole run's time, which includes what the background write
    costs the training steps on shared cores and the wait for the last write at the end."""
    data = features(64)
    runs: dict[str, list] = {"ours": [], "plain": []}
    per_save: dict[str, list] = {"ours": [], "plain": []}

    def run(kind: str) -> float:
        d = tempfile.mkdtemp(dir=work)
        args = targs(d + "/t", 3 * every, 4, save_strategy="steps", save_steps=every)
        t = ours(llama(hidden, layers, inter), args, data, d, async_save=True) if kind == "ours" else \
            plain(llama(hidden, layers, inter), args, data)
        clock = SaveClock(t)
        t0 = time.perf_counter()
        t.train()
        runs[kind].append(time.perf_counter() - t0)
        shutil.rmtree(d)
        assert len(clock.seconds) == 3, clock.seconds
        per_save[kind].append([round(x, 4) for x in clock.seconds])
        return sum(clock.seconds) / len(clock.seconds)

    blocked = {"ours": [], "plain": []}

    def side(kind):
        blocked[kind].append(run(kind))
        return blocked[kind][-1]

    ratios = pairs(n, lambda: side("ours"), lambda: side("plain"))
    params = sum(p.numel() for p in llama(hidden, layers, inter).parameters())
    whole = [a / b for a, b in zip(runs["ours"], runs["plain"], strict=True)]
    return {"value": statistics.median(ratios), "pairs": ratios, "params": params,
            "seconds_blocked_ours": statistics.median(blocked["ours"]),
            "seconds_blocked_hf": statistics.median(blocked["plain"]),
            "whole_run_ratio": statistics.median(whole), "seconds_per_save": per_save, "every": every,
            "how": f"time the training loop is blocked per checkpoint (mean of 3 saves, every {every} steps, the "
                   f"last at the last step), Llama of {params / 1e6:.0f}M params with Adam state; ours: --async_save "
                   "(copy into kept host buffers + HF's small files; writing, fsync, xxh3 manifest and rename on a "
                   "thread), HF: Trainer._save_checkpoint, no fsync. The whole training run with its 3 saves, ours / "
                   f"HF: {statistics.median(whole):.3f} (background writing shares the cores with training)"}


def stall_vs_size(work: Path, n: int, every: int) -> dict:
    rows = []
    for h, layers, inter in SIZES:
        r = checkpoint_stall(work, n, h, layers, inter, every)
        rows.append({"params": r["params"], "ratio": r["value"], "whole_run_ratio": r["whole_run_ratio"],
                     "seconds_blocked_ours": r["seconds_blocked_ours"], "seconds_blocked_hf": r["seconds_blocked_hf"]})
    _plot(rows)
    sizes = ", ".join(f"{r['params'] / 1e6:.0f}M" for r in rows)
    return {"value": rows[-1]["ratio"] / rows[0]["ratio"], "sizes": rows,
            "how": f"the stall ratio (as checkpoint_stall_ratio, median of {n} pairs) at {sizes} params; value: the "
                   "largest's ratio / the smallest's (flat or falling: <= 1.25); plot: bench/stall_vs_size.png"}


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["params"] / 1e6 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(x, [r["ratio"] for r in rows], "o-", label="ours (async) / HF")
    a.axhline(0.15, color="grey", ls="--", lw=1, label="target 0.15")
    a.set(xscale="log", xlabel="parameters (M)", ylabel="blocked per save, ratio", ylim=(0, None))
    a.legend(fontsize=8)
    b.plot(x, [r["seconds_blocked_hf"] for r in rows], "s-", label="HF synchronous save")
    b.plot(x, [r["seconds_blocked_ours"] for r in rows], "o-", label="ours (async)")
    b.set(xscale="log", xlabel="parameters (M)", ylabel="seconds blocked per save")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(REPO / "bench" / "stall_vs_size.png", dpi=110)


def resume(work: Path, n: int) -> dict:
    """Restart to the first resumed optimizer step, from the same checkpoint."""
    exp = work / "resume-exp"
    data = features(512)
    t = ours(llama(256, 4), targs(str(exp / ".staging/trainer"), 20, 16, save_strategy="steps", save_steps=10),
             data, str(exp))
    t.train()
    ckpt = exp / "checkpoint-10"

    def run(kind: str) -> float:
        clock = Clock(0, stop_after_first=True)
        args = targs(str(work / "r" / kind), 20, 16)
        os.makedirs(work / "r" / "exp", exist_ok=True)
        if kind == "ours":  # integrity checks included: inventory, plan, checksums + trial loads
            arts, names = inventory.scan(str(exp), 20)
            plan = make_plan(arts, Request(Selector("auto"), Selector("none"), 1), existing=names)
            assert restore.verify(str(exp), plan.state_from) is None
            tr = ours(load_model(str(ckpt), for_training=True), args, data, str(work / "r" / "exp"),
                      weights_from=str(ckpt))  # loop.py's own load; the weights are read once
        else:
            tr = plain(LlamaForCausalLM.from_pretrained(ckpt), args, data)
        tr.add_callback(clock)
        tr.train(resume_from_checkpoint=str(ckpt))
        return clock.first

    def timed(kind):
        t0 = time.perf_counter()
        run(kind)
        return time.perf_counter() - t0

    ratios = pairs(n, lambda: timed("ours"), lambda: timed("plain"))
    checks, hf = [], []
    for _ in range(5):  # what the integrity checks cost alone, against HF's whole resume
        t0 = time.perf_counter()
        assert restore.verify(str(exp), "checkpoint-10") is None
        checks.append(time.perf_counter() - t0)
        hf.append(timed("plain"))
    return {"value": statistics.median(ratios), "pairs": ratios, "seconds_checks": statistics.median(checks),
            "seconds_hf_resume": statistics.median(hf),
            "how": "from the resume call (ours: inventory, plan, checksums and weights_only trial loads first) "
                   "through model load and HF's resume to the end of the first resumed optimizer step, same "
                   f"checkpoint-10 of a 4-layer 256-wide Llama ({_params(256, 4)}); in-process (interpreter start-up "
                   "excluded on both sides)"}


def resume_by_position(work: Path) -> dict:
    """HF's resume on a map-style dataset does not replay skipped batches: step 100 vs 10,000."""
    data = features(20_000)
    d = work / "pos"
    t = plain(llama(64, 2), targs(str(d), 1, 1, save_strategy="steps", save_steps=1), data)
    t.train()
    out = {}
    for step in (100, 10_000):
        ck = d / f"at-{step}"
        shutil.copytree(d / "checkpoint-1", ck)
        state = json.loads((ck / "trainer_state.json").read_text())
        state["global_step"], state["max_steps"] = step, step + 5
        (ck / "trainer_state.json").write_text(json.dumps(state))
        times = []
        for _ in range(3):
            clock = Clock(0, stop_after_first=True)
            os.makedirs(d / "exp", exist_ok=True)
            tr = ours(llama(64, 2), targs(str(d / "o"), step + 5, 1), data, str(d / "exp"))
            tr.add_callback(clock)
            t0 = time.perf_counter()
            tr.train(resume_from_checkpoint=str(ck))
            times.append(clock.first + clock.started - t0)
        out[step] = statistics.median(times)
    return {"value": out[10_000] / out[100], "seconds_at_100": out[100], "seconds_at_10000": out[10_000],
            "how": "time to the first resumed step from a checkpoint at step 100 and at step 10,000 of one epoch "
                   "of 20,000 batches (map-style dataset, batch 1; HF skips with a batch sampler, no data loaded)"}


def plan_1000(work: Path) -> dict:
    d = work / "plan"
    d.mkdir()
    for n in range(1, 1001):
        _fake(d, f"checkpoint-{n}", "checkpoint", (n - 1) // 10, n, (n - 1) % 10 + 1)
    for k in range(100):
        _fake(d, f"iter_{k}", "iteration", k, (k + 1) * 10, None)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        arts, names = inventory.scan(str(d), 10)
        make_plan(arts, Request(Selector("auto"), Selector("auto"), 200), existing=names)
        times.append(time.perf_counter() - t0)
    assert sum(a.usable for a in arts) == 1100
    return {"value": statistics.median(times), "how": "inventory (parse 1,100 manifests, stat every listed file: "
            "3 per artifact) + plan, 1,000 checkpoints and 100 iteration models, median of 5 (seconds)"}


def _fake(d: Path, name: str, kind: str, it: int, step: int, local: int | None) -> None:
    from itertrain.core import manifest

    a = d / name
    a.mkdir()
    for f in ("model.safetensors", "optimizer.pt", "config.json"):
        (a / f).write_bytes(b"x")
    m = manifest.build(str(a), kind=kind, name=name, iteration=it, global_step=step, local_step=local,
                       iteration_steps=10)
    (a / "itertrain.json").write_text(json.dumps(m))


def generation(n_prompts: int, n_loop: int, device: str = "cpu") -> dict:
    model = make_model(0, len(TOK)).to(device).eval()  # the built-in tiny model: what the demo's generate phase runs
    task = make_task(seed=0, num_gold=1, num_prompts=n_prompts, num_eval=1)
    prompts = [e.prompt for e in task.train_prompts]
    kw = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=8)

    def ours_rate() -> float:
        t0 = time.perf_counter()
        sample(model, TOK, prompts, num_samples=4, seed=0, iteration=0, batch_size=256, max_new_tokens=8, temperature=1.0)
        return len(prompts) * 4 / (time.perf_counter() - t0)

    def loop_rate() -> float:
        t0 = time.perf_counter()
        for p in prompts[:n_loop]:
            complete(model, TOK, [p], num_return_sequences=4, **kw)
        return n_loop * 4 / (time.perf_counter() - t0)

    def batched_rate() -> float:
        t0 = time.perf_counter()
        complete(model, TOK, prompts, num_return_sequences=4, **kw)
        return len(prompts) * 4 / (time.perf_counter() - t0)

    speedup = [ours_rate() / loop_rate() for _ in range(3)]
    vs_batched = [ours_rate() / batched_rate() for _ in range(3)]
    return {"generate_speedup": {"value": statistics.median(speedup), "pairs": speedup,
                                 "how": f"samples/s of the generate phase ({n_prompts} prompts x 4 samples, batches of "
                                        f"256) / a loop of one HF generate call per prompt ({n_loop} prompts x 4)"},
            "generate_vs_batched": {"value": statistics.median(vs_batched), "pairs": vs_batched,
                                    "how": f"samples/s of the generate phase / one batched HF generate call over the "
                                           f"same {n_prompts} prompts x 4 samples (the built-in 2-layer Llama, 8 new tokens)"}}


TARGETS = {"train_throughput_ratio": (">=", 0.98), "checkpoint_stall_ratio": ("<=", 0.15),
           "resume_ratio": ("<=", 1.0), "plan_seconds_1000": ("<", 0.2), "generate_speedup": (">=", 20),
           "generate_vs_batched": (">=", 0.9), "resume_step_10000_vs_100": ("<=", 1.2), "stall_vs_size": ("<=", 1.25),
           "stop_latency_ratio": ("<=", 2.0), "stop_agreement_vs_step": ("<=", 0.01),
           "generation_redo_fraction": ("<=", 512 / 2000), "peft_checkpoint_bytes_ratio": ("<=", 0.1),
           "peft_resume_ratio": ("<=", 1.0), "iteration_ratio": ("<=", 0.95), "weight_reads_per_iteration": ("<=", 0),
           "overhead_share": ("<=", 0.03), "overhead_growth": ("<=", 1.2), "peak_rss_ratio": ("<=", 1.5),
           "mirror_train_ratio": ("<=", 1.05), "fresh_resume_ratio": ("<=", 1.10), "fresh_resume_bytes": ("<=", 1.01),
           "elastic_resume_ratio": ("<=", 1.1), "elastic_loss_rel": ("<=", 1e-3),
           "grpo_step_ratio": (">=", 0.97), "grpo_resume_ratio": ("<=", 1.05),
           "real_iteration_ratio": ("<=", 0.70), "sft_tokens_ratio": (">=", 1.0), "generate_real_ratio": (">=", 1.3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer pairs and steps (a smoke run, not for the docs)")
    p.add_argument("--only", choices=["generation", "peft", "e2e", "rss", "mirror", "elastic", "grpo", "real"], help="measure only these figures and update them in "
                   "bench/results.json (each says when it was measured)")
    p.add_argument("--render", action="store_true", help="measure nothing: write BENCHMARKS.md again from "
                   "bench/results.json and the profiles (after bench/profile_runs.py alone)")
    args = p.parse_args()
    if args.render:
        saved = json.loads((REPO / "bench" / "results.json").read_text())
        write_markdown(saved["meta"], saved["results"], saved["recorded"])
        return 0
    dist.state()
    if args.only == "peft":
        return update_only("peft" + " --quick" * args.quick, lambda w: peft_figures(w, 2 if args.quick else 4, args.quick))
    if args.only == "rss":
        return update_only("rss", lambda w: {"peak_rss_ratio": e2e.peak_rss_ratio(w, 2)})
    if args.only == "mirror":
        return update_only("mirror" + " --quick" * args.quick,
                           lambda w: mirror_bench.figures(w, args.quick, sys.modules[__name__]))
    if args.only == "elastic":
        return update_only("elastic" + " --quick" * args.quick,
                           lambda w: elastic_bench.figures(w, args.quick, sys.modules[__name__]))
    if args.only == "grpo":
        return update_only("grpo" + " --quick" * args.quick, lambda w: grpo_bench.figures(w, args.quick))
    if args.only == "real":
        return update_only("real" + " --quick" * args.quick, lambda w: real_task.figures(w, args.quick))
    if args.only == "e2e":
        return update_only("e2e" + " --quick" * args.quick, lambda w: e2e.figures(w, args.quick))
    if args.only:
        return update_generation(args.quick)
    n = 2 if args.quick else 4
    work = Path(tempfile.mkdtemp(prefix="itertrain-bench-"))
    t0 = time.time()
    results = {"train_throughput_ratio": train_throughput(work, n, 60 if args.quick else 200)}
    every = 3 if args.quick else 10
    results["stall_vs_size"] = stall_vs_size(work, 2 if args.quick else 3, every) if not args.quick else \
        {"value": 1.0, "how": "not measured in --quick"}
    results["checkpoint_stall_ratio"] = checkpoint_stall(work, n, *((256, 4, 704) if args.quick else MAIN_SIZE),
                                                         every)
    results["resume_ratio"] = resume(work, n)
    results["resume_step_10000_vs_100"] = resume_by_position(work)
    results["plan_seconds_1000"] = plan_1000(work)
    results.update(generation(256, 32 if args.quick else 64))
    results["stop_latency_ratio"] = stop_latency(work, n, (256, 4, 704) if args.quick else MAIN_SIZE)
    results["stop_agreement_vs_step"] = agreement_cost()
    results["generation_redo_fraction"] = redo_fraction(work, 3 if args.quick else 8)
    results.update(peft_figures(work, n, args.quick))
    results.update(e2e.figures(work, args.quick))
    results.update(mirror_bench.figures(work, args.quick, sys.modules[__name__]))
    results.update(elastic_bench.figures(work, args.quick, sys.modules[__name__]))
    results.update(grpo_bench.figures(work, args.quick))
    results.update(real_task.figures(work, args.quick))
    recorded = {"vllm_vs_hf": vllm_vs_hf(work)}
    for key, r in results.items():
        op, target = TARGETS[key]
        r["target"] = f"{op} {target}"
        r["met"] = {">=": r["value"] >= target, "<=": r["value"] <= target, "<": r["value"] < target}[op]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} (CPU), "
                       f"torch threads {torch.get_num_threads()}", "quick": args.quick,
            "seconds": round(time.time() - t0, 1), "command": "make bench (python bench/run.py)"}
    out = REPO / "bench" / "results.json"
    out.write_text(json.dumps({"meta": meta, "results": results, "recorded": recorded}, indent=1) + "\n")
    write_markdown(meta, results, recorded)
    shutil.rmtree(work, ignore_errors=True)
    for key, r in results.items():
        print(f"{key:28s} {r['value']:10.4f}  target {r['target']:8s} {'met' if r['met'] else 'NOT met'}")
    return 0


def update_generation(quick: bool) -> int:
    """`--only generation`: the generate phase's figures measured now, the others kept as they were."""
    path = REPO / "bench" / "results.json"
    saved = json.loads(path.read_text())
    work = Path(tempfile.mkdtemp(prefix="itertrain-bench-"))
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    redo = redo_fraction(work, 3 if quick else 8)
    op, target = TARGETS["generation_redo_fraction"]
    redo.update(target=f"{op} {target}", met=redo["value"] <= target, measured=f"{when}, python bench/run.py --only generation")
    saved["results"]["generation_redo_fraction"] = redo
    saved["recorded"] = {"vllm_vs_hf": {**vllm_vs_hf(work), "measured": when}}
    path.write_text(json.dumps(saved, indent=1) + "\n")
    write_markdown(saved["meta"], saved["results"], saved["recorded"])
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"generation_redo_fraction": redo, **saved["recorded"]}, indent=1))
    return 0


def peft_figures(work: Path, n: int, quick: bool) -> dict:
    size = (256, 4, 704) if quick else MAIN_SIZE
    return {"peft_checkpoint_bytes_ratio": peft_bench.checkpoint_bytes(work, size, sys.modules[__name__]),
            "peft_resume_ratio": peft_bench.resume(work, n, size, sys.modules[__name__])}


def update_only(name: str, measure) -> int:
    """`--only NAME`: these figures measured now (`measure(work, n)`), the others kept as they were."""
    path = REPO / "bench" / "results.json"
    saved = json.loads(path.read_text())
    work = Path(tempfile.mkdtemp(prefix="itertrain-bench-"))
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for key, r in measure(work).items():
        op, target = TARGETS[key]
        r.update(target=f"{op} {target}", met={">=": r["value"] >= target, "<=": r["value"] <= target}[op],
                 measured=f"{when}, python bench/run.py --only {name}")
        saved["results"][key] = r
        print(f"{key:28s} {r['value']:10.4f}  target {r['target']:8s} {'met' if r['met'] else 'NOT met'}")
    path.write_text(json.dumps(saved, indent=1) + "\n")
    write_markdown(saved["meta"], saved["results"], saved["recorded"])
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_markdown(meta: dict, results: dict, recorded: dict) -> None:
    rows = "\n".join(f"| `{k}` | {r['value']:.4g} | {r['target']} | {'yes' if r['met'] else '**no**'} | {r['how']} |"
                     for k, r in results.items())
    stall, resumed = results["checkpoint_stall_ratio"], results["resume_ratio"]
    sizes = results["stall_vs_size"].get("sizes", [])
    table = "| params | blocked per save, ours | HF | ratio | whole run, ours / HF |\n|---:|---:|---:|---:|---:|\n" + \
        "\n".join(f"| {r['params'] / 1e6:.0f}M | {r['seconds_blocked_ours']:.3f} s | {r['seconds_blocked_hf']:.3f} s | "
                  f"{r['ratio']:.3f} | {r['whole_run_ratio']:.2f} |" for r in sizes)
    checks = (f"{resumed['seconds_checks']:.3f} s of checks next to {resumed['seconds_hf_resume']:.3f} s for HF's whole "
              f"resume of the same checkpoint ({resumed['seconds_checks'] / resumed['seconds_hf_resume']:.1%})")
    text = (REPO / "bench" / "BENCHMARKS.template.md").read_text()
    for key, value in {"{{DATE}}": meta["date"], "{{MACHINE}}": meta["machine"], "{{SECONDS}}": str(meta["seconds"]),
                       "{{ROWS}}": rows, "{{WHOLE_RUN}}": f"{stall['whole_run_ratio']:.2f}x", "{{SIZES}}": table,
                       "{{CHECKS}}": checks, "{{PROFILE}}": profile_markdown(), **stop_markdown(results),
                       **generation_markdown(results, recorded), "{{PEFT}}": peft_bench.markdown(results),
                       "{{E2E}}": e2e_markdown(results), "{{RUN_PROFILE}}": profile_runs.markdown(),
                       "{{RUN_PROFILE_REAL}}": profile_runs.markdown(profile_runs.OUT_REAL),
                       "{{MIRROR}}": mirror_bench.markdown(results),
                       "{{ELASTIC}}": elastic_bench.markdown(results), "{{GRPO}}": grpo_bench.markdown(results),
                       "{{REAL}}": real_task.markdown(results)}.items():
        text = text.replace(key, value)
    (REPO / "BENCHMARKS.md").write_text(text)


def e2e_markdown(results: dict) -> str:
    if "overhead_share" not in results:
        return "(not measured yet: python bench/run.py --only e2e)"
    ours, plain = results["overhead_share"]["phases_ours"], results["overhead_share"]["phases_plain"]
    def row(p: str) -> str:
        if plain[p] <= 0:  # (results measured before "other" was a per-iteration median: not meaningful)
            return f"| {p} | {ours[p]:.2f} s | - | - |"
        return f"| {p} | {ours[p]:.2f} s | {plain[p]:.2f} s | {ours[p] / plain[p]:.2f} |"

    rows = "\n".join(row(p) for p in ("generate", "train", "evaluate", "other", "iteration"))
    return ("| phase (median over the 5 iterations) | itertrain | plain loop | ratio |\n|---|---:|---:|---:|\n" + rows)


def profile_markdown() -> str:
    path = REPO / "bench" / "profile.json"
    if not path.exists():
        return "(bench/profile_phases.py has not been run)"
    p = json.loads(path.read_text())
    ops = "\n".join(f"| `{r['op']}` | {r['self_share']:.1%} | {r['calls']} |" for r in p["generate_top_ops"])
    it = p["iteration_seconds"]
    costs = "\n".join(f"| {k} | {v:.3f} s | {v / it:.1%} |" for k, v in p["overheads_seconds"].items())
    return (f"How: {p['how']}. Written by `python bench/profile_phases.py` (part of `make bench`).\n\n"
            "| generate phase: op (torch profiler, self CPU time) | share | calls |\n|---|---:|---:|\n" + ops +
            f"\n\n| per-iteration cost | seconds | share of one iteration ({it:.1f} s) |\n|---|---:|---:|\n" + costs)


if __name__ == "__main__":
    raise SystemExit(main())
