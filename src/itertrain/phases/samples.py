"""Iteration K's generated and selected samples: a complete-or-absent artifact `samples_K/`.

It records which model generated it (a digest of model_K's weights) and the sampling settings; a
samples_K that does not match the current model_K and settings is renamed aside and generated
again, so a branch never trains on another branch's samples. Selection and the training set are
pure functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import xxhash

from itertrain.core import commit, manifest, progress
from itertrain.core.names import CORRUPT, SUPERSEDED, samples_name
from itertrain.phases import shards
from itertrain.runtime import dist, stop
from itertrain.tasks import Example, Task
from itertrain.tasks.pool import ERRORS, TIMEOUTS, Abandoned, Checker
from itertrain.tasks.types import builtin_task

GENERATED, SELECTED = "generated.jsonl", "selected.jsonl"


@dataclass
class Samples:
    kept: list[Example]  # (prompt, completion) pairs that passed the verifier
    stats: dict  # num_generated, num_kept, acceptance_rate, pass_at_k


def checker(cfg, task: Task) -> Checker:
    """The run's verifier, run as --verifier_workers, --verifier_timeout and --strict_verifier say."""
    it = cfg.it
    name = f"--verifier {it.verifier}" if it.train_prompts else "the task's verifier"
    return Checker(task.verify, name, workers=it.verifier_workers, timeout=it.verifier_timeout,
                   strict=it.strict_verifier, log=dist.log0)


def select(prompts: list[Example], completions: list[list[str]], verify_fn, max_per_prompt: int,
           verifier_name: str = "verifier") -> tuple[list[Example], list[list[bool]], dict]:
    """verify (in this process, a failure stops), then keep, over prompts 0..n-1 (one phase at once)."""
    verdicts, _ = Checker(verify_fn, verifier_name, strict=True).check(prompts, completions)
    kept, stats = keep(shards.rows(0, [e.prompt for e in prompts], completions, verdicts), max_per_prompt)
    return kept, verdicts, stats


def keep(rows: list[dict], max_per_prompt: int) -> tuple[list[Example], dict]:
    """From generated rows (in prompt, sample order): the correct completions, deduplicated, at most
    max_per_prompt per prompt, and the phase's statistics."""
    kept, seen, solved, prompts = [], {}, set(), set()
    for r in rows:
        prompts.add(r["i"])
        if not r["correct"]:
            continue
        solved.add(r["i"])
        texts = seen.setdefault(r["i"], set())
        if r["completion"] not in texts and len(texts) < max_per_prompt:
            texts.add(r["completion"])
            kept.append(Example(r["prompt"], r["completion"]))
    stats = {"num_generated": len(rows), "num_kept": len(kept),
             "acceptance_rate": len(kept) / len(rows) if rows else 0.0,
             "pass_at_k": len(solved) / len(prompts) if prompts else 0.0}
    return kept, stats


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


def _read_kept(directory: str) -> list[Example]:
    with open(os.path.join(directory, SELECTED), encoding="utf-8") as f:
        return [Example(r["prompt"], r["completion"]) for r in map(json.loads, f)]


def _verdict(output_dir: str, k: int) -> str:
    """samples_K is "ok", "missing", or why it is broken."""
    d = os.path.join(output_dir, samples_name(k))
    return (manifest.problem(d) or "ok") if os.path.isdir(d) else "missing"


def load(output_dir: str, k: int, source_digest: str, settings: dict) -> Samples | None:
    """samples_K if it is complete, intact and made by this model with these settings; else it is
    renamed aside (never deleted) and None is returned. Rank 0 decides for every rank."""
    return dist.on_main(_load, output_dir, k, source_digest, settings)


def _load(output_dir: str, k: int, source_digest: str, settings: dict) -> Samples | None:
    d = os.path.join(output_dir, samples_name(k))
    if (verdict := _verdict(output_dir, k)) == "missing":
        return None
    problem = None if verdict == "ok" else verdict
    extra = {} if problem else manifest.read(d).get("extra", {})
    same_source = source_digest is None or extra.get("source_digest") == source_digest  # None: model gone
    if not problem and same_source and extra.get("settings") == settings:
        return Samples(_read_kept(d), extra["stats"])
    to = commit.set_aside(output_dir, samples_name(k), CORRUPT if problem else SUPERSEDED)
    dist.log0(f"⏭️  {samples_name(k)}: {problem or 'made by other weights or settings'}: renamed aside ({to})")
    return None


def save(output_dir: str, k: int, rows: list[dict], kept: list[Example], stats: dict, source: str,
         source_digest: str, settings: dict) -> None:
    name = samples_name(k)
    staged = commit.fresh_staging(output_dir, name)
    with open(os.path.join(staged, GENERATED), "wb") as f:
        f.write(shards.encode(rows))
    with open(os.path.join(staged, SELECTED), "w", encoding="utf-8") as f:
        for ex in kept:
            f.write(json.dumps({"prompt": ex.prompt, "completion": ex.answer}) + "\n")
    commit.commit_dir(staged, os.path.join(output_dir, name), failpoint=("samples.write", k), kind="samples",
                      name=name, iteration=k, global_step=0, started_from=source,
                      extra={"source_digest": source_digest, "settings": settings, "stats": stats})


def settings_of(cfg, task: Task) -> dict:
    """What the samples of a phase depend on, as recorded with them (and with each shard)."""
    it = cfg.it
    settings = {"num_samples": it.num_samples, "temperature": it.temperature, "seed": cfg.train.seed,
                "max_new_tokens": it.max_new_tokens, "batch_size": it.generation_batch_size,
                "max_per_prompt": it.max_per_prompt, "num_prompts": len(task.train_prompts)}
    if it.generation_backend != "hf":  # (absent for hf: samples committed before the flag still match)
        settings["backend"] = it.generation_backend
    if it.vllm_enforce_eager:  # (absent when off: samples committed before the flag still match)
        settings["vllm_enforce_eager"] = True
    if it.generation_order != "file":  # (absent for file order: samples committed before the flag still match)
        settings["order"] = it.generation_order
    if not builtin_task(it):  # the built-in prompts follow from --seed and the sizes above; others may
        # change with the data or the chat template, and samples of other prompts must not be reused
        prompts = "\x00".join(e.prompt for e in task.train_prompts)
        settings["prompts_digest"] = xxhash.xxh3_64_hexdigest(prompts.encode())
    return settings


def ensure(cfg, k: int, model_dir: str, source: str, task: Task, tokenizer, load_model,
           at: stop.Place | None = None, in_memory: str | None = None) -> Samples:
    """Iteration k's samples: reused when committed; else generated (every rank) shard by shard,
    each shard verified and committed by rank 0 as it is made (a resume keeps them), and assembled
    into samples_k. `at`: the run's safe points (after every generation round, between prompts
    being verified, after every shard). `in_memory`: the directory whose model `load_model` gives
    from memory."""
    settings = settings_of(cfg, task)
    order = generation_order([e.prompt for e in task.train_prompts], tokenizer, cfg.it.generation_order)
    task = dataclasses.replace(task, train_prompts=[task.train_prompts[i] for i in order])
    digest = dist.on_main(manifest.weights_digest, model_dir)
    if (found := load(cfg.output_dir, k, digest, settings)) is not None:
        dist.on_main(shards.remove, cfg.output_dir, k)  # left by a run that stopped just after the commit
        dist.log0(f"♻️  iteration {k}: reusing committed {samples_name(k)} ({found.stats['num_kept']} kept)")
        return found
    if not task.train_prompts:
        return Samples([], {"num_generated": 0, "num_kept": 0, "acceptance_rate": 0.0, "pass_at_k": 0.0})
    if model_dir != in_memory:  # (a model this run committed and holds in memory is not read back)
        _check_source(cfg.output_dir, model_dir, k, digest)
    spans = shards.spans(len(task.train_prompts), cfg.it.generation_shard_size)
    done = dist.on_main(shards.committed, cfg.output_dir, k, digest, settings, spans, log=dist.log0)
    todo = [sp for sp in spans if sp not in done]
    have = sum(end - first for first, end in done)
    dist.log0(f"🎲 iteration {k}: generating {cfg.it.num_samples} samples for each of {len(task.train_prompts)} "
              f"prompts with {source}" + (f" ({have} already committed in {len(done)} shard{'s' * (len(done) > 1)})"
                                         if done else ""))
    if todo:
        _generate(cfg, k, model_dir, source, task, tokenizer, load_model, at, todo, have, digest, settings)
    kept, stats = dist.on_main(_assemble, cfg.output_dir, k, spans, source, digest, settings, cfg.it.max_per_prompt,
                               order)
    if at is not None:
        at.committed = samples_name(k)
        at.check("verify")
    return Samples(kept, stats)


def generation_order(prompts: list[str], tokenizer, mode: str) -> list[int]:
    """The file indices of the prompts in the order they are generated for: longest first by tokens
    (ties in file order) for --generation_order length. A function of the prompts alone, so batches,
    their seeds and the samples are the same for any number of processes or shard size."""
    if mode == "file" or not prompts:
        return list(range(len(prompts)))
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return sorted(range(len(prompts)), key=lambda i: (-len(ids[i]), i))


def _generate(cfg, k, model_dir, source, task, tokenizer, load_model, at, todo, have, digest, settings) -> None:
    """Make the shards in `todo`, a round of one shard per rank at a time, each committed by rank 0
    once verified: a stop or a crash loses at most the shards of the round under way."""
    it, prompts = cfg.it, [e.prompt for e in task.train_prompts]
    opts = dict(num_samples=it.num_samples, seed=cfg.train.seed, iteration=k, max_new_tokens=it.max_new_tokens,
                temperature=it.temperature)
    if it.generation_backend == "vllm":
        from itertrain.phases import vllm_backend

        gen = vllm_backend.Generator(it.vllm_python, model_dir, tokenizer, todo, prompts,
                                     engine={"gpu_memory_utilization": it.vllm_gpu_memory_utilization,
                                             "enforce_eager": it.vllm_enforce_eager},
                                     log_dir=commit.staging_path(cfg.output_dir, "logs"), **opts)
    else:
        from itertrain.phases.generate import Generator

        gen = Generator(load_model(model_dir), tokenizer, batch_size=it.generation_batch_size, **opts)
    check = checker(cfg, task)
    bar = dist.progress(desc=f"generate (iteration {k})", total=len(prompts), initial=have)
    world = dist.world_size()
    try:
        for n in range(0, len(todo), world):
            made = gen.round(todo[n:n + world], prompts, advance=bar.update,
                             safe_point=None if at is None else lambda: at.check("generate"))
            if made is not None:  # (None: a rank's part was left for a stop request)
                names, abandoned = dist.on_main(_verify_and_commit, cfg.output_dir, k, made, task, check, source,
                                                digest, settings, None if at is None else stop.requested_here)
                have += sum(end - first for first, end in sorted(made)[:len(names)])
                progress.note(done=have, total=len(prompts), unit="prompts")
                if names:  # the progress bar is for terminals; a log file gets a line per round
                    dist.log0(f"   💾 iteration {k}: {have}/{len(prompts)} prompts generated, verified and committed")
                if at is not None:
                    at.committed = names[-1] if names else at.committed
                    if abandoned:
                        at.check("verify", abandoned)
            if at is not None:
                at.check("generate")
            if made is None:
                raise RuntimeError("a rank left its part of a shard without a stop request")
    finally:
        bar.close()
        gen.close()
        check.close()


def _verify_and_commit(output_dir, k, made, task, check: Checker, source, digest, settings, should_stop):
    """Rank 0: verify each shard made in a round and commit it (with the verifier's problems counted);
    returns the shards committed and, if a stop request abandoned the verification of the rest, its
    reason."""
    names = []
    for first, end in sorted(made):
        exs = task.train_prompts[first:end]
        try:
            verdicts, problems = check.check(exs, made[(first, end)], first=first, should_stop=should_stop)
        except Abandoned as e:
            return names, str(e)
        rows = shards.rows(first, [e.prompt for e in exs], made[(first, end)], verdicts)
        names.append(shards.write(output_dir, k, (first, end), rows, source=source, digest=digest, settings=settings,
                                  problems=problems))
    return names, None


def _assemble(output_dir, k, spans, source, digest, settings, max_per_prompt, order) -> tuple[list[Example], dict]:
    """samples_k from its shards (rank 0), in file order, then the shards are removed. (A shard's rows
    number its prompts in generation order: `order[i]` is the file index of the i-th.)"""
    rows = [{**r, "i": order[r["i"]]} for sp in spans for r in shards.read(output_dir, k, sp)]
    rows.sort(key=lambda r: (r["i"], r["s"]))
    kept, stats = keep(rows, max_per_prompt)
    stats.update(shards.problems(output_dir, k, spans, (TIMEOUTS, ERRORS)))
    save(output_dir, k, rows, kept, stats, source, digest, settings)
    shards.remove(output_dir, k)
    return kept, stats


def earlier(cfg, j: int, model_dir: str, source: str, task: Task, tokenizer, load_model,
            at: stop.Place | None = None) -> list[Example]:
    """An earlier iteration's kept samples (--reuse_previous). History is reused as committed, even
    if settings changed since; a samples_j that is broken or gone is made again from model_j, which
    gives the same samples (seeded per batch), so the training set is the uninterrupted run's."""
    verdict = dist.on_main(_verdict, cfg.output_dir, j)
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
    from itertrain.runtime.restore import RecoveryError

    name = os.path.relpath(model_dir, output_dir)
    if digest is None:
        raise RecoveryError(f"iteration {k}'s samples must be generated again, but {name}, which "
                            "generates them, is gone (renamed aside or deleted)")
    if name.startswith("..") or not manifest.exists(model_dir):
        return
    def set_aside_if_broken():
        problem = manifest.problem(model_dir)
        return problem, problem and commit.set_aside(output_dir, name, CORRUPT)

    problem, to = dist.on_main(set_aside_if_broken)
    if problem is None:
        return
    raise RecoveryError(f"{name} cannot generate iteration {k}'s samples: {problem}; renamed to {to}. "
                        "Run again with --resume_from auto --resume_from_iteration auto to fall back")
