"""What the training jobs' files say, parsed (pure functions of text read from the instance): status files, logs
(progress, loss, validation, checkpoints, OOM retries), ETA from epoch timing, nvidia-smi and load samples."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime

_PROGRESS = re.compile(r"^epoch (\d+)/(\d+) step (\d+) loss ([-+0-9.eE]+|nan|inf)\s*$")
_VALID = re.compile(r"^validation epoch (\d+) mse ([-+0-9.eE]+) cos_sim ([-+0-9.eE]+) dir_acc ([-+0-9.eE]+)")
_CKPT = re.compile(r"^checkpoint epoch (\d+) -> (\S+)")
_RESUMED = re.compile(r"^train-vfn: resumed from (\S+) at epoch (\d+)")
_JOBSTART = re.compile(r"^volt-job: (\S+) start (\S+) attempt (\d+)(?: batch (\d+))?")
_CODEBOOK = re.compile(r"^codebook-init: (encoded \d+/\d+ files|kmeans iter \d+/\d+.*|wrote .*)$")


def parse_status(text: str) -> dict[str, str]:
    """A <job>.status file (key=value lines) -> dict. Unknown lines are ignored."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass
class LogProgress:
    epoch: int | None = None            # epoch of the last progress line
    epochs: int | None = None
    step: int | None = None
    loss: float | None = None
    last_checkpoint: int | None = None  # last epoch whose checkpoint was written
    validation: dict[str, float] = field(default_factory=dict)  # last validation line
    resumed_from: str | None = None
    resumed_epoch: int | None = None
    attempts: int = 0                   # "volt-job: ... start" lines
    batch_size: int | None = None       # of the last attempt
    errors: list[str] = field(default_factory=list)
    oom: int = 0                        # out-of-memory failures
    activity: str | None = None         # last progress line of a job without epochs (codebook-init)


def parse_log(text: str) -> LogProgress:
    """Progress of one job from its log (appended across restarts: the last run counts)."""
    p = LogProgress()
    for line in text.splitlines():
        line = line.strip()
        if m := _PROGRESS.match(line):
            p.epoch, p.epochs, p.step, p.loss = int(m[1]), int(m[2]), int(m[3]), float(m[4])
        elif m := _VALID.match(line):
            p.validation = {"epoch": int(m[1]), "mse": float(m[2]), "cos_sim": float(m[3]), "dir_acc": float(m[4])}
        elif m := _CKPT.match(line):
            p.last_checkpoint = int(m[1])
        elif m := _RESUMED.match(line):
            p.resumed_from, p.resumed_epoch = m[1], int(m[2])
        elif m := _JOBSTART.match(line):
            p.attempts += 1
            p.batch_size = int(m[4]) if m[4] else None
        elif line.startswith("ERROR:"):
            p.errors.append(line)
            if "out of memory" in line:
                p.oom += 1
        elif m := _CODEBOOK.match(line):
            p.activity = m[1]
    return p


def loss_series(text: str) -> list[tuple[int, float]]:
    """(step, loss) of every progress line, by step; a step logged again after a resume keeps the later value."""
    by_step: dict[int, float] = {}
    for line in text.splitlines():
        if m := _PROGRESS.match(line.strip()):
            by_step[int(m[3])] = float(m[4])
    return sorted(by_step.items())


def validation_series(text: str) -> list[tuple[int, int, float]]:
    """(epoch, step at that epoch's end, validation mse), the last run winning per epoch."""
    out: dict[int, tuple[int, float]] = {}
    step = 0
    for line in text.splitlines():
        line = line.strip()
        if m := _PROGRESS.match(line):
            step = int(m[3])
        elif m := _VALID.match(line):
            out[int(m[1])] = (step, float(m[2]))
    return [(e, s, mse) for e, (s, mse) in sorted(out.items())]


def iso_ts(value: str | None) -> float | None:
    """'2025-01-31T12:00:00Z' -> epoch seconds (None for empty or unparsable)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def eta_seconds(epochs: int | None, checkpoints: dict[int, float], now: float, since: float | None = None) -> float | None:
    """Seconds left, from epoch timing: checkpoints maps epoch -> time its checkpoint was written.

    Epoch durations are the gaps between consecutive epochs' checkpoints written after `since` (the current
    attempt's start; a gap across a restart would count the downtime), plus the first such epoch measured
    from `since`. None until one epoch of this run has finished; 0 when every epoch is done.
    """
    if not epochs or not checkpoints:
        return None
    last = max(checkpoints)
    if last >= epochs:
        return 0.0
    recent = sorted((e, t) for e, t in checkpoints.items() if since is None or t >= since)
    durations = [t2 - t1 for (e1, t1), (e2, t2) in zip(recent, recent[1:], strict=False) if e2 == e1 + 1 and t2 >= t1]
    if since is not None and recent and recent[0][1] >= since:
        durations.append(recent[0][1] - since)
    if not durations:
        return None
    per_epoch = sum(durations) / len(durations)
    return max(0.0, (epochs - last) * per_epoch - max(0.0, now - checkpoints[last]))


@dataclass
class Gpu:
    index: int
    util_pct: float
    mem_used_mib: float
    mem_total_mib: float


def parse_gpu(samples: list[str]) -> list[Gpu] | None:
    """nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits output, one text per
    sample -> per GPU the mean utilization and the last memory; None when there is no usable output (no nvidia-smi)."""
    per_gpu: dict[int, list[tuple[float, float, float]]] = {}
    for text in samples:
        rows = [ln for ln in text.splitlines() if ln.strip()]
        for i, row in enumerate(rows):
            parts = [p.strip() for p in row.split(",")]
            try:
                util, used, total = (float(x) for x in parts[:3])
            except ValueError:
                continue  # "[N/A]", an error message
            per_gpu.setdefault(i, []).append((util, used, total))
    if not per_gpu:
        return None
    return [Gpu(i, sum(v[0] for v in vals) / len(vals), vals[-1][1], vals[-1][2]) for i, vals in sorted(per_gpu.items())]


def parse_loadavg(text: str) -> tuple[float, float, float] | None:
    try:
        a, b, c = text.split()[:3]
        return float(a), float(b), float(c)
    except ValueError:
        return None


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"
