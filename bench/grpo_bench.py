"""GRPO against TRL's own GRPOTrainer (part of `make bench`; `python bench/run.py --only grpo` alone).

The built-in task and tiny Llama, after one SFT iteration (iter_0 of an itertrain run made here), GRPO
with 4 completions per prompt, 8 new tokens, a generation every 4 optimizer steps:
  grpo_step_ratio    optimizer steps per second of an iteration's GRPO training (the objective's
                     IterGRPOTrainer, built as the loop builds it: its rewards through the verifier pool,
                     its per-step values and rollout counts, a checkpoint committed every 50 steps with the
                     generation block) / TRL's GRPOTrainer on the same model, prompts, config and
                     checkpoint steps, the verifier as a plain reward function; each side in a process of
                     its own, alternated A/B B/A
  grpo_resume_ratio  a new process to the end of its first resumed step: `train_iterative.py --resume_from
                     auto --resume_from_iteration auto` of an experiment killed inside its GRPO iteration
                     / a script that resumes the same checkpoint with TRL's own
                     `trainer.train(resume_from_checkpoint=...)`; the checkpoint ends a generation block
                     (both generate at the first resumed step); alternated A/B
Recorded beside it: the same ratio from a checkpoint inside a block, where TRL generates again and
itertrain trains on the saved block.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from elastic_bench import _run  # a subprocess timed, with a failpoint, its exit status checked

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]
STEPS = 12
SAVE_STEPS = 50  # grpo_step_ratio's checkpoint interval (the demo's is 100 steps)


def flags(steps: int) -> list[str]:
    return ["--num_iterations", "2", "--max_steps", str(steps), "--save_steps", "2", "--num_gold", "256",
            "--num_prompts", "128", "--num_eval", "16", "--num_samples", "2", "--per_device_train_batch_size", "16",
            "--generation_batch_size", "64", "--disable_tqdm", "true", "--objective", "grpo", "--sft_iterations",
            "1", "--num_generations", "4", "--steps_per_generation", "4", "--async_save", "false"]


def _trainers(work: Path, steps: int, save_steps: int | None = None):
    """(ours, TRL's) as factories of a trainer of `steps` GRPO steps from iter_0 of the experiment."""
    import copy

    from trl import GRPOTrainer

    from itertrain.app import config
    from itertrain.core import commit
    from itertrain.tasks import load_task
    from itertrain.training.objectives import grpo
    from itertrain.training.trainer import Recovery
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exp = work / "exp"
    start = exp / "iter_0"
    cfg = config.parse(["--output_dir", str(exp), *flags(steps), *(["--save_steps", str(save_steps)] if save_steps else [])])
    tok = AutoTokenizer.from_pretrained(start)
    task = load_task(cfg.it, cfg.train.seed)
    args = grpo.config(cfg.train, cfg.objective_args["grpo"], cfg.it.max_new_tokens, cfg.it.temperature)

    def ours():
        objective = grpo.Grpo(cfg.objective_args["grpo"])
        data = objective.train_set(cfg, 1, {}, task, tok)
        targs = copy.deepcopy(cfg.train)
        targs.output_dir = commit.staging_path(str(exp), "trainer")
        targs.max_steps, targs.save_total_limit, targs.report_to = steps, None, []
        recovery = Recovery(experiment_dir=str(exp), iteration=1, step_offset=1000, iteration_steps=steps,
                            started_from="iter_0")
        return objective.trainer(model=AutoModelForCausalLM.from_pretrained(start), args=targs, tokenizer=tok,
                                 train_set=data, reference=objective.reference(cfg, {}, str(start), 1), load=None,
                                 recovery=recovery)

    def plain():
        from datasets import Dataset

        answers = [ex.answer for ex in task.train_prompts]
        rows = [{"prompt": ex.prompt, "index": i} for i, ex in enumerate(task.train_prompts)]

        def verifier(prompts, completions, index, **kwargs):
            return [1.0 if task.verify(task.train_prompts[i], c) else 0.0 for i, c in zip(index, completions)]

        assert answers
        args.output_dir = str(work / "plain")
        return GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(start), reward_funcs=verifier, args=args,
                           train_dataset=Dataset.from_list(rows), processing_class=tok)

    return ours, plain


def seconds_per_step(work: Path, side: str, steps: int) -> float:
    """One side's training in a process of its own (the other side's objects would weigh on its collector):
    seconds per step from the end of the first step to the end of the last."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    ours, plain = _trainers(work, steps, SAVE_STEPS)
    trainer, clock = (ours if side == "ours" else plain)(), Clock()
    trainer.add_callback(clock)
    trainer.train()
    for d in [*(p for p in (work / "exp").glob("checkpoint-*") if int(p.name.split("-")[1]) >= 1000), work / "plain"]:
        shutil.rmtree(d, ignore_errors=True)
    return (clock.ends[-1] - clock.ends[0]) / (len(clock.ends) - 1)


def step_ratio(work: Path, pairs: int, steps: int) -> dict:
    ratios, seconds = [], []
    for i in range(pairs):
        times = {}
        for side in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):  # A/B, then B/A
            out = subprocess.run([PY, __file__, "--one", side, str(work), str(steps)], cwd=REPO, capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode:
                raise RuntimeError(f"grpo_bench --one {side}: {out.stderr[-2000:]}")
            times[side] = float(out.stdout.strip().splitlines()[-1])
        ratios.append(times["plain"] / times["ours"])  # steps/s ours over steps/s TRL's
        seconds.append(times)
    return {"value": statistics.median(ratios), "pairs": ratios, "seconds": seconds,
            "how": f"steps/s from the end of the first to the end of the last of {steps} GRPO steps of an iteration "
                   f"(IterGRPOTrainer as the loop builds it, a checkpoint every {SAVE_STEPS} steps) / TRL's GRPOTrainer, same "
                   "model, prompts, config and checkpoints, each side in a process of its own, alternated A/B B/A; "
                   "the built-in 2-layer Llama, 4 completions per prompt, 8 new tokens, a generation every 4 steps"}


PLAIN_RESUME = """
import os, sys
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
sys.path.insert(0, {src!r})
from itertrain.tasks.addition import make_task
task = make_task(42, 256, 128, 16)
rows = [{{"prompt": ex.prompt, "index": i}} for i, ex in enumerate(task.train_prompts)]
def verifier(prompts, completions, index, **kwargs):
    return [1.0 if task.verify(task.train_prompts[i], c) else 0.0 for i, c in zip(index, completions)]
class Exit(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        os._exit(0)
args = GRPOConfig(output_dir={out!r}, max_steps={steps}, per_device_train_batch_size=16, learning_rate=3e-3,
                  warmup_steps=5, save_steps=2, logging_steps=50, num_generations=4, steps_per_generation=4,
                  max_completion_length=8, report_to=[], disable_tqdm=True, use_cpu=True)
trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained({model!r}), reward_funcs=verifier, args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained({model!r}),
                      callbacks=[Exit()])
trainer.train(resume_from_checkpoint={checkpoint!r})
"""


def resume_ratio(work: Path, pairs: int, at: int) -> dict:
    """Killed after global step 12 + at + 1 (checkpoint 12 + at committed), resumed to that step."""
    exp = work / f"killed-{at}"
    step = STEPS + at
    if not exp.exists():
        _run([PY, str(REPO / "train_iterative.py"), "--output_dir", str(exp), *flags(STEPS)],
             failpoint=f"train.step={step + 1}", expect=(137,))
    checkpoint = exp / f"checkpoint-{step}"
    script = work / f"plain_resume_{at}.py"
    script.write_text(PLAIN_RESUME.format(src=str(REPO / "src"), out=str(work / "plain-out"), steps=STEPS,
                                          model=str(exp / "iter_0"), checkpoint=str(checkpoint)))
    ratios, seconds = [], []
    for _ in range(pairs):
        copy = work / "resumed"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(exp, copy, symlinks=True)
        ours = _run([PY, str(REPO / "train_iterative.py"), "--output_dir", str(copy), *flags(STEPS), *AUTO],
                    failpoint=f"train.step={step + 1}", expect=(137,))
        shutil.rmtree(work / "plain-out", ignore_errors=True)
        theirs = _run([PY, str(script)])
        ratios.append(ours / theirs)
        seconds.append({"ours": ours, "trl": theirs})
    return {"value": statistics.median(ratios), "pairs": ratios, "seconds": seconds,
            "how": f"a new process to the end of its first resumed step, `train_iterative.py ... --resume_from auto "
                   f"--resume_from_iteration auto` of checkpoint-{step} (local step {at} of the GRPO iteration) / "
                   "TRL's GRPOTrainer.train(resume_from_checkpoint=) of the same checkpoint in a script"}


def figures(work: Path, quick: bool, run=None) -> dict:
    base = work / "exp"
    if not base.exists():  # iter_0 (SFT) and a GRPO iteration to build the trainers from
        _run([PY, str(REPO / "train_iterative.py"), "--output_dir", str(base), *flags(STEPS), "--num_iterations", "1"])
    pairs = 2 if quick else 4
    # a process's steps run 0.022 or 0.031 s, whichever side it is (measured): more pairs than the others
    out = {"grpo_step_ratio": step_ratio(work, 2 * pairs, 50 if quick else 100)}
    out["grpo_resume_ratio"] = resume_ratio(work, pairs, 4)  # a block ends at local step 4
    inside = resume_ratio(work, pairs, 6)  # two steps into the block that generated at local step 5
    out["grpo_resume_ratio"]["inside_block"] = {"value": inside["value"], "pairs": inside["pairs"],
                                                "how": inside["how"]}
    return out


def markdown(results: dict) -> str:
    if "grpo_step_ratio" not in results:
        return "(not measured yet: python bench/run.py --only grpo)"
    s, r = results["grpo_step_ratio"], results["grpo_resume_ratio"]
    inside = r.get("inside_block", {})
    return (f"`grpo_step_ratio` {s['value']:.3f} (median of {len(s['pairs'])} pairs, {min(s['pairs']):.2f} to "
            f"{max(s['pairs']):.2f}: one process's steps run 0.022 s and another's 0.031 s whichever side it runs; "
            f"both sides train the same steps: after 20 the weights differ by 0.0): {s['how']}. "
            f"`grpo_resume_ratio` {r['value']:.3f}: {r['how']}. "
            f"From a checkpoint inside a generation block the same ratio is {inside.get('value', float('nan')):.3f}: "
            "TRL generates the block again (with the updated policy), itertrain trains on the saved one.")


if __name__ == "__main__":
    import json
    import tempfile

    sys.path.insert(0, str(REPO / "src"))
    if sys.argv[1:2] == ["--one"]:  # one side of grpo_step_ratio
        print(seconds_per_step(Path(sys.argv[3]), sys.argv[2], int(sys.argv[4])))
        sys.exit(0)
    w = Path(tempfile.mkdtemp(prefix="itertrain-grpo-"))
    print(json.dumps(figures(w, "--quick" in sys.argv), indent=1))
    shutil.rmtree(w, ignore_errors=True)
