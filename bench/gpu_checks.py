"""The checks that need a GPU, as one script for a machine with one CUDA GPU (docs/scaling.md holds
the command and what it gave).

    python bench/gpu_checks.py --out DIR      # writes DIR/gpu_checks.json and DIR/gpu_log.txt

1. One GPU, the seed's entry point: an uninterrupted 2-iteration run of the built-in model, and the
   same run killed at step 10 and (separately) during checkpoint-9's background write, each resumed
   with `auto auto`; iter_1's max abs diff against the uninterrupted run. If it is not 0.0, the
   trio again with --full_determinism (cuBLAS/cuDNN may pick non-deterministic kernels).
2. FSDP through torchrun, 1 process (NCCL refuses two ranks on one GPU), SHARDED_STATE_DICT and
   FULL_STATE_DICT: the same crash and resume, the checkpoint manifest's FSDP files, iter_1 loaded
   with from_pretrained; and --carry_optimizer_state killed in iteration 1 before its first
   checkpoint, resumed as "both" (iteration weights + FSDP optimizer state).
3. --generation_backend vllm where vllm is not installed: one line, exit 2; and where a vLLM
   environment is on the machine (ITERTRAIN_VLLM_PYTHON), vLLM against the HF backend on a ~0.5B
   Llama made from a config: samples/s, start-up apart.
4. Side by side with HF on this GPU (bench/run.py's functions): time blocked per checkpoint,
   training throughput, resume, generate-phase samples/s; each started only while time is left.
5. FSDP resharding (fsdp_reshard, needs 2 GPUs; reported as not run on fewer): SHARDED_STATE_DICT
   on 2 processes killed at step 10, resumed on 1; the examples of every step (ITERTRAIN_BATCH_LOG)
   equal the uninterrupted 2-process run's, iter_1 within 1e-5, the per-step loss within 1e-3.
6. QLoRA (--use_peft --load_in_4bit, bitsandbytes): the same crash and resume, the checkpoint
   holding only the adapter, iter_1 an ordinary bf16/fp32 model that from_pretrained loads; needs
   bitsandbytes in the environment (pip install bitsandbytes), else reported as not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench"), str(REPO / "src")]

from conftest import max_diff, run_cli  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402 - here: HF's lazy imports race in threads

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
DATA = REPO / "tests" / "data"
LOG: list[str] = []


def cli(name: str, out: Path, *extra, **kw):
    t0 = time.perf_counter()
    proc = run_cli(out, *extra, timeout=300, **kw)
    LOG.append(f"===== {name}: exit {proc.returncode}, {time.perf_counter() - t0:.1f} s\n{proc.stdout[-3000:]}\n"
               f"----- stderr\n{proc.stderr[-3000:]}\n")
    return proc


def trio(work: Path, name: str, *extra, launcher=(sys.executable,), crash="train.step=10", ref=None) -> dict:
    """Uninterrupted run (unless `ref` is given), the run killed by `crash`, resumed with auto auto."""
    if ref is None:
        ref = work / f"{name}-ref"
        if (p := cli(f"{name} reference", ref, *extra, launcher=launcher)).returncode != 0:
            return {"ok": False, "why": f"the reference run failed: {p.stderr.strip().splitlines()[-1:]}"}
    out = work / f"{name}-crash"
    crashed = cli(f"{name} crash {crash}", out, *extra, failpoints=crash, launcher=launcher)
    left = sorted(p.name for p in out.iterdir())
    resumed = cli(f"{name} resume", out, *extra, *AUTO, launcher=launcher)
    r = {"crash_exit": crashed.returncode, "left_by_crash": left, "resume_exit": resumed.returncode,
         "banner": [ln for ln in resumed.stdout.splitlines() if "checkpoint-" in ln or "iter_" in ln][:4]}
    if resumed.returncode != 0:
        return {**r, "ok": False, "why": resumed.stderr.strip().splitlines()[-1:]}
    r["max_abs_diff_iter_1"] = max_diff(out / "iter_1", ref / "iter_1")
    r["metrics_equal"] = (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    r["ok"] = crashed.returncode != 0 and r["max_abs_diff_iter_1"] == 0.0 and r["metrics_equal"]
    return r


def single_gpu(work: Path) -> dict:
    res = {"crash_at_step_10": trio(work, "gpu")}
    res["crash_in_background_write"] = trio(work, "gpu-bg", crash="checkpoint.background=9", ref=work / "gpu-ref")
    if not all(r["ok"] for r in res.values()):
        res["full_determinism"] = trio(work, "gpu-det", "--full_determinism", "true")
    return res


def fsdp(work: Path, kind: str) -> dict:
    flags = ["--fsdp", "full_shard auto_wrap", "--fsdp_config", str(DATA / f"fsdp_{kind}.json")]
    res = {"crash_at_step_10": trio(work, f"fsdp-{kind}", *flags, launcher=TORCHRUN)}
    ref = work / f"fsdp-{kind}-ref"
    if (ref / "checkpoint-9").is_dir():
        res["checkpoint_9_files"] = sorted(json.loads((ref / "checkpoint-9" / "itertrain.json").read_text())["files"])
        res["iter_1_files"] = sorted(p.name for p in (ref / "iter_1").iterdir())
        model = AutoModelForCausalLM.from_pretrained(ref / "iter_1")  # consolidated, ordinary
        res["iter_1_from_pretrained_params"] = sum(p.numel() for p in model.parameters())
    # killed after checkpoint-12 (iteration 1's last step) committed, before iter_1: nothing left to train
    res["crash_before_iteration_model"] = trio(work, f"fsdp-{kind}-itw", *flags, launcher=TORCHRUN,
                                               crash="iteration.write=1", ref=ref)
    res["carry_optimizer_state_both"] = trio(work, f"fsdp-{kind}-carry", *flags, "--carry_optimizer_state",
                                             launcher=TORCHRUN, crash="train.step=8")
    return res


def fsdp_reshard(work: Path) -> dict:
    import torch
    from conftest import batches

    if torch.cuda.device_count() < 2:
        return {"ok": None, "not_run": f"needs 2 GPUs, this machine has {torch.cuda.device_count()}"}
    flags = ["--fsdp", "full_shard auto_wrap", "--fsdp_config", str(DATA / "fsdp_sharded.json")]
    two, one = [*TORCHRUN[:-1], "--nproc_per_node=2"], [*TORCHRUN[:-1], "--nproc_per_node=1"]
    ref, out = work / "reshard-ref", work / "reshard-crash"
    if (p := cli("reshard reference", ref, *flags, launcher=two, batch_log=work / "reshard-ref.jsonl")).returncode:
        return {"ok": False, "why": p.stderr.strip().splitlines()[-1:]}
    cli("reshard crash", out, *flags, launcher=two, failpoints="train.step=10", batch_log=work / "reshard.jsonl")
    resumed = cli("reshard resume on 1", out, *AUTO, launcher=one, batch_log=work / "reshard.jsonl")
    if resumed.returncode:
        return {"ok": False, "why": resumed.stderr.strip().splitlines()[-1:]}
    same_steps = batches(work / "reshard.jsonl") == batches(work / "reshard-ref.jsonl")
    mine = json.loads((out / "checkpoint-12" / "curve.json").read_text())["loss"]
    theirs = json.loads((ref / "checkpoint-12" / "curve.json").read_text())["loss"]
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(mine, theirs, strict=True))
    diff = max_diff(out / "iter_1", ref / "iter_1")
    return {"ok": same_steps and diff <= 1e-5 and loss_rel <= 1e-3, "same_examples_per_step": same_steps,
            "max_abs_diff_iter_1": diff, "loss_rel": loss_rel}


def qlora(work: Path) -> dict:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"ok": False, "why": "bitsandbytes is not installed here: pip install bitsandbytes"}
    flags = ["--use_peft", "true", "--load_in_4bit", "true", "--lora_target_modules", "all-linear", "--bf16", "true"]
    res = {"crash_at_step_10": trio(work, "qlora", *flags)}
    ref = work / "qlora-ref"
    if (ref / "iter_1").is_dir():
        res["checkpoint_9_files"] = sorted(json.loads((ref / "checkpoint-9" / "itertrain.json").read_text())["files"])
        model = AutoModelForCausalLM.from_pretrained(ref / "iter_1")
        res["iter_1_dtype"] = str(next(model.parameters()).dtype)
        res["ok"] = res["crash_at_step_10"]["ok"] and not any(f.startswith("model") for f in res["checkpoint_9_files"])
    return res


def vllm_missing(work: Path) -> dict:
    proc = cli("vllm without vllm", work / "vllm", "--generation_backend", "vllm")
    lines = proc.stderr.strip().splitlines()
    return {"exit": proc.returncode, "stderr": lines, "wrote": (work / "vllm").exists(),
            "ok": proc.returncode == 2 and len(lines) == 1 and not (work / "vllm").exists()}


def vllm_half_billion(work: Path) -> dict:
    """vLLM against the HF backend on a ~0.5B Llama made from a config (random init, the built-in
    tokenizer), on the GPU: samples/s, vLLM's start-up apart. Needs a vLLM environment on the
    machine (ITERTRAIN_VLLM_PYTHON, default .venv-vllm/bin/python)."""
    import os

    from generation_bench import vllm_vs_hf
    from transformers import LlamaConfig, LlamaForCausalLM

    from itertrain.tasks import tinymodel

    python = Path(os.environ.get("ITERTRAIN_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
    if not python.exists():
        return {"ok": False, "how": f"not run: no vLLM here ({python})"}
    tok = tinymodel.make_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    model_dir = work / "llama-0.5b"
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = vllm_vs_hf(work, model_dir, python, device="cuda")
    return {"ok": "vllm_samples_per_s" in out, "params": params, **out}


def figures(work: Path, deadline: float) -> dict:
    import run as bench  # bench/run.py
    import torch

    from itertrain.runtime import dist

    dist.state()
    # a save every 10 steps (make bench's spacing on CPU) and every 150: a GPU runs 10 steps of this
    # model faster than a background write of its 1 GB finishes, and the next save waits for it
    jobs = [("checkpoint_stall_ratio_every_150", lambda: bench.checkpoint_stall(work, 2, *bench.MAIN_SIZE, 150)),
            ("checkpoint_stall_ratio", lambda: bench.checkpoint_stall(work, 2, *bench.MAIN_SIZE, 10)),
            ("train_throughput_ratio", lambda: bench.train_throughput(work, 4, 200)),
            ("resume_ratio", lambda: bench.resume(work, 4)),
            ("generation", lambda: bench.generation(256, 64, device=device))]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
    for key, job in jobs:
        if time.monotonic() > deadline:
            res[key] = "not run: out of time"
            continue
        t0 = time.perf_counter()
        try:
            res[key] = job()
        except Exception:  # noqa: BLE001 - one failed figure must not lose the others
            res[key] = {"error": traceback.format_exc()[-2000:]}
        res[key + "_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="where gpu_checks.json and gpu_log.txt go")
    p.add_argument("--work", default="/tmp/itertrain-gpu", help="scratch directory for the experiments")
    p.add_argument("--seconds", type=float, default=330, help="no figure is started after this many seconds")
    p.add_argument("--nproc", type=int, default=1, help="FSDP processes (more than 1 needs as many GPUs)")
    p.add_argument("--only", help="comma-separated: single_gpu,fsdp_sharded,fsdp_full,vllm_missing,vllm_half_billion,"
                                  "qlora,fsdp_reshard,figures")
    args = p.parse_args()
    TORCHRUN[-1] = f"--nproc_per_node={args.nproc}"
    started = time.monotonic()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    def save():
        (out / "gpu_checks.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / "gpu_log.txt").write_text("\n".join(LOG))

    def guarded(fn, *a):
        try:
            return fn(*a)
        except Exception:  # noqa: BLE001
            return {"ok": False, "error": traceback.format_exc()[-2000:]}

    checks = {"single_gpu": (single_gpu, work), "fsdp_sharded": (fsdp, work, "sharded"),
              "fsdp_full": (fsdp, work, "full"), "vllm_missing": (vllm_missing, work),
              "vllm_half_billion": (vllm_half_billion, work), "qlora": (qlora, work),
              "fsdp_reshard": (fsdp_reshard, work)}
    chosen = args.only.split(",") if args.only else [*checks, "figures"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = {key: pool.submit(guarded, *checks[key]) for key in chosen if key in checks}
        for key, job in jobs.items():
            results[key] = job.result()
            save()
    results["correctness_seconds"] = round(time.monotonic() - started, 1)
    if "figures" in chosen:
        results["figures"] = figures(work, started + args.seconds)
    results["seconds"] = round(time.monotonic() - started, 1)
    save()
    print(json.dumps(results, default=str)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
