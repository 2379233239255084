"""`itertrain plot OUTPUT_DIR [-o file.png]`: an experiment's progress as one PNG.

Top: the training loss of every optimizer step on the global-step axis, each iteration shaded (an
iteration still in training is drawn from its newest checkpoint). Bottom: eval accuracy and
acceptance rate per iteration. Reads manifests only (matplotlib, headless).
"""

from __future__ import annotations

import argparse
import os
import sys

from itertrain.app import settings
from itertrain.core import curve, defaults, inventory
from itertrain.core.names import CHECKPOINT, COMPLETE, Artifact
from itertrain.training import objectives


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itertrain plot", description=__doc__.splitlines()[0])
    p.add_argument("output_dir")
    p.add_argument("-o", "--output", default=None, help="PNG to write (default: OUTPUT_DIR/progress.png)")
    return p


def series(output_dir: str) -> tuple[list[dict], dict | None]:
    """Finished iterations (iteration, offset, loss curve, metrics) and the one in training, if any."""
    max_steps = settings.saved(output_dir).get("iteration_steps") or defaults.MAX_STEPS
    done = [{**it, "loss": (it["curve"] or {}).get("loss", [])} for it in curve.committed(output_dir, max_steps)]
    artifacts, _ = inventory.scan(output_dir, max_steps)
    ckpts = [a for a in artifacts if a.kind == CHECKPOINT and a.state == COMPLETE]
    newest = max(ckpts, key=Artifact.sort_key, default=None)
    current = None
    if newest is not None and newest.iteration > max((d["iteration"] for d in done), default=-1):
        loss = (curve.read(os.path.join(output_dir, newest.name)) or {}).get("loss", [])
        current = {"iteration": newest.iteration, "offset": newest.global_step - len(loss), "loss": loss,
                   "end": newest.global_step - (newest.local_step or 0) + (newest.iteration_steps or 0)}
    return done, current


def draw(output_dir: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, current = series(output_dir)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    fig.suptitle(f"itertrain: {os.path.abspath(output_dir)}", fontsize=11)
    for i, it in enumerate(done + ([current] if current else [])):
        in_progress = it is current
        top.axvspan(it["offset"], it["end"], color="#e8eef7" if i % 2 == 0 else "#f5f5f5", zorder=0)
        label = f"iter {it['iteration']}" + (" (training)" if in_progress else "")
        top.text((it["offset"] + it["end"]) / 2, 1.01, label, transform=top.get_xaxis_transform(), ha="center",
                 va="bottom", fontsize=8, color="#555555")
        if it["loss"]:
            xs = range(it["offset"] + 1, it["offset"] + len(it["loss"]) + 1)
            top.plot(xs, it["loss"], color="#d62728" if in_progress else "#1f77b4", linewidth=1)
    top.set_xlabel("global optimizer step")
    top.set_ylabel("training loss (per step)")
    top.grid(alpha=0.3)
    top.margins(x=0)
    ks = [d["iteration"] for d in done]
    lines = [("eval_accuracy", "eval accuracy", "#2ca02c", 6),
             ("acceptance_rate", "acceptance rate (kept / generated)", "#ff7f0e", -13)]
    colors = iter(("#9467bd", "#8c564b", "#e377c2", "#17becf"))
    for m in objectives.metrics():  # an objective's own, where it logged them
        if m.plot and any(m.key in d["metrics"] for d in done):
            lines.append((m.key, m.plot, next(colors, "#7f7f7f"), 6))
    for key, name, color, dy in lines:
        ys = [d["metrics"].get(key) for d in done]
        bottom.plot(ks, ys, marker="o", color=color, label=name)
        for k, y in zip(ks, ys, strict=True):
            if y is not None:
                bottom.annotate(f"{y:.2f}", (k, y), textcoords="offset points", xytext=(0, dy), ha="center", fontsize=8)
    bottom.set_xlabel("iteration")
    bottom.set_ylabel("per iteration")
    bottom.set_ylim(-0.12, 1.12)
    bottom.set_xticks(ks or [0])
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not os.path.isdir(args.output_dir):
        print(f"itertrain plot: error: {args.output_dir} is not a directory", file=sys.stderr)
        return 2
    done, current = series(args.output_dir)
    if not done and current is None:
        print(f"itertrain plot: error: nothing to plot yet in {args.output_dir} (no committed iteration or "
              "checkpoint)", file=sys.stderr)
        return 2
    path = args.output or os.path.join(args.output_dir, "progress.png")
    try:
        draw(args.output_dir, path)
    except OSError as e:
        print(f"itertrain plot: error: cannot write {path} ({e.strerror})", file=sys.stderr)
        return 1
    print(path)
    return 0
