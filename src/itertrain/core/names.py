"""What an artifact on disk is, as the planner sees it. Pure data: no torch, no I/O.

An artifact is one directory directly under --output_dir:
  checkpoint-N   full HF Trainer state at global optimizer step N (kind "checkpoint")
  iter_K         weights-only model produced by iteration K    (kind "iteration")
  base_model     the seed system's iteration-0 model            (kind "iteration", K=0, unverified)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CHECKPOINT = "checkpoint"
ITERATION = "iteration"

# States. One definition of "usable" serves discovery, fallback and rotation: see `usable`.
COMPLETE = "complete"  # our manifest parses and every listed file has its listed size
UNVERIFIED = "unverified"  # no manifest, but complete by its own format's rules (plain HF)
INCOMPLETE = "incomplete"  # no manifest and not complete by its format's rules
CORRUPT = "corrupt"  # manifest unreadable, a listed file missing or of the wrong size, or bad checksum

# Why an artifact was renamed aside, which is also the suffix its name gets (commit.set_aside): the
# only reasons there are. A superseded name is stamped, as several resumes may supersede one name.
SUPERSEDED = "superseded"  # usable, but later than where the run goes on, or made from other inputs
ASIDE = (CORRUPT, INCOMPLETE, SUPERSEDED)


def aside_suffix(why: str, stamp: str = "") -> str:
    if why not in ASIDE:
        raise ValueError(f"not a reason to set an artifact aside: {why!r}")
    return f"{SUPERSEDED}-{stamp}" if why == SUPERSEDED else why


def aside_why(name: str) -> str | None:
    """Why the artifact called `name` was renamed aside (one of ASIDE), or None if it was not."""
    return next((head for part in name.split(".")[1:] if (head := part.split("-", 1)[0]) in ASIDE), None)


MANIFEST_NAME = "itertrain.json"
# checkpoint-N.universal: checkpoint-N's DeepSpeed ZeRO shards converted to DeepSpeed's universal
# checkpoint (runtime/universal.py), for a resume on another number of processes. Not an artifact of
# its own to the planner: it goes with checkpoint-N (used, kept and deleted with it).
UNIVERSAL_SUFFIX = ".universal"
SEED_BASE_MODEL = "base_model"  # the seed system's name for the iteration-0 model

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_ITERATION_RE = re.compile(r"^iter_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def universal_name(checkpoint: str) -> str:
    return checkpoint + UNIVERSAL_SUFFIX


def iteration_name(k: int) -> str:
    return f"iter_{k}"


def samples_name(k: int) -> str:
    return f"samples_{k}"


def pairs_name(k: int) -> str:
    return f"pairs_{k}"


def model_before(output_dir: str, models: dict[int, str], base_dir: str, k: int) -> tuple[str, str]:
    """model_K, which generates iteration K's samples and which iteration K trains from (with
    --train_from previous), and its name: the base for K=0, else iteration K-1's model as the plan
    found it (iter_{K-1}, or an adopted model such as the seed's base_model) or as this run wrote it."""
    if k == 0:
        return base_dir, "base"
    name = models.get(k - 1, iteration_name(k - 1))
    return os.path.join(output_dir, name), name


def sharded_engine(files: list[str]) -> str | None:
    """Which engine's per-rank shards a checkpoint's files (relative paths) hold, if any."""
    if any(f.startswith("global_step") and "zero_pp_rank_" in f for f in files):
        return "deepspeed"
    # FSDP: SHARDED_STATE_DICT writes pytorch_model_fsdp_0/ and optimizer_0/ (DCP files);
    # FULL_STATE_DICT one pytorch_model_fsdp.bin and optimizer.bin. Both resume through FSDP's own
    # loader, which reads the module weights from the checkpoint.
    if any(f.startswith("pytorch_model_fsdp") or (f.startswith("optimizer_") and f.endswith(".distcp"))
           for f in files):
        return "fsdp"
    return None


def shard_count(engine: str | None, files: list[str]) -> int | None:
    """How many ranks wrote those shards (for checkpoints without our manifest), if it shows."""
    if engine == "deepspeed":
        ranks = {f.split("zero_pp_rank_")[1].split("_")[0] for f in files if "zero_pp_rank_" in f}
    elif engine == "fsdp":
        ranks = {f.rsplit("/", 1)[-1].split("_")[2] for f in files
                 if f.startswith("pytorch_model_fsdp_") and f.endswith(".distcp") and f.count("_") >= 4}
    else:
        return None
    return len(ranks) or None


def parse_name(name: str) -> tuple[str, int] | None:
    """('checkpoint', N) / ('iteration', K) for an artifact directory name, else None."""
    if m := _CHECKPOINT_RE.match(name):
        return CHECKPOINT, int(m.group(1))
    if m := _ITERATION_RE.match(name):
        return ITERATION, int(m.group(1))
    if name == SEED_BASE_MODEL:
        return ITERATION, 0
    return None


@dataclass(frozen=True)
class Artifact:
    name: str  # directory name relative to --output_dir
    kind: str  # CHECKPOINT or ITERATION
    state: str
    iteration: int  # checkpoint: the iteration being trained; iteration model: K
    global_step: int  # checkpoint: N; iteration model: global step at the end of iteration K
    local_step: int | None = None  # step within its iteration (checkpoints)
    iteration_steps: int | None = None  # optimizer steps of that iteration (--max_steps then)
    why: str = ""  # reason it is not COMPLETE, or a note (e.g. "config.json missing")
    size: int = 0  # bytes, all files
    started_from: str | None = None
    needs_config: bool = False  # iteration model without config.json: one is created from --model_name
    engine: str | None = None  # checkpoints: "deepspeed" or "fsdp" when it holds per-rank shards
    world_size: int | None = None  # checkpoints: processes that wrote it (when known)
    run_step: int | None = None  # foreign checkpoints: the step its trainer_state.json counts
    run_steps: int | None = None  # foreign checkpoints: the max_steps of the run that wrote it
    adapter: bool = False  # checkpoints: a PEFT adapter's weights instead of the whole model's
    where: str = ""  # "": in --output_dir; else the URL of the mirror, the only place that has it

    @property
    def usable(self) -> bool:
        return self.state in (COMPLETE, UNVERIFIED)

    @property
    def is_last_step(self) -> bool:
        """A checkpoint taken at its iteration's last step (its training is finished)."""
        return (
            self.kind == CHECKPOINT
            and self.local_step is not None
            and self.iteration_steps is not None
            and self.local_step >= self.iteration_steps
        )

    def contents(self) -> str:
        if self.kind == CHECKPOINT:
            return f"{'adapter' if self.adapter else 'model'} weights + optimizer + scheduler states"
        return "model weights only (no optimizer/scheduler)"

    def sort_key(self) -> tuple[int, int, int]:
        # Newest by step or iteration number, never by mtime. Our iter_K beats the seed's base_model.
        if self.kind == CHECKPOINT:
            return (self.global_step, 0, 0)
        return (self.iteration, 0 if self.name == SEED_BASE_MODEL else 1, 0)
