"""The generate phase of iteration K, committed in shards of --generation_shard_size prompts.

`samples_K.shards/prompts-A-B/` holds the completions of prompts A..B-1 and the verifier's verdicts
(generated.jsonl, rows as in samples_K), committed through the commit protocol with a manifest that
records the model that made them and the sampling settings. A resumed phase keeps every intact
shard made by the same model and settings and generates only the rest; a damaged shard, or one made
by other weights or settings, is renamed aside inside the folder (never deleted). Once every shard
exists samples_K is assembled from them, committed, and only then are the shards removed.
"""

from __future__ import annotations

import json
import os

from itertrain.core import commit, manifest
from itertrain.core.names import CORRUPT, SUPERSEDED, aside_why

SUFFIX = ".shards"
GENERATED = "generated.jsonl"
KIND = "shard"


def folder(k: int) -> str:
    return f"samples_{k}{SUFFIX}"


def name(first: int, end: int) -> str:
    return f"prompts-{first:08d}-{end:08d}"


def spans(num_prompts: int, size: int) -> list[tuple[int, int]]:
    """[first, end) of each shard, in order."""
    return [(a, min(a + size, num_prompts)) for a in range(0, num_prompts, size)]


def rows(first: int, prompts: list[str], completions: list[list[str]], verdicts: list[list[bool]]) -> list[dict]:
    """One row per (prompt, sample), with the prompt's global index: the lines of generated.jsonl."""
    return [{"i": first + i, "s": s, "prompt": p, "completion": text, "correct": ok}
            for i, (p, outs, oks) in enumerate(zip(prompts, completions, verdicts, strict=True))
            for s, (text, ok) in enumerate(zip(outs, oks, strict=True))]


def encode(rows_: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows_).encode()


def write(output_dir: str, k: int, span: tuple[int, int], rows_: list[dict], *, source: str, digest: str,
          settings: dict, problems: dict | None = None) -> str:
    """Commit one shard (rank 0); returns its path relative to output_dir."""
    top = os.path.join(output_dir, folder(k))
    if not os.path.isdir(top):
        os.makedirs(top)
        commit.fsync_dir(output_dir)
    shard = name(*span)
    staged = commit.fresh_staging(output_dir, f"{folder(k)}-{shard}")
    with open(os.path.join(staged, GENERATED), "wb") as f:
        f.write(encode(rows_))
    commit.commit_dir(staged, os.path.join(top, shard), failpoint=("shard.write", span[0]), kind=KIND,
                      name=shard, iteration=k, global_step=0, started_from=source,
                      extra={"source_digest": digest, "settings": settings, "prompts": list(span),
                             "problems": problems or {}})
    return f"{folder(k)}/{shard}"


def problems(output_dir: str, k: int, spans: list[tuple[int, int]], keys: tuple[str, ...]) -> dict:
    """The verifier's problems (timeouts, errors) counted over the committed shards of `spans`."""
    total = dict.fromkeys(keys, 0)
    for sp in spans:
        counted = manifest.read(os.path.join(output_dir, folder(k), name(*sp))).get("extra", {}).get("problems", {})
        for key in keys:
            total[key] += counted.get(key, 0)
    return total


def committed(output_dir: str, k: int, digest: str, settings: dict, wanted: list[tuple[int, int]],
              log=print) -> list[tuple[int, int]]:
    """The spans of `wanted` whose shard is committed, intact and made by these weights and settings
    (rank 0). Any other shard in the folder is renamed aside, with a line saying why."""
    top = os.path.join(output_dir, folder(k))
    if not os.path.isdir(top):
        return []
    by_name = {name(*sp): sp for sp in wanted}
    kept = []
    for entry in sorted(os.listdir(top)):
        if aside_why(entry):
            continue
        path = os.path.join(top, entry)
        broken = manifest.problem(path) if entry in by_name else None
        if broken:
            why, reason = broken, CORRUPT
        elif entry not in by_name:
            why, reason = "made with another --generation_shard_size", SUPERSEDED
        elif (extra := manifest.read(path).get("extra", {})).get("source_digest") != digest \
                or extra.get("settings") != settings:
            why, reason = "made by other weights or settings", SUPERSEDED
        else:
            kept.append(by_name[entry])
            continue
        to = commit.set_aside(top, entry, reason)
        log(f"⏭️  {folder(k)}/{entry}: {why}: renamed aside ({to})")
    return sorted(kept)


def read(output_dir: str, k: int, span: tuple[int, int]) -> list[dict]:
    with open(os.path.join(output_dir, folder(k), name(*span), GENERATED), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def remove(output_dir: str, k: int) -> None:
    """After samples_K is committed: delete its shards (through staging, as rotation does); shards
    renamed aside stay, and so does the folder while it holds any."""
    top = os.path.join(output_dir, folder(k))
    if not os.path.isdir(top):
        return
    for entry in sorted(os.listdir(top)):
        if not aside_why(entry):
            commit.remove_committed(top, entry, staging_root=output_dir)
    if not os.listdir(top):
        os.rmdir(top)
        commit.fsync_dir(output_dir)


def progress(output_dir: str, k: int) -> tuple[int, int] | None:
    """(prompts committed in shards, prompts of the phase) from the manifests alone (for status); None
    when no shard is committed."""
    top = os.path.join(output_dir, folder(k))
    done, total = 0, None
    for entry in sorted(os.listdir(top)) if os.path.isdir(top) else []:
        path = os.path.join(top, entry)
        if aside_why(entry) or not manifest.exists(path):
            continue
        try:
            m = manifest.read(path)
        except manifest.ManifestError:
            continue
        first, end = m.get("extra", {}).get("prompts", (0, 0))
        done += end - first
        total = m.get("extra", {}).get("settings", {}).get("num_prompts", total)
    return (done, total) if total is not None else None


def aside(output_dir: str) -> list[str]:
    """Shards renamed aside, as paths relative to output_dir (for status)."""
    out = []
    for top in sorted(os.listdir(output_dir)):
        if top.startswith("samples_") and top.endswith(SUFFIX) and os.path.isdir(os.path.join(output_dir, top)):
            out += [f"{top}/{e}" for e in sorted(os.listdir(os.path.join(output_dir, top))) if aside_why(e)]
    return out

