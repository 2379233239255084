"""TRL's own per-step values (DPO's reward margins, GRPO's rewards and KL), read for the loss curve."""

from __future__ import annotations


class TrlStepValues:
    """Mixed in before a TRL trainer: the values TRL logged since they were last read. TRL appends each
    micro-batch's value (already gathered over ranks) to self._metrics["train"] and clears them at its
    log."""

    _taken: dict[str, int] | None = None  # by key, how many of TRL's values were read

    def fresh_means(self, keys) -> dict[str, float]:
        """The mean of each key's values that TRL logged since the last call (keys without any: left out)."""
        taken = self._taken = self._taken or {}
        out = {}
        for key in keys:
            values = self._metrics["train"].get(key, [])
            new = values[taken.get(key, 0):]
            taken[key] = len(values)
            if new:
                out[key] = sum(new) / len(new)
        return out

    def log(self, logs, start_time=None):
        super().log(logs, start_time)
        self._taken = {}  # TRL cleared its values
