"""TensorBoard (--report_to tensorboard): one run per experiment, on the global-step axis.

HF's own TensorBoard callback counts steps per iteration (every iteration restarts at 0) and, after
a resume, logs again the steps between the checkpoint and the crash. Here the event files are
derived data instead: at start, rank 0 rewrites <output_dir>/tensorboard/ from what is committed
(each finished iteration's per-step loss and learning rate and its metrics, plus the curve of the
checkpoint being resumed), then the live run appends only steps after that. A resumed run thus
continues the same curves, with no step written twice and none going backwards.
"""

from __future__ import annotations

import os
import shutil

from itertrain import commit

DIR = "tensorboard"
ITERATION_SCALARS = ("eval_accuracy", "acceptance_rate", "pass_at_k", "train_loss", "num_train_samples",
                     "num_pairs", "dpo_reward_margin", "dpo_reward_accuracy")  # (the last three: --objective dpo)


def available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


class Board:
    def __init__(self, logdir: str, suffix: str):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir, filename_suffix=suffix, flush_secs=10)

    def steps(self, first_step: int, losses: list[float], lrs: list[float]) -> None:
        for i, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
            self.writer.add_scalar("train/loss", loss, first_step + i)
            self.writer.add_scalar("train/learning_rate", lr, first_step + i)
        self.writer.flush()

    def iteration(self, metrics: dict) -> None:
        for key in ITERATION_SCALARS:
            if metrics.get(key) is not None:
                self.writer.add_scalar(f"iteration/{key}", metrics[key], metrics["global_step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(output_dir: str, history: list[tuple[int, dict | None, dict | None]]) -> Board:
    """Rewrite the run from `history` ((step offset, curve, iteration metrics or None), oldest
    first), swap it in for the old event files, and return a writer for the live steps."""
    staged = commit.fresh_staging(output_dir, DIR)
    past = Board(staged, ".0-history")
    for offset, curve, metrics in history:
        if curve:
            past.steps(offset + 1, curve["loss"], curve["lr"])
        if metrics:
            past.iteration(metrics)
    past.close()
    final, old = os.path.join(output_dir, DIR), commit.staging_path(output_dir, f"{DIR}-old")
    replacing = os.path.lexists(final)
    if replacing:
        os.rename(final, old)  # .staging is emptied at every start: no earlier `old` is there
    os.rename(staged, final)
    commit.fsync_dir(output_dir)
    if replacing:
        shutil.rmtree(old)
    return Board(final, f".1-live-{os.getpid()}")
