"""Iteration K's preference pairs: a complete-or-absent artifact `pairs_K/`, built from samples_K.

A pair is (prompt, chosen, rejected): chosen from the completions the verifier accepted, rejected
from those it rejected, as samples_K recorded them (the verdicts are read, never recomputed). The
pairs are a pure function of samples_K's rows and the pair settings; pairs_K records the checksum
of the samples it was built from and those settings, so pairs built from other samples (another
model, settings or branch) or with other settings are renamed aside and built again.
"""

from __future__ import annotations

import json
import os

from itertrain.core import commit, manifest
from itertrain.core.names import CORRUPT, SUPERSEDED, pairs_name, samples_name
from itertrain.phases.samples import GENERATED
from itertrain.runtime import dist

PAIRS = "pairs.jsonl"


def build(rows: list[dict], pairs_per_prompt: int, gold: dict[int, str] | None = None) -> list[dict]:
    """Pairs from generated rows (in prompt, sample order). Per prompt: its distinct accepted and
    distinct rejected completions in sample order; pair j takes accepted j and rejected j, cycling
    through the shorter list, for j < min(pairs_per_prompt, the longer list's length), so every
    completion is used before any pair repeats one. `gold` (prompt index -> gold answer): a prompt
    with no accepted completion but rejected ones takes its gold answer as the only chosen.
    Pairs are deduplicated over the whole phase (a prompt may appear twice in the data)."""
    by_prompt: dict[int, tuple[str, list[str], list[str]]] = {}
    for r in rows:
        prompt, accepted, rejected = by_prompt.setdefault(r["i"], (r["prompt"], [], []))
        side = accepted if r["correct"] else rejected
        if r["completion"] not in side:
            side.append(r["completion"])
    out, seen = [], set()
    for i, (prompt, accepted, rejected) in by_prompt.items():
        rejected = [c for c in rejected if c not in accepted]
        from_gold = not accepted and gold is not None and i in gold
        if from_gold:
            accepted = [gold[i]]
        if not accepted or not rejected:
            continue
        for j in range(min(pairs_per_prompt, max(len(accepted), len(rejected)))):
            pair = (prompt, accepted[j % len(accepted)], rejected[j % len(rejected)])
            if pair not in seen:
                seen.add(pair)
                out.append({"i": i, "prompt": pair[0], "chosen": pair[1], "rejected": pair[2], "gold": from_gold})
    return out


def stats(pairs: list[dict]) -> dict:
    return {"num_pairs": len(pairs), "prompts_paired": len({p["i"] for p in pairs}),
            "pairs_gold_chosen": sum(p["gold"] for p in pairs)}


def ensure(output_dir: str, k: int, settings: dict, gold: dict[int, str] | None) -> list[dict]:
    """Iteration k's pairs (rank 0 decides, every rank gets them): pairs_k when committed, intact
    and built from the committed samples_k with these settings; else built and committed."""
    return dist.on_main(_ensure, output_dir, k, settings, gold)


def _ensure(output_dir: str, k: int, settings: dict, gold: dict[int, str] | None) -> list[dict]:
    samples_dir = os.path.join(output_dir, samples_name(k))
    source = manifest.read(samples_dir)["files"][GENERATED]["xxh3_64"]
    name, d = pairs_name(k), os.path.join(output_dir, pairs_name(k))
    if os.path.isdir(d):
        problem = manifest.problem(d)
        extra = {} if problem else manifest.read(d).get("extra", {})
        if not problem and extra.get("samples_digest") == source and extra.get("settings") == settings:
            with open(os.path.join(d, PAIRS), encoding="utf-8") as f:
                pairs = [json.loads(line) for line in f]
            dist.log0(f"♻️  iteration {k}: reusing committed {name} ({len(pairs)} pairs)")
            return pairs
        to = commit.set_aside(output_dir, name, CORRUPT if problem else SUPERSEDED)
        dist.log0(f"⏭️  {name}: {problem or 'built from other samples or settings'}: renamed aside ({to})")
    with open(os.path.join(samples_dir, GENERATED), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    pairs = build(rows, settings["pairs_per_prompt"], gold)
    staged = commit.fresh_staging(output_dir, name)
    with open(os.path.join(staged, PAIRS), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    commit.commit_dir(staged, d, failpoint=("pairs.write", k), kind="pairs", name=name, iteration=k,
                      global_step=0, started_from=samples_name(k),
                      extra={"samples_digest": source, "settings": settings, "stats": stats(pairs)})
    return pairs
