"""`make bench`: where a whole run on the defaults spends its wall time, ours against bench/plain_loop.py.

Each side runs once in a fresh process under py-spy (sampling the main thread, idle time included,
so that its samples add up to the wall time from start-up to exit), and under a gc callback that
counts the full collections and their time. Writes bench/run_profile.json; bench/run.py puts its
tables into BENCHMARKS.md.

With --task real: the variable-length task of bench/real_task.py (GSM8K-format problems through a chat
template, a 4-layer 512-wide Llama), 3 iterations at its sizes, written to bench/run_profile_real.json.

Usage: python bench/profile_runs.py [--task builtin|real] [--num_iterations N] [--rate 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "run_profile.json"
OUT_REAL = REPO / "bench" / "run_profile_real.json"
# A sample belongs to the first phase one of whose frames is on its stack (from the outermost frame in).
PHASES = [
    ("imports", ("_find_and_load",)),
    ("evaluate", ("greedy_accuracy", "evaluate (plain_loop.py")),
    ("generate: prompts (prefill)", ("prefill_once", "GenerationMixin._prefill")),
    ("generate: new tokens", ("GenerationMixin._sample",)),
    ("generate: the rest (verify, select, commit shards)", ("samples.py", "generate_and_select")),
    ("train: forward and loss", ("compute_loss",)),
    ("train: backward", ("Accelerator.backward",)),
    ("train: optimizer step", ("wrap_step",)),
    ("train: checkpoints", ("_save_checkpoint",)),
    ("train: gc.collect at start and end (accelerate)", ("Accelerator.free_memory",)),
    ("train: the rest of HF's loop (batches, clipping, callbacks)", ("Trainer.train",)),
    ("start-up: the base model written", ("write_base",)),
    ("save the iteration model", ("save_iteration", "save_pretrained")),
]
OTHER = "the rest: start-up (plan, lock, tokenizer, model load), exit, between phases"


def child() -> None:
    """python profile_runs.py --child GC_LOG SCRIPT ARGS...: SCRIPT as __main__, with every full
    collection's seconds appended to GC_LOG as it ends (itertrain leaves with os._exit: no atexit)."""
    import gc
    import runpy
    import time

    log = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    began = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                os.write(log, f"{time.perf_counter() - began[0]:.6f}\n".encode())

    gc.callbacks.append(on_gc)
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")


def phases(raw: Path, rate: int) -> dict:
    """{phase: seconds} over the main thread's samples."""
    lines = raw.read_text().splitlines()
    main_id = next(line.split(")")[0] for line in lines if "): MainThread" in line.split(";")[0])
    seconds: Counter = Counter()
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack.startswith(main_id + ")"):
            continue
        phase = next((name for name, marks in PHASES if any(m in stack for m in marks)), OTHER)
        seconds[phase] += int(n) / rate
    return {name: round(seconds[name], 2) for name, _ in PHASES + [(OTHER, ())]}


def profile(cmd: list[str], work: Path, rate: int) -> dict:
    raw, gc_log = work / "profile.raw", work / "gc.log"
    for p in (raw, gc_log):
        p.unlink(missing_ok=True)
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("profile_runs.py needs py-spy: pip install -e '.[bench]' (make bench installs it)")
    proc = subprocess.run([spy, "record", "--nonblocking", "--idle", "--threads", "-r", str(rate), "-f", "raw", "-o", str(raw), "--",
                           sys.executable, __file__, "--child", str(gc_log), *cmd], cwd=work, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} under py-spy failed: {proc.stderr[-2000:]}")
    collections = [float(x) for x in gc_log.read_text().split()] if gc_log.exists() else []
    by_phase = phases(raw, rate)
    return {"seconds": round(sum(by_phase.values()), 2), "phases": by_phase,
            "full_collections": len(collections), "full_collection_seconds": round(sum(collections), 3)}


def markdown(path: Path = OUT) -> str:
    if not path.exists():
        return "(bench/profile_runs.py has not been run)"
    p = json.loads(path.read_text())
    ours, plain = p["ours"], p["plain"]
    rows = "\n".join(f"| {name} | {ours['phases'][name]:.2f} s | {plain['phases'][name]:.2f} s |"
                     for name in ours["phases"])
    return (f"How: {p['how']}\n\n| where (main thread, py-spy) | itertrain | plain loop |\n|---|---:|---:|\n{rows}\n"
            f"| **whole run** | **{ours['seconds']:.2f} s** | **{plain['seconds']:.2f} s** |\n"
            f"| full garbage collections (gc callbacks; their time is inside the rows above) | "
            f"{ours['full_collections']}, {ours['full_collection_seconds']:.2f} s | "
            f"{plain['full_collections']}, {plain['full_collection_seconds']:.2f} s |")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child()
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["builtin", "real"], default="builtin")
    p.add_argument("--num_iterations", type=int, default=None, help="default: 5 (builtin), 3 (real)")
    p.add_argument("--rate", type=int, default=100, help="samples per second")
    args = p.parse_args()
    n = args.num_iterations or (3 if args.task == "real" else 5)
    with tempfile.TemporaryDirectory(prefix="itertrain-profile-") as tmp:
        work = Path(tmp)
        if args.task == "real":
            import real_task

            model, task = real_task.write_model(work / "model"), real_task.write_task(
                work / "task", real_task.SIZES["problems"], real_task.SIZES["eval"])
            ours_flags, plain_flags = real_task.flags(model, task, iterations=n), real_task.plain_flags(model, task, iterations=n)
        else:
            ours_flags, plain_flags = ["--num_iterations", str(n), "--disable_tqdm", "true"], ["--num_iterations", str(n)]
        result = {
            "ours": profile([str(REPO / "train_iterative.py"), "--output_dir", str(work / "ours"), *ours_flags],
                            work, args.rate),
            "plain": profile([str(REPO / "bench" / "plain_loop.py"), str(work / "plain"), *plain_flags], work, args.rate)}
    what = (f"{n} iterations of bench/real_task.py's variable-length task at its sizes" if args.task == "real"
            else f"{n} iterations on the defaults")
    result["how"] = (f"`python bench/profile_runs.py{' --task real' if args.task == 'real' else ''}` ({what}, each side "
                     f"once in a fresh process, py-spy at {args.rate} Hz (not pausing the process) on the main thread "
                     "with idle time, so the rows add up to the wall time from start-up to exit; a sample goes to the "
                     "first row whose frame is on its stack, in the order of the rows).")
    out = OUT_REAL if args.task == "real" else OUT
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
