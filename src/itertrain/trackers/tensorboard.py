"""TensorBoard (--report_to tensorboard): one run per experiment, on the global-step axis.

HF's own TensorBoard callback counts steps per iteration (every iteration restarts at 0) and, after
a resume, logs again the steps between the checkpoint and the crash. Here the event files are
derived data instead: at start, rank 0 rewrites <output_dir>/tensorboard/ from what is committed
(each finished iteration's per-step loss and learning rate and its metrics, plus the curve of the
checkpoint being resumed), then the live run appends only steps after that. A resumed run thus
continues the same curves, with no step written twice and none going backwards. A new branch
rewrites them from its own history the same way.
"""

from __future__ import annotations

import os
import shutil

from itertrain.core import commit
from itertrain.trackers.values import each_step, iteration_values, replay, step_values

DIR = "tensorboard"


class Writer:
    def __init__(self, logdir: str, suffix: str):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir, filename_suffix=suffix, flush_secs=10)

    def steps(self, first_step: int, losses: list[float], lrs: list[float], extra: dict | None = None) -> None:
        for i, loss, lr, own in each_step(losses, lrs, extra):
            for key, value in step_values(loss, lr, own).items():
                self.writer.add_scalar(key, value, first_step + i)
        self.writer.flush()

    def iteration(self, metrics: dict) -> None:
        for key, value in iteration_values(metrics).items():
            self.writer.add_scalar(key, value, metrics["global_step"])
        self.writer.flush()

    def close(self, outcome: str = "finished") -> None:
        self.writer.close()


class Tracker:
    record = None  # nothing to resume: the files are rewritten at every start

    def __init__(self, output_dir: str, prior: dict | None, settings: dict, name: str):
        self.output_dir = output_dir
        self.live: Writer | None = None

    def start(self) -> None:
        pass

    def catch_up(self, history: list) -> None:
        """Rewrite the run from `history`, swap it in for the old event files, open the live writer."""
        staged = commit.fresh_staging(self.output_dir, DIR)
        past = Writer(staged, ".0-history")
        replay(past, history)
        past.close()
        final, old = os.path.join(self.output_dir, DIR), commit.staging_path(self.output_dir, f"{DIR}-old")
        replacing = os.path.lexists(final)
        if replacing:
            os.rename(final, old)  # .staging is emptied at every start: no earlier `old` is there
        os.rename(staged, final)
        commit.fsync_dir(self.output_dir)
        if replacing:
            shutil.rmtree(old)
        self.live = Writer(final, f".1-live-{os.getpid()}")

    def describe(self) -> str:
        return f"📈 tensorboard: {os.path.join(self.output_dir, DIR)} rewritten from the committed history"

    def steps(self, first_step: int, losses: list[float], lrs: list[float], extra: dict | None = None) -> None:
        self.live.steps(first_step, losses, lrs, extra)

    def iteration(self, metrics: dict) -> None:
        self.live.iteration(metrics)

    def final_model(self, path: str, metrics: dict) -> None:
        pass  # TensorBoard has no artifacts

    def close(self, outcome: str) -> None:
        self.live.close()
