"""The iteration loop: for each iteration, generate -> select -> train -> evaluate -> save iter_K.

Each phase is a function of the run (Run: what every iteration shares) and the iteration (Iteration:
what its phases hand on). Every iteration starts through the same code whether the run is fresh,
uninterrupted or resumed (starts.py), so an uninterrupted run and a resumed one reach the same bytes.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from itertrain import trackers
from itertrain.app.config import Config, resolved
from itertrain.app.starts import Start, both_view, first_start, next_start
from itertrain.core import commit, curve, failpoints, inventory, progress
from itertrain.core.errors import RecoveryError, TaskError, UsageError
from itertrain.core.names import ITERATION, checkpoint_name, iteration_name, model_before
from itertrain.core.plan import Plan
from itertrain.phases import samples
from itertrain.phases.evaluate import greedy_accuracy
from itertrain.runtime import dist, engines, stop
from itertrain.runtime.async_save import Saver
from itertrain.runtime.handoff import Handoff
from itertrain.tasks import Task
from itertrain.training import adapters, objectives
from itertrain.training.trainer import Recovery

METRICS = "metrics.jsonl"


@dataclass
class Run:
    """What every iteration of this run shares."""

    cfg: Config
    plan: Plan
    base_dir: str
    task: Task
    peft: dict | None  # the adapter record (adapters.record) of a --use_peft run, kept in every manifest
    tokenizer: object
    load: object  # path -> a model to generate from, on this rank's device
    at: stop.Place  # where a stop request would leave the run
    tracking: object = None  # rank 0's trackers, or None
    rows: list | None = None  # the committed iterations' metrics (rank 0)
    handoff: Handoff = field(default_factory=Handoff)  # iter_K's model, in memory, for iteration K+1
    saver: Saver = field(default_factory=Saver)  # pinned host buffers are slow to allocate: once per run
    kept: dict = field(default_factory=dict)  # each iteration's selected samples, by iteration

    @property
    def protect(self) -> set[str]:
        return {self.plan.weights_from, self.plan.state_from} - {None}


@dataclass
class Iteration:
    """What one iteration's phases hand on to each other."""

    k: int
    start: Start
    began: float = field(default_factory=time.monotonic)
    model_k: str = ""  # the model that generated its samples and (train_from previous) that it trains from
    found: samples.Samples | None = None
    objective: object = None
    train_set: objectives.TrainSet | None = None
    steps: int = 0
    records: dict = field(default_factory=dict)  # what every manifest of the iteration records (peft, objective)
    frozen: str | None = None  # the frozen model under a PEFT adapter
    trainer: object = None
    trained: object = None  # the model to evaluate and save (an ordinary model on rank 0)
    adapter: str | None = None  # the adapter staged for iter_K (--use_peft)
    metrics: dict = field(default_factory=dict)

    @property
    def global_step(self) -> int:
        return self.start.step_offset + self.steps


def run_iterations(cfg: Config, plan: Plan, base_dir: str, tokenizer_dir: str, task: Task,
                   peft: dict | None = None) -> None:
    """Every iteration the plan leaves, from its start to the last."""
    load = functools.partial(load_model, device=cfg.train.device)  # generate on the GPU where there is one
    run = Run(cfg, plan, base_dir, task, peft, AutoTokenizer.from_pretrained(tokenizer_dir), load,
              stop.Place(plan.next_iteration, plan.next_step, plan.state_from or plan.weights_from or "nothing yet"))
    run.rows = metrics_rows(cfg.output_dir, cfg.iteration_steps(dist.world_size())) if dist.is_main() else None
    start = first_start(cfg, plan, base_dir, cfg.iteration_steps(dist.world_size()))
    opened = []  # rank 0's trackers stay on rank 0; a failure to open them stops every rank
    dist.on_main(lambda: opened.append(open_trackers(cfg, plan, start.curve, start.step_offset)))
    run.tracking = opened[0] if opened else None
    if dist.is_main():
        progress.start(cfg.output_dir, cfg.it.num_iterations)
    outcome = "failed"
    try:
        for k in range(plan.next_iteration, cfg.it.num_iterations):
            it = Iteration(k, start)
            generate(run, it)
            select(run, it)
            train(run, it)
            evaluate(run, it)
            save(run, it)
            start = next_start(cfg, k, it.global_step)
        outcome = "finished"
    except stop.Stopped:
        outcome = "stopped"
        raise
    finally:
        if run.tracking is not None:
            run.tracking.close(outcome)
    progress.finish()


def generate(run: Run, it: Iteration) -> None:
    """Samples of model_K (the base for K=0, else iter_{K-1}), verified: committed, or made now (none
    for an objective that samples while it trains)."""
    cfg, k = run.cfg, it.k
    run.at.iteration, run.at.global_step = k, it.start.step_offset + it.start.done_steps
    progress.note(True, iteration=k, phase="generate", global_step=run.at.global_step)
    failpoints.send_signal("iteration", k)
    run.at.check("generate")
    it.objective = objectives.for_iteration(cfg, k)
    it.model_k, source = model_before(cfg.output_dir, run.plan.models, run.base_dir, k)
    if not it.objective.generates:  # it samples while it trains
        return
    for j in range(k):  # earlier iterations' selections, as committed (made again only if broken)
        if cfg.it.reuse_previous and j not in run.kept:
            run.kept[j] = samples.earlier(cfg, j, *model_before(cfg.output_dir, run.plan.models, run.base_dir, j),
                                          run.task, run.tokenizer, run.load, run.at)
    it.found = samples.ensure(cfg, k, it.model_k, source, run.task, run.tokenizer, run.handoff.loader(run.load),
                              run.at, in_memory=run.handoff.path)
    run.kept[k] = it.found.kept


def select(run: Run, it: Iteration) -> None:
    """The iteration's objective and its training set, and the steps it trains."""
    cfg, k = run.cfg, it.k
    it.train_set = it.objective.train_set(cfg, k, run.kept, run.task, run.tokenizer)
    if cfg.train.dataloader_drop_last and it.train_set.size < cfg.batch.size:
        raise TaskError(f"iteration {k} has {it.train_set.size} training examples, less than one global batch "
                        f"({cfg.batch.size}), and --dataloader_drop_last drops it: nothing would be trained")
    it.steps = cfg.iteration_steps(dist.world_size(), it.train_set.size)


def train(run: Run, it: Iteration) -> None:
    """The objective's Trainer, from the iteration's start, to its last step (or a stop request)."""
    cfg, k, start = run.cfg, it.k, it.start
    if cfg.it.train_from == "base" and start.resume is None and start.view_of is None:
        start.weights, start.started_from = run.base_dir, "base"
    dist.log0(start.describe(k, it.steps, it.objective.describe(it.train_set.size)))
    progress.note(True, phase="train", done=start.done_steps, total=it.steps, unit="steps")
    it.trainer = build_trainer(run, it)
    if not start.training_finished:
        resume = both_view(cfg, start, it.trainer, it.steps) if start.view_of else start.resume
        it.trainer.train(resume_from_checkpoint=resume)
    elif start.engine_weights:  # nothing left to train, so the engine's loader never ran
        engines.load_fsdp_weights(it.trainer.model, start.engine_weights)
    finished_training(it.trainer, start, k, it.steps, run.at)


def build_trainer(run: Run, it: Iteration):
    cfg, k, start = run.cfg, it.k, it.start
    targs = copy.deepcopy(cfg.train)
    targs.output_dir = commit.staging_path(cfg.output_dir, "trainer")
    targs.max_steps, targs.save_total_limit = it.steps, None
    targs.per_device_train_batch_size, targs.gradient_accumulation_steps = cfg.batch.per_device, cfg.batch.accumulation
    targs.report_to = [r for r in targs.report_to if r not in trackers.KINDS]  # ours: trackers/
    targs.enable_jit_checkpoint = False  # HF's SIGTERM handler: ours (stop.py) stops every phase
    engines.before_trainer(targs)
    if start.universal:
        from itertrain.runtime import universal

        universal.load_universal(targs)
    it.frozen = adapters.frozen_model(cfg.peft, run.base_dir, it.model_k, cfg.it.train_from) if run.peft else None
    reference = dist.on_main(it.objective.reference, cfg, run.plan.models, run.base_dir, k)
    it.records = {**({"peft": run.peft} if run.peft else {}), **({"objective": reference} if reference else {})}
    recovery = Recovery(
        experiment_dir=cfg.output_dir, iteration=k, step_offset=start.step_offset, iteration_steps=it.steps,
        started_from=start.started_from, save_total_limit=cfg.train.save_total_limit, protect=run.protect,
        schedule_steps=it.steps * cfg.it.num_iterations if cfg.it.carry_optimizer_state else None,
        curve=start.curve, trackers=run.tracking, async_save=cfg.it.async_save, weights_from=start.weights,
        saver=run.saver, manifest_extra=it.records, universal=start.universal)
    return it.objective.trainer(model=training_model(cfg, start, it.frozen, k, run.handoff), args=targs,
                                tokenizer=run.tokenizer, train_set=it.train_set, reference=reference, load=run.load,
                                recovery=recovery)


def evaluate(run: Run, it: Iteration) -> None:
    """Greedy accuracy on the held-out prompts (rank 0; a stop request abandons it, and the resume
    evaluates again), and the iteration's metrics."""
    cfg, k = run.cfg, it.k
    train_loss = it.trainer.mean_loss()
    it.trained = engines.trained_model(it.trainer)  # every rank takes part; an ordinary model on rank 0
    it.adapter = commit.staging_path(cfg.output_dir, adapters.ADAPTER_DIR) if run.peft else None
    if run.peft:  # what is evaluated and saved: the adapter merged into the frozen model's weights
        it.trained = adapters.finish_on_main(it.trained, cfg.output_dir, it.frozen, cfg.peft)
    progress.note(True, phase="evaluate", global_step=it.global_step)

    def measure():
        with samples.checker(cfg, run.task) as check:
            result = greedy_accuracy(it.trained, run.tokenizer, run.task.eval_prompts, check,
                                     max_new_tokens=cfg.it.max_new_tokens, should_stop=stop.requested_here)
        return result, None if result is not None else stop.requested_here()

    result, stopped = dist.on_main(measure)
    if stopped:
        run.at.check("evaluate", stopped)
    accuracy, eval_problems = result
    stats = it.found.stats if it.found is not None else it.objective.sample_stats(it.trainer)
    it.metrics = {"iteration": k, "objective": it.objective.name, "eval_accuracy": accuracy, "acceptance_rate": stats["acceptance_rate"],
                  "pass_at_k": stats["pass_at_k"], "num_generated": stats["num_generated"],
                  "num_train_samples": it.train_set.size, "train_loss": train_loss, "global_step": it.global_step,
                  **{key: stats.get(key, 0) + n for key, n in eval_problems.items()},
                  **it.train_set.metrics, **it.objective.iteration_metrics(it.trainer)}
    dist.log0(f"✅ iteration {k}: eval_accuracy={accuracy:.3f} acceptance_rate="
              f"{stats['acceptance_rate']:.3f} train_loss={train_loss:.4f} step={it.global_step}")


def save(run: Run, it: Iteration) -> None:
    """Commit iter_K (rank 0), tell the trackers, and keep its model for the next iteration."""
    cfg, k = run.cfg, it.k
    progress.note(True, phase="save", loss=it.metrics["train_loss"])

    def commit_iteration():
        extra = {"metrics": it.metrics, "seconds": round(time.monotonic() - it.began, 3), **it.records}
        save_iteration(cfg, k, it.trainer, it.trained, run.tokenizer, it.global_step, it.start.started_from, extra,
                       it.steps, it.adapter, run.rows)
        if run.tracking is not None:
            run.tracking.iteration(it.metrics)
            if k + 1 == cfg.it.num_iterations and cfg.it.tracker_log_model:
                run.tracking.final_model(os.path.join(cfg.output_dir, iteration_name(k)), it.metrics)

    dist.on_main(commit_iteration)
    run.handoff.keep(os.path.join(cfg.output_dir, iteration_name(k)), it.trainer)
    run.at.committed = iteration_name(k)
    if k + 1 < cfg.it.num_iterations:  # after the last iteration there is nothing left to stop
        run.at.check("save")


def load_model(path: str, *, for_training: bool = False, device=None, frozen: bool = False):
    """A causal LM from `path`. Only the model handed to the Trainer may be partitioned at load
    time (DeepSpeed ZeRO-3's zero.Init, which HF applies to every from_pretrained while ZeRO-3
    arguments exist); the models that generate and evaluate must be whole on their rank, and on
    `device` (the Trainer's: this rank's GPU, or the CPU) - the Trainer moves its own."""
    try:
        if for_training:
            # Trained on the CPU: read whole, not memory-mapped. Every weight is written by the first
            # optimizer step, and writing into a private mapping of the file faults each page in
            # then, inside the step (measured: it made a resume slower than reading the file, whose
            # weights HF then reads a second time; IterTrainer skips that second read). Reading
            # whole holds the file's bytes and the tensors at once, briefly. On an accelerator the
            # Trainer copies the weights to the device: the mapping is only read, and the ranks
            # share the page cache instead of each holding a copy of the weights in host memory.
            # A frozen model (under a PEFT adapter) is never written: mapped, its pages stay shared.
            on_cpu = device is None or torch.device(device).type == "cpu"
            return AutoModelForCausalLM.from_pretrained(path, disable_mmap=on_cpu and not frozen)
        with engines.whole_models():
            model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"cannot load a causal LM from {path}: {str(e).splitlines()[0]}") from None
    return model.to(device) if device is not None else model


def training_model(cfg: Config, start: Start, frozen: str | None, k: int, handoff: Handoff):
    """The model iteration k trains: the one the previous iteration trained, where it starts from
    its weights with a fresh optimizer; else loaded from start.weights, or with --use_peft the
    frozen model and its adapter (adapters.py)."""
    load = functools.partial(load_model, for_training=True, device=cfg.train.device, frozen=frozen is not None)
    fresh = frozen is None and start.resume is None and start.view_of is None  # weights only, no state
    model = handoff.take(start.weights)  # (taken either way: only this iteration could have used it)
    if fresh and model is not None:
        return model.train()
    if frozen is None:
        return load(start.weights)
    return adapters.training_model(cfg.peft, start.weights, frozen, seed=cfg.train.seed, iteration=k, load=load)


def metrics_rows(output_dir: str, max_steps: int) -> list[dict]:
    """Each committed iteration's metrics, from its manifest."""
    return [m["extra"]["metrics"] for m in inventory.committed_iterations(output_dir, max_steps)
            if m.get("extra", {}).get("metrics")]


def write_metrics(output_dir: str, max_steps: int, rows: list[dict] | None = None) -> None:
    """metrics.jsonl is derived from the committed iteration manifests, rewritten atomically. `rows`:
    theirs, as this run knows them (each committed iteration's, found at start or written since),
    instead of scanning the experiment again: that scan grew with every artifact kept."""
    rows = metrics_rows(output_dir, max_steps) if rows is None else rows
    commit.atomic_write_bytes(os.path.join(output_dir, METRICS),
                              "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def finished_training(trainer, start: Start, k: int, steps: int, at: stop.Place) -> None:
    """Training ended: by a stop request (exit through Stopped, its checkpoint committed), by running
    every step, or by anything else that set should_training_stop (an early-stopping callback, a
    user's callback): then the iteration is not finished and is not committed as if it were."""
    done = steps if start.training_finished else trainer.state.global_step
    at.global_step = start.step_offset + done
    if trainer.stop_reason:
        at.committed = checkpoint_name(at.global_step)
        at.check("train", trainer.stop_reason)
    if done < steps:
        raise RecoveryError(
            f"iteration {k}'s training ended after {done} of its {steps} steps without a stop request (a callback "
            f"set should_training_stop?): iter_{k} is not committed, since an iteration is finished only when its "
            "Trainer ran all its steps. Resume with --resume_from auto --resume_from_iteration auto to go on from "
            "its newest checkpoint")
    at.committed = checkpoint_name(at.global_step)  # a checkpoint is always committed at the last step
    at.check("train")


def save_iteration(cfg: Config, k: int, trainer, model, tokenizer, global_step: int, started_from: str,
                   extra: dict, steps: int, adapter: str | None = None, rows: list[dict] | None = None) -> None:
    """Rank 0: commit iter_K (weights-only model + tokenizer + its loss curve [+ the adapter staged
    in `adapter`] + manifest), then metrics.jsonl."""
    name = iteration_name(k)
    staged = commit.fresh_staging(cfg.output_dir, name)
    model.save_pretrained(staged)  # consolidated: an ordinary model directory, whatever the engine
    tokenizer.save_pretrained(staged)
    if adapter:
        os.rename(adapter, os.path.join(staged, adapters.ADAPTER_DIR))
    curve.write(staged, trainer.loss_curve, trainer.lr_curve, trainer.step_curves)
    commit.commit_dir(staged, os.path.join(cfg.output_dir, name), failpoint=("iteration.write", k),
                      kind=ITERATION, name=name, iteration=k, global_step=global_step,
                      started_from=started_from, extra=extra)
    if rows is not None:
        rows.append(extra["metrics"])
    write_metrics(cfg.output_dir, steps, rows)


def settle_trackers(cfg: Config, plan: Plan) -> None:
    """Rank 0, when every iteration is already complete: the trackers caught up and closed (a run
    killed after its last commit may not have sent them its last steps)."""
    tracking = open_trackers(cfg, plan, None, 0)
    if tracking is None:
        return
    if cfg.it.tracker_log_model and (done := curve.committed(cfg.output_dir, cfg.iteration_steps(dist.world_size()))):
        tracking.final_model(os.path.join(cfg.output_dir, iteration_name(done[-1]["iteration"])), done[-1]["metrics"])
    tracking.close("finished")


def open_trackers(cfg: Config, plan: Plan, partial: dict | None, offset: int):
    """Rank 0: the --report_to trackers, caught up with the committed history and `partial`, the
    curve of the checkpoint being resumed (None if no tracker is asked for)."""
    if not any(kind in cfg.train.report_to for kind in trackers.KINDS):
        return None
    history = [(it["offset"], it["curve"], it["metrics"])
               for it in curve.committed(cfg.output_dir, cfg.iteration_steps(dist.world_size()))
               if it["iteration"] < plan.next_iteration and it["metrics"]]
    if partial:  # resuming a checkpoint inside an iteration: its steps so far
        history.append((offset, partial, None))
    return trackers.open_all(cfg.output_dir, cfg.train.report_to, history, plan.branch, resolved(cfg),
                             cfg.train.run_name or os.path.basename(os.path.abspath(cfg.output_dir)))
