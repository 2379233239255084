"""The recovery rules: inventory of what is on disk + the flags -> a recovery plan.

Pure: no torch, no file system. Everything here is decided from `Artifact` records that the
inventory built from manifests, so it can be tested exhaustively and runs in microseconds.

The principle behind every rule: resuming with `auto` must end exactly where the uninterrupted
run would have ended, and nothing already on disk is lost (later or broken artifacts are renamed
aside, never deleted). See docs/recovery.md for the same rules in prose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from itertrain.core.errors import PlanError
from itertrain.core.elastic import processes
from itertrain.core.names import CHECKPOINT, ITERATION, SUPERSEDED, Artifact, aside_suffix, universal_name
from itertrain.core.selectors import AUTO, NONE, Selector

SCRATCH, TRAINER, ITERATION_STRATEGY, BOTH = "scratch", "trainer", "iteration", "both"


@dataclass(frozen=True)
class Request:
    resume_from: Selector
    resume_from_iteration: Selector
    num_iterations: int
    carry_optimizer_state: bool = False
    world_size: int = 1  # processes of this run


@dataclass(frozen=True)
class Rename:
    artifact: str
    to: str
    why: str


SHADOWED = "shadowed"  # usable, but another artifact of the same iteration is preferred


@dataclass(frozen=True)
class Skip:
    """An artifact the plan does not use: its state (CORRUPT, INCOMPLETE or SHADOWED) and why."""

    artifact: str
    state: str
    reason: str

    @property
    def why(self) -> str:
        return f"{self.state}: {self.reason}"

    def to_json(self) -> dict:
        return {"artifact": self.artifact, "state": self.state, "reason": self.reason, "why": self.why}


@dataclass
class Plan:
    strategy: str
    weights_from: str | None  # None: --model_name
    state_from: str | None  # None: fresh optimizer/scheduler
    next_iteration: int
    next_step: int  # global optimizer step the run continues from
    reason: str
    warnings: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    renames: list[Rename] = field(default_factory=list)
    remote_renames: list[Rename] = field(default_factory=list)  # of artifacts only the mirror has
    branch: bool = False  # later trained progress is set aside: the run goes on from an earlier point
    create_config: list[str] = field(default_factory=list)  # iteration models that get a config.json
    # Which directory holds iteration K's model, for every K before next_iteration that has one: iter_K,
    # or an adopted model (the seed's base_model). The phases read "the model of iteration K" from here.
    models: dict[int, str] = field(default_factory=dict)
    done: bool = False  # every requested iteration is already complete
    training_finished: bool = False  # trainer strategy on a last-step checkpoint: evaluate and save only
    convert: str | None = None  # state_from's DeepSpeed shards, to convert for this number of processes

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "weights_from": self.weights_from,
            "state_from": self.state_from,
            "next_iteration": self.next_iteration,
            "next_step": self.next_step,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "skipped": [s.to_json() for s in self.skipped],
            "done": self.done,
            "iteration_models": {str(k): v for k, v in sorted(self.models.items())},
            "actions": [{"rename": r.artifact, "to": r.to, "why": r.why} for r in self.renames]
            + [{"create_config": name} for name in self.create_config]
            + ([{"convert": self.convert, "to": universal_name(self.convert)}] if self.convert else []),
        }


def _newest(artifacts: list[Artifact]) -> Artifact | None:
    return max(artifacts, key=Artifact.sort_key, default=None)


def _usable_iterations(inventory: list[Artifact]) -> tuple[list[Artifact], list[Artifact]]:
    """Usable iteration models, one per K (our iter_0 shadows the seed's base_model)."""
    by_k: dict[int, Artifact] = {}
    shadowed = []
    for a in sorted((a for a in inventory if a.kind == ITERATION and a.usable), key=Artifact.sort_key):
        if a.iteration in by_k:
            shadowed.append(by_k[a.iteration])
        by_k[a.iteration] = a
    return list(by_k.values()), shadowed


def _listing(artifacts: list[Artifact]) -> str:
    names = [a.name for a in sorted(artifacts, key=Artifact.sort_key)]
    return ", ".join(names) if names else "none"


def _select(sel: Selector, usable: list[Artifact], inventory: list[Artifact], kind: str) -> Artifact | None:
    if sel.mode == NONE:
        return None
    if sel.mode == AUTO:
        return _newest(usable)
    label = f"checkpoint-{sel.number}" if kind == CHECKPOINT else f"iter_{sel.number}"
    key = (lambda a: a.global_step) if kind == CHECKPOINT else (lambda a: a.iteration)
    for a in sorted(usable, key=Artifact.sort_key, reverse=True):
        if key(a) == sel.number:
            return a
    broken = [a for a in inventory if a.kind == kind and not a.usable and key(a) == sel.number]
    flag = "--resume_from" if kind == CHECKPOINT else "--resume_from_iteration"
    if broken:
        raise PlanError(f"{flag} {sel}: {broken[0].name} is {broken[0].state} ({broken[0].why}); "
                        f"usable here: {_listing(usable)}")
    raise PlanError(f"{flag} {sel}: {label} does not exist; usable here: {_listing(usable)}")


def make_plan(
    inventory: list[Artifact], req: Request, *, existing: frozenset[str] = frozenset(), stamp: str = "0"
) -> Plan:
    """Decide where a run starts. `existing` is every name in --output_dir (to pick free rename
    targets); `stamp` makes superseded names unique (e.g. a UTC time)."""
    ckpts = [a for a in inventory if a.kind == CHECKPOINT and a.usable]
    iters, shadowed = _usable_iterations(inventory)
    ckpt = _select(req.resume_from, ckpts, inventory, CHECKPOINT)
    it = _select(req.resume_from_iteration, iters, inventory, ITERATION)

    notes = []
    if req.resume_from.mode == AUTO and ckpt is None:
        notes.append("--resume_from auto found no complete checkpoint (treated as none)")
    if req.resume_from_iteration.mode == AUTO and it is None:
        notes.append("--resume_from_iteration auto found no complete iteration model (treated as none)")

    plan = _strategy(ckpt, it, ckpts, req)
    state = next((a for a in inventory if a.name == plan.state_from), None)
    if _needs_conversion(state, req):
        plan.convert = state.name
        plan.warnings.append(
            f"{state.name} holds DeepSpeed ZeRO shards written by {processes(state.world_size)} and this run has "
            f"{req.world_size}: they are converted with DeepSpeed's universal checkpoint into "
            f"{universal_name(state.name)} ({state.name} is kept)")
    if rng := _rng_note(state, req):
        plan.warnings.append(rng)
    _check_foreign_steps(state)
    if notes:
        plan.reason = f"{plan.reason}; " + "; ".join(notes)
    plan.done = plan.next_iteration >= req.num_iterations
    if plan.done:
        plan.reason += f"; every requested iteration (--num_iterations {req.num_iterations}) is already complete"

    plan.models = {a.iteration: a.name for a in iters if a.iteration < plan.next_iteration}
    used = {plan.weights_from, plan.state_from} - {None}
    for a in shadowed:
        plan.skipped.append(Skip(a.name, SHADOWED, "iter_0 is the same iteration, and verified"))
    for a in sorted((a for a in inventory if not a.usable), key=Artifact.sort_key):
        plan.skipped.append(Skip(a.name, a.state, a.why))
    if plan.done:
        return plan  # nothing will be written, so nothing is renamed

    taken = set(existing)

    def aside(a: Artifact, suffix: str, why: str) -> None:
        to, n = f"{a.name}.{suffix}", 1
        while to in taken:
            to, n = f"{a.name}.{suffix}.{n}", n + 1
        taken.add(to)
        plan.renames.append(Rename(a.name, to, why))

    for a in sorted((a for a in inventory if not a.usable), key=Artifact.sort_key):
        aside(a, aside_suffix(a.state), f"{a.state}: {a.why}")
    later = [
        a for a in inventory
        if a.usable and a.name not in used and a not in shadowed
        and ((a.kind == ITERATION and a.iteration >= plan.next_iteration)
             or (a.kind == CHECKPOINT and a.global_step > plan.next_step))
    ]
    for a in sorted(later, key=Artifact.sort_key):
        aside(a, aside_suffix(SUPERSEDED, stamp), f"later than the starting point (iteration {plan.next_iteration}, "
                                        f"step {plan.next_step})")
    if later:
        plan.branch = True
        plan.warnings.append(
            f"trained progress newer than the chosen starting point will not be used: {_listing(later)} "
            "will be renamed aside (superseded), not deleted")
    # Every iteration model this run may load (to train from, or to generate with) needs a config.json
    loaded = {plan.weights_from, *plan.models.values()}
    plan.create_config = [a.name for a in sorted(inventory, key=Artifact.sort_key)
                          if a.name in loaded and a.usable and a.needs_config]
    return plan


# Engines whose per-rank shards load on another number of processes (torch.distributed.checkpoint
# reshards FSDP's sharded state dicts); DeepSpeed ZeRO shards do once converted.
RESHARDABLE = {"fsdp"}


def _needs_conversion(state: Artifact | None, req: Request) -> bool:
    """Whether the plan's checkpoint holds shards that this many processes load only once converted
    (DeepSpeed ZeRO: runtime/universal.py; what the conversion cannot do, it refuses there)."""
    if state is None or state.engine is None or state.engine in RESHARDABLE or state.world_size is None:
        return False
    return state.world_size != req.world_size


def _rng_note(state: Artifact | None, req: Request) -> str | None:
    """What a checkpoint written by another number of processes does to the ranks' random state."""
    if state is None or state.world_size is None or state.world_size == req.world_size:
        return None
    was, now = state.world_size, req.world_size
    ranks = (lambda a, b: f"rank {a}" if a == b else f"ranks {a}-{b}")
    what = (f"the RNG state of {ranks(now, was - 1)} is not used" if now < was else
            f"{ranks(was, now - 1)} {'derives its' if now - was == 1 else 'derive their'} RNG state from the seed, "
            "the rank and the step")
    return (f"{state.name} was written by {processes(was)} and this run has {now}: {what}, so random draws "
            "(dropout) differ from an uninterrupted run's (docs/scaling.md)")


def _check_foreign_steps(state: Artifact | None) -> None:
    """A checkpoint we did not write is resumed at the step its own trainer_state.json counts. If
    that is not the step --max_steps places it at, its step counter, data position and LR schedule
    belong to a run of another shape: continuing it would not be that iteration's training."""
    if state is None or state.run_step is None or state.run_step == state.local_step:
        return
    run = f" of a {state.run_steps}-step run" if state.run_steps else ""
    raise PlanError(
        f"{state.name} is a plain HF checkpoint at step {state.run_step}{run} (its trainer_state.json), but "
        f"--max_steps {state.iteration_steps} places it at step {state.local_step} of iteration {state.iteration}: "
        f"pass the --max_steps of the run that wrote it ({state.run_steps or 'its max_steps'}) to continue it as "
        "iteration 0, or --resume_from none to leave it out")


def _strategy(ckpt: Artifact | None, it: Artifact | None, ckpts: list[Artifact], req: Request) -> Plan:
    if ckpt is None and it is None:
        return Plan(SCRATCH, None, None, 0, 0, "no checkpoint or iteration model selected: starting from scratch")
    if it is None:
        return _trainer(ckpt, "only a trainer checkpoint selected: resuming its full training state")
    if ckpt is None:
        return Plan(ITERATION_STRATEGY, it.name, None, it.iteration + 1, it.global_step,
                    f"only an iteration model selected: weights from {it.name}, fresh training state")
    both_auto = req.resume_from.mode == AUTO and req.resume_from_iteration.mode == AUTO
    if both_auto:
        return _auto_both(ckpt, it, ckpts, req)
    plan = Plan(BOTH, it.name, ckpt.name, it.iteration + 1, ckpt.global_step,
                f"both selected: weights from {it.name}, training state from {ckpt.name}")
    if not (ckpt.iteration == it.iteration and ckpt.is_last_step):
        if ckpt.engine is not None:
            raise PlanError(f"{ckpt.name} holds {ckpt.engine} state, whose resume loads the module weights saved "
                            f"with it: it can only be combined with the iteration model of the same step "
                            f"({ckpt.name} is step {ckpt.local_step} of iteration {ckpt.iteration}, {it.name} "
                            f"ends iteration {it.iteration}); choose one of the two")
        plan.warnings.append(
            f"{ckpt.name} is not the last step of iteration {it.iteration} (it was saved at step "
            f"{ckpt.local_step} of iteration {ckpt.iteration}): the uninterrupted run did not combine these")
    if not req.carry_optimizer_state:
        plan.warnings.append("without --carry_optimizer_state the uninterrupted run starts each iteration "
                             "with a fresh optimizer; this run carries the checkpoint's state instead")
    return plan


def _trainer(ckpt: Artifact, reason: str) -> Plan:
    plan = Plan(TRAINER, ckpt.name, ckpt.name, ckpt.iteration, ckpt.global_step, reason)
    if ckpt.is_last_step:
        plan.training_finished = True
        plan.reason += f" ({ckpt.name} is iteration {ckpt.iteration}'s last step: evaluate and save only)"
    return plan


def _auto_both(ckpt: Artifact, it: Artifact, ckpts: list[Artifact], req: Request) -> Plan:
    j, k = ckpt.iteration, it.iteration
    if j > k:
        return _trainer(ckpt, f"{ckpt.name} was saved while training iteration {j}, after {it.name}: its "
                              f"weights are newer than {it.name}'s, so it is resumed in full")
    if req.carry_optimizer_state:
        last = [c for c in ckpts if c.iteration == k and c.global_step == it.global_step and c.is_last_step]
        if last:
            c = last[0]
            return Plan(BOTH, it.name, c.name, k + 1, c.global_step,
                        f"--carry_optimizer_state: weights from {it.name} with the optimizer state of "
                        f"{c.name}, iteration {k}'s last step, as the uninterrupted run starts iteration {k + 1}")
        plan = Plan(ITERATION_STRATEGY, it.name, None, k + 1, it.global_step,
                    f"weights from {it.name}; the checkpoint of iteration {k}'s last step is not available")
        plan.warnings.append(f"--carry_optimizer_state is set but no complete checkpoint of iteration {k}'s "
                             f"last step (checkpoint-{it.global_step}) exists: starting a fresh optimizer")
        return plan
    return Plan(ITERATION_STRATEGY, it.name, None, k + 1, it.global_step,
                f"{ckpt.name} belongs to iteration {j}, which {it.name} already finished, and each iteration "
                f"starts a fresh optimizer (no --carry_optimizer_state): weights from {it.name}, "
                f"fresh training state")
