"""`itertrain status OUTPUT_DIR [--resume_from X] [--resume_from_iteration Y] [--json] [--watch [SECONDS]]`.

Where an experiment stands: its iterations (state, accuracy, acceptance rate, samples, steps, time),
its checkpoints (step, iteration, state, size), the plan those flags would give, and hints with the
command to run next. Reads manifests only; writes nothing. --json prints one JSON object and
nothing else (schema: docs/status.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict

from itertrain.app import settings as settings_
from itertrain.core import defaults, inventory, manifest, mirrored, progress
from itertrain.core.errors import UsageError
from itertrain.core.names import CHECKPOINT, COMPLETE, ITERATION, Artifact, aside_why
from itertrain.core.plan import BOTH, ITERATION_STRATEGY, TRAINER, PlanError, Request, make_plan
from itertrain.core.selectors import SelectorError, parse_checkpoint_selector, parse_iteration_selector
from itertrain.phases import shards
from itertrain.runtime import stop
from itertrain.training import objectives

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itertrain status", description=__doc__.splitlines()[0])
    p.add_argument("output_dir")
    p.add_argument("--resume_from", default="auto")
    p.add_argument("--resume_from_iteration", default="auto")
    p.add_argument("--num_iterations", type=int, default=None, help="default: the experiment's own")
    p.add_argument("--max_steps", type=int, default=None, help="default: the experiment's own")
    p.add_argument("--carry_optimizer_state", action="store_true", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, nothing else")
    p.add_argument("--watch", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) while a run goes on, with its phase, step, loss and an "
                        "estimate of the time left; Ctrl-C ends it")
    p.add_argument("--stopped", action="store_true",
                   help=f"exit {stop.EXIT_STOPPED} if the last run stopped on request (resumable), else 0: for "
                        "job scripts whose launcher (torchrun) does not pass the exit status on")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if "://" in args.output_dir:  # a mirror with no local directory: its records, read into a temporary one
        import tempfile

        with tempfile.TemporaryDirectory(prefix="itertrain-status-") as tmp:
            try:
                url, args.output_dir = args.output_dir, _mirror_view(args.output_dir, tmp)
            except UsageError as e:
                print(f"itertrain status: error: {e}", file=sys.stderr)
                return 2
            try:
                return _report(args, url)
            finally:
                mirrored.VIEWS.pop(tmp, None)
    if not os.path.isdir(args.output_dir):
        print(f"itertrain status: error: {args.output_dir} is not a directory", file=sys.stderr)
        return 2
    return _report(args)


def _mirror_view(url: str, tmp: str) -> str:
    """`tmp` made to look like the experiment the mirror at `url` holds: its records there, its
    artifacts in the inventory's view (mirrored.VIEWS). Nothing is written to the mirror but its
    check's probe."""
    from itertrain.mirror.session import view
    from itertrain.mirror.store import open_store

    store = open_store(url, write=False)
    listing, _, units = view(store)
    mirrored.VIEWS[tmp] = {"url": store.url, "uploading": [], "units": units}
    for name in (settings_.SAVED_CONFIG, stop.RECORD, "metrics.jsonl"):
        if name in listing:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(store.cat(name))
    return tmp


def _report(args, url: str | None = None) -> int:
    if args.stopped:
        return stop.EXIT_STOPPED if os.path.exists(os.path.join(args.output_dir, stop.RECORD)) else 0
    try:
        report = build(args)
        if url:  # the resume command and the title name the mirror and the directory the run had
            here = settings_.saved(args.output_dir).get("args", {}).get("output_dir") or "OUTPUT_DIR"
            report = json.loads(json.dumps(report).replace(json.dumps(args.output_dir)[1:-1], here))
            report["output_dir"] = url
    except (SelectorError, ValueError) as e:
        print(f"itertrain status: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    elif args.watch:
        return watch(args)
    else:
        show(report)
        show_now(report, args.output_dir)
    return 0


def show_now(report: dict, output_dir: str, console=None) -> None:
    """What a run is doing right now (progress.py), below the report."""
    from rich.console import Console

    console = console or Console()
    seconds = [r["seconds"] for r in report["iterations"] if r.get("seconds")]
    state = settings_.read_json(os.path.join(output_dir, progress.NAME)) or None
    stopped = os.path.exists(os.path.join(output_dir, stop.RECORD))
    for line in progress.describe(state, seconds, stopped=stopped):
        console.print(line, highlight=False)


def watch(args, count: int | None = None, sleep=None) -> int:
    """The report and the run's progress, redrawn every args.watch seconds (`count` times, for tests)."""
    import time

    from rich.console import Console

    console, drawn = Console(), 0
    try:
        while count is None or drawn < count:
            report = build(args)
            console.clear()
            show(report, console)
            show_now(report, args.output_dir, console)
            drawn += 1
            if count is None or drawn < count:
                (sleep or time.sleep)(args.watch)
    except KeyboardInterrupt:
        pass
    return 0


def build(args) -> dict:
    """The whole report as plain data (what --json prints)."""
    saved = settings_.saved(args.output_dir)
    carry = args.carry_optimizer_state if args.carry_optimizer_state is not None else saved.get("carry_optimizer_state")
    num_iterations = args.num_iterations or saved.get("num_iterations") or defaults.NUM_ITERATIONS
    req = Request(parse_checkpoint_selector(args.resume_from), parse_iteration_selector(args.resume_from_iteration),
                  num_iterations, bool(carry), saved.get("world_size") or 1)
    max_steps = args.max_steps or saved.get("iteration_steps") or defaults.MAX_STEPS
    artifacts, names = inventory.scan(args.output_dir, max_steps, mirror=True)
    index = mirrored.read_index(args.output_dir)
    try:
        plan = make_plan(artifacts, req, existing=names, stamp="<time>").to_json()
    except PlanError as e:
        plan = {"error": str(e)}
    settings = {"num_iterations": num_iterations, "iteration_steps": max_steps,
                "model_name": saved.get("model_name"), "world_size": saved.get("world_size", 1),
                "mirror_to": saved.get("given", {}).get("mirror_to"), "batch": _batch(saved)}

    def described(a: Artifact) -> dict:
        local = None if a.where or a.state != COMPLETE else _manifest(os.path.join(args.output_dir, a.name))
        return {**asdict(a), "location": mirrored.where_is(a.name, not a.where, index, local) if index else None}

    checkpoints = [described(a) for a in sorted(artifacts, key=Artifact.sort_key) if a.kind == CHECKPOINT]
    aside = sorted(n for n in names if aside_why(n))
    aside += shards.aside(args.output_dir)
    last_stop = settings_.read_json(os.path.join(args.output_dir, stop.RECORD)) or None
    rows = iteration_rows(args.output_dir, artifacts, num_iterations)
    for row in rows:
        if last_stop and row["iteration"] == last_stop.get("iteration") and not row["state"].startswith("complete"):
            row["state"] = f"stopped ({last_stop.get('reason')}, {last_stop.get('phase')}): {row['state']}"
    generation = next(({"iteration": r["iteration"], "prompts_done": r["prompts_done"],
                        "prompts_total": r["prompts_total"]} for r in rows if "prompts_done" in r), None)
    return {"output_dir": args.output_dir, "settings": settings, "last_stop": last_stop, "generation": generation,
            "iterations": rows,
            "checkpoints": checkpoints, "artifacts": [described(a) for a in sorted(artifacts, key=lambda a: (a.kind, a.sort_key()))],
            "mirror": {"url": index["url"], "uploading": index.get("uploading", []), "dropped": index.get("dropped", [])}
            if index else None,
            "set_aside": aside, "plan": plan, "hints": hints(args.output_dir, settings, artifacts, plan, aside)
            + ([] if "given" in saved or not saved else [OLD_RECORD])}


def _batch(saved: dict) -> dict | None:
    """The last run's batch, with `note` where it is not what the flags say (kept across a change of
    the number of processes) or not the experiment's global batch (--elastic_batch allow)."""
    batch, args = saved.get("batch"), saved.get("args", {})
    if not isinstance(batch, dict) or "global_batch" not in batch:
        return None
    split = f"{batch['per_device']} per device x {batch['accumulation']} accumulation x {batch['world_size']} processes"
    note = None
    if batch["global_batch"] != batch["target"]:
        note = (f"a global batch of {batch['global_batch']} ({split}), not the experiment's {batch['target']}: "
                "--elastic_batch allow")
    elif (batch["per_device"], batch["accumulation"]) != (args.get("per_device_train_batch_size"),
                                                          args.get("gradient_accumulation_steps")):
        note = f"the experiment's global batch of {batch['target']} kept on {batch['world_size']} processes ({split})"
    return {**batch, "note": note}


def _manifest(path: str) -> dict:
    """A committed artifact's manifest: from its directory, or (only the mirror has it) the mirror's index."""
    if not os.path.isdir(path):
        entry = mirrored.read_index(os.path.dirname(path)).get("units", {}).get(os.path.basename(path), {})
        return entry.get("manifest") or {}
    try:
        return manifest.read(path)
    except manifest.ManifestError:
        return {}


def iteration_rows(output_dir: str, artifacts: list[Artifact], num_iterations: int) -> list[dict]:
    models = {a.iteration: a for a in sorted(artifacts, key=Artifact.sort_key) if a.kind == ITERATION and a.usable}
    ckpts = sorted((a for a in artifacts if a.kind == CHECKPOINT and a.usable), key=Artifact.sort_key)
    last = max([num_iterations - 1, *models, *(c.iteration for c in ckpts)])
    rows = []
    for k in range(last + 1):
        samples = _manifest(os.path.join(output_dir, f"samples_{k}")).get("extra", {}).get("stats", {})
        row = {"iteration": k, "state": "pending", "artifact": None, "eval_accuracy": None,
               "acceptance_rate": samples.get("acceptance_rate"), "num_generated": samples.get("num_generated"),
               "num_kept": samples.get("num_kept"), "global_step": None, "train_loss": None, "seconds": None,
               "finished": None, "verifier_timeouts": None, "verifier_errors": None}
        of_k = [c for c in ckpts if c.iteration == k]
        if k in models:
            a = models[k]
            m = _manifest(os.path.join(output_dir, a.name)) if a.state == COMPLETE else {}
            extra = m.get("extra", {})
            metrics = extra.get("metrics", {})
            row.update(state="complete" if a.state == COMPLETE else "complete (unverified)", artifact=a.name,
                       eval_accuracy=metrics.get("eval_accuracy"), train_loss=metrics.get("train_loss"),
                       global_step=a.global_step, seconds=extra.get("seconds"),
                       finished=m.get("created"), verifier_timeouts=metrics.get("verifier_timeouts"),
                       verifier_errors=metrics.get("verifier_errors"),
                       objective=metrics.get("objective") or extra.get("objective", {}).get("objective", objectives.SFT),
                       **{m.key: metrics.get(m.key) for m in objectives.metrics() if m.status and m.key in metrics})
            if not samples:  # an objective that samples while it trains (grpo): its rollouts' statistics
                row.update(acceptance_rate=metrics.get("acceptance_rate"), num_generated=metrics.get("num_generated"))
        elif of_k:
            c = of_k[-1]
            row.update(state=f"interrupted at step {c.local_step}/{c.iteration_steps}", artifact=c.name,
                       global_step=c.global_step)
        elif samples:
            row["state"] = "generated, not trained"
        elif progress := shards.progress(output_dir, k):
            row.update(state=f"generating: {progress[0]}/{progress[1]} prompts", prompts_done=progress[0],
                       prompts_total=progress[1])
        rows.append(row)
    return rows


OLD_RECORD = ("this experiment's record does not list the flags it was given (written by an itertrain before "
              "it kept them): add the run's own flags to the command above, or a resume takes the defaults")


def hints(output_dir: str, settings: dict, artifacts: list[Artifact], plan: dict, aside: list[str]) -> list[str]:
    cmd = settings_.resume_command(output_dir, settings)
    out = []
    if "error" in plan:
        out.append(f"the flags given do not fit this experiment: {plan['error']}")
    elif plan["done"]:
        n = settings["num_iterations"]
        more = settings_.resume_command(output_dir, settings, "--num_iterations", str(n + 1))
        out.append(f"all {n} iterations are complete; to run more (change {n + 1} as you like): {more}")
    elif plan["strategy"] == TRAINER:
        c = next(a for a in artifacts if a.name == plan["state_from"])
        where = (f"finished training at global step {c.global_step} but was not saved" if c.is_last_step
                 else f"was interrupted at step {c.local_step} of {c.iteration_steps} (global step {c.global_step})")
        out.append(f"iteration {c.iteration} {where}: resume with: {cmd}")
    elif plan["strategy"] in (ITERATION_STRATEGY, BOTH):
        out.append(f"{plan['weights_from']} is done and iteration {plan['next_iteration']} has not saved a "
                   f"checkpoint yet: resume with: {cmd}")
    elif not any(a.usable for a in artifacts):
        out.append(f"nothing to resume here yet: start (or resume) with: {cmd}")
    broken = [a.name for a in artifacts if not a.usable]
    if broken:
        out.append(f"{len(broken)} broken artifact(s) ({', '.join(broken)}): the next run renames them aside, "
                   "nothing is deleted")
    if aside:
        out.append(f"{len(aside)} artifact(s) set aside earlier ({', '.join(aside[:4])}{', ...' if len(aside) > 4 else ''}): "
                   "kept for you to inspect; itertrain never deletes them")
    return out


def _fmt(v, spec: str = ".3f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def _declared(template: str, value) -> str:
    """An objective's metric on its line: its template ("reward margin {:.3f}") filled, or left
    empty where the value is unknown."""
    return template.format(value) if value is not None else re.sub(r"\{[^}]*\}", "", template)


def _finished(iso: str | None) -> str:
    """2026-12-01T18:31:18+00:00 -> 12-01 18:31 (UTC), short enough for 80 columns."""
    return f"{iso[5:10]} {iso[11:16]}" if iso and len(iso) >= 16 else ""


def show(r: dict, console=None) -> None:
    """The report for people: fits 80 columns (a terminal that narrow, or a pipe), no cell cut
    mid-word; long notes go below their table, one line each."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    compact = dict(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))  # one space between columns
    its = Table(title=f"itertrain status: {r['output_dir']}", **compact)
    for col in ("it", "state", "acc", "accept", "kept/gen", "step", "loss", "secs", "finished"):
        its.add_column(col, justify="left" if col in ("state", "finished") else "right", no_wrap=col != "state",
                       min_width=12 if col == "state" else None)
    for row in r["iterations"]:
        samples = "" if row["num_generated"] is None else f"{row['num_kept'] if row['num_kept'] is not None else '-'}" \
            f"/{row['num_generated']}"  # (- : trained on every rollout, grpo)
        its.add_row(str(row["iteration"]), row["state"], _fmt(row["eval_accuracy"]), _fmt(row["acceptance_rate"]),
                    samples, _fmt(row["global_step"]), _fmt(row["train_loss"], ".4f"), _fmt(row["seconds"], ".0f"),
                    _finished(row["finished"]))
    console.print(its)
    console.print("acc = eval accuracy, accept = kept/generated, secs = time on it, finished in UTC",
                  highlight=False, style="dim")
    declared = [m for m in objectives.metrics() if m.status]
    for row in r["iterations"]:  # an objective's own metrics: a line per iteration, below the table
        if shown := [_declared(m.status, row[m.key]) for m in declared if m.key in row]:
            console.print(f"{row['objective']}: iteration {row['iteration']}: {', '.join(shown)}", highlight=False)
    if stopped := r["last_stop"]:
        console.print(f"stopped: {stopped['reason']} in the {stopped['phase']} phase of iteration {stopped['iteration']} "
                      f"at global step {stopped['global_step']} ({stopped['time']}); committed: {stopped['committed']}",
                      highlight=False)
    if (batch := r.get("settings", {}).get("batch")) and batch["note"]:
        console.print(f"batch: {batch['note']}", highlight=False)
    if mirror := r.get("mirror"):
        where = [a["location"] for a in r["artifacts"]]
        console.print(f"mirror: {mirror['url']}: {where.count(mirrored.MIRRORED)} mirrored, "
                      f"{where.count(mirrored.UPLOADING)} uploading, {where.count(mirrored.LOCAL)} only here, "
                      f"{where.count(mirrored.ONLY_MIRROR)} only on the mirror", highlight=False)
    ck = Table(title="checkpoints", **compact)
    for col in ("checkpoint", "it", "step", "state", "size", *(("where",) if r.get("mirror") else ()), "note"):
        ck.add_column(col, no_wrap=True, justify="right" if col in ("it", "step", "size") else "left")
    notes = []
    for c in r["checkpoints"]:
        local = "" if c["local_step"] is None else f"{c['local_step']}/{c['iteration_steps']}"
        if c["why"]:
            notes.append(f"[{len(notes) + 1}] {c['name']}: {c['why']}")
        ck.add_row(c["name"], str(c["iteration"]), local, c["state"], f"{c['size'] / 1e6:.1f} MB",
                   *((c["location"],) if r.get("mirror") else ()), f"[{len(notes)}]" if c["why"] else "")
    console.print(ck)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True, markup=False)
    plan = r["plan"]
    if "error" in plan:
        console.print(f"plan: [red]{plan['error']}[/red]")
    else:
        console.print(f"plan: [bold]{plan['strategy']}[/bold], weights from {plan['weights_from'] or '--model_name'}, "
                      f"state from {plan['state_from'] or 'fresh'}, next iteration {plan['next_iteration']} at step "
                      f"{plan['next_step']}{' (complete)' if plan['done'] else ''}")
        console.print(f"reason: {plan['reason']}", highlight=False)
        for w in plan["warnings"]:
            console.print(f"warning: {w}", highlight=False)
    for h in r["hints"]:
        console.print(f"hint: {h}", highlight=False, soft_wrap=True)
