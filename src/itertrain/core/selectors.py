"""Parsing of --resume_from / --resume_from_iteration values. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from itertrain.core.errors import SelectorError

NONE = "none"
AUTO = "auto"

CHECKPOINT_FORMS = "'none', 'auto' or a step number N (for checkpoint-N)"
ITERATION_FORMS = "'none', 'auto' or iter_K (K = 0, 1, 2, ...)"


@dataclass(frozen=True)
class Selector:
    mode: str  # NONE, AUTO or "explicit"
    number: int | None = None  # N of checkpoint-N, K of iter_K

    @property
    def explicit(self) -> bool:
        return self.mode == "explicit"

    def __str__(self) -> str:
        return self.mode if self.number is None else str(self.number)


def parse_checkpoint_selector(value: str | None) -> Selector:
    v = (value or "").strip()
    if v.lower() in (NONE, AUTO):
        return Selector(v.lower())
    if re.fullmatch(r"\d+", v):
        return Selector("explicit", int(v))
    raise SelectorError(f"--resume_from {value!r} is not valid: use {CHECKPOINT_FORMS}")


def parse_iteration_selector(value: str | None) -> Selector:
    v = (value or "").strip()
    if v.lower() in (NONE, AUTO):
        return Selector(v.lower())
    if m := re.fullmatch(r"iter_(\d+)", v):
        return Selector("explicit", int(m.group(1)))
    raise SelectorError(f"--resume_from_iteration {value!r} is not valid: use {ITERATION_FORMS}")
