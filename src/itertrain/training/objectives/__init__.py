"""Training objectives: what an iteration trains on and with which Trainer.

An objective is one module here and one line in REGISTRY. Its class declares everything the rest of
the package needs to know about it, so that the loop, status, the plot and the trackers never name
an objective:

  name        the --objective value
  Arguments   a dataclass of its own flags (as TRL's DPOConfig is), parsed with the others, or None
  METRICS     the metrics it logs (Metric below): per iteration (metrics.jsonl, status, trackers,
              perhaps the plot) or per step (kept with the loss curve)
  generates   whether its iterations run the generate phase (else: sample_stats(trainer), the
              sampling statistics of what it generated while training)
  check(args, train, it)               refuse, before anything is written, what cannot run (UsageError)
  train_set(cfg, k, kept, task, tok)   iteration k's training data (TrainSet)
  reference(cfg, models, base, k)      what every manifest of the iteration records of it (or None)
  inputs(cfg, models, base, k)         the model directories it loads besides the one it trains (a
                                       resume from the mirror fetches them)
  trainer(model=..., ...)              a Trainer class with itertrain's Recovering mixin
  iteration_metrics(trainer)           its per-iteration metrics once training ended
  describe(n)                          "n examples", "n pairs (dpo)": the progress line's words

A module here imports torch, transformers or TRL only inside its methods: status and the plot read
the declarations without them. The commit protocol and the recovery rules do not know which
objective runs: a checkpoint is complete, committed and resumed the same way for all of them.

  sft  supervised fine-tuning on the accepted completions (and gold data): HF's Trainer
  dpo  DPO on (chosen, rejected) pairs from the verifier's verdicts: TRL's DPOTrainer
  grpo online RL with the verifier as the reward: TRL's GRPOTrainer

docs/objectives.md shows how to add one.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

from itertrain.core import manifest
from itertrain.core.errors import ObjectiveError, UsageError
from itertrain.core.plan import TRAINER

SFT = "sft"
REFERENCE_INITIAL, REFERENCE_PREVIOUS = "initial", "previous"

# name -> "module:class" (the module is imported when the registry is read: it must stay light)
REGISTRY = {SFT: "itertrain.training.objectives.sft:Sft", "dpo": "itertrain.training.objectives.dpo:Dpo",
            "grpo": "itertrain.training.objectives.grpo:Grpo"}


@dataclass(frozen=True)
class Metric:
    """A metric an objective logs. Per iteration: a key of metrics.jsonl and of the iteration's
    manifest, sent to the trackers as iteration/KEY (unless `tracker` is false); `status` formats it on the objective's line
    under the status table ("{} pairs"), `plot` names its line on the per-iteration panel (values
    in [0, 1]). Per step: a key of the checkpoint's curve (TRL's name), kept across a resume."""

    key: str
    per: str = "iteration"  # or "step"
    status: str | None = None
    plot: str | None = None
    tracker: bool = True  # sent to the trackers (per iteration)


@dataclass
class TrainSet:
    """What an objective's train_set gives the loop."""

    data: object  # what the trainer is given as train_dataset
    size: int  # its examples or pairs (num_train_samples)
    metrics: dict  # per-iteration metrics known before training


@dataclass
class ObjectiveArguments:
    objective: str = field(default=SFT, metadata={
        "help": "What each iteration trains with: sft (fine-tune on the accepted completions), dpo (TRL's DPO on "
                "pairs of an accepted and a rejected completion of the same prompt) or grpo (TRL's GRPO, the "
                "verifier as the reward): docs/objectives.md."})
    sft_iterations: int = field(default=0, metadata={
        "help": "With another objective than sft: the first N iterations train with sft (a model that solves some "
                "prompts, so that there is something to prefer); the later ones with the objective."})


def classes() -> dict[str, type]:
    """Every registered objective's class, by name."""
    out = {}
    for name, spec in REGISTRY.items():
        module, cls = spec.split(":")
        out[name] = getattr(importlib.import_module(module), cls)
    return out


def argument_classes() -> list[type]:
    """The flag dataclasses the objectives declare, in registry order."""
    return [c.Arguments for c in classes().values() if c.Arguments is not None]


def metrics(per: str = "iteration") -> list[Metric]:
    """Every registered objective's declared metrics of one kind, each key once."""
    seen, out = set(), []
    for c in classes().values():
        for m in c.METRICS:
            if m.per == per and m.key not in seen:
                seen.add(m.key)
                out.append(m)
    return out


def validate(args: ObjectiveArguments, train, own: dict, it=None) -> None:
    """Refuse (UsageError, one line) what cannot run, before anything is written. `own`: each
    objective's parsed Arguments, by name; `it`: the run's IterArguments."""
    if args.objective not in REGISTRY:
        raise UsageError(f"--objective {args.objective!r}: not an objective (use one of {', '.join(REGISTRY)})")
    if args.sft_iterations < 0:
        raise UsageError("--sft_iterations must be >= 0")
    classes()[args.objective].check(own.get(args.objective), train, it)
    if args.objective != SFT and args.sft_iterations > 0:
        classes()[SFT].check(own.get(SFT), train, it)


def name_for(args: ObjectiveArguments, k: int) -> str:
    """The objective iteration k trains with."""
    return SFT if args.objective == SFT or k < args.sft_iterations else args.objective


def for_iteration(cfg, k: int):
    """Iteration k's objective, made with its own Arguments."""
    name = name_for(cfg.obj, k)
    return classes()[name](cfg.objective_args.get(name))


def check_start(cfg, plan, base_dir: str) -> None:
    """Rank 0, before anything is renamed: ObjectiveError (one line naming both sides) for a start
    whose checkpoint was trained with another objective or reference, or whose iteration model was
    trained against another fixed (initial) reference."""
    k = plan.next_iteration
    objective = for_iteration(cfg, k)
    now = objective.reference(cfg, plan.models, base_dir, k)
    if now is not None and now.get("reference_path") and not os.path.isdir(os.path.join(cfg.output_dir, now["reference_path"])):
        raise ObjectiveError(f"iteration {k}'s reference model {now['reference']} is not here "
                             f"({now['reference_path']}): it cannot be trained with --objective {objective.name}")
    # a checkpoint inside iteration k goes on training it; the state of a "both" start is the previous one's
    for name, checkpoint in ((plan.state_from, plan.strategy == TRAINER), (plan.weights_from, False)):
        path = os.path.join(cfg.output_dir, name) if name else None
        if not path or not manifest.exists(path):
            continue  # (an artifact we did not write records no objective)
        try:
            recorded = manifest.read(path).get("extra", {}).get("objective")
        except manifest.ManifestError:
            continue  # the plan has checked it already
        if checkpoint:
            _compare(recorded, now, name)
        elif recorded and now and recorded["objective"] == now["objective"] \
                and REFERENCE_INITIAL in (recorded["reference_mode"], now["reference_mode"]):
            _compare(recorded, now, name)


def _compare(recorded: dict | None, now: dict | None, name: str) -> None:
    was, this = (recorded or {}).get("objective", SFT), (now or {}).get("objective", SFT)
    if was != this:
        raise ObjectiveError(f"{name} was trained with --objective {was}, this run's iteration trains with "
                             f"{this}: resume with the objective (and --sft_iterations) it was trained with")
    if recorded is None or now is None:
        return
    if (recorded["reference_digest"], recorded["reference_mode"]) != (now["reference_digest"], now["reference_mode"]):
        raise ObjectiveError(
            f"{name} was trained against the reference {recorded['reference']} ({recorded['reference_mode']}, "
            f"weights {recorded['reference_digest']}), this run's is {now['reference']} ({now['reference_mode']}, "
            f"weights {now['reference_digest']}): resume with the reference it was trained against")


def extra_options(raw: str | None, flag: str, config_cls, refused) -> dict:
    """A JSON object of options of TRL's `config_cls` (--dpo_args, --grpo_args), each parsed to its field's
    type as the command line would be. `refused(key)`: why the key may not be set there (or None)."""
    import dataclasses
    import json

    from transformers import TrainingArguments

    from itertrain.training.flags import Parser, flag_words

    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise UsageError(f"{flag}: not a JSON object ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag}: not a JSON object ({raw!r})")
    own = {f.name for f in dataclasses.fields(config_cls)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in value:
        if key not in own:
            raise UsageError(f"{flag}: {key!r} is not a {config_cls.__name__} option of its own (training arguments "
                             "are flags of their own)")
        if why := refused(key):
            raise UsageError(f"{flag}: {key!r} {why}")
    try:
        parsed = vars(Parser(config_cls).parse_args(flag_words(value)))
    except UsageError as e:
        raise UsageError(f"{flag}: {e}") from None
    return {key: None if v is None else parsed[key] for key, v in value.items()}
