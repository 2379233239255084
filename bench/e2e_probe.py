"""Runs train_iterative.py in this process with probes, for bench/e2e.py: per iteration, its wall
time (from its start to the next one's, or to the end), the time in generate (with verification),
train and evaluate, and every full read of model weights (a load through safetensors or torch.load,
or a checksum pass over a weights file). Nothing in itertrain is changed: its functions are wrapped.

Usage: E2E_PROBE_OUT=probe.json python bench/e2e_probe.py <train_iterative.py arguments>
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from itertrain.app import cli, loop  # noqa: E402,F401  (all of it imported
from itertrain.core import failpoints, manifest
from itertrain.phases import samples

WEIGHTS = (".safetensors", ".bin", ".pt")
record = {"started": time.monotonic(), "iterations": [], "reads": []}
current = {"k": None}


def _iteration() -> dict:
    return record["iterations"][-1] if record["iterations"] else {"phases": {}}


def timed(owner, name: str, phase: str):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        began = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            phases = _iteration()["phases"]
            phases[phase] = phases.get(phase, 0.0) + time.monotonic() - began

    setattr(owner, name, wrapper)


def read_by(owner, name: str, how: str, path_arg: int = 0):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        path = args[path_arg] if len(args) > path_arg else kwargs.get("filename") or kwargs.get("f")
        if isinstance(path, (str, os.PathLike)) and str(path).endswith(WEIGHTS) and "rng_state" not in str(path) \
                and os.path.basename(str(path)) not in ("scheduler.pt", "training_args.bin"):
            record["reads"].append({"iteration": current["k"], "how": how,
                                    "path": os.path.relpath(os.path.realpath(path), os.getcwd())})
        return real(*args, **kwargs)

    for module in list(sys.modules.values()):  # also where it was imported by name (transformers)
        if getattr(module, name, None) is real:
            setattr(module, name, wrapper)
    setattr(owner, name, wrapper)


hashing = {"now": False}


def audit(event: str, args) -> None:
    """A weights file opened for reading by Python (a load that reads it whole, disable_mmap)."""
    if event == "open" and not hashing["now"] and isinstance(args[0], (str, os.PathLike)):
        path, mode = str(args[0]), args[1]
        if path.endswith(".safetensors") and (mode is None or "r" in str(mode)) and "+" not in str(mode or ""):
            record["reads"].append({"iteration": current["k"], "how": "read",
                                    "path": os.path.relpath(os.path.realpath(path), os.getcwd())})


def digest_wrapper(real):
    def wrapper(*args, **kwargs):
        hashing["now"] = True
        try:
            return real(*args, **kwargs)
        finally:
            hashing["now"] = False
    return wrapper


real_signal = failpoints.send_signal


def send_signal(point, value, *args, **kwargs):
    if point == "iteration":  # an iteration begins
        now = time.monotonic()
        if record["iterations"]:
            record["iterations"][-1]["seconds"] = now - record["iterations"][-1]["began"]
        record["iterations"].append({"iteration": value, "began": now, "phases": {}})
        current["k"] = value
    return real_signal(point, value, *args, **kwargs)


def finish() -> None:
    now = time.monotonic()
    if record["iterations"] and "seconds" not in record["iterations"][-1]:
        record["iterations"][-1]["seconds"] = now - record["iterations"][-1]["began"]
    record["total"] = now - record["started"]
    with open(os.environ["E2E_PROBE_OUT"], "w") as f:
        json.dump(record, f)


failpoints.send_signal = send_signal
timed(samples, "ensure", "generate")
timed(samples, "earlier", "generate")
timed(transformers.Trainer, "train", "train")
timed(loop, "greedy_accuracy", "evaluate")
read_by(safetensors, "safe_open", "load")
read_by(safetensors.torch, "load_file", "load")
read_by(torch, "load", "load")
read_by(manifest, "file_digest", "checksum")
manifest.file_digest = digest_wrapper(manifest.file_digest)
sys.addaudithook(audit)
real_leave = cli.leave


def leave(code: int) -> int:
    finish()  # (the run leaves with os._exit: no atexit)
    return real_leave(code)


cli.leave = leave
sys.argv = [os.path.join(REPO, "train_iterative.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
