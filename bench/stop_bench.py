"""What a stop request costs (part of `make bench`, through bench/run.py).

stop_latency: SIGTERM during training of the bench's ~86M-param Llama, until training has returned
with the stop's checkpoint committed (the end of the current step, a synchronous write, fsync, the
xxh3 manifest, the rename), over one synchronous HF `_save_checkpoint` of the same model; the two
alternated in one process.
agreement_cost: under torchrun with 2 CPU ranks (gloo), one agreement on the stop request (the
all-reduce each training step makes) over one DDP training step of the throughput model.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))


class SignalAt(TrainerCallback):
    """Sends this process SIGTERM as step `at` begins, and notes when."""

    def __init__(self, at: int):
        self.at, self.sent = at, None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.at:
            self.sent = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)


def stop_latency(work: Path, n: int, size: tuple[int, int, int]) -> dict:
    from run import SaveClock, features, llama, ours, pairs, plain, targs

    from itertrain.runtime import stop

    data, at = features(64), 3
    seconds: dict[str, list] = {"stop": [], "save": []}

    def stopped() -> float:
        d = tempfile.mkdtemp(dir=work)
        handlers = stop.install(["SIGTERM"], None)
        try:
            t = ours(llama(*size), targs(d + "/t", 20, 4), data, d, async_save=True)
            cb = SignalAt(at)
            t.add_callback(cb)
            t.train()
            done = time.perf_counter()
            assert t.stop_reason == "SIGTERM" and t.state.global_step == at and os.path.isdir(f"{d}/checkpoint-{at}")
        finally:
            stop.uninstall(handlers)
        shutil.rmtree(d)
        seconds["stop"].append(done - cb.sent)
        return seconds["stop"][-1]

    def saved() -> float:
        d = tempfile.mkdtemp(dir=work)
        t = plain(llama(*size), targs(d + "/t", at, 4, save_strategy="steps", save_steps=at), data)
        clock = SaveClock(t)
        t.train()
        shutil.rmtree(d)
        seconds["save"].append(clock.seconds[-1])
        return seconds["save"][-1]

    ratios = pairs(n, stopped, saved)
    params = sum(p.numel() for p in llama(*size).parameters())
    return {"value": statistics.median(ratios), "pairs": ratios,
            "seconds_to_stop": statistics.median(seconds["stop"]), "seconds_hf_save": statistics.median(seconds["save"]),
            "how": f"SIGTERM as step {at} begins, until training returns with checkpoint-{at} committed (the rest of "
                   f"the step, a synchronous write with fsync and the xxh3 manifest), over one synchronous HF "
                   f"Trainer._save_checkpoint (no fsync) of the same Llama ({params / 1e6:.0f}M params, Adam state); "
                   f"median {statistics.median(seconds['stop']):.2f} s against {statistics.median(seconds['save']):.2f} s. "
                   "Interpreter exit after that is not counted"}


def agreement_cost(steps: int = 20, agreements: int = 500) -> dict:
    """Run this file under torchrun (2 ranks) and read rank 0's figures."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--ranks", str(steps), str(agreements)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    per_step, per_agreement = map(float, proc.stdout.strip().splitlines()[-1].split())
    return {"value": per_agreement / per_step, "seconds_per_step": per_step, "seconds_per_agreement": per_agreement,
            "how": f"2 CPU ranks under torchrun (gloo): one stop.agreed() (an all-reduce of one integer; median of "
                   f"{agreements}) over one DDP training step of the 4-layer 256-wide Llama, batch 64 per rank "
                   f"(median of {steps}): {per_agreement * 1e6:.0f} us against {per_step * 1e3:.0f} ms"}


def stop_markdown(results: dict) -> dict:
    """The words BENCHMARKS.template.md's {{STOP}} and {{AGREE}} stand for."""
    s, a = results.get("stop_latency_ratio"), results.get("stop_agreement_vs_step")
    return {"{{STOP}}": "not measured" if s is None else
            f"{s['seconds_to_stop']:.2f} s against {s['seconds_hf_save']:.2f} s (median of {len(s['pairs'])} pairs)",
            "{{AGREE}}": "not measured" if a is None else
            f"{a['seconds_per_agreement'] * 1e6:.0f} us against {a['seconds_per_step'] * 1e3:.0f} ms per step"}


def _ranks(steps: int, agreements: int) -> None:
    from accelerate import PartialState
    from run import Collator, features, llama

    from itertrain.runtime import dist, stop

    state = PartialState(cpu=True)  # a gloo group on a machine without an accelerator (dist uses this one)
    model = torch.nn.parallel.DistributedDataParallel(llama(256, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = Collator(0)(features(64 * 2)[state.process_index * 64:(state.process_index + 1) * 64])
    step_times = []
    for _ in range(steps + 3):  # the first 3 warm up
        t = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        step_times.append(time.perf_counter() - t)
    agree_times = []
    for _ in range(agreements):
        t = time.perf_counter()
        assert stop.agreed() is None
        agree_times.append(time.perf_counter() - t)
    if state.is_main_process:
        print(statistics.median(step_times[3:]), statistics.median(agree_times))
    dist.finish()


if __name__ == "__main__" and sys.argv[1:2] == ["--ranks"]:
    _ranks(int(sys.argv[2]), int(sys.argv[3]))
