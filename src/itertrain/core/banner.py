"""The start-up banner, in the look of the seed guide's 系统日志 section. Pure text."""

from __future__ import annotations

import os

from itertrain.core.names import CHECKPOINT, COMPLETE, ITERATION, UNVERIFIED, Artifact
from itertrain.core.plan import BOTH, ITERATION_STRATEGY, SCRATCH, TRAINER, Plan

RULE, THIN = "=" * 60, "-" * 60

_HEADLINES = {
    SCRATCH: "🆕 NO checkpoint selected - starting from scratch",
    TRAINER: "📁 TRAINER checkpoint - resuming its full training state",
    ITERATION_STRATEGY: "🎯 ITERATION model - weights only, fresh training state",
    BOTH: "🔀 BOTH checkpoints found - using ITERATION model for weights",
}


def _found(a: Artifact, path: str) -> list[str]:
    tag = "" if a.state == COMPLETE else " (UNVERIFIED: no itertrain manifest)"
    note = [] if a.state == COMPLETE else [f"   ⚠️  {a.why}"]
    if a.kind == CHECKPOINT:
        return [f"📁 Found trainer checkpoint: {path}{tag}", f"   ✅ Contains: {a.contents()}", *note]
    lines = [f"🎯 Found COMPLETE iteration {a.iteration} model: {path}{tag}",
             f"   ⚠️  Contains: {a.contents()}", *note]
    if a.needs_config:
        lines.append("   🛠  config.json missing: created from --model_name when training starts")
    return lines


def render(output_dir: str, inventory: list[Artifact], plan: Plan, model_name: str) -> str:
    remote = {a.name: a.where for a in inventory if a.where}

    def p(name: str | None) -> str:
        if name in remote:  # only the mirror had it when the plan was made
            return f"{remote[name]}/{name} (from the mirror)"
        return os.path.join(output_dir, name) if name else f"{model_name} (--model_name)"

    lines = [RULE, "CHECKPOINT RECOVERY SYSTEM", RULE]
    usable = [a for a in inventory if a.state in (COMPLETE, UNVERIFIED)]
    shown = {plan.weights_from, plan.state_from} - {None}
    for kind in (CHECKPOINT, ITERATION):
        of_kind = sorted((a for a in usable if a.kind == kind), key=Artifact.sort_key, reverse=True)
        if not of_kind:
            lines.append(f"∅ No complete {'trainer checkpoint' if kind == CHECKPOINT else 'iteration model'} found")
            continue
        chosen = [a for a in of_kind if a.name in shown] or of_kind[:1]
        for a in chosen:
            lines += _found(a, p(a.name))
        others = len(of_kind) - len(chosen)
        if others:
            lines.append(f"   (+{others} other complete {'checkpoints' if kind == CHECKPOINT else 'iteration models'}: "
                         "`itertrain status` lists them)")
    for s in plan.skipped:
        lines.append(f"⏭️  Skipped {p(s.artifact)}: {s.why}")
    lines += [THIN, "RECOVERY STRATEGY:", _HEADLINES[plan.strategy], f"   📋 Reason: {plan.reason}",
              f"   🎯 Model weights from: {p(plan.weights_from)}",
              f"   📁 Training state from: {p(plan.state_from) if plan.state_from else 'fresh (new optimizer/scheduler)'}"]
    if plan.done:
        lines.append("   ✅ Nothing to train: the experiment is complete")
    else:
        lines.append(f"   ▶️  Next: iteration {plan.next_iteration}, global step {plan.next_step}")
    for r in plan.renames:
        lines.append(f"   ✏️  Rename aside: {r.artifact} -> {r.to} ({r.why})")
    for r in plan.remote_renames:
        lines.append(f"   ✏️  Rename aside on the mirror: {r.artifact} -> {r.to} ({r.why})")
    for name in plan.create_config:
        lines.append(f"   🛠  Create {name}/config.json from --model_name")
    for w in plan.warnings:
        lines.append(f"   ⚠️  Warning: {w}")
    lines.append(RULE)
    return "\n".join(lines)
