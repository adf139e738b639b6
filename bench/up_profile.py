"""Reading an `up` run's playbook log written with the profile_tasks callback: each task's start and duration,
seconds per role, whether the build came from the cache (bench/time_to_gpu.py's per-task figures)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path


def playbook_log(stdout: str) -> Path | None:
    m = re.search(r"log: (\S+\.log)", stdout)
    return Path(m.group(1)) if m else None


def task_blocks(text: str) -> dict[str, str]:
    """'role : task name' -> the text under its TASK header (the last block of that name)."""
    out = {}
    for block in text.split("\nTASK [")[1:]:
        name, _, rest = block.partition("]")
        out[name.strip()] = rest
    return out


_TASK = re.compile(r"^TASK \[(.+?)\] \*+\n\S.*?\((\d+):(\d+):(\d+\.\d+)\) +(\d+):(\d+):(\d+\.\d+) \*+", re.M)
_RECAP = re.compile(r"^TASKS RECAP \*+\n\S.*?\((\d+):(\d+):(\d+\.\d+)\) +(\d+):(\d+):(\d+\.\d+)", re.M)


def _secs(h: str, m: str, s: str) -> float:
    return int(h) * 3600 + int(m) * 60 + float(s)


def task_times(text: str) -> list[tuple[str, float, float]]:
    """(task, playbook second it started at, its duration), from profile_tasks' line under each TASK header
    (which gives the previous task's duration and the time elapsed so far)."""
    hits = [(m.group(1), _secs(*m.group(2, 3, 4)), _secs(*m.group(5, 6, 7))) for m in _TASK.finditer(text)]
    end = _RECAP.search(text)
    last = _secs(*end.group(1, 2, 3)) if end else 0.0
    return [(name, at, hits[i + 1][1] if i + 1 < len(hits) else last) for i, (name, _, at) in enumerate(hits)]


def playbook_total(text: str) -> float | None:
    end = _RECAP.search(text)
    return _secs(*end.group(4, 5, 6)) if end else None


def slowest(times: list[tuple[str, float, float]], n: int) -> list[tuple[str, float]]:
    return [(name, round(d, 2)) for name, _, d in sorted(times, key=lambda t: -t[2])[:n]]


def by_role(times: list[tuple[str, float, float]], until: float | None = None) -> dict[str, float]:
    """Seconds per role (tasks of the play itself: "play"), of the tasks that started before `until`."""
    out: dict[str, float] = {}
    for name, at, d in times:
        if until is None or at < until:
            role = name.split(" : ", 1)[0] if " : " in name else "play"
            out[role] = round(out.get(role, 0.0) + d, 1)
    return out


def build_span(stamps: list[str]) -> float | None:
    """Seconds between the first two ISO stamps (build.log's start and done lines)."""
    return (datetime.fromisoformat(stamps[1]) - datetime.fromisoformat(stamps[0])).total_seconds() if len(stamps) >= 2 else None


def first_start(times: list[tuple[str, float, float]], prefix: str) -> float | None:
    return next((at for name, at, _ in times if name.startswith(prefix)), None)


def cache_hit(text: str) -> bool:
    blocks = task_blocks(text)
    restored = any(k.startswith("repo_build : Restore the cached binaries") and "changed:" in v for k, v in blocks.items())
    compiled = any(k.startswith("repo_build : Start cargo build") and "changed:" in v for k, v in blocks.items())
    return restored and not compiled
