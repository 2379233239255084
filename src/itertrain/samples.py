"""Iteration K's generated and selected samples: a complete-or-absent artifact `samples_K/`.

It records which model generated it (a digest of model_K's weights) and the sampling settings; a
samples_K that does not match the current model_K and settings is renamed aside and generated
again, so a branch never trains on another branch's samples. Selection and the training set are
pure functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from itertrain import commit, dist, failpoints, manifest, stop
from itertrain.tasks import Example, Task, TaskError

GENERATED, SELECTED = "generated.jsonl", "selected.jsonl"


def samples_name(k: int) -> str:
    return f"samples_{k}"


@dataclass
class Samples:
    kept: list[Example]  # (prompt, completion) pairs that passed the verifier
    stats: dict  # num_generated, num_kept, acceptance_rate, pass_at_k


class Abandoned(Exception):
    """Verification was left for a stop request; the reason is the message."""


def select(prompts: list[Example], completions: list[list[str]], verify, max_per_prompt: int,
           verifier_name: str = "verifier", should_stop=None) -> tuple[list[Example], list[list[bool]], dict]:
    """Keep correct completions, deduplicated, at most max_per_prompt per prompt. `should_stop()`
    is asked before each prompt: a stop request abandons the verdicts (they are made again)."""
    kept, verdicts, solved = [], [], 0
    for i, (ex, outs) in enumerate(zip(prompts, completions, strict=True), 1):
        failpoints.send_signal("verify", i)
        if should_stop is not None and (reason := should_stop()):
            raise Abandoned(reason)
        row, seen = [], set()
        for text in outs:
            try:
                ok = bool(verify(ex, text))
            except Exception as e:  # noqa: BLE001 - the user's verifier: name it and what it raised
                raise TaskError(f"{verifier_name} raised {type(e).__name__}: {e} (prompt {ex.prompt!r}, "
                                f"completion {text!r})") from None
            row.append(ok)
            if ok and text not in seen and len(seen) < max_per_prompt:
                seen.add(text)
                kept.append(Example(ex.prompt, text))
        solved += any(row)
        verdicts.append(row)
    generated = sum(len(o) for o in completions)
    stats = {"num_generated": generated, "num_kept": len(kept),
             "acceptance_rate": len(kept) / generated if generated else 0.0,
             "pass_at_k": solved / len(prompts) if prompts else 0.0}
    return kept, verdicts, stats


def training_set(k: int, kept: dict[int, list[Example]], gold: list[Example], *, reuse_previous: bool,
                 gold_iterations: int) -> list[Example]:
    """Iteration k's training examples: its own kept samples, earlier ones if reused, and gold
    while k < gold_iterations (-1: every iteration); deduplicated, in a fixed order."""
    sources = [kept.get(j, []) for j in range(k + 1) if j == k or reuse_previous]
    if gold_iterations < 0 or k < gold_iterations:
        sources.insert(0, gold)
    out, seen = [], set()
    for ex in (e for src in sources for e in src):
        if (ex.prompt, ex.answer) not in seen:
            seen.add((ex.prompt, ex.answer))
            out.append(ex)
    return out


def weights_digest(model_dir: str) -> str | None:
    """Identity of a model's weights: from its manifest if it has one, else hashed now (None: the
    directory is gone)."""
    if not os.path.isdir(model_dir):
        return None
    files = {}
    if manifest.exists(model_dir):
        files = {f: m["xxh3_64"] for f, m in manifest.read(model_dir)["files"].items()}
    names = sorted(f for f in os.listdir(model_dir) if f.startswith(("model", "pytorch_model")))
    return ",".join(f"{f}:{files.get(f) or manifest.file_digest(os.path.join(model_dir, f))}" for f in names)


def _read_kept(directory: str) -> list[Example]:
    with open(os.path.join(directory, SELECTED), encoding="utf-8") as f:
        return [Example(r["prompt"], r["completion"]) for r in map(json.loads, f)]


def _verdict(output_dir: str, k: int) -> str | None:
    """Rank 0's view of samples_K, agreed by every rank: "ok", "missing", or why it is broken."""
    d = os.path.join(output_dir, samples_name(k))
    if dist.is_main():
        verdict = (manifest.problem(d) or "ok") if os.path.isdir(d) else "missing"
    return dist.broadcast(verdict if dist.is_main() else None)


def load(output_dir: str, k: int, source_digest: str, settings: dict) -> Samples | None:
    """samples_K if it is complete, intact and made by this model with these settings; else it is
    renamed aside (never deleted) and None is returned. Rank 0 decides for every rank."""
    d = os.path.join(output_dir, samples_name(k))
    verdict = _verdict(output_dir, k)
    if verdict == "missing":
        return None
    extra = manifest.read(d).get("extra", {}) if verdict == "ok" else {}
    same_source = source_digest is None or extra.get("source_digest") == source_digest  # None: model gone
    if verdict == "ok" and same_source and extra.get("settings") == settings:
        return Samples(_read_kept(d), extra["stats"])
    if dist.is_main():
        why = "made by other weights or settings" if verdict == "ok" else verdict
        to = commit.set_aside(output_dir, samples_name(k), "corrupt" if verdict != "ok" else f"superseded-{commit.utc_stamp()}")
        dist.log0(f"⏭️  {samples_name(k)}: {why}: renamed aside ({to})")
    dist.barrier()
    return None


def save(output_dir: str, k: int, prompts: list[Example], completions: list[list[str]],
         verdicts: list[list[bool]], kept: list[Example], stats: dict, source: str, source_digest: str,
         settings: dict) -> None:
    name = samples_name(k)
    staged = commit.fresh_staging(output_dir, name)
    with open(os.path.join(staged, GENERATED), "w", encoding="utf-8") as f:
        for i, (ex, outs, oks) in enumerate(zip(prompts, completions, verdicts, strict=True)):
            for s, (text, ok) in enumerate(zip(outs, oks, strict=True)):
                f.write(json.dumps({"i": i, "s": s, "prompt": ex.prompt, "completion": text, "correct": ok}) + "\n")
    with open(os.path.join(staged, SELECTED), "w", encoding="utf-8") as f:
        for ex in kept:
            f.write(json.dumps({"prompt": ex.prompt, "completion": ex.answer}) + "\n")
    commit.commit_dir(staged, os.path.join(output_dir, name), failpoint=("samples.write", k), kind="samples",
                      name=name, iteration=k, global_step=0, started_from=source,
                      extra={"source_digest": source_digest, "settings": settings, "stats": stats})


def ensure(cfg, k: int, model_dir: str, source: str, task: Task, tokenizer, load_model,
           at: stop.Place | None = None) -> Samples:
    """Iteration k's samples: reused when committed, else generated (every rank) and committed.
    `at`: the run's safe points (a stop request ends generation after a round, verification
    between prompts, and is agreed again once the samples are committed)."""
    from itertrain.generate import sample

    it = cfg.it
    settings = {"num_samples": it.num_samples, "temperature": it.temperature, "seed": cfg.train.seed,
                "max_new_tokens": it.max_new_tokens, "batch_size": it.generation_batch_size,
                "max_per_prompt": it.max_per_prompt, "num_prompts": len(task.train_prompts)}
    if it.generation_backend != "hf":  # (absent for hf: samples committed before the flag still match)
        settings["backend"] = it.generation_backend
    digest = dist.broadcast(weights_digest(model_dir) if dist.is_main() else None)
    if (found := load(cfg.output_dir, k, digest, settings)) is not None:
        dist.log0(f"♻️  iteration {k}: reusing committed {samples_name(k)} ({found.stats['num_kept']} kept)")
        return found
    if not task.train_prompts:
        return Samples([], {"num_generated": 0, "num_kept": 0, "acceptance_rate": 0.0, "pass_at_k": 0.0})
    dist.log0(f"🎲 iteration {k}: generating {it.num_samples} samples for each of {len(task.train_prompts)} "
              f"prompts with {source}")
    _check_source(cfg.output_dir, model_dir, k, digest)
    prompts = [e.prompt for e in task.train_prompts]
    if it.generation_backend == "vllm":
        from itertrain import vllm_backend

        completions = vllm_backend.sample(model_dir, prompts, num_samples=it.num_samples, seed=cfg.train.seed,
                                          iteration=k, max_new_tokens=it.max_new_tokens, temperature=it.temperature)
        if at is not None:
            at.check("generate")
    else:
        model = load_model(model_dir)
        completions = sample(model, tokenizer, prompts, num_samples=it.num_samples, seed=cfg.train.seed,
                             iteration=k, batch_size=it.generation_batch_size, max_new_tokens=it.max_new_tokens,
                             temperature=it.temperature,
                             safe_point=None if at is None else lambda: at.check("generate"))
        del model
    result = None
    if dist.is_main():
        try:
            kept, verdicts, stats = select(task.train_prompts, completions, task.verify, it.max_per_prompt,
                                           f"--verifier {it.verifier}" if it.train_prompts else "the task's verifier",
                                           should_stop=None if at is None else stop.requested_here)
            save(cfg.output_dir, k, task.train_prompts, completions, verdicts, kept, stats, source, digest, settings)
            result = ("ok", kept, stats)
        except TaskError as e:
            result = ("error", str(e), None)
        except Abandoned as e:
            result = ("stop", str(e), None)
    status, value, stats = dist.broadcast(result)  # value: the kept samples, or what stopped them
    if status == "error":
        raise TaskError(value)
    if at is not None:
        if status == "ok":
            at.committed = samples_name(k)
        at.check("verify", value if status == "stop" else None)
    return Samples(value, stats)


def earlier(cfg, j: int, model_dir: str, source: str, task: Task, tokenizer, load_model,
            at: stop.Place | None = None) -> list[Example]:
    """An earlier iteration's kept samples (--reuse_previous). History is reused as committed, even
    if settings changed since; a samples_j that is broken or gone is made again from model_j, which
    gives the same samples (seeded per batch), so the training set is the uninterrupted run's."""
    verdict = _verdict(cfg.output_dir, j)
    if verdict == "ok":
        return _read_kept(os.path.join(cfg.output_dir, samples_name(j)))
    if not os.path.isdir(model_dir):
        dist.log0(f"⚠️  {samples_name(j)} is {verdict} and {source}, which made it, is gone: iteration {j}'s "
                  "samples are left out of the training set (this run's data differs from the original)")
        return []
    return ensure(cfg, j, model_dir, source, task, tokenizer, load_model, at).kept


def _check_source(output_dir: str, model_dir: str, k: int, digest: str | None) -> None:
    """model_K must pass its checksums before it generates (a committed artifact of ours only; the
    user's --model_name is loaded as given). A broken one is renamed aside and the run stops."""
    from itertrain.restore import RecoveryError

    name = os.path.relpath(model_dir, output_dir)
    if digest is None:
        raise RecoveryError(f"iteration {k}'s samples must be generated again, but {name}, which "
                            "generates them, is gone (renamed aside or deleted)")
    if name.startswith("..") or not manifest.exists(model_dir):
        return
    problem = dist.broadcast(manifest.problem(model_dir) if dist.is_main() else None)
    if problem is None:
        return
    to = dist.broadcast(commit.set_aside(output_dir, name, "corrupt") if dist.is_main() else None)
    raise RecoveryError(f"{name} cannot generate iteration {k}'s samples: {problem}; renamed to {to}. "
                        "Run again with --resume_from auto --resume_from_iteration auto to fall back")
