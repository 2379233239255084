"""What is on disk: --output_dir -> [Artifact]. Reads manifests and stats files; loads no weights.

This is the one place that decides an artifact's state, so discovery, fallback and rotation all
agree on what "complete" means.
"""

from __future__ import annotations

import json
import os

from itertrain.core import failpoints, manifest, mirrored
from itertrain.core.names import (
    CHECKPOINT,
    COMPLETE,
    CORRUPT,
    INCOMPLETE,
    ITERATION,
    MANIFEST_NAME,
    SEED_BASE_MODEL,
    UNVERIFIED,
    Artifact,
    parse_name,
    shard_count,
    sharded_engine,
)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # a PEFT model's checkpoint holds these instead
# Plain HF Trainer checkpoint, complete by HF's own rules (trainer_state.json is written last).
HF_CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)


def _from_manifest(name: str, kind: str, number: int, path: str) -> Artifact:
    try:
        m = manifest.read(path)
    except manifest.ManifestError as e:
        return from_manifest(name, kind, number, None, str(e))
    return from_manifest(name, kind, number, m, manifest.size_problem(path, m))


def from_manifest(name: str, kind: str, number: int, m: dict | None, problem: str | None, where: str = "") -> Artifact:
    """An artifact as its manifest `m` describes it; CORRUPT with `problem` (or a manifest that names
    another artifact). `where`: the mirror's URL for an artifact only the mirror has."""
    def broken(why: str) -> Artifact:
        return Artifact(name, kind, CORRUPT, iteration=number if kind == ITERATION else 0,
                        global_step=number if kind == CHECKPOINT else 0, why=why, where=where)

    if m is None or problem:
        return broken(problem or f"{MANIFEST_NAME} unreadable")
    if m.get("kind") != kind or (number != (m["global_step"] if kind == CHECKPOINT else m["iteration"])):
        return broken(f"{MANIFEST_NAME} describes {m.get('kind')} {m.get('name')}, not {name}")
    engine = sharded_engine(list(m["files"])) if kind == CHECKPOINT else None
    return Artifact(name, kind, COMPLETE, iteration=m["iteration"], global_step=m["global_step"],
                    local_step=m.get("local_step"), iteration_steps=m.get("iteration_steps"),
                    size=sum(f["size"] for f in m["files"].values()), started_from=m.get("started_from"),
                    needs_config=kind == ITERATION and "config.json" not in m["files"], engine=engine,
                    adapter=kind == CHECKPOINT and any(f in m["files"] for f in ADAPTER_FILES),
                    world_size=m.get("extra", {}).get("world_size") if kind == CHECKPOINT else None, where=where)


def _foreign(name: str, kind: str, number: int, path: str, max_steps: int) -> Artifact:
    """No manifest: accept as UNVERIFIED if complete by its own format's rules."""
    present = set(os.listdir(path))
    has_weights = any(f in present for f in WEIGHT_FILES)
    if kind == ITERATION:
        if not has_weights:
            return Artifact(name, kind, INCOMPLETE, iteration=number, global_step=0,
                            why="no manifest and no model weights")
        return Artifact(name, kind, UNVERIFIED, iteration=number, global_step=(number + 1) * max_steps,
                        size=_dir_size(path), needs_config="config.json" not in present,
                        why="no itertrain manifest (weights-only model directory)")
    files = manifest.list_files(path)
    engine = sharded_engine(files)
    # DeepSpeed keeps optimizer and scheduler in global_step*/, FSDP its optimizer in optimizer_*/
    required = {"deepspeed": ("trainer_state.json",), "fsdp": ("scheduler.pt", "trainer_state.json")}.get(
        engine, HF_CHECKPOINT_FILES)
    adapter = any(f in present for f in ADAPTER_FILES)
    missing = [f for f in required if f not in present] + ([] if has_weights or adapter or engine else ["model weights"])
    if missing:
        return Artifact(name, kind, INCOMPLETE, iteration=0, global_step=number,
                        why=f"no manifest, and missing {', '.join(missing)}")
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        run_step, run_steps = state.get("global_step"), state.get("max_steps")
    except (OSError, ValueError, AttributeError) as e:
        return Artifact(name, kind, INCOMPLETE, iteration=0, global_step=number,
                        why=f"no manifest, and trainer_state.json unreadable ({type(e).__name__})")
    # Foreign checkpoints carry no iteration: infer it from N and the current --max_steps.
    iteration = max(number - 1, 0) // max_steps
    no_rng = "" if any(f.startswith("rng_state") for f in present) else \
        "; no rng_state*.pth: RNG not restored, so not bit-exact"
    return Artifact(name, kind, UNVERIFIED, iteration=iteration, global_step=number,
                    local_step=number - iteration * max_steps, iteration_steps=max_steps,
                    size=_dir_size(path), engine=engine, world_size=shard_count(engine, files),
                    run_step=run_step, run_steps=run_steps, adapter=adapter,
                    why=f"no itertrain manifest (plain HF checkpoint; iteration {iteration} inferred "
                        f"from --max_steps {max_steps}{no_rng})")


def scan(output_dir: str, max_steps: int, mirror: bool = False) -> tuple[list[Artifact], frozenset[str]]:
    """Every artifact under output_dir with its state, and every name there (for rename targets).
    With `mirror`, also those only the experiment's mirror has (as its index last saw them)."""
    local, names = _scan_local(output_dir, max_steps)
    if not mirror:
        return local, names
    remote = _mirror_only(output_dir, names)
    return local + remote, names | {a.name for a in remote}


def _mirror_only(output_dir: str, local_names: frozenset[str]) -> list[Artifact]:
    index = mirrored.read_index(output_dir)
    out = []
    for name, entry in sorted(index.get("units", {}).items()):
        if name not in local_names and "/" not in name and (
                a := mirrored.artifact(name, entry, index.get("url", "the mirror"), from_manifest)):
            out.append(a)
    return out


def _scan_local(output_dir: str, max_steps: int) -> tuple[list[Artifact], frozenset[str]]:
    if not os.path.isdir(output_dir):
        return [], frozenset()
    names = frozenset(os.listdir(output_dir)) - {failpoints.on_this_rank("view.hide")}
    out = []
    for name in sorted(names):
        parsed = parse_name(name)
        path = os.path.join(output_dir, name)
        if parsed is None or not os.path.isdir(path):
            continue
        kind, number = parsed
        if os.path.islink(path):
            out.append(Artifact(name, kind, INCOMPLETE, iteration=number if kind == ITERATION else 0,
                                global_step=number if kind == CHECKPOINT else 0,
                                why="a symbolic link (artifacts must be real directories)"))
        elif os.path.exists(os.path.join(path, MANIFEST_NAME)) and name != SEED_BASE_MODEL:
            out.append(_from_manifest(name, kind, number, path))
        else:
            out.append(_foreign(name, kind, number, path, max_steps))
    return out, names


def committed_iterations(output_dir: str, max_steps: int) -> list[dict]:
    """The manifests of the complete iteration models, by iteration (metrics, curves, timing); those
    only the mirror has too (a resume on a fresh machine fetches only the models it loads)."""
    artifacts, _ = scan(output_dir, max_steps, mirror=True)
    done = sorted((a for a in artifacts if a.kind == ITERATION and a.state == COMPLETE), key=lambda a: a.iteration)
    units = mirrored.read_index(output_dir).get("units", {}) if any(a.where for a in done) else {}
    return [units[a.name]["manifest"] if a.where else manifest.read(os.path.join(output_dir, a.name)) for a in done]
