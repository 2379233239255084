"""One run of an experiment: check the inputs, claim the directory, plan, show the banner, (dry run:
print the plan and stop), prepare (base model, renames, settings), run the iterations."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import socket
import time
import warnings

from rich.console import Console
from rich.table import Table

from itertrain.app import mirroring, settings
from itertrain.app.config import Config, UsageError, resolved
from itertrain.app.loop import METRICS, metrics_rows, write_metrics
from itertrain.core import banner, commit, elastic, failpoints, lock, manifest
from itertrain.core.names import CORRUPT, SUPERSEDED
from itertrain.core.plan import SCRATCH
from itertrain.phases import samples
from itertrain.runtime import dist, engines, stop
from itertrain.runtime.restore import RecoveryError, apply, check_generator, resolve
from itertrain.tasks import load_task, tinymodel
from itertrain.training import adapters, objectives
from itertrain.training.flags import flag_words

BASE = "base"  # the built-in base model's directory under --output_dir


def ensure_base(cfg: Config) -> str:
    """--model_name, or the built-in tiny base model (written once, committed like any artifact)."""
    if cfg.it.model_name:
        return cfg.it.model_name
    return dist.on_main(_write_base, cfg.output_dir, cfg.train.seed)


def _write_base(output_dir: str, seed: int) -> str:
    base = os.path.join(output_dir, BASE)
    if problem := _base_problem(base, seed):
        if os.path.lexists(base):
            why = SUPERSEDED if problem == "other seed" else CORRUPT
            dist.log0(f"⏭️  {BASE}: {problem}: renamed to {commit.set_aside(output_dir, BASE, why)}")
        staged = commit.fresh_staging(output_dir, BASE)
        tinymodel.write_base(staged, seed)
        commit.commit_dir(staged, base, failpoint=("base.write", 0), kind="base", name=BASE,
                          iteration=0, global_step=0, extra={"seed": seed})
    return base


SHARED_CHECK = ".itertrain.shared-check"


def check_shared(output_dir: str) -> None:
    """Several processes (several nodes, perhaps): every rank must see what rank 0 writes in the
    experiment directory, or they would plan, load and commit from different directories."""
    if dist.world_size() == 1:
        return
    token = dist.on_main(lambda: f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}")
    if dist.is_main():
        commit.atomic_write_bytes(os.path.join(output_dir, SHARED_CHECK), token.encode())
    dist.barrier()
    try:
        with open(os.path.join(output_dir, SHARED_CHECK), encoding="utf-8") as f:
            seen = f.read() == token and failpoints.on_this_rank("view.hide") != SHARED_CHECK
    except OSError:
        seen = False
    blind = [f"rank {r} on {host}" for r, (host, ok) in enumerate(dist.gather((socket.gethostname(), seen))) if not ok]
    if blind:
        raise RecoveryError(f"--output_dir {output_dir} must be one directory shared by every node (a shared "
                            f"file system): {', '.join(blind)} cannot see what rank 0 wrote there")


def _base_problem(path: str, seed: int) -> str | None:
    """Why the built-in base at `path` cannot be used (missing, broken, made from another --seed)."""
    if not os.path.lexists(path):
        return "missing"
    if problem := manifest.problem(path):
        return problem
    return None if manifest.read(path).get("extra", {}).get("seed") == seed else "other seed"


def quiet_library_noise() -> None:
    """HF's per-file load/save progress bars and torch's pin_memory-without-GPU warning say nothing
    useful here; the Trainer's own progress bar stays (--disable_tqdm controls it)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*")  # peft's call of it


def run_experiment(cfg: Config) -> int:
    """Start-up, as its steps, then the iterations; returns the exit code."""
    quiet_library_noise()
    task = check_inputs(cfg)
    cfg = fit_batch(cfg)
    if cfg.mirror.mirror_to:
        dist.on_main(mirroring.open_store, cfg)
    held = None if cfg.it.dry_run else claim_directory(cfg.output_dir)  # noqa: F841 (the lock, for this run)
    mirroring.begin(cfg)
    steps = cfg.iteration_steps(dist.world_size())
    inv, plan = decide(cfg, steps)
    dist.log0(banner.render(cfg.output_dir, inv, plan,
                            cfg.it.model_name or f"built-in tiny model ({cfg.output_dir}/{BASE})"))
    if cfg.carried:
        dist.log0("⚙️  settings from the experiment's record: " + " ".join(flag_words(cfg.carried)))
    if cfg.peft.use_peft:
        dist.log0(adapters.describe(cfg.peft))
    if cfg.it.dry_run:
        dist.log0(json.dumps(plan.to_json()))
        return 0
    base, peft = (None, None) if plan.done else prepare(cfg, plan, steps)
    dist.on_main(write_metrics, cfg.output_dir, steps)  # derived: a crash or a rename may have left it behind
    mirroring.sync(plan, (settings.SAVED_CONFIG, METRICS))
    if plan.done:
        dist.log0("✅ every requested iteration is already complete: nothing to do")
        from itertrain.app.loop import settle_trackers

        dist.on_main(settle_trackers, cfg, plan)
        return 0
    from itertrain.app.loop import run_iterations

    freeze_imports()
    run_iterations(cfg, plan, base, base, task, peft)
    if dist.is_main():
        show_metrics(metrics_rows(cfg.output_dir, steps))
    return 0


def freeze_imports() -> None:
    """Keep the collector off what start-up made: the imports' objects, alive for the whole run, which
    every full collection walked (HF's Trainer asks for two per train; BENCHMARKS.md has the cost).
    cli.train_command turns the collector off before the imports (their garbage is frozen with them)
    and undoes the freeze when the run ends. Called before any model is loaded, so nothing the run
    drops later is kept.
    """
    import transformers.trainer  # noqa: F401  (the training imports too, before the freeze)

    gc.freeze()
    gc.enable()


def check_inputs(cfg: Config):
    """Everything that can be refused without writing: the task, the generation backend, the engine."""
    task = load_task(cfg.it, cfg.train.seed, tokenizer=_chat_tokenizer(cfg))
    samples.checker(cfg, task).require_sendable()
    if cfg.it.generation_backend == "vllm":
        from itertrain.phases import vllm_backend

        vllm_backend.require(cfg.it.vllm_python, cfg.it.model_name)
    engines.require(cfg.train)
    return task


def fit_batch(cfg: Config) -> Config:
    """The batch this run trains with: the experiment's global batch kept on this number of processes
    (core/elastic.py), or refused in one line. Decided by rank 0 and raised on every rank together:
    a rank that left alone while another still joined the process group failed it (gloo)."""
    t, world = cfg.train, dist.world_size()

    def decide():
        given = {"output_dir": cfg.output_dir, "resume_from": cfg.it.resume_from,
                 "resume_from_iteration": cfg.it.resume_from_iteration, "mirror_to": cfg.mirror.mirror_to}
        target = settings.batch_target(settings.recorded(given), t.per_device_train_batch_size,
                                       t.gradient_accumulation_steps, world)
        batch, note = elastic.decide(*target, world, t.per_device_train_batch_size, t.gradient_accumulation_steps,
                                     t.elastic_batch)
        if (batch.per_device, batch.accumulation) != (t.per_device_train_batch_size, t.gradient_accumulation_steps):
            fitted = copy.copy(t)  # what the objective checked at parse time, again with the batch kept
            fitted.per_device_train_batch_size, fitted.gradient_accumulation_steps = batch.per_device, batch.accumulation
            objectives.validate(cfg.obj, fitted, cfg.objective_args, cfg.it)
        return batch, note

    batch, note = dist.on_main(decide)
    return dataclasses.replace(cfg, batch=batch, batch_note=note)


def _chat_tokenizer(cfg: Config):
    """The tokenizer whose chat template formats the prompts (the built-in one has none)."""
    if cfg.it.chat_template == "none" or not cfg.it.model_name:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(cfg.it.model_name)
    except (OSError, ValueError) as e:
        raise UsageError(f"--model_name {cfg.it.model_name}: cannot load its tokenizer: "
                         f"{str(e).strip().splitlines()[0]}") from None


def claim_directory(out: str):
    """Create --output_dir, take its lock, drop what a dead run staged; returns the lock (rank 0's),
    held while the caller keeps it (the kernel drops it if the process dies)."""
    failpoints.install_file_events(out)
    held = []

    def claim() -> None:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--output_dir {out}: cannot create it ({e.strerror})") from None
        if not os.access(out, os.W_OK):
            raise UsageError(f"--output_dir {out}: not writable")
        held.append(lock.acquire(out))
        commit.clear_staging(out)
        stop.clear(out)  # the record says how the last run ended: this one has not

    dist.on_main(claim)
    check_shared(out)
    return held[0] if held else None


def decide(cfg: Config, steps: int):
    """Inventory and plan (rank 0's, given to every rank), with the warnings a user must see."""
    inv, plan = resolve(cfg, steps, fetch=mirroring.fetcher(cfg, BASE))

    def warn():
        record = settings.saved(cfg.output_dir)
        if plan.strategy != SCRATCH and record and "given" not in record:
            plan.warnings.append("the experiment's record does not list the flags it was given (an itertrain before "
                                 "it kept them): nothing is taken from it; this run has the flags given here")
        if plan.strategy != SCRATCH and (changed := settings_changes(cfg)):
            plan.warnings.append("resuming with other settings than the experiment was started with: "
                                 + "; ".join(changed))
        plan.warnings.extend(engines.notes(cfg.train))
        if cfg.batch_note:
            plan.warnings.append(cfg.batch_note)
        return plan

    return inv, dist.on_main(warn)


def prepare(cfg: Config, plan, steps: int) -> tuple[str, dict | None]:
    """Carry the plan out on disk (base model, renames) and record the settings; returns the base
    and, for a --use_peft run, its adapter record."""
    check_generator(cfg, plan)
    if plan.convert:  # refused in one line, before anything is written, where it cannot be done
        from itertrain.runtime import universal

        dist.on_main(universal.convert, cfg.output_dir, plan.convert, dist.world_size(), log=dist.log0)
    if plan.strategy == SCRATCH and not plan.renames:
        # A fresh directory: the record goes before the first artifact, so that a run killed from here on
        # is resumed by the short command with these settings. (Over an older experiment it follows
        # the renames below: until they are done, the record is the older experiment's.)
        dist.on_main(save_settings, cfg, steps, scratch=True)
    base = ensure_base(cfg)
    peft = check_adapter(cfg, plan, base)
    check_objective(cfg, plan, base)
    apply(cfg, plan, base)
    dist.on_main(save_settings, cfg, steps, scratch=plan.strategy == SCRATCH)
    return base, peft


def check_adapter(cfg: Config, plan, base: str) -> dict | None:
    """The adapter record of a --use_peft run (None without), once the plan's start suits it."""
    def check():
        now = adapters.record(cfg.peft, base) if cfg.peft.use_peft else None
        adapters.check_start(cfg.output_dir, plan, cfg.peft, now, cfg.it.train_from)
        return now

    return dist.on_main(check)


def check_objective(cfg: Config, plan, base: str) -> None:
    """The plan's start suits this run's objective and reference (objectives.check_start)."""
    from itertrain.training import objectives

    dist.on_main(objectives.check_start, cfg, plan, base)


def settings_changes(cfg: Config) -> list[str]:
    started = settings.saved(cfg.output_dir)
    if "started_with" not in started:
        return []
    return settings.differences(started["started_with"], _settings_now(cfg))


def _settings_now(cfg: Config) -> dict:
    return {**resolved(cfg), "world_size": dist.world_size()}


def save_settings(cfg: Config, steps: int, scratch: bool) -> None:
    """The resolved configuration (this run's, and the one the experiment was started with), for
    `itertrain status` and for comparing later resumes."""
    now = _settings_now(cfg)
    old = {} if scratch else settings.saved(cfg.output_dir)
    record = {"num_iterations": cfg.it.num_iterations, "iteration_steps": steps,
              "carry_optimizer_state": cfg.it.carry_optimizer_state, "model_name": cfg.it.model_name,
              "world_size": dist.world_size(), "args": now, "given": cfg.given,
              **({"batch": cfg.batch.to_json()} if cfg.batch else {}),
              "started_with": old.get("started_with", now)}
    commit.atomic_write_json(os.path.join(cfg.output_dir, settings.SAVED_CONFIG), record)


def show_metrics(rows: list[dict]) -> None:
    table = Table(title="itertrain: per-iteration results")
    cols = {"iteration": "iter", "eval_accuracy": "eval acc", "acceptance_rate": "accepted", "pass_at_k": "pass@k",
            "num_train_samples": "train set", "train_loss": "loss", "global_step": "step"}
    for header in cols.values():
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(*(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))
    Console().print(table)
