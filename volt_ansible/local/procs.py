"""Background processes the local world starts in sessions of their own (the delay relay, the package cache)."""

from __future__ import annotations

from pathlib import Path


def started_here(pid: int | None, module: str, verb: str) -> bool:
    """Whether `pid` runs `python -m <module> <verb>` (by its command line: a recycled pid is someone else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
    except OSError:
        return False
    return module.encode() in cmdline and verb.encode() in cmdline
