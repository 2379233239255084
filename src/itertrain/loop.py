"""The iteration loop: for each iteration, generate -> verify and select -> train -> evaluate ->
save iter_K.

Every iteration starts through the same function whether the run is fresh, uninterrupted or
resumed, so an uninterrupted run and a resumed one take the same code path to the same bytes.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from dataclasses import dataclass

import torch

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerState
from transformers.trainer_callback import ExportableState

from itertrain import adapters, commit, curve, dist, engines, failpoints, inventory, manifest, objectives, \
    progress, samples, stop, trackers
from itertrain.artifacts import ITERATION, checkpoint_name, iteration_name
from itertrain.config import Config, UsageError, resolved
from itertrain.evaluate import greedy_accuracy
from itertrain.handoff import Handoff
from itertrain.plan import BOTH, TRAINER, Plan
from itertrain.restore import RecoveryError
from itertrain.tasks import Task, TaskError

METRICS = "metrics.jsonl"


@dataclass
class Start:
    """Where one iteration's training starts."""

    iteration: int
    weights: str  # directory to load the model from
    resume: str | None  # directory given to trainer.train(resume_from_checkpoint=...)
    step_offset: int  # global step before this iteration's first step
    started_from: str  # provenance recorded in manifests
    curve: dict | None = None  # per-step loss / lr so far (trainer strategy: from the checkpoint)
    training_finished: bool = False
    engine_weights: str | None = None  # a checkpoint whose weights only the engine reads (FSDP shards)
    view_of: tuple[str, str] | None = None  # (iteration model, checkpoint) for a "both" view
    done_steps: int = 0  # steps of this iteration already trained (resuming a checkpoint inside it)

    def describe(self, k: int, steps: int, examples: int, objective: str = "sft") -> str:
        """The progress line: what this iteration trains from and the global steps it will run."""
        end = self.step_offset + steps
        if self.training_finished:
            return f"▶️  iteration {k}: {self.resume_name} already trained all {steps} steps (global step {end}): " \
                   "evaluating and saving"
        first = self.step_offset + self.done_steps + 1
        resumed = f", resuming {self.resume_name}" if self.resume_name else ""
        what = f"{examples} examples" if objective == "sft" else f"{examples} pairs ({objective})"
        return (f"▶️  iteration {k}: training on {what} from {self.started_from}{resumed}, "
                f"global steps {first}-{end}")

    @property
    def resume_name(self) -> str | None:
        where = self.resume or self.engine_weights
        return os.path.basename(where) if where else None


def model_before(cfg: Config, models: dict[int, str], base_dir: str, k: int) -> tuple[str, str]:
    """model_K, which generates iteration K's samples and which iteration K trains from (with
    --train_from previous), and its name: the base for K=0, else iteration K-1's model as the plan
    found it (iter_{K-1}, or an adopted model such as the seed's base_model) or as this run wrote it."""
    if k == 0:
        return base_dir, "base"
    name = models.get(k - 1, iteration_name(k - 1))
    return os.path.join(cfg.output_dir, name), name


def first_start(cfg: Config, plan: Plan, base_dir: str, steps: int) -> Start:
    out = cfg.output_dir
    if plan.strategy == TRAINER:
        ckpt = os.path.join(out, plan.state_from)
        m = manifest.read(ckpt) if manifest.exists(ckpt) else {}
        local = m.get("local_step", plan.next_step - plan.next_iteration * steps)
        # a checkpoint we did not write records no provenance: it trained from what ours would have
        origin = "base" if cfg.it.train_from == "base" else model_before(cfg, plan.models, base_dir, plan.next_iteration)[1]
        # FSDP's SHARDED_STATE_DICT checkpoints hold no HF model: the model is built from the base
        # and FSDP's loader puts the checkpoint's weights in
        sharded = engines.fsdp_shards_only(ckpt)
        return Start(plan.next_iteration, base_dir if sharded else ckpt, ckpt, plan.next_step - local,
                     m.get("started_from") or origin, curve=curve.read(ckpt),
                     training_finished=plan.training_finished, engine_weights=ckpt if sharded else None,
                     done_steps=local)
    if plan.strategy == BOTH:
        return Start(plan.next_iteration, os.path.join(out, plan.weights_from), None, plan.next_step,
                     plan.weights_from, view_of=(plan.weights_from, plan.state_from))
    if plan.weights_from:  # iteration
        return Start(plan.next_iteration, os.path.join(out, plan.weights_from), None, plan.next_step, plan.weights_from)
    return Start(0, base_dir, None, 0, "base")


def next_start(cfg: Config, done: int, global_step: int) -> Start:
    """Iteration done+1 of an uninterrupted run: the same starts a resume would make."""
    prev = iteration_name(done)
    weights = os.path.join(cfg.output_dir, prev)
    if cfg.it.carry_optimizer_state:
        return Start(done + 1, weights, None, global_step, prev, view_of=(prev, checkpoint_name(global_step)))
    return Start(done + 1, weights, None, global_step, prev)


def both_view(cfg: Config, start: Start, trainer, steps: int) -> str:
    """A checkpoint directory that HF's own resume path reads as: weights and config from the
    iteration model, optimizer/scheduler/RNG from the checkpoint, and a fresh trainer state (step 0
    of the new iteration). Symlinks; built by rank 0 in staging."""
    it_name, ckpt_name = start.view_of

    def build() -> str:
        view = commit.fresh_staging(cfg.output_dir, "resume-view")
        it_dir, ck_dir = os.path.join(cfg.output_dir, it_name), os.path.join(cfg.output_dir, ckpt_name)
        for f in os.listdir(it_dir):
            if f.startswith("model") or f == "config.json":
                os.symlink(os.path.abspath(os.path.join(it_dir, f)), os.path.join(view, f))
        for f in os.listdir(ck_dir):
            # + the sharding engines' own state (DeepSpeed: latest, global_step*/; FSDP: optimizer_0/
            # or optimizer.bin, pytorch_model_fsdp_0/ or .bin), which their resume reads with the module
            # weights it holds: the same as the iteration model's at the iteration's last step, the
            # only pair plan.py lets them combine
            if f in ("scheduler.pt", "scaler.pt", "latest") or f.startswith(
                    ("rng_state", "global_step", "optimizer", "pytorch_model_fsdp")):
                os.symlink(os.path.abspath(os.path.join(ck_dir, f)), os.path.join(view, f))
        callbacks = trainer.callback_handler.callbacks + [trainer.control]
        state = TrainerState(train_batch_size=trainer.args.train_batch_size,
                             stateful_callbacks=[cb for cb in callbacks if isinstance(cb, ExportableState)])
        state.compute_steps(trainer.args, steps)
        state.save_to_json(os.path.join(view, "trainer_state.json"))
        return view

    return dist.on_main(build)


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
    try:
        return adapters.training_model(cfg.peft, start.weights, frozen, seed=cfg.train.seed, iteration=k, load=load)
    except adapters.AdapterError as e:
        raise RecoveryError(str(e)) from None


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


def run_iterations(cfg: Config, plan: Plan, base_dir: str, tokenizer_dir: str, task: Task,
                   peft: dict | None = None) -> None:
    """`peft`: the adapter record (adapters.record) of a --use_peft run, kept in every manifest."""
    from itertrain.async_save import Saver

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    load = functools.partial(load_model, device=cfg.train.device)  # generate on the GPU where there is one
    kept: dict[int, list] = {}
    handoff = Handoff()  # iter_K's model, in memory, for iteration K+1 (no read back)
    rows = metrics_rows(cfg.output_dir, cfg.iteration_steps(dist.world_size())) if dist.is_main() else None
    saver = Saver()  # pinned host buffers (on a GPU) are slow to allocate: once per run, not per iteration
    protect = {plan.weights_from, plan.state_from} - {None}
    start = first_start(cfg, plan, base_dir, cfg.iteration_steps(dist.world_size()))
    opened = []  # rank 0's trackers stay on rank 0; a failure to open them stops every rank
    dist.on_main(lambda: opened.append(open_trackers(cfg, plan, start.curve, start.step_offset)))
    tracking = opened[0] if opened else None
    at = stop.Place(plan.next_iteration, plan.next_step, plan.state_from or plan.weights_from or "nothing yet")
    if dist.is_main():
        progress.start(cfg.output_dir, cfg.it.num_iterations)
    outcome = "failed"
    try:
        for k in range(plan.next_iteration, cfg.it.num_iterations):
            began = time.monotonic()
            at.iteration, at.global_step = k, start.step_offset + start.done_steps
            progress.note(True, iteration=k, phase="generate", global_step=at.global_step)
            failpoints.send_signal("iteration", k)
            at.check("generate")
            # 1-2. generate with model_K (the base for K=0, else iter_{K-1}), verify and select
            for j in range(k):  # earlier iterations' selections, as committed (made again only if broken)
                if cfg.it.reuse_previous and j not in kept:
                    kept[j] = samples.earlier(cfg, j, *model_before(cfg, plan.models, base_dir, j), task, tokenizer,
                                              load, at)
            model_k, source = model_before(cfg, plan.models, base_dir, k)
            found = samples.ensure(cfg, k, model_k, source, task, tokenizer, handoff.loader(load), at,
                                   in_memory=handoff.path)
            kept[k] = found.kept
            objective = objectives.for_iteration(cfg, k)
            train_set = objective.train_set(cfg, k, kept, task, tokenizer)
            if cfg.train.dataloader_drop_last and train_set.size < cfg.train.per_device_train_batch_size * dist.world_size():
                raise TaskError(f"iteration {k} has {train_set.size} training examples, less than one batch across the "
                                "ranks, and --dataloader_drop_last drops it: nothing would be trained")
            steps = cfg.iteration_steps(dist.world_size(), train_set.size)
            # 3. train
            if cfg.it.train_from == "base" and start.resume is None and start.view_of is None:
                start.weights, start.started_from = base_dir, "base"
            dist.log0(start.describe(k, steps, train_set.size, objective.name))
            progress.note(True, phase="train", done=start.done_steps, total=steps, unit="steps")
            targs = copy.deepcopy(cfg.train)
            targs.output_dir = commit.staging_path(cfg.output_dir, "trainer")
            targs.max_steps, targs.save_total_limit = steps, None
            targs.report_to = [r for r in targs.report_to if r not in trackers.KINDS]  # ours: trackers/
            targs.enable_jit_checkpoint = False  # HF's SIGTERM handler: ours (stop.py) stops every phase
            engines.before_trainer(targs)
            frozen = adapters.frozen_model(cfg.peft, base_dir, model_k, cfg.it.train_from) if peft else None
            reference = dist.on_main(objective.reference, cfg, plan.models, base_dir, k)
            records = {**({"peft": peft} if peft else {}), **({"objective": reference} if reference else {})}
            trainer = objective.trainer(
                model=training_model(cfg, start, frozen, k, handoff), args=targs, tokenizer=tokenizer, train_set=train_set,
                reference=reference, load=load,
                experiment_dir=cfg.output_dir, iteration=k, step_offset=start.step_offset, iteration_steps=steps,
                started_from=start.started_from, save_total_limit=cfg.train.save_total_limit, protect=protect,
                schedule_steps=steps * cfg.it.num_iterations if cfg.it.carry_optimizer_state else None,
                curve=start.curve, trackers=tracking, async_save=cfg.it.async_save, weights_from=start.weights, saver=saver,
                manifest_extra=records,
            )
            if not start.training_finished:
                resume = both_view(cfg, start, trainer, steps) if start.view_of else start.resume
                trainer.train(resume_from_checkpoint=resume)
            elif start.engine_weights:  # nothing left to train, so the engine's loader never ran
                engines.load_fsdp_weights(trainer.model, start.engine_weights)
            finished_training(trainer, start, k, steps, at)
            train_loss = trainer.mean_loss()
            # 4. evaluate (rank 0; a stop request abandons it, and the resume evaluates again)
            trained = engines.trained_model(trainer)  # every rank takes part; an ordinary model on rank 0
            adapter = commit.staging_path(cfg.output_dir, adapters.ADAPTER_DIR) if peft else None
            if peft:  # what is evaluated and saved: the adapter merged into the frozen model's weights
                trained = adapters.finish_on_main(trained, cfg.output_dir, frozen, cfg.peft)

            progress.note(True, phase="evaluate", global_step=start.step_offset + steps)

            def evaluate():
                with samples.checker(cfg, task) as check:
                    result = greedy_accuracy(trained, tokenizer, task.eval_prompts, check,
                                             max_new_tokens=cfg.it.max_new_tokens, should_stop=stop.requested_here)
                return result, None if result is not None else stop.requested_here()

            result, stopped = dist.on_main(evaluate)
            if stopped:
                at.check("evaluate", stopped)
            accuracy, eval_problems = result
            global_step = start.step_offset + steps
            metrics = {"iteration": k, "eval_accuracy": accuracy, "acceptance_rate": found.stats["acceptance_rate"],
                       "pass_at_k": found.stats["pass_at_k"], "num_generated": found.stats["num_generated"],
                       "num_train_samples": train_set.size, "train_loss": train_loss, "global_step": global_step,
                       **{key: found.stats.get(key, 0) + n for key, n in eval_problems.items()},
                       **train_set.metrics, **objective.metrics(trainer)}
            dist.log0(f"✅ iteration {k}: eval_accuracy={accuracy:.3f} acceptance_rate="
                      f"{found.stats['acceptance_rate']:.3f} train_loss={train_loss:.4f} step={global_step}")
            # 5. save iter_K
            progress.note(True, phase="save", loss=train_loss)

            def save():
                extra = {"metrics": metrics, "seconds": round(time.monotonic() - began, 3), **records}
                save_iteration(cfg, k, trainer, trained, tokenizer, global_step, start.started_from, extra, steps, adapter,
                               rows)
                if tracking is not None:
                    tracking.iteration(metrics)
                    if k + 1 == cfg.it.num_iterations and cfg.it.tracker_log_model:
                        tracking.final_model(os.path.join(cfg.output_dir, iteration_name(k)), metrics)

            dist.on_main(save)
            handoff.keep(os.path.join(cfg.output_dir, iteration_name(k)), trainer)
            at.committed = iteration_name(k)
            if k + 1 < cfg.it.num_iterations:  # after the last iteration there is nothing left to stop
                at.check("save")
            start = next_start(cfg, k, global_step)
        outcome = "finished"
    except stop.Stopped:
        outcome = "stopped"
        raise
    finally:
        if tracking is not None:
            tracking.close(outcome)
    progress.finish()


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
    try:
        return trackers.open_all(cfg.output_dir, cfg.train.report_to, history, plan.branch, resolved(cfg),
                                 cfg.train.run_name or os.path.basename(os.path.abspath(cfg.output_dir)))
    except trackers.TrackerError as e:
        raise RecoveryError(str(e)) from None
