"""The object-storage mirror's cost (part of `make bench`; `python bench/run.py --only mirror` alone).

Real runs of train_iterative.py (fresh processes) on an 85M-parameter Llama (`--model_name`, written
here) against moto's S3 server on loopback (tests/s3_server.py, in this process), every side
alternated A/B/A/B:
  mirror_train_ratio   the whole run (generate, 30 steps with a checkpoint every 10, evaluate, save) with
                       --mirror_to, which waits for every upload before it exits / the same run without
  fresh_resume_ratio   start to the first resumed step on an empty --output_dir (the mirror alone) / a
                       local resume of the same experiment to the same step plus fsspec's own `get` of
                       the bytes the fresh resume needs (the checkpoint and the samples it loads)
  fresh_resume_bytes   bytes the fresh resume read from the mirror / bytes of the artifacts the plan loads
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
STEPS, EVERY = 30, 10
FLAGS = ["--num_iterations", "1", "--save_steps", str(EVERY), "--num_gold", "64", "--num_prompts", "8",
         "--num_samples", "1", "--num_eval", "4", "--per_device_train_batch_size", "4", "--generation_batch_size", "8",
         "--disable_tqdm", "true"]


def _server():
    sys.path.insert(0, str(REPO / "tests"))
    from s3_server import S3Server

    return S3Server()


def _model(work: Path, run) -> Path:
    """The 85M-parameter Llama of checkpoint_stall_ratio (MAIN_SIZE), with the character tokenizer."""
    d = work / "llama-85m"
    if not d.exists():
        run.llama(*run.MAIN_SIZE).save_pretrained(d)
        run.TOK.save_pretrained(d)
    return d


def _run(cmd: list[str], env: dict, expect: int = 0) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
    seconds = time.perf_counter() - t0
    if proc.returncode != expect:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, proc.stdout


def _empty(server, url: str) -> None:
    """Free the bucket's objects (moto keeps them in this process's memory)."""
    import boto3

    from s3_server import CREDENTIALS, _boto

    bucket = url[len("s3://"):].split("/")[0]
    s3 = boto3.resource("s3", endpoint_url=server.endpoint, **_boto(CREDENTIALS))
    s3.Bucket(bucket).objects.all().delete()


def train_ratio(work: Path, n: int, model: Path, server) -> dict:
    times: dict[str, list[float]] = {"mirror": [], "plain": []}
    trained: dict[str, list[float]] = {"mirror": [], "plain": []}
    dropped: list[int] = []
    uploads: list[tuple[float, float, float]] = []  # MB uploaded, seconds uploading, seconds the exit waited

    def one(kind: str) -> float:
        d = Path(tempfile.mkdtemp(dir=work))
        url = server.bucket(f"bench-{uuid.uuid4().hex[:12]}") + "/exp"
        extra = ["--mirror_to", url] if kind == "mirror" else []
        s, out = _run([PY, str(REPO / "train_iterative.py"), "--model_name", str(model), "--output_dir", str(d / "exp"),
                       "--max_steps", str(STEPS), *FLAGS, *extra], server.env())
        trained[kind].append(float(re.search(r"'train_runtime': '([\d.]+)'", out).group(1)))
        if kind == "mirror":
            dropped.append(out.count("supersedes it before its upload began"))
            mb, busy, waited = re.search(r"mirror: ([\d.]+) MB uploaded in ([\d.]+) s of uploading; the exit waited "
                                         r"([\d.]+) s", out).groups()
            uploads.append((float(mb), float(busy), float(waited)))
            _empty(server, url)
        shutil.rmtree(d)
        times[kind].append(s)
        return s

    ratios = []
    for i in range(n):
        a, b = (one("mirror"), one("plain")) if i % 2 == 0 else tuple(reversed((one("plain"), one("mirror"))))
        ratios.append(a / b)
    return {"value": statistics.median(ratios), "pairs": ratios, "seconds_mirror": statistics.median(times["mirror"]),
            "seconds_plain": statistics.median(times["plain"]), "checkpoints_dropped": dropped,
            "train_runtime_ratio": statistics.median(trained["mirror"]) / statistics.median(trained["plain"]),
            "train_runtime": {k: statistics.median(v) for k, v in trained.items()},
            "uploaded_mb": statistics.median(u[0] for u in uploads),
            "upload_mb_per_s": statistics.median(u[0] / u[1] for u in uploads),
            "exit_waited_s": statistics.median(u[2] for u in uploads),
            "how": f"wall time of one train_iterative.py run (85M-param Llama, generate, {STEPS} steps with a checkpoint "
                   f"every {EVERY}, evaluate, save; a fresh process) with --mirror_to s3://... on moto's S3 server on "
                   "loopback, which waits for every upload before it exits / the same run without; "
                   f"{n} pairs alternated (medians {statistics.median(times['mirror']):.1f} s and "
                   f"{statistics.median(times['plain']):.1f} s); the S3 server shares the 2 cores; checkpoints of "
                   f"the {STEPS // EVERY} not uploaded because a newer one superseded them in the queue: {dropped}"}


def fresh_resume(work: Path, n: int, model: Path, server) -> dict:
    """One experiment stopped at step 10 (its stop checkpoint uploaded before it exits), then pairs of: a
    resume on an empty directory / fsspec's get of what it needs + a local resume; both to step 11."""
    import fsspec

    url = server.bucket(f"bench-{uuid.uuid4().hex[:12]}") + "/exp"
    base = work / "stopped"
    _run([PY, str(REPO / "train_iterative.py"), "--model_name", str(model), "--output_dir", str(base / "exp"),
          "--max_steps", "20", *FLAGS, "--mirror_to", url],
         {**server.env(), "ITERTRAIN_FAILPOINTS": "signal.train.step=10"}, expect=75)
    loads = ("checkpoint-10", "samples_0")
    listing = server.listing(url)
    loaded = sum(size for key, size in listing.items() if key.split("/")[0] in loads)
    first_step = {**server.env(), "ITERTRAIN_FAILPOINTS": "train.step=11"}
    auto = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
    fresh_s, local_s, get_s, read = [], [], [], []

    def fresh() -> float:
        d = Path(tempfile.mkdtemp(dir=work))
        s, out = _run([PY, str(REPO / "train_iterative.py"), "--model_name", str(model), "--output_dir",
                       str(d / "exp"), "--mirror_to", url, *auto], first_step, expect=137)
        read.append(int(re.search(r"read from the mirror: (\d+) bytes", out).group(1)))
        shutil.rmtree(d)
        fresh_s.append(s)
        return s

    def local() -> float:
        d = Path(tempfile.mkdtemp(dir=work))
        t0 = time.perf_counter()
        env = server.env()
        fs = fsspec.filesystem("s3", key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                               client_kwargs={"endpoint_url": server.endpoint, "region_name": env["AWS_DEFAULT_REGION"]},
                               skip_instance_cache=True)
        for name in loads:
            fs.get(f"{url[len('s3://'):]}/{name}", str(d / "got" / name), recursive=True)
        got = time.perf_counter() - t0
        shutil.copytree(base / "exp", d / "exp", ignore=shutil.ignore_patterns(".itertrain.lock"))  # (not timed)
        s, _ = _run([PY, str(REPO / "train_iterative.py"), "--model_name", str(model), "--output_dir",
                     str(d / "exp"), *auto], {**first_step, "ITERTRAIN_FAILPOINTS": "train.step=11"}, expect=137)
        shutil.rmtree(d)
        get_s.append(got)
        local_s.append(s)
        return s + got

    ratios = []
    for i in range(n):
        a, b = (fresh(), local()) if i % 2 == 0 else tuple(reversed((local(), fresh())))
        ratios.append(a / b)
    _empty(server, url)
    shutil.rmtree(base)
    ratio_bytes = statistics.median(read) / loaded
    return {"fresh_resume_ratio": {
        "value": statistics.median(ratios), "pairs": ratios, "seconds_fresh": statistics.median(fresh_s),
        "seconds_local": statistics.median(local_s), "seconds_get": statistics.median(get_s),
        "how": "start of train_iterative.py to the end of its first resumed step (failpoint train.step=11, so the "
               "process ends there), --output_dir empty, --mirror_to s3://... holding an experiment stopped at step "
               f"10 (85M-param Llama) / the same resume on a local copy of that experiment plus fsspec's own get of "
               f"what the fresh one fetches ({' and '.join(loads)}); {n} pairs alternated; medians "
               f"{statistics.median(fresh_s):.1f} s / {statistics.median(local_s):.1f} s + "
               f"{statistics.median(get_s):.1f} s"},
        "fresh_resume_bytes": {
            "value": ratio_bytes, "bytes_read": statistics.median(read), "bytes_loaded": loaded,
            "how": f"bytes the fresh resume read from the mirror (every manifest listed there, the settings record, "
                   f"the files fetched: {statistics.median(read)}) / bytes of the artifacts the plan loads "
                   f"({' and '.join(loads)}, manifests included: {loaded})"}}


def figures(work: Path, quick: bool, run) -> dict:
    """`run`: bench/run.py, for its model sizes and tokenizer."""
    server = _server()
    try:
        model = _model(work, run)
        n = 2 if quick else 3
        out = {"mirror_train_ratio": train_ratio(work, n, model, server)}
        out.update(fresh_resume(work, n, model, server))
        return out
    finally:
        server.stop()


def markdown(results: dict) -> str:
    if "mirror_train_ratio" not in results:
        return "(not measured yet: python bench/run.py --only mirror)"
    t, f, b = results["mirror_train_ratio"], results["fresh_resume_ratio"], results["fresh_resume_bytes"]
    return (f"A whole run with `--mirror_to` took {t['value']:.3f}x the time of the same run without it "
            f"({t['seconds_mirror']:.1f} s and {t['seconds_plain']:.1f} s, medians; pairs {_r(t['pairs'])}), the "
            "wait for the last uploads included; of its 3 checkpoints, these many per run waited in the queue "
            f"until a newer one or the iteration model superseded them (dropped, never an iteration model): "
            f"{t['checkpoints_dropped']}. Where the time goes: {t['uploaded_mb']:.0f} MB uploaded per run at "
            f"{t['upload_mb_per_s']:.0f} MB/s (moto's server in Python on the same 2 cores), the training loop "
            f"itself {t['train_runtime_ratio']:.2f}x slower while the uploads share its cores "
            f"({t['train_runtime']['mirror']:.1f} s against {t['train_runtime']['plain']:.1f} s), and the exit "
            f"waiting {t['exit_waited_s']:.1f} s for the last uploads. "
            "A resume on an empty disk reached its first step in "
            f"{f['value']:.3f}x the time of a local resume plus fsspec's own `get` of the same bytes "
            f"({f['seconds_fresh']:.1f} s against {f['seconds_local']:.1f} s + {f['seconds_get']:.1f} s; pairs "
            f"{_r(f['pairs'])}), and read {b['bytes_read']:,} bytes from the mirror for the {b['bytes_loaded']:,} "
            f"bytes of what the plan loads ({b['value']:.4f}x).")


def _r(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)
