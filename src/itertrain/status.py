"""`itertrain status OUTPUT_DIR [--resume_from X] [--resume_from_iteration Y] [--json]`.

Every artifact with kind, iteration, global step, state and size, and the plan those flags would
give. Reads manifests only; writes nothing. --json prints one JSON object and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from itertrain import inventory
from itertrain.plan import PlanError, Request, make_plan
from itertrain.selectors import SelectorError, parse_checkpoint_selector, parse_iteration_selector

SAVED_CONFIG = "itertrain_config.json"


def saved_settings(output_dir: str) -> dict:
    try:
        with open(os.path.join(output_dir, SAVED_CONFIG), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itertrain status", description=__doc__.splitlines()[0])
    p.add_argument("output_dir")
    p.add_argument("--resume_from", default="auto")
    p.add_argument("--resume_from_iteration", default="auto")
    p.add_argument("--num_iterations", type=int, default=None, help="default: the experiment's own")
    p.add_argument("--max_steps", type=int, default=None, help="default: the experiment's own")
    p.add_argument("--carry_optimizer_state", action="store_true", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, nothing else")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        req = _request(args)
    except (SelectorError, ValueError) as e:
        print(f"itertrain status: error: {e}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.output_dir):
        print(f"itertrain status: error: {args.output_dir} is not a directory", file=sys.stderr)
        return 2
    saved = saved_settings(args.output_dir)
    max_steps = args.max_steps or saved.get("iteration_steps") or 300
    artifacts, names = inventory.scan(args.output_dir, max_steps)
    try:
        plan = make_plan(artifacts, req, existing=names, stamp="<time>").to_json()
    except PlanError as e:
        plan = {"error": str(e)}
    rows = [asdict(a) for a in sorted(artifacts, key=lambda a: (a.kind, a.sort_key()))]
    if args.json:
        print(json.dumps({"output_dir": args.output_dir, "artifacts": rows, "plan": plan}))
        return 0
    _show(args.output_dir, rows, plan)
    return 0


def _request(args) -> Request:
    saved = saved_settings(args.output_dir) if os.path.isdir(args.output_dir) else {}
    carry = args.carry_optimizer_state if args.carry_optimizer_state is not None else saved.get("carry_optimizer_state", False)
    return Request(parse_checkpoint_selector(args.resume_from), parse_iteration_selector(args.resume_from_iteration),
                   args.num_iterations or saved.get("num_iterations") or 5, bool(carry))


def _show(output_dir: str, rows: list[dict], plan: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"itertrain status: {output_dir}")
    for col in ("artifact", "kind", "iteration", "global step", "state", "size", "note"):
        table.add_column(col, no_wrap=col == "artifact")
    for r in rows:
        table.add_row(r["name"], r["kind"], str(r["iteration"]), str(r["global_step"]), r["state"],
                      f"{r['size'] / 1e6:.1f} MB", r["why"])
    console = Console()
    console.print(table)
    if "error" in plan:
        console.print(f"plan: [red]{plan['error']}[/red]")
        return
    console.print(f"plan: [bold]{plan['strategy']}[/bold], weights from {plan['weights_from'] or '--model_name'}, "
                  f"state from {plan['state_from'] or 'fresh'}, next iteration {plan['next_iteration']} at step "
                  f"{plan['next_step']}{' (complete)' if plan['done'] else ''}")
    console.print(f"reason: {plan['reason']}")
    for w in plan["warnings"]:
        console.print(f"warning: {w}")
