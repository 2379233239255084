"""What every tracker logs, and how a tracker is caught up: shared by the tracker modules."""

from __future__ import annotations

from itertrain.training import objectives

# the loop's own per-iteration scalars; each objective adds those it declares (objectives.Metric)
ITERATION_SCALARS = ("eval_accuracy", "acceptance_rate", "pass_at_k", "train_loss", "num_train_samples")


def iteration_scalars() -> tuple[str, ...]:
    return ITERATION_SCALARS + tuple(m.key for m in objectives.metrics("iteration")
                                   if m.tracker and m.key not in ITERATION_SCALARS)


def iteration_values(metrics: dict) -> dict[str, float]:
    return {f"iteration/{k}": metrics[k] for k in iteration_scalars() if metrics.get(k) is not None}


def step_values(loss: float, lr: float, extra: dict[str, float] | None = None) -> dict[str, float]:
    """A step's scalars: its loss and learning rate, and the objective's own values (TRL's names under train/)."""
    return {"train/loss": loss, "train/learning_rate": lr, **{f"train/{k}": v for k, v in (extra or {}).items()}}


def each_step(losses: list[float], lrs: list[float], extra: dict[str, list] | None):
    """(i, loss, lr, the objective's values of step i) for the steps given."""
    for i, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
        yield i, loss, lr, {k: v[i] for k, v in (extra or {}).items() if i < len(v)}


def replay(tracker, history: list[tuple[int, dict | None, dict | None]]) -> None:
    """Hand `history` ((step offset, curve, iteration metrics or None), oldest first) to a tracker
    that skips what it already holds."""
    for offset, curve, metrics in history:
        if curve:
            tracker.steps(offset + 1, curve["loss"], curve["lr"], curve.get("steps"))
        if metrics:
            tracker.iteration(metrics)
