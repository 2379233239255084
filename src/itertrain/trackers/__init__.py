"""Trackers: where a run's curves go besides metrics.jsonl (--report_to tensorboard, wandb, mlflow).

One tracker run per experiment, on the experiment's global-step axis. At every start a tracker is
given the committed history (each finished iteration's per-step loss and learning rate and its
metrics, then the curve of the checkpoint being resumed) and catches up from it; then the live steps
follow. Nothing is logged twice after a crash: TensorBoard's files are rewritten from that history,
W&B and MLflow skip every step they already hold. The run ids live in <output_dir>/trackers.json; a
new branch (a start that sets later progress aside) starts new runs and keeps the earlier ids there.
Only rank 0 opens trackers, and only the libraries asked for are imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os

from itertrain.core import commit
from itertrain.core.errors import TrackerError
from itertrain.runtime import dist

RECORD = "trackers.json"
# --report_to name (also the extra that installs it): (module here, the package it needs)
KINDS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb_run", "wandb"),
         "mlflow": ("mlflow_run", "mlflow")}


def problems(report_to: list[str]) -> list[str]:
    """What stops the asked-for trackers from working, found without importing them."""
    out = []
    for kind, (_, package) in KINDS.items():
        if kind in report_to and importlib.util.find_spec(package) is None:
            out.append(f"--report_to {kind} needs {package}: pip install 'itertrain[{kind}]'")
    if "mlflow" in report_to and not out:
        from itertrain.trackers import mlflow_run

        out += mlflow_run.problems()
    return out


class Trackers:
    """The opened trackers, as one: steps (live, from the Trainer), iteration metrics, close.

    A tracker that fails while the run goes on (a server gone, a full disk under its files) is
    dropped for the rest of the run with one line saying so: a week of training is not stopped for
    a dashboard, and the next start catches the tracker up from the committed curves."""

    def __init__(self, opened: list):
        self.opened = opened

    def _each(self, what: str, *args) -> None:
        for t in list(self.opened):
            try:
                getattr(t, what)(*args)
            except Exception as e:  # noqa: BLE001 - reported, and made good by the next start
                self.opened.remove(t)
                dist.log0(f"⚠️  {t.kind}: {what} failed ({type(e).__name__}: {_first_line(e)}); "
                          "not logging to it for the rest of this run: the next start catches it up")

    def steps(self, first_step: int, losses: list[float], lrs: list[float], extra: dict | None = None) -> None:
        """Steps first_step, first_step + 1, ...: their loss, learning rate and the objective's own values
        ({TRL's name: a value per step})."""
        self._each("steps", first_step, losses, lrs, extra)

    def iteration(self, metrics: dict) -> None:
        self._each("iteration", metrics)

    def final_model(self, path: str, metrics: dict) -> None:
        self._each("final_model", os.path.abspath(path), metrics)

    def close(self, outcome: str) -> None:
        """outcome: finished (every iteration done), stopped (a stop request: resumable) or failed."""
        self._each("close", outcome)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def read_record(output_dir: str) -> dict:
    try:
        with open(os.path.join(output_dir, RECORD), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TrackerError(f"{os.path.join(output_dir, RECORD)} cannot be read ({e}): it holds the ids of this "
                           "experiment's tracker runs; mend or remove it (a new run is then started)") from None


def open_all(output_dir: str, report_to: list[str], history: list, branch: bool, settings: dict,
             name: str) -> Trackers:
    """Rank 0: open (resume or start) each asked-for tracker and catch it up with `history`."""
    record = read_record(output_dir)
    opened = []

    def keep(kind: str, entry: dict | None) -> None:
        if entry is not None and record.get(kind) != entry:
            record[kind] = entry
            commit.atomic_write_json(os.path.join(output_dir, RECORD), record)

    for kind, (module, _) in KINDS.items():
        if kind not in report_to:
            continue
        prior = record.get(kind)
        if prior and branch:
            record.setdefault("earlier", []).append({kind: prior})
            dist.log0(f"📈 {kind}: this start sets later progress aside (a new branch), so it starts a new run; "
                      f"the earlier run ({prior.get('id')}) is left as it was and listed in {RECORD}")
            prior = None
        tracker = importlib.import_module(f"itertrain.trackers.{module}").Tracker(output_dir, prior, settings, name)
        tracker.kind = kind
        keep(kind, tracker.record)  # a chosen id is on disk before the run is opened
        try:
            tracker.start()
            keep(kind, tracker.record)
            tracker.catch_up(history)
        except Exception as e:  # noqa: BLE001 - said in one line; the next start catches it up
            # (a store that cannot be reached or read: seen with an MLflow database whose creation a
            # kill cut short). An unattended resume goes on training; nothing it logs is lost.
            dist.log0(f"⚠️  {kind}: cannot be opened ({type(e).__name__}: {_first_line(e)}); this run goes on "
                      "without it, and the next start that can open it catches it up")
            continue
        dist.log0(tracker.describe())
        opened.append(tracker)
    return Trackers(opened)
