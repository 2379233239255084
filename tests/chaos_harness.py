"""Kill at every file event: the harness behind `make chaos` (and a sample of it in `make test`).

For a short 2-iteration run it counts the file events under the output directory (failpoints.py:
open for write, rename, mkdir, remove, rmtree, symlink), then for each chosen event runs a copy
that dies at that exact event with os._exit(137), as kill -9 does (optionally cutting the file last
opened for writing to half: a torn write), resumes it with `auto auto` until done, and compares the
final iteration model and metrics with an uninterrupted run. Every resume is the short command a user
types after a crash, `--output_dir D --resume_from auto --resume_from_iteration auto` and nothing else
(the rest comes from the experiment's record), once the experiment has begun: its record is written
before its first artifact. Before that (a kill while the directory is claimed) nothing is begun and the
resume is the full command again, as a user would run it; an adopted experiment has no record either.
Verdicts:
  PASS               identical weights (max abs diff 0.0) and metrics
  HARD_FAIL          a resume exited with an error, or never finished
  SILENT_DIVERGENCE  finished, but weights or metrics differ
  LOST_WORK          the resume started from an older point than the newest usable artifact
With --adopt each run starts from an experiment itertrain did not write (the reference cut back to
the seed's layout: iteration 0's model as base_model/, weights and tokenizer only, and iteration 0's
last checkpoint without its manifest) and the crash points are the file events of its resume.
With --ranks 2 the run is under torchrun (gloo) and each crash point is one rank's own N-th file
event (file.event=N@R): rank 0's events and rank 1's, each killing only that rank (torchrun then
stops the other, as it does when a worker dies).
Random stops (--random N --signal SIGTERM): the same, but the run is sent that signal (under
torchrun: the launcher, which forwards it) instead of SIGKILL, and must stop by itself (exit 75, or
0 if it had finished); a run that ignores it or dies otherwise is a HARD_FAIL.
Random kills (--random N): each trial SIGKILLs the whole process group (every rank, under torchrun
with --ranks 2) at 1-3 random moments of a run, resuming with `auto auto` after each, then compares.
With --generate the crash points are the generate phase's own: its file events (shards committed,
samples_K assembled, shards removed), or random moments while it runs; a resume that does not keep
every shard committed before the crash is LOST_WORK. Runs generate in shards of 8 prompts (3 per
iteration); with --vllm they sample with real vLLM (.venv-vllm); with --example they run examples/gsm8k
(chat template, gsm8k verifier in a pool of processes) on a tiny instruct-shaped model; with --packed
they train padding-free, each per-device batch in passes of at most 200 tokens.
With --mirror every run mirrors to a real S3 server on loopback (moto's, tests/s3_server.py), a
bucket per run: the crash points are the mirror's own writes (mirror.event=N: an upload's files,
its manifest, a copy, a delete; or random moments among them with --random), and after each crash
the experiment directory is deleted: the resume has the mirror alone (`--output_dir D --mirror_to URL
--resume_from auto --resume_from_iteration auto`). What is compared is what the mirror holds at the
end; LOST_WORK there means the resume did not start from the newest artifact complete on the mirror.
With --elastic (random kills) every resume after a kill runs on 1, 2 or 3 processes, drawn at random
(the first launch on --ranks): the user's short command with another --nproc_per_node. A PASS has the
uninterrupted run's examples in every optimizer step (ITERTRAIN_BATCH_LOG), its samples and metrics
(train_loss within 1e-3 relative) and weights within ELASTIC_TOL; the largest difference is reported.
Usage: python tests/chaos_harness.py [--events all|sample:K|N,M,...] [--torn] [--ranks 2|--adopt] [--generate] [--example]
                                     [--packed] [--peft continue|merge] [--objective dpo|grpo] [--grpo] [--mirror]
                                     [--jobs 2] [--json out]
       python tests/chaos_harness.py --random 200 [--ranks 2|--adopt] [--signal SIGTERM] [--generate] [--vllm] [--example]
                                     [--elastic] [--packed]
                                     [--peft continue|merge] [--objective dpo|grpo] [--grpo]
                                     [--jobs 2] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--num_iterations", "2", "--max_steps", "6", "--save_steps", "3", "--num_gold", "64",
         "--num_prompts", "24", "--num_samples", "2", "--generation_batch_size", "8", "--num_eval", "8",
         "--per_device_train_batch_size", "6", "--generation_shard_size", "8", "--disable_tqdm", "true"]
AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
BUILTIN_SIZES = ("--num_gold", "--num_prompts", "--num_eval")  # the built-in task's own


def sized(small: list[str], flags) -> list[str]:
    """`small` for a run given `flags`: without the built-in task's sizes on data files (refused there)."""
    if "--train_prompts" not in flags:
        return list(small)
    return [w for i, w in enumerate(small) if w not in BUILTIN_SIZES and (i == 0 or small[i - 1] not in BUILTIN_SIZES)]


VLLM: list[str] = []  # --vllm: the runs sample with real vLLM (.venv-vllm)
EXAMPLE = REPO / "examples" / "gsm8k"
TASK: list[str] = []  # --example: the GSM8K example (chat template, gsm8k verifier in its process pool)
# --packed: padding-free batches, each per-device batch trained in passes of at most 200 tokens
PACKED: list[str] = []


PEFT: list[str] = []  # --peft MODE: the runs train a LoRA adapter (adapters.py) in that --peft_iteration mode
OBJECTIVE: list[str] = []  # --objective dpo: iteration 1 trains with DPO (TRL) on pairs from iteration 0's model
DPO = ["--objective", "dpo", "--sft_iterations", "1", "--dpo_gold_chosen", "true", "--pairs_per_prompt", "2"]
# --grpo: iteration 1 trains with GRPO (TRL), a generation every 3 steps and checkpoints every 2 (inside its
# blocks), a reward plug-in beside the verifier (tests/plugins.py) so that the tiny model's groups differ
GRPO = ["--objective", "grpo", "--sft_iterations", "1", "--num_generations", "3", "--steps_per_generation", "3",
        "--save_steps", "2", "--reward_funcs", "plugins:digits"]
ELASTIC: list[int] = []  # --elastic: each resume after a kill runs on a number of processes drawn from these
ELASTIC_TOL = 1e-4  # --elastic: largest weight difference a PASS allows (another number of processes sums in another order)
MIRROR: dict = {}  # --mirror: {"server": an s3_server.S3Server}; every run mirrors to a bucket of its own
TRACKERS: list[str] = []  # --trackers: the runs report to TensorBoard, W&B (offline) and MLflow (a store per run)
TRACKER_FLAGS = ["--report_to", "tensorboard", "wandb", "mlflow", "--tracker_log_model", "true"]


def example_flags(model: Path) -> list[str]:
    """examples/gsm8k on the tiny instruct-shaped model, at the size of SMALL."""
    return ["--model_name", str(model), "--train_prompts", str(EXAMPLE / "train.jsonl"),
            "--eval_prompts", str(EXAMPLE / "eval.jsonl"), "--sft_data", str(EXAMPLE / "train.jsonl"),
            "--prompt_field", "question", "--verifier", "gsm8k", "--verifier_workers", "2",
            "--max_new_tokens", "32"]


def _recorded(out: Path) -> bool:
    """The experiment has begun: its settings are recorded (before its first artifact)."""
    return (out / "itertrain_config.json").exists()


def _mirror_recorded(out: Path) -> bool:
    """--mirror: the mirror has the experiment's record (a resume on an empty directory reads it there)."""
    return bool(MIRROR) and "itertrain_config.json" in MIRROR["server"].listing(mirror_url(out))


def mirror_url(out: Path) -> str:
    """The mirror of the run in `out` (--mirror): a bucket of its own on the loopback S3 server."""
    import hashlib

    bucket = f"chaos-{hashlib.sha1(str(out).encode()).hexdigest()[:16]}"
    if bucket not in MIRROR.setdefault("buckets", set()):
        MIRROR["server"].bucket(bucket)
        MIRROR["buckets"].add(bucket)
    return f"s3://{bucket}/exp"


def _cmd(out: Path, ranks: int, *extra: str, short: bool = False) -> list[str]:
    """The run's command line; `short`: a resume as a user types it after a crash, the output directory
    and the resume flags only (every other setting comes from the experiment's record; with --mirror,
    the mirror too, as the directory may be gone with its record)."""
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
                                   if ranks > 1 else [])
    if MIRROR:
        extra = (*extra, "--mirror_to", mirror_url(out))
    if short:
        return [*launcher, str(REPO / "train_iterative.py"), "--output_dir", str(out), *extra]
    flags = [*VLLM, *TASK, *PACKED, *PEFT, *OBJECTIVE, *TRACKERS, *extra]
    return [*launcher, str(REPO / "train_iterative.py"), "--output_dir", str(out), *sized(SMALL, flags), *flags]


def _env(out: Path, env_extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ITERTRAIN_FAILPOINTS", "ITERTRAIN_CHAOS_LOG")}
    if MIRROR:
        env.update(MIRROR["server"].env())
    if TRACKERS:
        env.update({"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": f"{out}.wandb-home",
                    "WANDB_CACHE_DIR": f"{out}.wandb-home", "MLFLOW_TRACKING_URI": _mlflow_uri(out)})
    if "--reward_funcs" in OBJECTIVE:  # its plug-in lives beside this file
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests"), env.get("PYTHONPATH")) if p)
    env.update(env_extra or {})
    return env


def _mlflow_uri(out: Path) -> str:
    # beside the experiment: its writes are not the run's file events; the runs' cwd is out.parent, so the
    # artifacts MLflow puts under ./mlruns stay in the scratch folder too
    return f"sqlite:///{out}.mlflow.db"


# How a one-rank run starts: a fresh interpreter (make chaos), or, where the test suite sets this to
# its zygote (tests/zygote.py), a fork of a process that imported itertrain once: the same run without
# seconds of imports. Runs under torchrun always start fresh.
ZYGOTE = None


def _run(out: Path, *extra: str, env_extra: dict | None = None, ranks: int = 1,
         short: bool = False) -> subprocess.CompletedProcess:
    cmd = _cmd(out, ranks, *extra, short=short)
    if ZYGOTE is not None and ranks == 1:
        return ZYGOTE().run(cmd, cmd[2:], _env(out, env_extra), 600, cwd=out.parent)
    return subprocess.run(cmd, cwd=out.parent, env=_env(out, env_extra), capture_output=True, text=True, timeout=600)


def _start(out: Path, ranks: int, err_path: Path, log: Path, short: bool = False, env_extra: dict | None = None):
    """A resume with auto auto (`short`: as _cmd), started in its own process group, stderr to
    `err_path`, its file events (rank 0's) to `log`."""
    cmd, env = _cmd(out, ranks, *AUTO, short=short), _env(out, {"ITERTRAIN_CHAOS_LOG": str(log), **(env_extra or {})})
    if ZYGOTE is not None and ranks == 1:
        return ZYGOTE().spawn(cmd[2:], env, out.parent, os.devnull, str(err_path))
    with open(err_path, "w") as err:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)


def _reaches(p, log: Path, event: int) -> bool:
    """Wait until the run has logged `event` file events (True) or has ended (False); with --mirror,
    `event` writes to the mirror."""
    log = Path(f"{log}.mirror") if MIRROR else log
    while True:
        try:
            with open(log, "rb") as f:
                if f.read().count(b"\n") >= event:
                    return True
        except FileNotFoundError:
            pass
        try:
            p.wait(timeout=0.01)
            return False
        except subprocess.TimeoutExpired:
            continue


def reference(work: Path, ranks: int = 1) -> tuple[Path, list[str], tuple[int, int]]:
    """An uninterrupted run, rank 0's file events, and the window for random kills."""
    out, events, window = reference_ranks(work, ranks)
    return out, events[0], window


def reference_ranks(work: Path, ranks: int) -> tuple[Path, list[list[str]], tuple[int, int]]:
    """An uninterrupted run, each rank's list of file events (rank 1 logs to <log>.rank1), and the
    window of rank 0's events in which a random kill tests something (_window)."""
    out, log = work / f"reference{ranks}", work / f"events{ranks}.log"
    proc = _run(out, env_extra={"ITERTRAIN_CHAOS_LOG": str(log), "ITERTRAIN_BATCH_LOG": str(work / "batches.jsonl")},
                ranks=ranks)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    logs = [Path(f"{log}.mirror")] if MIRROR else [log] + [Path(f"{log}.rank{r}") for r in range(1, ranks)]
    events = [p.read_text().splitlines() if p.exists() else [] for p in logs]
    return out, events, _window(events[0])


def generate_windows(events: list[str]) -> list[tuple[int, int]]:
    """Each iteration's generate phase, as file-event numbers: from the event before its first shard's
    to its last samples_K event (the shards removed once samples_K is committed)."""
    out = []
    for k in range(100):
        mine = [n for n, e in enumerate(events, 1) if f"samples_{k}" in e.split("\t")[2]]
        if not mine:
            break
        out.append((max(mine[0] - 1, 1), mine[-1]))
    return out


def _window(events: list[str]) -> tuple[int, int]:
    """Where a random kill lands, as the run itself reports its progress: after one of its file events,
    from the first to the last few (a kill after the very last would find the run finished). Counting
    events, not seconds, makes a trial independent of how fast the machine is and of how the run
    was started (a fresh interpreter, or a fork of the zygote)."""
    return 1, max(1, len(events) - 3)


ADOPTED_STRIP_KEEP = ("model.safetensors", "tokenizer.json", "tokenizer_config.json")


def adopted_layout(ref: Path, work: Path) -> Path:
    """The reference cut back to what the seed system leaves: base_model/ (iter_0's weights and
    tokenizer, no manifest, no config.json) and checkpoint-6 without its manifest, beside the
    built-in base model."""
    out = work / "adopted-layout"
    shutil.copytree(ref, out, ignore=shutil.ignore_patterns(".itertrain.lock"))
    for p in list(out.iterdir()):
        if p.name not in ("base", "iter_0", "checkpoint-6"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for f in (out / "iter_0").iterdir():
        if f.name not in ADOPTED_STRIP_KEEP:
            f.unlink()
    (out / "iter_0").rename(out / "base_model")
    (out / "checkpoint-6" / "itertrain.json").unlink()
    return out


def adopted_reference(ref: Path, work: Path) -> tuple[Path, list[str], tuple[int, int]]:
    """The adopted layout, the file events of its uninterrupted resume (which must end as `ref`)
    and the window for random kills."""
    layout, out, log = adopted_layout(ref, work), work / "adopted-reference", work / "adopted-events.log"
    shutil.copytree(layout, out)
    proc = _run(out, *AUTO, env_extra={"ITERTRAIN_CHAOS_LOG": str(log)})
    if proc.returncode != 0 or (why := _compare(out, ref, adopted=True)):
        raise RuntimeError(f"the adopted layout's own resume is wrong: {proc.stderr[-2000:] or why}")
    events = log.read_text().splitlines()
    return layout, events, _window(events)


def from_mirror(out: Path) -> Path:
    """What the mirror of `out` holds at the end, the final model and the metrics, in a folder beside it."""
    there, url = Path(f"{out}.from-mirror"), mirror_url(out)
    shutil.rmtree(there, ignore_errors=True)
    for key, size in MIRROR["server"].listing(url).items():
        if key == "metrics.jsonl" or key.startswith("iter_1/"):
            (there / key).parent.mkdir(parents=True, exist_ok=True)
            (there / key).write_bytes(MIRROR["server"].get(url, key))
    return there


def _compare(out: Path, ref: Path, adopted: bool = False) -> str | None:
    if MIRROR and not out.name.endswith(".from-mirror"):
        there = from_mirror(out)
        if not (there / "iter_1" / "itertrain.json").exists():
            return "the mirror has no complete iter_1 once the run finished"
        return _compare(there, ref, adopted)
    diff = 0.0
    for d in ["iter_1"] + (["iter_1/adapter"] if (ref / "iter_1" / "adapter").is_dir() else []):
        a, b = _weights(out / d), _weights(ref / d)
        if a.keys() != b.keys():
            return f"{d}: other tensors ({sorted(a.keys() ^ b.keys())[:3]})"
        diff = max([diff] + [(a[k] - b[k]).abs().max().item() for k in a])
    want = (ref / "metrics.jsonl").read_text().splitlines(keepends=True)
    if adopted:  # the adopted iteration 0 has no metrics of its own
        want = want[1:]
    same_metrics = (out / "metrics.jsonl").read_text() == "".join(want)
    if diff != 0.0 or not same_metrics:
        return f"max abs diff {diff}, metrics same: {same_metrics}"
    return tracker_problem(out, committed_rows(ref)) if TRACKERS else None


def _remove(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}.from-mirror", ignore_errors=True)
    for beside in out.parent.glob(f"{out.name}.*"):  # the trackers' stores (--trackers)
        shutil.rmtree(beside, ignore_errors=True) if beside.is_dir() else beside.unlink()


def committed_rows(out: Path) -> dict[int, dict[str, float]]:
    """What every tracker must hold: each committed step's loss, learning rate and the objective's own
    values (--grpo: TRL's), and each iteration's metrics at its last step."""
    from itertrain.core import curve
    from itertrain.trackers import values

    rows: dict[int, dict] = {}
    for it in curve.committed(str(out), 6):
        for i, loss, lr, own in values.each_step(it["curve"]["loss"], it["curve"]["lr"], it["curve"].get("steps")):
            rows[it["offset"] + 1 + i] = values.step_values(loss, lr, own)
        rows[it["end"]].update(values.iteration_values(it["metrics"]))
    return rows


def tracker_problem(out: Path, want: dict, mlflow_uri: str | None = None) -> str | None:
    """W&B's and MLflow's one run each hold every step once, equal to `want`."""
    import json

    from itertrain.trackers import wandb_run

    record = json.loads((out / "trackers.json").read_text())
    if "wandb" in record:
        rows = wandb_run.local_log(str(out / "wandb"), record["wandb"]["id"])[0]
        steps = [r["_step"] for r in rows]
        if steps != sorted(set(steps)):
            return f"W&B: steps logged twice or backwards: {steps}"
        if {r["_step"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in rows} != want:
            return "W&B: its history differs from the committed curves and metrics"
        run_id = record["wandb"]["id"]
        logs = (out / "wandb").glob(f"*-{run_id}*/run-{run_id}.wandb")
        if "--tracker_log_model" in TRACKERS and not any(
                r.WhichOneof("record_type") == "artifact" for log in logs for r in wandb_run.records(str(log))):
            return "W&B: the final model's reference artifact is missing"
    if "id" in record.get("mlflow", {}):  # (no id: its store never opened, e.g. a kill cut its creation short)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_uri or _mlflow_uri(out))
        run = client.get_run(record["mlflow"]["id"])
        runs = client.search_runs([run.info.experiment_id])
        if len(runs) != 1 or run.info.status != "FINISHED":
            return f"MLflow: {len(runs)} runs, this one {run.info.status}"
        got: dict[int, dict] = {}
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            if len({m.step for m in history}) != len(history):
                return f"MLflow: {key} has a step logged twice"
            for m in history:
                got.setdefault(m.step, {})[key] = m.value
        if got != want:
            return "MLflow: its metrics differ from the committed curves and metrics"
        if "--tracker_log_model" in TRACKERS and run.data.tags.get("itertrain.final_model") != str(out / "iter_1"):
            return "MLflow: the final model's tag is missing"
        artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
        if artifacts.exists() and not artifacts.is_relative_to(out.parent):
            return f"MLflow: artifacts were written outside the scratch folder, to {artifacts}"
    return None


def random_trial(ref: Path, work: Path, seed: int, ranks: int = 1, max_kills: int = 3,
                 window: tuple[int, int] | list[tuple[int, int]] = (1, 100), layout: Path | None = None,
                 sig: str | None = None) -> dict:
    """SIGKILL every process of the run (or send it `sig`) 1..max_kills times, each once the run has
    logged a random number of file events in `window` (event numbers of the reference run: where the
    run is, as it reports it), resuming after each. A resume writes fewer events than a whole run,
    so a later kill may find it finished first: then the trial has fewer kills; one whose first run
    finished before its kill tested nothing and is not a PASS. `layout`: start from a copy of that
    experiment (--adopt)."""
    rng = random.Random(seed)
    kills = rng.randint(1, max_kills)
    out = work / f"r{seed}"
    if layout is not None:
        shutil.copytree(layout, out)
    result = {"seed": seed, "ranks": ranks, "kills": kills, "killed_at": [], "signal": sig or "SIGKILL"}
    err_path = work / f"r{seed}.stderr"
    for launch in range(kills + 5):
        log = work / f"r{seed}.events{launch}"
        if MIRROR and launch > 0:
            _remove(out)  # the machine died with its disk: the resume has the mirror alone
        launch_ranks = rng.choice(ELASTIC) if ELASTIC and launch > 0 else ranks
        if ELASTIC:
            result.setdefault("launch_ranks", []).append(launch_ranks)
        p = _start(out, launch_ranks, err_path, log, short=launch > 0 and layout is None
                   and (_recorded(out) or _mirror_recorded(out)),
                   env_extra={"ITERTRAIN_BATCH_LOG": str(work / f"r{seed}.batches")} if ELASTIC else None)
        if len(result["killed_at"]) < kills:
            lo, hi = window if not isinstance(window, list) else \
                rng.choices(window, weights=[b - a + 1 for a, b in window])[0]
            t = rng.randint(lo, hi)
            if _reaches(p, log, t):
                if sig:  # a stop request: the run (torchrun: its launcher) must stop by itself
                    p.send_signal(getattr(signal, sig))
                    p.wait(timeout=600)
                    # 75: stopped; 0: it had finished; -SIG: it came before the handler was installed
                    if not _stopped(p.returncode, ranks, out, err_path.read_text(), -getattr(signal, sig)):
                        return {**result, "verdict": "HARD_FAIL",
                                "why": f"exit {p.returncode} after {sig}: {err_path.read_text()[-500:]}"}
                    result.setdefault("exits", []).append(p.returncode)
                else:
                    os.killpg(p.pid, signal.SIGKILL)  # every rank, the launcher too: as a node dying
                    p.wait()
                result["killed_at"].append(t)
                # where it landed: committed artifacts so far
                result.setdefault("committed_at_kill", []).append(
                    sum(1 for n in os.listdir(out) if not n.startswith(".") and (out / n).is_dir())
                    if out.exists() else 0)
                continue
        else:
            p.wait(timeout=600)
        if p.returncode == 0:  # finished (possibly before a planned kill: fewer kills, still a trial)
            break
        if p.returncode not in (0, 137) and not sig:
            return {**result, "verdict": "HARD_FAIL", "why": err_path.read_text()[-500:]}
    else:
        return {**result, "verdict": "HARD_FAIL", "why": "did not finish"}
    if not result["killed_at"]:  # it finished before the first planned moment: it tested nothing
        return {**result, "verdict": "NO_KILL", "why": "the run finished before the first kill"}
    if ELASTIC:
        why, measured = elastic_compare(out, ref, work / f"r{seed}.batches", ref.parent / "batches.jsonl")
        result.update(measured)
    else:
        why = _compare(out, ref, adopted=layout is not None)
    if why:
        return {**result, "verdict": "SILENT_DIVERGENCE", "why": why}
    _remove(out)
    return {**result, "verdict": "PASS"}


def _batches(log: Path) -> dict:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {(r["iteration"], r["step"]): r["ids"] for r in rows}  # a step trained again: its last line


def elastic_compare(out: Path, ref: Path, log: Path, ref_log: Path) -> tuple[str | None, dict]:
    """--elastic: the same examples in every optimizer step, the same samples and metrics (train_loss within
    1e-3), the weights within ELASTIC_TOL; and what was measured (the weights' max abs diff, eval accuracy)."""
    a, b = _weights(out / "iter_1"), _weights(ref / "iter_1")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, ref)]
    measured = {"max_abs_diff": diff, "eval_accuracy": [r.get("eval_accuracy") for r in rows[0]],
                "reference_eval_accuracy": [r.get("eval_accuracy") for r in rows[1]]}
    if _batches(log) != _batches(ref_log):
        return "the examples of some optimizer step differ from the uninterrupted run's", measured
    for k in (0, 1):
        if (out / f"samples_{k}" / "generated.jsonl").read_bytes() != (ref / f"samples_{k}" / "generated.jsonl").read_bytes():
            return f"samples_{k} differs", measured
    for mine, theirs in zip(*rows, strict=True):
        la, lb = mine.pop("train_loss"), theirs.pop("train_loss")
        if mine != theirs or abs(la - lb) > 1e-3 * abs(lb):
            return f"metrics differ: {mine} vs {theirs}", measured
    if diff > ELASTIC_TOL:
        return f"max abs diff {diff} > {ELASTIC_TOL}", measured
    return None, measured


def _spans(window) -> str:
    return ", ".join(f"{a}-{b}" for a, b in (window if isinstance(window, list) else [window]))


def _stopped(rc: int, ranks: int, out: Path, stderr: str, by_signal: int) -> bool:
    """Did the run end as a stop request should end it: finished (0), stopped (75), or killed by the
    signal itself because it came before the handler was installed (while importing)? Under
    torchrun the launcher's own status says none of this (it exits 1, or dies of the signal once
    its workers are done): the stop record, the last iteration model, or a worker's status does."""
    if ranks == 1:
        return rc in (0, 75, by_signal)
    return rc == 0 or (out / "itertrain_stop.json").exists() or (out / "iter_1").is_dir() \
        or f"exitcode  : {by_signal} " in stderr


def _progress(a: dict) -> float:
    return a["global_step"] + (0.5 if a["kind"] == "iteration" else 0)


def _status(out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "itertrain", "status", str(out), "--max_steps", "6",
                           "--num_iterations", "2", "--json"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(MIRROR["server"].env() if MIRROR else {})})
    return json.loads(proc.stdout)


def _weights(path: Path):
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if path.name == "adapter" else "model.safetensors"
    return load_file(str(path / name))


def trial(ref: Path, work: Path, event: int, torn: bool, ranks: int = 1, rank: int = 0,
          layout: Path | None = None) -> dict:
    out = work / f"e{event}{'t' if torn else ''}r{rank}"
    spec = f"file.event={event}{':torn' if torn else ''}" + (f"@{rank}" if ranks > 1 else "")
    if MIRROR:
        spec = f"mirror.event={event}"
    if layout is not None:  # an adopted experiment, resumed: its resume is what is killed
        shutil.copytree(layout, out)
    crashed = _run(out, *(AUTO if layout else ()), env_extra={"ITERTRAIN_FAILPOINTS": spec}, ranks=ranks)
    result = {"event": event, "rank": rank, "torn": torn, "crash_rc": crashed.returncode}
    lost = gen = None
    for attempt in range(4):
        if MIRROR and (attempt > 0 or crashed.returncode != 0):
            _remove(out)  # the machine died with its disk: the resume has the mirror alone
        if attempt == 0 and crashed.returncode != 0:
            st = _status(mirror_url(out) if MIRROR else out)
            usable = [a for a in st["artifacts"] if a["state"] in ("complete", "unverified")]
            plan = st["plan"]
            start = plan.get("state_from") if plan.get("strategy") == "trainer" else plan.get("weights_from")
            if usable and not torn:
                best = max(usable, key=_progress)
                if start != best["name"]:
                    lost = f"newest usable {best['name']}, plan starts from {start}"
            gen = st.get("generation")
        proc = _run(out, *AUTO, ranks=ranks, short=layout is None and (_recorded(out) or _mirror_recorded(out)))
        if attempt == 0 and crashed.returncode != 0 and gen and not torn and not lost \
                and f"({gen['prompts_done']} already committed" not in proc.stdout:
            lost = f"{gen['prompts_done']} prompts were committed in shards of iteration {gen['iteration']}, " \
                   "the resume did not keep them"
        if proc.returncode == 0:
            break
        if proc.returncode != 137:
            return {**result, "verdict": "HARD_FAIL", "why": proc.stderr.strip().splitlines()[-1:]}
    else:
        return {**result, "verdict": "HARD_FAIL", "why": "did not finish in 4 resumes"}
    if why := _compare(out, ref, adopted=layout is not None):
        return {**result, "verdict": "SILENT_DIVERGENCE", "why": why}
    if lost:
        return {**result, "verdict": "LOST_WORK", "why": lost}
    _remove(out)
    return {**result, "verdict": "PASS"}


def sweep(points: list[tuple[int, int]], torn: bool, jobs: int, work: Path, ref: Path, ranks: int,
          layout: Path | None = None) -> list[dict]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda p: trial(ref, work, p[1], torn, ranks, p[0], layout), points))


def choose(spec: str, n: int) -> list[int]:
    if spec == "all":
        return list(range(1, n + 1))
    if spec.startswith("sample:"):
        k = int(spec.split(":")[1])
        return sorted({1 + (i * (n - 1)) // max(k - 1, 1) for i in range(k)})
    return [int(x) for x in spec.split(",")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", default="all")
    p.add_argument("--torn", action="store_true")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--random", type=int, default=0, help="random-kill trials instead of the event sweep")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--adopt", action="store_true", help="start each run from the seed's layout (base_model/)")
    p.add_argument("--signal", default=None, help="with --random: send this stop signal instead of SIGKILL")
    p.add_argument("--generate", action="store_true",
                   help="crash only in the generate phase: its file events, or random moments while it runs")
    p.add_argument("--vllm", action="store_true", help="sample with real vLLM (.venv-vllm, make vllm)")
    p.add_argument("--example", action="store_true",
                   help="run examples/gsm8k (chat template, gsm8k verifier in a pool of processes)")
    p.add_argument("--packed", action="store_true",
                   help="train padding-free (--padding_free true), each batch in passes of at most 200 tokens")
    p.add_argument("--peft", choices=["continue", "merge"], default=None,
                   help="train a LoRA adapter (--use_peft) in this --peft_iteration mode; adapters compared too")
    p.add_argument("--trackers", action="store_true",
                   help="report to TensorBoard, W&B (offline) and MLflow (sqlite), and check what they hold")
    p.add_argument("--mirror", action="store_true",
                   help="mirror to a loopback S3 server, crash at the mirror's writes, and resume each crash "
                        "from the mirror alone (the directory deleted)")
    p.add_argument("--elastic", action="store_true",
                   help="with --random: every resume after a kill runs on 1, 2 or 3 processes, drawn at random")
    p.add_argument("--objective", choices=["sft", "dpo", "grpo"], default="sft",
                   help="dpo: iteration 1 trains with DPO on pairs (--objective dpo --sft_iterations 1); grpo: with "
                        "GRPO, the verifier and a plug-in as the rewards")
    p.add_argument("--grpo", action="store_const", const="grpo", dest="objective", help="--objective grpo")
    args = p.parse_args()
    if args.objective in ("dpo", "grpo"):
        OBJECTIVE.extend(DPO if args.objective == "dpo" else GRPO)
    if args.trackers:
        TRACKERS.extend(TRACKER_FLAGS)
    if args.packed:
        PACKED.extend(["--padding_free", "true", "--max_tokens_per_batch", "200"])
    if args.peft:
        PEFT.extend(["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "all-linear",
                     "--peft_iteration", args.peft])
    if args.vllm:
        VLLM.extend(["--generation_backend", "vllm", "--vllm_python", str(REPO / ".venv-vllm" / "bin" / "python")])
        os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".venv-vllm" / "cache"))
    if args.adopt and args.ranks != 1:
        p.error("--adopt runs one rank")
    if args.elastic and not args.random:
        p.error("--elastic draws the number of processes of each resume after a random kill: give --random N")
    if args.elastic:
        ELASTIC.extend([1, 2, 3])
    if args.mirror and (args.adopt or args.torn):
        p.error("--mirror starts fresh and kills at the mirror's writes (no --adopt, no --torn)")
    if args.mirror:
        sys.path.insert(0, str(REPO / "tests"))
        from s3_server import S3Server

        MIRROR["server"] = S3Server()
    work = Path(tempfile.mkdtemp(prefix="itertrain-chaos-"))
    if args.example:
        from itertrain.tasks.tinymodel import write_chat_model

        write_chat_model(str(work / "instruct"), 0)
        TASK.extend(example_flags(work / "instruct"))
    if args.random:
        return _random_main(args, work)
    ref, logs, _ = reference_ranks(work, args.ranks)
    layout = None
    if args.adopt:
        layout, events, _ = adopted_reference(ref, work)
        logs = [events]
    if args.generate:  # only the generate phase's own file events (its shards, samples_K, their removal)
        points = [(r, e) for r, log in enumerate(logs) for e in choose(args.events, len(log))
                  if "samples_" in log[e - 1].split("\t")[2]]
    else:
        points = [(r, e) for r, log in enumerate(logs) for e in choose(args.events, len(log))]
    results = sweep(points, args.torn, args.jobs, work, ref, args.ranks, layout)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        if r["verdict"] != "PASS":
            print(f"{r['verdict']}: rank {r['rank']} event {r['event']} ({logs[r['rank']][r['event'] - 1]}): "
                  f"{r.get('why')}")
    sizes = "+".join(str(len(log)) for log in logs)
    print(f"{len(results)} crash points ({'torn writes' if args.torn else 'kill'}, {args.ranks} rank(s)"
          f"{', adopted layout' if layout else ''}) of "
          f"{sizes} file events: " + ", ".join(f"{v} {c}" for v, c in sorted(counts.items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"file_events": [len(log) for log in logs], "ranks": args.ranks,
                                               "torn": args.torn, "adopt": args.adopt, "counts": counts,
                                               "results": results}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if set(counts) == {"PASS"} else 1


def _random_main(args, work: Path) -> int:
    ref, events, window = reference(work, args.ranks)
    if args.generate:
        window = generate_windows(events)
    layout = None
    if args.adopt:
        layout, _, window = adopted_reference(ref, work)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda s: random_trial(ref, work, s, args.ranks, window=window, layout=layout,
                                                       sig=args.signal), range(args.random)))
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        if r["verdict"] != "PASS":
            print(f"{r['verdict']}: seed {r['seed']} killed at {r['killed_at']}: {r.get('why')}")
    kills = sum(len(r["killed_at"]) for r in results)
    if ELASTIC and (diffs := [r["max_abs_diff"] for r in results if "max_abs_diff" in r]):
        print(f"elastic: launches on {sorted({n for r in results for n in r.get('launch_ranks', [])})} processes; "
              f"weights' max abs diff from the uninterrupted run: largest {max(diffs):.3g}, median "
              f"{sorted(diffs)[len(diffs) // 2]:.3g}; eval accuracy per iteration: "
              f"{sorted({tuple(r['eval_accuracy']) for r in results if 'eval_accuracy' in r})} vs the "
              f"uninterrupted {results[0].get('reference_eval_accuracy')}")
    landed = [c for r in results for c in r.get("committed_at_kill", [])]
    print(f"committed artifacts when killed: {sorted(landed)[len(landed) // 2] if landed else 0} (median), "
          f"{sum(c == 0 for c in landed)} kills before the first commit")
    print(f"{len(results)} runs with {kills} random {args.signal or 'SIGKILL'}s ({args.ranks} rank(s), "
          f"sent after {'writes to the mirror' if MIRROR else 'file events'} {_spans(window)} "
          "after launch): "
          + ", ".join(f"{v} {c}" for v, c in sorted(counts.items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"ranks": args.ranks, "signal": args.signal or "SIGKILL", "kills": kills,
                                               "window": window, "counts": counts,
                                               "results": results}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if set(counts) == {"PASS"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
