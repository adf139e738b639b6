"""What the user must hear even while a spinner owns the terminal: an instance adopted or destroyed on their behalf."""

from __future__ import annotations

import sys
from collections.abc import Callable


def _stderr(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr, flush=True)


_sink: Callable[[str], None] = _stderr


def say(msg: str) -> None:
    _sink(msg)


def set_sink(fn: Callable[[str], None]) -> None:
    global _sink
    _sink = fn
