"""A run's mirror (--mirror_to) from the app's side: the store checked before anything is written, the
session begun once the directory is claimed, what a resume on a fresh machine fetches, and the wait
for the uploads at the end (cli). Rank 0 holds the session; every other rank calls the same points."""

from __future__ import annotations

import os

from itertrain.app import settings
from itertrain.app.config import Config
from itertrain.mirror import session as mirror_session
from itertrain.runtime import dist

_store = None  # rank 0's store, from open_store to begin


def open_store(cfg: Config) -> None:
    """Rank 0: the store behind --mirror_to, checked before anything is written (a bad URL, a missing
    bucket, refused credentials: one line, exit 2); a dry run's only read."""
    global _store
    from itertrain.mirror.store import open_store as open_

    _store = open_(cfg.mirror.mirror_to, write=not cfg.it.dry_run)


def begin(cfg: Config) -> None:
    """Every rank, once the directory is claimed: rank 0 begins the session (without a mirror, it drops
    the view an earlier run's mirror left)."""
    if cfg.mirror.mirror_to:
        dist.on_main(_begin, cfg)
    elif not cfg.it.dry_run:
        dist.on_main(mirror_session.forget, cfg.output_dir)


def _begin(cfg: Config) -> None:
    global _store
    store, _store = _store, None
    mirror_session.begin(store, cfg.output_dir, cfg.mirror.mirror_keep, cfg.mirror.mirror_grace,
                         settings.SAVED_CONFIG, dist.log0, dry=cfg.it.dry_run, carry=cfg.it.carry_optimizer_state)


def needs(cfg: Config, plan, base: str) -> set[str]:
    """What a resume loads of iteration K = plan.next_iteration, and so fetches when only the mirror has
    it: the plan's checkpoint and model, the built-in base `base` (the tokenizer), K's samples (or its
    shards) and pairs, earlier samples when reused, and model_K where K's samples must be made again,
    an adapter trains on it, or the objective loads it (a DPO reference)."""
    from itertrain.core.names import model_before, pairs_name, samples_name
    from itertrain.phases import shards
    from itertrain.training import objectives

    k, out = plan.next_iteration, cfg.output_dir
    names = {plan.weights_from, plan.state_from, samples_name(k), pairs_name(k), shards.folder(k)}
    names |= {base} if not cfg.it.model_name else set()
    names |= {samples_name(j) for j in range(k)} if cfg.it.reuse_previous else set()
    there = mirror_session.active().up.units.get(samples_name(k), {})
    made = there.get("state") == "complete" or os.path.isdir(os.path.join(out, samples_name(k)))
    if k > 0 and (not made or cfg.peft.use_peft):
        names.add(os.path.relpath(model_before(out, plan.models, os.path.join(out, base), k)[0], out))
    inputs = getattr(objectives.for_iteration(cfg, k), "inputs", None)  # (an objective plug-in may not declare it)
    names |= {os.path.relpath(p, out) for p in (inputs(cfg, plan.models, os.path.join(out, base), k) if inputs else [])}
    return {n for n in names if n and not n.startswith("..")}


def fetcher(cfg: Config, base: str):
    """resolve's fetch (every rank has it; rank 0 runs it): bring what the plan loads (None without a
    mirror, or in a dry run)."""
    if not cfg.mirror.mirror_to or cfg.it.dry_run:
        return None
    return lambda plan: mirror_session.active().fetch(needs(cfg, plan, base), plan)


def sync(plan, records: tuple[str, ...]) -> None:
    """Rank 0, once the plan is carried out: queue what the directory has and the mirror lacks."""
    if session := mirror_session.active():
        session.sync(plan, records)


def settle(timeout: float | None) -> bool | None:
    """Rank 0: wait for the uploads (None: until done); whether they are all on the mirror (None: no mirror)."""
    session = mirror_session.active()
    return None if session is None else session.settle(timeout)


def close(grace: float) -> None:
    if session := mirror_session.active():
        session.settle(grace)
        session.close()
