"""Turning a plan into a verified starting point: checksums, agreed fallback, renames, config.json.

Rank 0 takes the inventory and plans; every rank verifies what the plan selected; one failing rank
makes all fall back together (the bad artifact is renamed aside by rank 0 after a barrier, then the
plan is made again). Nothing here loads weights into a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import torch
from safetensors import safe_open
from transformers.trainer_pt_utils import safe_globals

from itertrain.core import commit, failpoints, inventory, manifest
from itertrain.core.errors import RecoveryError, UsageError
from itertrain.core.names import CORRUPT, INCOMPLETE, SUPERSEDED, Artifact, aside_why, samples_name
from itertrain.core.plan import SCRATCH, Plan, Request, make_plan
from itertrain.core.selectors import AUTO, Selector
from itertrain.runtime import dist


def request(cfg) -> Request:
    return Request(cfg.resume_from, cfg.resume_from_iteration, cfg.it.num_iterations,
                   cfg.it.carry_optimizer_state, dist.world_size())


def verify(output_dir: str, name: str) -> str | None:
    """Why `name` cannot be loaded, or None. With a manifest: sizes and checksums. Then, for every
    artifact, every pickle-based file (optimizer, scheduler, RNG) must load with weights_only=True
    (memory-mapped, so cheap): a crafted pickle is refused here and its payload never runs. Without
    a manifest, safetensors headers and JSON files must parse too."""
    if failpoints.on_this_rank("load.fail") == name:
        return "load failed on this rank (failpoint load.fail)"
    path = os.path.join(output_dir, name)
    has_manifest = manifest.exists(path)
    if has_manifest and (problem := manifest.problem(path)):
        return problem
    f = ""
    try:
        for f in sorted(os.listdir(path)):
            full = os.path.join(path, f)
            if f.endswith((".pt", ".pth")) or (f.endswith(".bin") and f != "training_args.bin"):
                _safe_load(full)
            elif has_manifest:
                continue
            elif f.endswith(".safetensors"):
                with safe_open(full, "pt") as st:
                    for key in st.keys():
                        st.get_slice(key)
            elif f.endswith(".json"):
                with open(full, encoding="utf-8") as fh:
                    json.load(fh)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{f} refused: it is not plain tensor data (weights_only load failed: {first[:200]})"
    except Exception as e:  # noqa: BLE001 - any failure to open is the verdict, reported with its reason
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{f} unreadable ({type(e).__name__}: {first[:200]})"
    return None


def _safe_load(path: str) -> None:
    with safe_globals():
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) file


def _plan(cfg, req: Request, max_steps: int) -> tuple[list[Artifact], Plan]:
    inv, names = inventory.scan(cfg.output_dir, max_steps, mirror=bool(cfg.mirror.mirror_to))
    plan = make_plan(inv, req, existing=names, stamp=commit.utc_stamp())  # (a PlanError is a usage error)
    # Only the mirror has these: it renames its own (a branch sets later ones aside there too); one
    # that is incomplete or corrupt there is reported and left as it is.
    remote = {a.name for a in inv if a.where}
    plan.remote_renames = [r for r in plan.renames if r.artifact in remote and aside_why(r.to) == SUPERSEDED]
    plan.renames = [r for r in plan.renames if r.artifact not in remote]
    return inv, plan


def resolve(cfg, max_steps: int, fetch=None) -> tuple[list[Artifact], Plan]:
    """The agreed, verified plan (dry run and finished experiments: planned only). `fetch(plan)`, on
    rank 0: bring what the plan loads from the mirror; {name: why} of what failed to come."""
    req = request(cfg)
    failures: list[str] = []
    while True:
        inv, plan = dist.on_main(_plan, cfg, req, max_steps)
        plan.warnings[:0] = [f"fallback: {f}" for f in failures]
        damaged = failures + [f"{s.artifact} {s.why}" for s in plan.skipped if s.state == CORRUPT]
        if plan.strategy == SCRATCH and damaged and AUTO in (req.resume_from.mode, req.resume_from_iteration.mode):
            refusal = ("no artifact of this experiment loads, refusing to restart from scratch over it: "
                       + "; ".join(damaged) + ". To start over anyway, pass --resume_from none "
                       "--resume_from_iteration none (everything is kept, renamed aside)")
            if not cfg.it.dry_run:
                raise RecoveryError(refusal)
            plan.warnings.append(f"a real run stops here: {refusal}")
        if cfg.it.dry_run or plan.done:
            return inv, plan
        if cfg.it.strict_resume:
            broken = [s for s in plan.skipped if s.state in (CORRUPT, INCOMPLETE)]
            if broken:
                raise RecoveryError("--strict_resume: " + "; ".join(f"{s.artifact} {s.why}" for s in broken))
        if fetch is not None and (fetched := dist.on_main(fetch, plan)):
            failures += [f"{n} failed to come from the mirror ({why})" for n, why in fetched.items()]
            if req.resume_from.explicit or req.resume_from_iteration.explicit or cfg.it.strict_resume:
                raise RecoveryError("the artifact you asked for cannot be loaded: " + "; ".join(failures))
            continue  # the mirror's index now says why: planned again without it
        selected = sorted({plan.weights_from, plan.state_from} - {None})
        verdicts = dist.gather({n: verify(cfg.output_dir, n) for n in selected})
        bad = {}
        for rank, verdict in enumerate(verdicts):
            for n, why in verdict.items():
                if why and n not in bad:
                    bad[n] = why if len(verdicts) == 1 else f"{why} (rank {rank})"
        if not bad:
            return inv, plan
        renamed = dist.on_main(lambda: {n: commit.set_aside(cfg.output_dir, n, CORRUPT) for n in bad})
        failures += [f"{n} failed to load ({why}): renamed to {renamed[n]}" for n, why in bad.items()]
        if cfg.it.strict_resume:
            raise RecoveryError("--strict_resume: " + "; ".join(failures))
        if req.resume_from.explicit or req.resume_from_iteration.explicit:
            raise RecoveryError("the artifact you asked for cannot be loaded: " + "; ".join(failures))
        if req.resume_from.mode != req.resume_from_iteration.mode:  # then the other kind
            req = dataclasses.replace(req, resume_from=Selector(AUTO), resume_from_iteration=Selector(AUTO))


def shape_problem(weights_dir: str, config_dir: str) -> str | None:
    """Do the weights in weights_dir fit the architecture in config_dir? Read from headers only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for f in sorted(os.listdir(weights_dir)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(weights_dir, f), "pt") as st:
                for key in st.keys():
                    shape = tuple(st.get_slice(key).get_shape())
                    if key in expected and expected[key] != shape:
                        return f"{key} has shape {shape} in {weights_dir}, {expected[key]} in {config_dir}'s config"
    return None


def apply(cfg, plan: Plan, model_source: str) -> None:
    """Rank 0: the plan's renames and config.json creation; every rank learns the outcome."""
    dist.on_main(_apply, cfg.output_dir, plan, model_source)


def _apply(output_dir: str, plan: Plan, model_source: str) -> None:
    for name in plan.create_config:  # checked before anything is renamed
        if problem := shape_problem(os.path.join(output_dir, name), model_source):
            raise UsageError(f"{name} does not fit --model_name: {problem}")
    for r in plan.renames:
        commit.rename_aside(output_dir, r.artifact, r.to)
    for name in plan.create_config:
        with open(os.path.join(model_source, "config.json"), "rb") as f:
            commit.atomic_write_bytes(os.path.join(output_dir, name, "config.json"), f.read())


def check_generator(cfg, plan: Plan) -> None:
    """The next iteration's samples, unless committed, are generated by the previous iteration's
    model: when neither is here the run could not go on, so it stops now, before writing anything."""

    k = plan.next_iteration
    if k > 0 and k - 1 not in plan.models and not dist.on_main(os.path.isdir,
                                                                os.path.join(cfg.output_dir, samples_name(k))):
        raise RecoveryError(f"iteration {k} cannot start: its samples ({samples_name(k)}) are not here, and neither "
                            f"is iteration {k - 1}'s model, which generates them (iter_{k - 1}"
                            f"{', or base_model' if k == 1 else ''}). Bring that model back, or resume from an "
                            "earlier point")
