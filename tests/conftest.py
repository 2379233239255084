"""Shared helpers: run the real CLI on a real tiny model, and uninterrupted reference runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Small enough for seconds per run: 2 iterations of 6 steps, a checkpoint every 3 steps.
SMALL = ["--num_iterations", "2", "--max_steps", "6", "--save_steps", "3", "--num_gold", "64",
         "--num_prompts", "24", "--num_samples", "2", "--generation_batch_size", "8", "--num_eval", "8",
         "--per_device_train_batch_size", "8", "--generation_shard_size", "8", "--disable_tqdm", "true"]


def run_cli(out, *extra, failpoints=None, entry=("train_iterative.py",), launcher=(sys.executable,), timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "ITERTRAIN_FAILPOINTS"}
    if failpoints:
        env["ITERTRAIN_FAILPOINTS"] = failpoints
    cmd = [*launcher, *[str(REPO / e) if e.endswith(".py") else e for e in entry], "--output_dir", str(out),
           *SMALL, *extra]
    if tuple(launcher) == (sys.executable,) and tuple(entry) == ("train_iterative.py",) and not os.environ.get("ITERTRAIN_NO_ZYGOTE"):
        return _zygote().run(cmd, cmd[2:], env, timeout)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


class Zygote:
    """train_iterative.py runs forked from a process that has imported the CLI once (tests/zygote.py):
    the same runs, without 4 s of imports each."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "zygote.py")], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, cmd, argv, env, timeout) -> subprocess.CompletedProcess:
        import select
        import signal
        import tempfile

        with tempfile.TemporaryDirectory(prefix="itertrain-run-") as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": str(REPO), "out": out, "err": err}) + "\n")
            self.proc.stdin.flush()
            pid = json.loads(self.proc.stdout.readline())["pid"]
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                os.killpg(pid, signal.SIGKILL)
                self.proc.stdout.readline()
                raise subprocess.TimeoutExpired(cmd, timeout)
            rc = json.loads(self.proc.stdout.readline())["rc"]
            with open(out, encoding="utf-8", errors="replace") as f, open(err, encoding="utf-8", errors="replace") as g:
                return subprocess.CompletedProcess(cmd, rc, f.read(), g.read())


_ZYGOTE = None


def _zygote() -> Zygote:
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.proc.poll() is not None:
        _ZYGOTE = Zygote()
    return _ZYGOTE


def plan_of(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resume_until_done(out, *extra, tries=4, **kw):
    """Resume with auto auto until the run exits 0 (a crash resumes, never needs a hand)."""
    for _ in range(tries):
        proc = run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto", *extra, **kw)
        if proc.returncode == 0:
            return proc
        assert proc.returncode == 137, proc.stderr[-3000:]
        kw.pop("failpoints", None)
    raise AssertionError("did not finish")


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def max_diff(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def flip(p):
    """One byte in the middle of the file inverted."""
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def copy_experiment(src, dst):
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".itertrain.lock"))
    return dst


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted 2-iteration run (fresh optimizer each iteration)."""
    out = tmp_path_factory.mktemp("ref") / "exp"
    proc = run_cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


@pytest.fixture(scope="session")
def reference_two_ranks(tmp_path_factory):
    """The uninterrupted 2-iteration run under torchrun with 2 ranks."""
    out = tmp_path_factory.mktemp("ref2") / "exp"
    proc = run_cli(out, launcher=TORCHRUN, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("CHECKPOINT RECOVERY SYSTEM") == 1  # rank 0 prints, once
    assert proc.stdout.count("✅ iteration 1:") == 1  # no line once per rank
    return out


@pytest.fixture(scope="session")
def reference_carry(tmp_path_factory):
    out = tmp_path_factory.mktemp("refc") / "exp"
    proc = run_cli(out, "--carry_optimizer_state")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def crashed_in_iter1(tmp_path_factory):
    """Killed at global step 10 (iteration 1), after checkpoint-9 committed: never resumed."""
    out = tmp_path_factory.mktemp("crash") / "exp"
    proc = run_cli(out, failpoints="train.step=10")
    assert proc.returncode == 137, proc.stderr[-3000:]
    return out
