"""Resuming on another number of processes (part of `make bench`; `python bench/run.py --only elastic` alone).

Real runs of train_iterative.py under torchrun (gloo on CPU) on the 85M-parameter Llama of
checkpoint_stall_ratio (`--model_name`, written here):
  elastic_resume_ratio  ZeRO-2: start to the first resumed step of a 2-process checkpoint resumed on 1
                        process (ours: plan, DeepSpeed's ds_to_universal conversion, universal load, moment
                        check) / DeepSpeed's own `python -m deepspeed.checkpoint.ds_to_universal` on the same
                        checkpoint plus a resume of it on its own 2 processes to the same step; alternated A/B
  elastic_loss_rel      plain data parallelism, the largest relative difference of the per-step loss over
                        the resumed steps (2 -> 1 and 1 -> 2, killed after step 5, 50 steps resumed), against
                        the uninterrupted run on the first number of processes
Recorded beside them (no target): the same 2 -> 1 loss difference with attention dropout 0.1 (the RNG of
rank 1 is not used on one process), and the weights' max abs difference of each direction.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
ZERO2 = REPO / "tests" / "data" / "zero2.json"


def _flags(steps: int) -> list[str]:
    return ["--num_iterations", "1", "--max_steps", str(steps), "--save_steps", "5", "--num_gold", "96",
            "--num_prompts", "8", "--num_samples", "1", "--num_eval", "4", "--per_device_train_batch_size", "4",
            "--generation_batch_size", "8", "--disable_tqdm", "true", "--async_save", "false",
            "--save_total_limit", "2"]


def _model(work: Path, run, dropout: float = 0.0) -> Path:
    d = work / f"llama-85m-dropout{dropout}"
    if not d.exists():
        model = run.llama(*run.MAIN_SIZE)
        model.config.attention_dropout = dropout
        model.save_pretrained(d)
        run.TOK.save_pretrained(d)
    return d


def _launch(ranks: int) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            str(REPO / "train_iterative.py")]


def _run(cmd: list[str], failpoint: str | None = None, expect=(0,)) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ITERTRAIN_FAILPOINTS", None)
    if failpoint:
        env["ITERTRAIN_FAILPOINTS"] = failpoint
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode not in expect:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds


def _losses(out: Path) -> list[float]:
    last = max(out.glob("checkpoint-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "curve.json").read_text())["loss"]


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def resume_ratio(work: Path, model: Path, pairs: int) -> dict:
    """elastic_resume_ratio: ZeRO-2, killed after step 6 (checkpoint-5 committed), resumed to step 6."""
    crashed = work / "zero2-crashed"
    _run([*_launch(2), "--output_dir", str(crashed), "--model_name", str(model), "--deepspeed", str(ZERO2),
          *_flags(10)], failpoint="train.step=6", expect=(1,))
    ours, theirs, convert = [], [], []
    for i in range(pairs):
        a = work / f"ours{i}"
        shutil.copytree(crashed, a, symlinks=True)
        ours.append(_run([*_launch(1), "--output_dir", str(a), *AUTO], failpoint="train.step=6", expect=(1,)))
        b = work / f"theirs{i}"
        shutil.copytree(crashed, b, symlinks=True)
        ckpt = b / "checkpoint-5"
        tag = (ckpt / "latest").read_text().strip()
        c = _run([PY, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt / tag),
                  "--output_folder", str(work / f"universal{i}" / f"{tag}_universal"), "--inject_missing_state"])
        r = _run([*_launch(2), "--output_dir", str(b), *AUTO], failpoint="train.step=6", expect=(1,))
        convert.append(c)
        theirs.append(c + r)
        shutil.rmtree(a), shutil.rmtree(b), shutil.rmtree(work / f"universal{i}")
    ratio = sum(ours) / sum(theirs)
    return {"value": round(ratio, 3),
            "how": f"{pairs} pairs alternated; ours {[round(s, 1) for s in ours]} s (1 process, conversion "
                   f"included), DeepSpeed's ds_to_universal {[round(s, 1) for s in convert]} s + a 2-process "
                   f"resume: {[round(s, 1) for s in theirs]} s; 85M Llama, ZeRO-2, from process start to the "
                   "first resumed step (train.step=6)"}


def loss_rel(work: Path, model: Path, steps: int) -> tuple[dict, dict]:
    """elastic_loss_rel over 2 -> 1 and 1 -> 2; and the weights' max abs diff of each."""
    worst, diffs = 0.0, {}
    for before, after in ((2, 1), (1, 2)):
        ref, out = work / f"ref{before}", work / f"crash{before}to{after}"
        _run([*_launch(before), "--output_dir", str(ref), "--model_name", str(model), *_flags(steps)])
        _run([*_launch(before), "--output_dir", str(out), "--model_name", str(model), *_flags(steps)],
             failpoint="train.step=6", expect=(1,))
        _run([*_launch(after), "--output_dir", str(out), *AUTO])
        mine, theirs = _losses(out), _losses(ref)
        worst = max([worst] + [abs(a - b) / abs(b) for a, b in zip(mine[5:], theirs[5:], strict=True)])
        diffs[f"{before}->{after}"] = _max_diff(out / "iter_0", ref / "iter_0")
        shutil.rmtree(out), shutil.rmtree(ref)
    return ({"value": float(f"{worst:.3g}"),
             "how": f"largest |loss - reference| / reference over steps 6-{steps} (resumed after a kill at step 6, "
                    f"checkpoint-5), 2 -> 1 and 1 -> 2, plain data parallelism, 85M Llama; weights' max abs diff "
                    f"{ {k: float(f'{v:.3g}') for k, v in diffs.items()} }"}, diffs)


def dropout_rel(work: Path, model: Path, steps: int) -> dict:
    ref, out = work / "dropout-ref", work / "dropout-crash"
    _run([*_launch(2), "--output_dir", str(ref), "--model_name", str(model), *_flags(steps)])
    _run([*_launch(2), "--output_dir", str(out), "--model_name", str(model), *_flags(steps)],
         failpoint="train.step=6", expect=(1,))
    _run([*_launch(1), "--output_dir", str(out), *AUTO])
    mine, theirs = _losses(out), _losses(ref)
    rel = max(abs(a - b) / abs(b) for a, b in zip(mine[5:], theirs[5:], strict=True))
    diff = _max_diff(out / "iter_0", ref / "iter_0")
    shutil.rmtree(out), shutil.rmtree(ref)
    return {"loss_rel": float(f"{rel:.3g}"), "weights_max_abs_diff": float(f"{diff:.3g}"),
            "how": f"2 -> 1 with attention_dropout 0.1, killed at step 6, steps 6-{steps}: the largest relative "
                   "loss difference and the weights' max abs diff from the uninterrupted 2-process run"}


def figures(work: Path, quick: bool, run) -> dict:
    steps = 15 if quick else 55
    model = _model(work, run)
    out = {"elastic_resume_ratio": resume_ratio(work, model, 1 if quick else 2)}
    out["elastic_loss_rel"], _ = loss_rel(work, model, steps)
    out["elastic_loss_rel"]["dropout"] = dropout_rel(work, _model(work, run, 0.1), steps)
    return out


def markdown(results: dict) -> str:
    if "elastic_resume_ratio" not in results:
        return "(not measured yet: python bench/run.py --only elastic)"
    r, loss = results["elastic_resume_ratio"], results["elastic_loss_rel"]
    d = loss.get("dropout", {})
    return (f"`elastic_resume_ratio` {r['value']:.3f}: {r['how']}. `elastic_loss_rel` {loss['value']:.3g}: "
            f"{loss['how']}. With attention dropout 0.1 (a rank's RNG state that no process takes over), "
            f"the same 2 -> 1 resume differs by up to {d.get('loss_rel', float('nan')):.3g} in the per-step loss "
            f"and {d.get('weights_max_abs_diff', float('nan')):.3g} in the weights: the masks are other draws, "
            "not other data.")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "bench"))
    import tempfile

    import run as bench_run

    w = Path(tempfile.mkdtemp(prefix="itertrain-elastic-"))
    print(json.dumps(figures(w, "--quick" in sys.argv, bench_run), indent=1))
    shutil.rmtree(w, ignore_errors=True)
