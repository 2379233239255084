"""Flags: an HfArgumentParser whose refusals are one-line UsageErrors, and {flag: value} as the
command-line words it parses (config files, and an objective's JSON of extra options)."""

from __future__ import annotations

import json

from transformers import HfArgumentParser

from itertrain.core.errors import UsageError


class Parser(HfArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block and exit
        raise UsageError(message)


def flag_words(data: dict) -> list[str]:
    """{flag: value} as command-line words for HfArgumentParser (a None value: left out)."""
    words = []
    for key, value in data.items():
        if value is None:
            continue
        words.append(f"--{key}")
        if isinstance(value, bool):
            words.append(str(value).lower())
        elif isinstance(value, list):
            words += [str(v) for v in value]
        elif isinstance(value, dict):
            words.append(json.dumps(value))
        else:
            words.append(str(value))
    return words
