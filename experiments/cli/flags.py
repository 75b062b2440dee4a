"""One flag style across the command-line tools, the training CLI's: underscores (`--ckpt_path`,
`--max_side`), `--output` for what a tool writes, dotted where the flag is a data option (`--data.root`).
The spellings of earlier releases stay accepted, hidden from `--help`, for one release."""
from __future__ import annotations

import argparse
from typing import Any


def add_flag(container: Any, flag: str, *old: str, **kwargs: Any) -> argparse.Action:
    """`container.add_argument(flag, **kwargs)` (a parser or an argument group) plus each `old` spelling as a
    hidden alias of the same option (same destination and action; it sets no default of its own). A required flag is one of a required
    group: either spelling satisfies it, and the error names the new one only."""
    if kwargs.pop("required", False) and old:
        container = container.add_mutually_exclusive_group(required=True)
    action = container.add_argument(flag, **kwargs)
    alias = {**kwargs, "dest": action.dest, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
    for spelling in old:
        container.add_argument(spelling, **alias)
    return action
