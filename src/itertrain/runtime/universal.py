"""DeepSpeed ZeRO checkpoints resumed on another number of processes, through DeepSpeed's own
universal checkpoint.

ZeRO-1/2/3 shard the optimizer state (and under ZeRO-3 the parameters) by rank, so checkpoint-N
written by W processes does not load on W'. DeepSpeed's ds_to_universal turns the shards into one
file per parameter and state (fp32 weights, Adam's moments), which its engine loads on any number
of processes when its config says "load_universal". Here:
- convert: rank 0 writes checkpoint-N.universal beside checkpoint-N (kept as it was): hard links to
  every file of checkpoint-N but its ZeRO shards, plus the converted global_stepM_universal/ and
  latest_universal; committed with a manifest of its own like any artifact. A complete one is
  reused. Refused in one line, before anything is written, where the conversion cannot go (NVMe
  offload state, tensor or pipeline parallel shards) or would not fit on the disk.
- the iteration's trainer then resumes from it, its DeepSpeed config told to load universal.
- verify: after loading, every parameter's fp32 weights and Adam moments, gathered from the ranks,
  are compared with the converted files: a conversion or load that lost them stops the run.
Retention deletes the pair together (core/retention.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil

from itertrain.core import commit, manifest
from itertrain.core.elastic import processes
from itertrain.core.errors import RecoveryError, UsageError
from itertrain.core.names import CHECKPOINT, MANIFEST_NAME, shard_count, sharded_engine, universal_name
from itertrain.runtime import dist

LATEST = "latest_universal"


def path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, universal_name(name))


def _tag(directory: str, latest: str = "latest") -> str:
    """The step folder a DeepSpeed checkpoint's `latest` (or `latest_universal`) file names."""
    with open(os.path.join(directory, latest), encoding="utf-8") as f:
        return f.read().strip()


def refusal(src: str, world_size: int, written_by: int) -> str | None:
    """Why checkpoint `src` cannot be converted for `world_size` processes, in one line, or None."""
    name = os.path.basename(src)
    if not os.path.exists(os.path.join(src, MANIFEST_NAME)):
        return (f"{name} is a DeepSpeed checkpoint itertrain did not write (no manifest): itertrain converts only its "
                f"own for another number of processes; resume on {processes(written_by)}")
    try:
        tag = _tag(src)
    except OSError:
        return f"{name} holds DeepSpeed shards but no readable 'latest' file: it cannot be converted"
    files = os.listdir(os.path.join(src, tag))
    if os.path.isdir(os.path.join(src, tag, "offloaded_tensors")) or os.path.isdir(os.path.join(src, "offloaded_tensors")):
        what = "NVMe-offloaded optimizer state, which DeepSpeed's universal checkpoint does not carry"
    elif any("mp_rank_" in f and "mp_rank_00" not in f for f in files):
        what = "tensor- or pipeline-parallel shards (mp_rank > 0), which itertrain does not run"
    else:
        need = sum(os.path.getsize(os.path.join(src, tag, f)) for f in files)
        free = shutil.disk_usage(os.path.dirname(src)).free
        if need * 1.1 <= free:
            return None
        return (f"converting {name} for {processes(world_size)} needs about {need / 2**30:.2f} GiB on "
                f"{os.path.dirname(src)}, which has {free / 2**30:.2f} GiB free: free space there, or resume on "
                f"{processes(written_by)}")
    return (f"{name} holds {what}: it cannot be converted for {processes(world_size)}; resume on "
            f"{processes(written_by)}, or from the newest iteration model without the training state (--resume_from "
            "none --resume_from_iteration auto)")


def convert(output_dir: str, name: str, world_size: int, log=print) -> str:
    """checkpoint `name`'s universal partner, made and committed here unless a complete one is (rank 0)."""
    src, dest = os.path.join(output_dir, name), path(output_dir, name)
    source = _source_id(src) if os.path.exists(os.path.join(src, MANIFEST_NAME)) else None
    if source and os.path.isdir(dest) and manifest.problem(dest) is None and \
            manifest.read(dest).get("extra", {}).get("converted_from") == source:
        return dest
    files = manifest.list_files(src)
    written_by = shard_count(sharded_engine(files), files)
    if why := refusal(src, world_size, written_by):
        raise UsageError(why)
    if os.path.lexists(dest):  # broken, or the conversion of an earlier checkpoint of that name: kept aside
        problem = manifest.problem(dest)
        why = "corrupt" if problem else "superseded"
        log(f"⏭️  {universal_name(name)}: {problem or 'converted from another ' + name}: renamed to "
            f"{commit.set_aside(output_dir, universal_name(name), why)}")
    tag = _tag(src)
    staged = commit.fresh_staging(output_dir, universal_name(name))
    for f in files:
        if f != MANIFEST_NAME and f != "latest" and not f.startswith(tag + "/"):
            os.makedirs(os.path.dirname(os.path.join(staged, f)), exist_ok=True)
            os.link(os.path.join(src, f), os.path.join(staged, f))
    log(f"🔁 {name}: DeepSpeed shards of {processes(written_by)}, converted for {world_size} with DeepSpeed's "
        f"universal checkpoint into {universal_name(name)} ({name} is kept)")
    _ds_to_universal(os.path.join(src, tag), os.path.join(staged, f"{tag}_universal"))
    m = manifest.read(src)
    commit.commit_dir(staged, dest, failpoint=("universal.write", m["global_step"]), kind=CHECKPOINT,
                      name=universal_name(name), iteration=m["iteration"], global_step=m["global_step"],
                      local_step=m.get("local_step"), iteration_steps=m.get("iteration_steps"),
                      started_from=m.get("started_from"),
                      extra={**m.get("extra", {}), "world_size": None, "converted_from": source})
    return dest


def _source_id(src: str) -> str:
    """Which checkpoint a conversion was made from: its manifest's digest (it lists every file's checksum)."""
    import hashlib

    with open(os.path.join(src, MANIFEST_NAME), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _ds_to_universal(input_folder: str, output_folder: str) -> None:
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=input_folder, output_folder=output_folder, num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # HF-trained models carry no Megatron universal info
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):  # its per-parameter progress lines
            ds_to_universal.main(args)
    except Exception as e:
        raise RecoveryError(f"DeepSpeed's ds_to_universal could not convert {input_folder}: "
                            f"{type(e).__name__}: {e}") from e


def load_universal(targs) -> None:
    """This trainer's DeepSpeed engine loads a universal checkpoint."""
    targs.hf_deepspeed_config.config.setdefault("checkpoint", {})["load_universal"] = True


def verify(trainer, universal_dir: str) -> None:
    """Every trainable parameter's fp32 weights and Adam moments, as the engine holds them after loading
    (gathered over the ranks: a collective), equal the converted checkpoint's files."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    zero = os.path.join(universal_dir, _tag(universal_dir, LATEST), "zero")
    model = trainer.model_wrapped.module if hasattr(trainer.model_wrapped, "module") else trainer.model_wrapped
    held = []  # rank 0's: every rank takes part in gathering each tensor
    for pname, param in model.named_parameters():
        if param.requires_grad:
            values = {"fp32": safe_get_full_fp32_param(param), "exp_avg": safe_get_full_optimizer_state(param, "exp_avg"),
                      "exp_avg_sq": safe_get_full_optimizer_state(param, "exp_avg_sq")}
            if dist.is_main():
                held.append((pname, values))
    # compared on rank 0, a difference raised on every rank together (not on rank 0 alone, mid-collectives)
    checked = dist.on_main(_compare, zero, held, os.path.basename(universal_dir))
    dist.log0(f"🔁 {os.path.basename(universal_dir)}: loaded on {processes(dist.world_size())}; fp32 weights and Adam "
              f"moments of every parameter equal the checkpoint's ({checked} tensors checked)")


def _compare(zero: str, held: list, name: str) -> int:
    import torch

    for pname, values in held:
        for key, value in values.items():
            saved = torch.load(os.path.join(zero, pname, f"{key}.pt"), weights_only=True)
            saved = (saved["param"] if isinstance(saved, dict) else saved).float().flatten()  # (ZeRO-3's: flat)
            mine = None if value is None else value.float().cpu().flatten()
            if mine is None or mine.numel() != saved.numel() or not torch.equal(mine, saved):
                diff = "missing" if mine is None else f"{mine.numel()} values, saved {saved.numel()}" \
                    if mine.numel() != saved.numel() else f"max abs diff {(mine - saved).abs().max().item():.3g}"
                raise RecoveryError(f"{name}: after DeepSpeed's universal load, {key} of {pname} is not the "
                                    f"checkpoint's ({diff}): the optimizer state would be lost")
    return sum(len(values) for _, values in held)
