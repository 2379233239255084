"""Shared helpers: run the real CLI on a real tiny model, and uninterrupted reference runs."""

import atexit
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chaos_harness import SMALL, sized  # (one definition of the small run, for the harness and the tests)

REPO = Path(__file__).resolve().parents[1]


def run_cli(out, *extra, failpoints=None, entry=("train_iterative.py",), launcher=(sys.executable,), timeout=300,
            events=None, small=SMALL, batch_log=None):
    """The real command line on `out`, `small` then `extra` after --output_dir; `events`: a file that gets
    the run's file events (failpoints.py); `batch_log`: one that gets each step's examples (training/order.py)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ITERTRAIN_FAILPOINTS", "ITERTRAIN_CHAOS_LOG", "ITERTRAIN_BATCH_LOG")}
    if batch_log:
        env["ITERTRAIN_BATCH_LOG"] = str(batch_log)
    if failpoints:
        env["ITERTRAIN_FAILPOINTS"] = failpoints
    if events:
        env["ITERTRAIN_CHAOS_LOG"] = str(events)
    cmd = [*launcher, *[str(REPO / e) if e.endswith(".py") else e for e in entry], "--output_dir", str(out),
           *sized(small, extra), *extra]
    if tuple(entry) == ("train_iterative.py",) and not os.environ.get("ITERTRAIN_NO_ZYGOTE"):
        if tuple(launcher) == (sys.executable,):
            return zygote().run(cmd, cmd[2:], env, timeout)
        if tuple(launcher[:3]) == TORCHRUN[:3]:  # torchrun itself, its ranks forked by the zygote
            cmd[len(launcher)] = str(REPO / "tests" / "zygote_rank.py")
            env["ITERTRAIN_ZYGOTE_SOCKET"] = zygote().socket
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


class Zygote:
    """train_iterative.py runs forked from a process that has imported the CLI once (tests/zygote.py):
    the same runs, without 4 s of imports each."""

    def __init__(self):
        import tempfile

        self.socket = os.path.join(tempfile.mkdtemp(prefix="itertrain-zygote-"), "ranks")  # torchrun's ranks ask here
        atexit.register(shutil.rmtree, os.path.dirname(self.socket), True)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "zygote.py")], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "ITERTRAIN_ZYGOTE_SOCKET": self.socket})
        self.lines = Lines(self.proc.stdout.fileno())
        while not (line := self.lines.read()).startswith("{"):  # a library may print while it is imported
            pass
        assert json.loads(line) == {"ready": True}

    def run(self, cmd, argv, env, timeout, cwd=REPO) -> subprocess.CompletedProcess:
        import signal
        import tempfile

        with tempfile.TemporaryDirectory(prefix="itertrain-run-") as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            child = self.spawn(argv, env, cwd, out, err)
            try:
                rc = child.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise subprocess.TimeoutExpired(cmd, timeout) from None
            with open(out, encoding="utf-8", errors="replace") as f, open(err, encoding="utf-8", errors="replace") as g:
                return subprocess.CompletedProcess(cmd, rc, f.read(), g.read())

    def spawn(self, argv, env, cwd, out: str, err: str) -> "Forked":
        """A run forked now, its stdout and stderr written to the files `out` and `err` (one at a time)."""
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": str(cwd), "out": out, "err": err}) + "\n")
        self.proc.stdin.flush()
        return Forked(self.lines, json.loads(self.lines.read())["pid"])


class Lines:
    """The zygote's answers, a line at a time, with a timeout. Its own buffer: a buffered reader that
    took in the run's {"rc"} line with its {"pid"} line would leave select() waiting on an empty pipe."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def read(self, timeout=None) -> str | None:
        import select

        while b"\n" not in self.buf:
            if not select.select([self.fd], [], [], timeout)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise EOFError("the test zygote exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


class Forked:
    """A run forked by the zygote, as much of subprocess.Popen as the tests use: pid (its own process
    group), wait(timeout), send_signal, returncode."""

    def __init__(self, channel, pid: int):
        self.channel, self.pid, self.returncode = channel, pid, None

    def wait(self, timeout=None) -> int:
        if self.returncode is None:
            line = self.channel.read(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            self.returncode = json.loads(line)["rc"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


_ZYGOTE = None


def zygote() -> Zygote:
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.proc.poll() is not None:
        _ZYGOTE = Zygote()
    return _ZYGOTE


def dry_run(out, *flags) -> tuple[dict, str]:
    """What `--dry_run` prints (the plan as JSON, the banner), made in-process by the steps a real
    start takes before it writes anything (the entry points' own --dry_run: tests/test_cli.py)."""
    from itertrain.app import config, startup
    from itertrain.core import banner
    from itertrain.runtime import dist

    cfg = config.parse(["--output_dir", str(out), *SMALL, *flags, "--dry_run"])
    startup.check_inputs(cfg)
    inv, plan = startup.decide(cfg, cfg.iteration_steps(dist.world_size()))
    return plan.to_json(), banner.render(str(out), inv, plan, cfg.it.model_name or "base")


def start_in_process(out, *flags):
    """What a real start does before training (restore.resolve, apply, the banner), in-process:
    (plan, banner)."""
    from itertrain.app import config
    from itertrain.core import banner
    from itertrain.runtime import restore

    cfg = config.parse(["--output_dir", str(out), *SMALL, *flags])
    inv, plan = restore.resolve(cfg, 6)
    restore.apply(cfg, plan, str(out / "base"))
    return plan, banner.render(str(out), inv, plan, "base")


DAMAGE = {"delete": lambda p: p.unlink(), "truncate": lambda p: truncate(p), "flip": lambda p: flip(p)}


def assert_damaged_checkpoint_falls_back(crashed, work, victim, damage, *flags):
    """A copy of `crashed` (killed in iteration 1 after checkpoint-9) with one file of checkpoint-9
    damaged: the start sets checkpoint-9 aside, names the file, and goes on from iter_0."""
    out = copy_experiment(crashed, work / "exp")
    DAMAGE[damage](out / "checkpoint-9" / victim)
    plan, text = start_in_process(out, *flags, "--resume_from", "auto", "--resume_from_iteration", "auto")
    assert (plan.strategy, plan.weights_from, plan.next_iteration) == ("iteration", "iter_0", 1), text
    assert len(list(out.glob("checkpoint-9.corrupt*"))) == 1 and not (out / "checkpoint-9").exists()
    assert any("checkpoint-9" in line and victim in line for line in text.splitlines()), text


def killed_by(proc, failpoint: str, leaves=None):
    """`proc` ended where the failpoint armed as `failpoint` (NAME=VALUE[@RANK]) killed it, as it says on
    stderr (on every rank under torchrun, whose own status is 1; a counter's failpoint fires at the
    first value at or past VALUE), and `leaves` (a directory: the newest checkpoint committed before
    the kill) is there: not a run that died earlier for another reason, after which a bit-identical
    resume would prove nothing. Returns proc."""
    name, _, value = failpoint.partition("=")
    value = value.partition("@")[0]
    assert proc.returncode != 0, proc.stdout[-2000:]
    hits = re.findall(rf"^itertrain: failpoint {re.escape(name)}=(\S+) hit: exiting with 137$", proc.stderr, re.M)
    assert hits, f"failpoint {failpoint} did not fire: {proc.stderr[-3000:]}"
    assert all(h == value or (h.isdigit() and value.isdigit() and int(h) >= int(value)) for h in hits), hits
    if leaves is not None:
        assert (Path(leaves) / "itertrain.json").is_file(), f"{leaves} is not committed: {proc.stderr[-2000:]}"
    return proc


def resume_until_done(out, *extra, **kw):
    """Resume with auto auto: one run that must finish (a crash resumes, never needs a hand)."""
    proc = run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto", *extra, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


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


def shared(tmp_path_factory, name: str, build):
    """`build(directory)`'s result, made once per test session for every xdist worker: the first worker
    to ask builds it under a file lock, the others wait on that lock and reuse it. What it makes must be
    read-only to the tests (they copy an experiment before they change it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, above each worker's own
    root = base / "shared"
    root.mkdir(exist_ok=True)
    result = root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if not result.exists():
            work = root / name
            shutil.rmtree(work, ignore_errors=True)  # a build that failed in another worker
            work.mkdir()
            result.write_bytes(pickle.dumps(build(work)))
        return pickle.loads(result.read_bytes())


def run_once(*flags, launcher=(sys.executable,), killed=None, leaves=None, **kw):
    """A build for `shared`: one run of the CLI that must finish, or be killed by the failpoint `killed`
    (killed_by, with `leaves` committed); gives (output_dir, stdout). Its file events (rank 0's) are
    kept beside it, in events(output_dir), for the chaos sample, and so are its steps' examples, in
    batches(output_dir)."""
    def build(work):
        out = work / "exp"
        proc = run_cli(out, *flags, launcher=launcher, events=work / "events.log", failpoints=killed,
                       batch_log=work / "batches.jsonl", **kw)
        if killed:
            killed_by(proc, killed, leaves=leaves and out / leaves)
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
        return out, proc.stdout
    return build


def batches(log) -> dict:
    """{(iteration, global step): sorted example indices} of a batch log (a run_once build's output_dir,
    or the file); a step written again by a resume counts as its last line says."""
    log = Path(log)
    log = log.parent / "batches.jsonl" if log.is_dir() else log
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {(r["iteration"], r["step"]): r["ids"] for r in rows}


def same_experiment(out, ref, ks=(0, 1), rel=1e-3, weights_tol=1e-5) -> None:
    """`out` ended as `ref` up to the float reduction order of another number of processes: the same
    samples, weights within `weights_tol`, the same metrics but train_loss within `rel`."""
    for k in ks:
        for f in ("generated.jsonl", "selected.jsonl"):
            assert (out / f"samples_{k}" / f).read_bytes() == (ref / f"samples_{k}" / f).read_bytes(), (k, f)
    assert max_diff(out / f"iter_{ks[-1]}", ref / f"iter_{ks[-1]}") <= weights_tol
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, ref)]
    assert len(rows[0]) == len(rows[1])
    for a, b in zip(*rows):
        mine, theirs = a.pop("train_loss"), b.pop("train_loss")
        assert abs(mine - theirs) <= rel * abs(theirs), (mine, theirs)
        assert a == b


def events(out) -> list[str]:
    """The file events of a run that run_once built."""
    return (Path(out).parent / "events.log").read_text().splitlines()


# One registry of the runs that tests compare against or start from, each built once per test session
# by the first worker that needs it (the others wait for it and reuse it): the name is its key in
# `shared`, the flags are added to SMALL. A test module that needs one takes it from here.
PEFT = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "all-linear"]
DPO = ["--objective", "dpo", "--sft_iterations", "1", "--dpo_gold_chosen", "true", "--pairs_per_prompt", "2",
       "--num_iterations", "3"]
# sft in iteration 0, GRPO in 1 and 2: a generation every 3 steps, checkpoints every 2 (inside blocks), and a
# reward plug-in beside the verifier, so that the tiny model's groups differ and GRPO trains
GRPO = ["--objective", "grpo", "--sft_iterations", "1", "--num_iterations", "3", "--num_generations", "3",
        "--steps_per_generation", "3", "--save_steps", "2", "--reward_funcs", "plugins:digits"]
REFERENCES = {
    "reference": (),  # the uninterrupted 2-iteration run, a fresh optimizer each iteration
    "reference_carry": ("--carry_optimizer_state",),
    "peft_ref": tuple(PEFT),  # a LoRA adapter, its optimizer state carried inside each iteration
    "dpo_ref": (*DPO, "--report_to", "tensorboard"),  # sft in iteration 0, DPO in iterations 1 and 2
    "grpo_ref": (*GRPO, "--report_to", "tensorboard"),
}


def reference_run(tmp_path_factory, name: str) -> tuple[Path, str]:
    """(output_dir, stdout) of the registered run `name`."""
    return shared(tmp_path_factory, name, run_once(*REFERENCES[name]))


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted 2-iteration run (fresh optimizer each iteration)."""
    return reference_run(tmp_path_factory, "reference")[0]


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


@pytest.fixture(scope="session")
def reference_two_ranks(tmp_path_factory):
    """The uninterrupted 2-iteration run under torchrun with 2 ranks."""
    out, stdout = shared(tmp_path_factory, "reference_two_ranks", run_once(launcher=TORCHRUN, timeout=600))
    assert stdout.count("CHECKPOINT RECOVERY SYSTEM") == 1  # rank 0 prints, once
    assert stdout.count("✅ iteration 1:") == 1  # no line once per rank
    return out


@pytest.fixture(scope="session")
def two_rank_runs(tmp_path_factory, reference_two_ranks):
    """An uninterrupted 2-rank run, and one killed at global step 10 (after checkpoint-9)."""
    crashed = shared(tmp_path_factory, "two_ranks_crashed",
                     run_once(launcher=TORCHRUN, timeout=600, killed="train.step=10", leaves="checkpoint-9"))[0]
    return reference_two_ranks, crashed


@pytest.fixture(scope="session")
def reference_carry(tmp_path_factory):
    return reference_run(tmp_path_factory, "reference_carry")[0]


@pytest.fixture(scope="session")
def crashed_in_iter1(tmp_path_factory):
    """Killed at global step 10 (iteration 1), after checkpoint-9 committed: never resumed."""
    return shared(tmp_path_factory, "crashed_in_iter1", run_once(killed="train.step=10", leaves="checkpoint-9"))[0]


# Every test is of one kind (pyproject.toml lists them): fast (starts no process; `make test-fast`),
# e2e (real runs of the tiny model, one process each), dist (several processes: torchrun, accelerate
# launch, DeepSpeed), vllm (the real vLLM engine) or chaos (the crash harness's sample). A test that
# uses a fixture made by a real run is of that run's kind; an unmarked test is fast, and fails if
# it starts a process.
KINDS = ("e2e", "dist", "vllm", "chaos")
RUN_FIXTURES = {"reference": "e2e", "reference_carry": "e2e", "crashed_in_iter1": "e2e", "reference_two_ranks": "dist",
                "two_rank_runs": "dist"}
# The multi-process tests (several ranks, or a vLLM engine beside the run) run one after another on
# one worker, never beside each other on 2 cores: side by side, ZeRO-3's gloo collectives and vLLM's
# engine slowed each other several times over. The group starts first, as it is the longest that one
# worker runs in turn.
GROUPS = ("dist", "vllm")
MULTI_PROCESS = "multi-process"


def kind(item) -> str:
    """The closest kind marker: a test's own before its class's and its module's (a torchrun test in an
    e2e module is dist)."""
    return next((m.name for m in item.iter_markers() if m.name in KINDS), "fast")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group markers added here
def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, made_by in RUN_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and kind(item) in ("fast", "e2e"):
                item.add_marker(getattr(pytest.mark, made_by))
        k = kind(item)
        if k == "fast":
            item.add_marker(pytest.mark.fast)
        if k in GROUPS:
            item.add_marker(pytest.mark.xdist_group(MULTI_PROCESS))  # (xdist reads it after this hook)
    # the docs' commands last: their launches of real interpreters then meet the group's tail, not its start
    items.sort(key=lambda item: GROUPS.index(kind(item)) if kind(item) in GROUPS
               else len(GROUPS) + (item.path.name == "test_docs.py"))


_RAN_THE_GROUP = _YIELDED = False


def pytest_runtest_setup(item):
    """On 2 cores the multi-process group is the suite's longest path, and its worker starts with it: a
    worker whose first test is another one yields the CPU to it (nice 10, which the processes it starts
    inherit), and takes what the group leaves."""
    global _RAN_THE_GROUP, _YIELDED
    if kind(item) in GROUPS:
        _RAN_THE_GROUP = True
    elif not (_RAN_THE_GROUP or _YIELDED) and os.environ.get("PYTEST_XDIST_WORKER"):
        os.nice(10)
        _YIELDED = True


def pytest_configure(config):
    # pytest 9 keeps node ids where pytest-xdist 3.8 cannot append a test's group to it: --dist loadgroup
    # then runs the groups' multi-process tests side by side on 2 cores, silently (pyproject.toml pins
    # pytest below 9 for this).
    if getattr(config.option, "dist", "no") == "loadgroup" and pytest.version_tuple >= (9,):
        raise pytest.UsageError(f"--dist loadgroup ignores every xdist group under pytest {pytest.__version__} "
                                "(with pytest-xdist 3.8): install the test extra's pytest (<9)")


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request, monkeypatch):
    if kind(request.node) != "fast":
        return

    def refuse(*args, **kwargs):
        raise AssertionError("this test starts a process: mark it e2e, dist, vllm or chaos (make test-fast runs none)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "fork", refuse)


@pytest.fixture(autouse=True)
def _no_deepspeed_config_left_behind():
    # transformers keeps the last TrainingArguments' DeepSpeed config as a process global: one a test
    # leaves behind turns every later from_pretrained in this worker into a ZeRO-3 init.
    yield
    ds = sys.modules.get("transformers.integrations.deepspeed")
    if ds is not None and ds.is_deepspeed_zero3_enabled():
        ds.unset_hf_deepspeed_config()
        pytest.fail("this test left transformers' global DeepSpeed config set (a TrainingArguments with "
                    "--deepspeed still alive)")
