"""--generation_backend vllm: the generate phase sampled by vLLM, in a process of its own per rank.

vLLM pins its own torch and transformers, so it lives in an environment of its own (`make vllm`
builds .venv-vllm) and --vllm_python names its interpreter; the worker (vllm_worker.py) imports
nothing of ours. vLLM also keeps its memory until its process ends (vllm #1908), and training needs
it right after the generate phase: every rank starts one worker for the phase, on its own device,
with the shards it is to make (rank r: shard r of each round of W); the worker exits when the phase
is done and its memory goes with it.

Prompts go to the worker as token ids and completions come back as token ids, both through the
training tokenizer, as with the HF backend. Sample s of prompt i is one request seeded with
seed_base + i * num_samples + s: no two samples of a phase share a seed, and the samples do not
depend on the number of ranks or on how vLLM batches requests. They are not the HF backend's
samples: the samples record their backend, so switching backends makes them again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import xxhash

from itertrain.core import failpoints
from itertrain.core.errors import GenerationError, UsageError
from itertrain.phases.generate import Counters
from itertrain.runtime import dist, stop

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_worker.py")
CPU_KV_CACHE_GIB = "2"  # VLLM_CPU_KVCACHE_SPACE when unset: vLLM on a CPU refuses to start without it


def seed_base(seed: int, iteration: int) -> int:
    return xxhash.xxh3_64_intdigest(f"itertrain/vllm/{seed}/{iteration}".encode()) & (2**62 - 1)


def sample_seeds(seed: int, iteration: int, index: int, num_samples: int) -> list[int]:
    """The seeds of prompt `index`'s samples: all distinct within a phase (below 2**62 samples)."""
    start = seed_base(seed, iteration) + index * num_samples
    return [start + s for s in range(num_samples)]


def worker_env() -> dict:
    """The worker's environment: this rank's GPU only, no torchrun variables (vLLM is one process
    here)."""
    env = dict(os.environ)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if dist.world_size() > 1:
        env["CUDA_VISIBLE_DEVICES"] = visible[local] if local < len(visible) else str(local)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    return env


def require(python: str, model_dir: str | None) -> dict:
    """Before anything is written: `python` has a vLLM that can sample `model_dir` (None: the
    built-in base), or one line why not. Returns what the worker reported (version, device)."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise UsageError(f"--vllm_python {python}: not an executable file (make vllm builds .venv-vllm/bin/python)")
    with tempfile.TemporaryDirectory(prefix="itertrain-probe-") as tmp:
        if model_dir is None:  # the built-in base is written later: its config is what vLLM is asked about
            from itertrain.tasks import tinymodel

            tinymodel.make_config(len(tinymodel.make_tokenizer())).save_pretrained(tmp)
        proc = subprocess.run([python, "-I", WORKER, "--probe", model_dir or tmp], env=worker_env(),
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"--generation_backend vllm: {python} has no usable vLLM ({cause(proc.stderr)}); "
                         "make vllm builds one in .venv-vllm, then pass --vllm_python .venv-vllm/bin/python")
    try:
        found = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise UsageError(f"--generation_backend vllm: {python} did not answer the vLLM probe (its output: "
                         f"{proc.stdout.strip()[-200:]!r})") from None
    if found["problem"]:
        raise UsageError(f"--generation_backend vllm cannot sample {model_dir or 'the built-in base'}: "
                         f"{found['problem']}; use "
                         "--generation_backend hf for this model")
    return found


def cause(stderr: str) -> str:
    """The real reason in a failed worker's stderr: the last exception line that is not vLLM's
    pointer to an earlier one (the last line is often a warning printed while exiting)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if _is_exception_line(ln) and "See root cause above" not in ln]
    return (errors or lines or ["no output"])[-1][:500]


def _is_exception_line(line: str) -> bool:
    head = line.split(":", 1)[0].split(" ")[-1]
    return ":" in line and head.endswith(("Error", "Exception", "Interrupt"))


class Generator:
    """The vLLM backend of one generate phase. Each round makes up to one shard per rank, rank r the
    r-th, so the worker of rank r is given shards r, r+W, r+2W, ... of those still to make, and
    samples them one after the other while the training process commits the ones already made."""

    def __init__(self, python: str, model_dir: str, tokenizer, todo: list[tuple[int, int]], prompts: list[str], *,
                 num_samples: int, seed: int, iteration: int, max_new_tokens: int, temperature: float,
                 engine: dict, log_dir: str):
        self.tokenizer, self.model_dir = tokenizer, model_dir
        rank, world = dist.state().process_index, dist.world_size()
        self.mine = todo[rank::world]
        shards = [{"prompts": [tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in range(a, b)],
                   "seeds": [sample_seeds(seed, iteration, i, num_samples) for i in range(a, b)]}
                  for a, b in self.mine]
        self.tmp = tempfile.mkdtemp(prefix="itertrain-vllm-")
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(self.tmp, "job.json"), "w", encoding="utf-8") as f:
            json.dump({"model": stable_path(model_dir, log_dir, rank), "engine": engine, "shards": shards, "temperature": temperature,
                       "max_tokens": max_new_tokens, "parent": os.getpid(), "cpu_kv_cache_gib": CPU_KV_CACHE_GIB}, f)
        self.log_path = os.path.join(log_dir, f"vllm-worker-rank{rank}.log")
        self.log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - open for the worker's life
        self.proc = subprocess.Popen([python, "-I", WORKER, os.path.join(self.tmp, "job.json"), self.tmp],
                                     env=worker_env(), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.counters = Counters()

    def round(self, spans: list[tuple[int, int]], prompts: list[str], *, safe_point=None,
              advance=None) -> dict[tuple[int, int], list[list[str]]] | None:
        """{span: completions[i][s]} for these shards, on every rank; None on every rank when a stop
        request ended some rank's part (the safe point after the round raises Stopped)."""
        rank = dist.state().process_index
        mine = spans[rank] if rank < len(spans) else None
        part: dict | None = {}
        if mine is not None:
            ids = self._wait(self.mine.index(mine))
            if ids is None:
                part = None
            else:
                part = {mine: [self.tokenizer.batch_decode(row, skip_special_tokens=True) for row in ids]}
                self.counters.produced += sum(len(row) for row in ids)
                failpoints.hit("generate", self.counters.produced, at_least=True)
        self.counters.rounds += 1
        failpoints.send_signal("generate", self.counters.rounds)
        parts = dist.gather(part)
        if advance is not None:
            advance(sum(end - first for first, end in spans))
        if any(p is None for p in parts):
            return None
        return {span: rows for p in parts for span, rows in p.items()}

    def _wait(self, n: int) -> list | None:
        """The worker's n-th shard (token ids), or None if a stop request came first (the worker is
        ended: its unfinished shard is lost, at most one per rank)."""
        path = os.path.join(self.tmp, f"{n}.json")
        while not os.path.exists(path):
            if stop.requested_here():
                self.close()
                return None
            if self.proc.poll() is not None and not os.path.exists(path):
                raise GenerationError(self._failure())
            time.sleep(0.05)
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _failure(self) -> str:
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            reason = cause(f.read())
        own = os.path.join(self.tmp, "error.txt")
        if os.path.exists(own):
            with open(own, encoding="utf-8") as f:
                line = f.read().strip()
            if line and "See root cause above" not in line:
                reason = line
        return (f"the vLLM worker for {self.model_dir} failed with exit code {self.proc.returncode}: {reason} "
                f"(its log: {self.log_path})")

    def close(self) -> None:
        """End the worker: once it has made every shard it exits by itself (its memory freed before
        training starts); otherwise its process group is ended."""
        if self.proc.poll() is None:
            done = all(os.path.exists(os.path.join(self.tmp, f"{n}.json")) for n in range(len(self.mine)))
            try:
                if not done:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# config.json keys that do not change the network vLLM compiles (the Trainer saves use_cache false)
NOT_ARCHITECTURE = ("use_cache", "transformers_version")


def stable_path(model_dir: str, where: str, rank: int) -> str:
    """A path in `where` (the experiment's staging) that leads to `model_dir`, the same for every
    iteration's model of one architecture: vLLM keys its compiled graphs by the model's path among
    the rest, and a path per iteration would compile them again at every generate phase."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = {k: v for k, v in json.load(f).items() if k not in NOT_ARCHITECTURE}
    arch = xxhash.xxh3_64_hexdigest(json.dumps(config, sort_keys=True).encode())
    link = os.path.join(where, f"vllm-model-rank{rank}-{arch}")
    tmp = f"{link}.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.abspath(model_dir), tmp)
    os.replace(tmp, link)
    return link


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the training process dies (the worker then kills
    its process group; it also watches for its parent itself)."""
    stop.die_with_parent(signal.SIGTERM)
