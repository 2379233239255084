"""Two revisions of itertrain measured side by side: did a change move a figure, or did the machine?

Each revision is checked out in a worktree of its own and each measurement runs in a fresh process
with that revision's bench and package, the two revisions alternated (before, after, after, before,
...), so that both see the same machine at the same time. A figure is the revision's own bench
function, so it compares with the baseline of its own process as `make bench` does; the seconds of
each side are printed as well, as the baseline itself moves with the machine (disk writeback above
all). Prints one JSON line per measurement and a table of medians.
Usage: python bench/before_after.py BEFORE [AFTER] [--figures stall resume stop] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = {  # name: (one pair of the bench call in a revision's bench/, our seconds, the baseline's seconds)
    "stall": (lambda run, stop_bench, w: run.checkpoint_stall(w, 1, *run.MAIN_SIZE, every=10),
              "seconds_blocked_ours", "seconds_blocked_hf"),
    "resume": (lambda run, stop_bench, w: run.resume(w, 1), None, "seconds_hf_resume"),
    "throughput": (lambda run, stop_bench, w: run.train_throughput(w, 1, 200), None, None),
    "stop": (lambda run, stop_bench, w: stop_bench.stop_latency(w, 1, run.MAIN_SIZE), "seconds_to_stop",
             "seconds_hf_save"),
}


def child(tree: str, figure: str) -> None:
    sys.path[:0] = [f"{tree}/bench", f"{tree}/src"]
    os.chdir(tree)
    import run  # the revision's own bench; it puts its own src first
    import stop_bench

    import itertrain

    work = Path(tempfile.mkdtemp(prefix="before-after-"))
    r = FIGURES[figure][0](run, stop_bench, work)
    shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps({"value": r["value"], "ours_s": r.get(FIGURES[figure][1] or "", None),
                                  "base_s": r.get(FIGURES[figure][2] or ""), "package": itertrain.__file__}))


def measure(tree: Path, figure: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", str(tree), figure], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise SystemExit(f"{figure} at {tree} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    out = json.loads(line[-1][7:])
    if not out["package"].startswith(str(tree)):
        raise SystemExit(f"{tree} measured another checkout's package: {out['package']}")
    return out


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after", nargs="?", default="HEAD")
    p.add_argument("--figures", nargs="+", choices=sorted(FIGURES), default=sorted(FIGURES))
    p.add_argument("--rounds", type=int, default=2, help="measurements of each revision per figure")
    args = p.parse_args()
    for rev in (args.before, args.after):
        if subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"],
                          capture_output=True).returncode:
            raise SystemExit(f"before_after.py: {rev!r} is not a revision of this repository")
    if args.before == args.after:
        raise SystemExit("before_after.py: BEFORE and AFTER are the same revision")
    base = Path(tempfile.mkdtemp(prefix="before-after-trees-"))
    trees = {}
    for rev in (args.before, args.after):
        trees[rev] = base / rev.replace("/", "_")
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(trees[rev]), rev],
                       check=True, capture_output=True)
    rows = {}
    try:
        for fig in args.figures:
            got = {rev: [] for rev in trees}
            for i in range(args.rounds):
                order = (args.before, args.after) if i % 2 == 0 else (args.after, args.before)
                for rev in order:
                    got[rev].append(measure(trees[rev], fig))
                    print(json.dumps({"figure": fig, "rev": rev, **got[rev][-1]}), flush=True)
            rows[fig] = got
    finally:
        for t in trees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(t)], capture_output=True)
    print("\n| figure | revision | median ratio | runs | ours (s) | baseline (s) |\n|---|---|---:|---|---|---|")
    for fig, got in rows.items():
        for rev, runs in got.items():
            vals = [r["value"] for r in runs]
            secs = lambda k: ", ".join(f"{r[k]:.3f}" for r in runs if r[k] is not None) or "-"  # noqa: E731
            print(f"| {fig} | {rev} | {statistics.median(vals):.3f} | {', '.join(f'{v:.3f}' for v in vals)} "
                  f"| {secs('ours_s')} | {secs('base_s')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
