"""Whole runs, end to end (part of `make bench`; `python bench/run.py --only e2e` for these alone).

iteration_ratio: a 5-iteration run on the defaults (train_iterative.py, a fresh process) against
bench/plain_loop.py doing the same work with HF alone, pairs alternated. The rest from runs under
bench/e2e_probe.py: weights read back per iteration, the share of an iteration outside generate,
train and evaluate, and that share's growth over a 50-iteration run. peak_rss_ratio: peak resident
memory of training with asynchronous checkpoints against HF's Trainer, each in a fresh process.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
GROWTH = ["--num_iterations", "50", "--max_steps", "10", "--save_steps", "5", "--num_prompts", "64", "--num_samples",
          "2", "--num_gold", "64", "--num_eval", "32", "--generation_batch_size", "64",
          "--per_device_train_batch_size", "16", "--disable_tqdm", "true"]


def _timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return seconds, proc


def iteration_ratio(work: Path, n: int) -> dict:
    ours_s, plain_s, acc = [], [], {}

    def ours() -> float:
        d = Path(tempfile.mkdtemp(dir=work))
        s, _ = _timed([PY, str(REPO / "train_iterative.py"), "--output_dir", str(d / "exp"), "--disable_tqdm", "true"],
                      REPO)
        acc["ours"] = [json.loads(line)["eval_accuracy"] for line in (d / "exp" / "metrics.jsonl").read_text().splitlines()]
        shutil.rmtree(d)
        ours_s.append(s)
        return s

    def plain() -> float:
        d = Path(tempfile.mkdtemp(dir=work))
        s, proc = _timed([PY, str(REPO / "bench" / "plain_loop.py"), str(d / "exp")], REPO)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')]
        acc["plain"] = [r["eval_accuracy"] for r in rows]
        acc["plain_phases"] = [r["phases"] | {"iteration": r["iteration_seconds"]} for r in rows]
        shutil.rmtree(d)
        plain_s.append(s)
        return s

    ratios = []
    for i in range(n):
        a, b = (ours(), plain()) if i % 2 == 0 else tuple(reversed((plain(), ours())))
        ratios.append(a / b)
    gap = max(abs(x - y) for x, y in zip(acc["ours"], acc["plain"], strict=True))
    return {"value": statistics.median(ratios), "pairs": ratios, "seconds_ours": statistics.median(ours_s),
            "seconds_plain": statistics.median(plain_s), "eval_accuracy_ours": acc["ours"],
            "eval_accuracy_plain": acc["plain"], "plain_phases": acc["plain_phases"],
            "how": f"wall time of `train_iterative.py --output_dir D` (5 iterations on the defaults, a fresh process, "
                   f"start-up included; median {statistics.median(ours_s):.1f} s) / `bench/plain_loop.py D` (the same "
                   f"work with HF alone: HF's synchronous checkpoints every 100 steps, model kept in memory, no "
                   f"recovery; median {statistics.median(plain_s):.1f} s), {n} pairs alternated; eval accuracy per "
                   f"iteration ours {acc['ours']}, plain {acc['plain']} (largest gap {gap:.3f})"}


def probe(work: Path, *flags: str) -> dict:
    d = Path(tempfile.mkdtemp(dir=work))
    out = d / "probe.json"
    _timed([PY, str(REPO / "bench" / "e2e_probe.py"), "--output_dir", str(d / "exp"), *flags], d,
           {"E2E_PROBE_OUT": str(out)})
    record = json.loads(out.read_text())
    shutil.rmtree(d)
    for it in record["iterations"]:
        it["overhead"] = it["seconds"] - sum(it["phases"].get(p, 0.0) for p in ("generate", "train", "evaluate"))
    return record


def reads_and_overhead(work: Path, plain_phases: list[dict] | None = None) -> dict:
    record = probe(work, "--disable_tqdm", "true")
    its = record["iterations"]
    committed = [r for r in record["reads"] if ".staging" not in r["path"]]
    per_it = [sum(1 for r in committed if r["iteration"] == it["iteration"]) for it in its]
    shares = [it["overhead"] / it["seconds"] for it in its]
    phases = {p: statistics.median(it["phases"].get(p, 0.0) for it in its) for p in ("generate", "train", "evaluate")}
    phases["other"] = statistics.median(it["overhead"] for it in its)
    phases["iteration"] = statistics.median(it["seconds"] for it in its)
    if plain_phases:  # the plain loop's "other" (mostly save_pretrained), per iteration, then the median
        for r in plain_phases:
            r["other"] = r["iteration"] - r["generate"] - r["train"] - r["evaluate"]
    plain = {p: statistics.median(r[p] for r in plain_phases) for p in plain_phases[0]} if plain_phases else None
    reads = {"value": max(per_it[1:]), "per_iteration": per_it, "reads": committed,
             "how": "full reads of committed model weights (safetensors loads, mmap or whole, torch.load, checksum "
                    "passes) in each iteration of a 5-iteration run on the defaults without restarts, max over "
                    f"iterations 1-4 (per iteration: {per_it}); the staged files hashed as they are committed are "
                    "not reads back"}
    overhead = {"value": statistics.median(shares), "per_iteration": shares, "phases_ours": phases,
                "phases_plain": plain, "startup_seconds": its[0]["began"] - record["started"],
                "how": "per iteration, the wall time outside generate (with verification), train (Trainer.train) "
                       "and evaluate, over the iteration's wall time (from its start to the next one's), median over "
                       f"the 5 iterations of a run on the defaults ({', '.join(f'{s:.1%}' for s in shares)}); "
                       f"start-up before iteration 0 ({its[0]['began'] - record['started']:.1f} s) not included"}
    return {"weight_reads_per_iteration": reads, "overhead_share": overhead}


def overhead_growth(work: Path) -> dict:
    its = probe(work, *GROWTH)["iterations"]
    early = statistics.median(it["overhead"] for it in its[1:6])
    late = statistics.median(it["overhead"] for it in its[45:50])
    return {"value": late / early, "seconds_early": early, "seconds_late": late,
            "per_iteration": [round(it["overhead"], 4) for it in its],
            "how": f"the per-iteration overhead (as overhead_share, in seconds) in one 50-iteration run "
                   f"(tiny model, 10 steps and 64 prompts per iteration, --reuse_previous on, every checkpoint "
                   f"kept: 100 at the end): median of iterations 45-49 ({late:.3f} s) / of iterations 1-5 "
                   f"({early:.3f} s)"}


def rss_child(kind: str) -> None:
    """In a fresh process: train the 85M Llama 30 steps with a save every 10; print peak RSS (KiB)."""
    sys.path.insert(0, str(REPO / "bench"))
    import run as bench

    work = tempfile.mkdtemp()
    args = bench.targs(work + "/t", 30, 4, save_strategy="steps", save_steps=10)
    model = bench.llama(*bench.MAIN_SIZE)
    t = bench.ours(model, args, bench.features(64), work, async_save=kind == "ours") if kind.startswith("ours") \
        else bench.plain(model, args, bench.features(64))
    t.train()
    shutil.rmtree(work)
    print(json.dumps({"maxrss_kib": peak_rss_kib()}))


def peak_rss_kib() -> int:
    """This process image's peak resident memory: VmHWM. Not ru_maxrss, which Linux carries over an
    exec from the forking process (a make bench parent that had trained the 85M model in-process made
    both sides report its own peak: a ratio of 1.000)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # (no /proc: the best there is)


def peak_rss_ratio(work: Path, n: int) -> dict:
    peaks: dict[str, list[int]] = {"ours": [], "hf": []}

    def side(kind: str) -> int:
        _, proc = _timed([PY, __file__, "--rss", kind], work)
        peaks[kind].append(json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kib"])
        return peaks[kind][-1]

    ratios = []
    for i in range(n):
        a, b = (side("ours"), side("hf")) if i % 2 == 0 else tuple(reversed((side("hf"), side("ours"))))
        ratios.append(a / b)
    ours, hf = statistics.median(peaks["ours"]) / 1024, statistics.median(peaks["hf"]) / 1024
    return {"value": statistics.median(ratios), "pairs": ratios, "mib_ours": ours, "mib_hf": hf,
            "how": f"peak resident memory (VmHWM of a fresh process) training the 85M Llama 30 steps with a "
                   f"checkpoint every 10 (Adam state): IterTrainer with --async_save ({ours:.0f} MiB) / HF Trainer "
                   f"({hf:.0f} MiB), {n} pairs alternated. What bounds ours: one kept host copy of model and "
                   "optimizer state (the snapshot the background writer reads)"}


def figures(work: Path, quick: bool) -> dict:
    ratio = iteration_ratio(work, 1 if quick else 3)
    out = {"iteration_ratio": ratio, **reads_and_overhead(work, ratio.pop("plain_phases"))}
    out["overhead_growth"] = overhead_growth(work)
    out["peak_rss_ratio"] = peak_rss_ratio(work, 1 if quick else 2)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rss"]:
        rss_child(sys.argv[2])
    else:
        w = Path(tempfile.mkdtemp(prefix="itertrain-e2e-"))
        print(json.dumps(figures(w, "--quick" in sys.argv), indent=1))
        shutil.rmtree(w, ignore_errors=True)
