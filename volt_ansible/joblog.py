"""What the training jobs' files say, parsed (pure functions of text read from the instance): status files, logs
(progress, loss, validation, checkpoints, OOM retries), ETA from epoch timing, nvidia-smi and load samples."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime

_JOBSTART = re.compile(r"^volt-job: (\S+) start (\S+) attempt (\d+)(?: batch (\d+))?")


def parse_status(text: str) -> dict[str, str]:
    """A <job>.status file (key=value lines) -> dict. Unknown lines are ignored."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass
class LogProgress:
    epoch: int | None = None            # the epoch in progress (the last finished one when nothing runs after it)
    epochs: int | None = None           # from the epoch summaries
    epochs_done: int | None = None      # last epoch summary of the current run
    step: int | None = None             # step within the epoch
    steps: int | None = None            # steps per epoch
    loss: float | None = None
    last_checkpoint: str | None = None  # path of the last epoch checkpoint written
    validation: dict[str, float] = field(default_factory=dict)  # last epoch summary: epoch, train, valid
    epoch_seconds: list[float] = field(default_factory=list)    # each epoch's time in the current run
    resumed_from: str | None = None
    resumed_epoch: int | None = None
    attempts: int = 0                   # "volt-job: ... start" lines (the job script's)
    batch_size: int | None = None       # of the last attempt
    errors: list[str] = field(default_factory=list)
    oom: int = 0                        # out-of-memory failures
    cpu_fallback: str | None = None     # the binary's own line: a GPU job that went to the CPU (current run)
    activity: str | None = None         # last progress line of a job without epochs (codebook-init)


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _group(m: re.Match, name: str) -> str | None:
    return m.groupdict().get(name)


def parse_log(text: str, patterns: dict[str, re.Pattern] | None = None, oom_pattern: str = "", cpu_fallback: str = "") -> LogProgress:
    """Progress of one job from its log, read with the job's log_patterns (volt_ansible.logformat). The log is appended
    across attempts: each `volt-job: ... start` line starts a new run, whose lines count (errors and OOMs add up)."""
    pat = patterns or {}
    p = LogProgress()
    for raw in text.splitlines():
        line = raw.rstrip()
        if m := _JOBSTART.match(line):
            keep = (p.attempts + 1, p.errors, p.oom, p.epochs, p.last_checkpoint)
            p = LogProgress()
            p.attempts, p.errors, p.oom, p.epochs, p.last_checkpoint = keep
            p.batch_size = int(m[4]) if m[4] else None
            continue
        if cpu_fallback and cpu_fallback in line:
            p.cpu_fallback = line.strip()
        if oom_pattern and oom_pattern in line:
            p.oom += 1
        if (rx := pat.get("progress")) and (m := rx.search(line)):
            p.step, p.loss = int(m["step"]), _num(m["loss"])
            steps = _group(m, "steps")
            p.steps = int(steps) if steps and steps.isdigit() else p.steps
            p.epoch = (p.epochs_done or p.resumed_epoch or 0) + 1
        elif (rx := pat.get("epoch")) and (m := rx.search(line)):
            p.epoch = p.epochs_done = int(m["epoch"])
            p.epochs = int(m["epochs"])
            p.validation = {"epoch": p.epochs_done, **{k: v for k in ("train", "valid") if (v := _num(_group(m, k))) is not None}}
            if (secs := _num(_group(m, "seconds"))) is not None:
                p.epoch_seconds.append(secs)
        elif (rx := pat.get("checkpoint")) and (m := rx.search(line)):
            p.last_checkpoint = m["path"].strip()
        elif (rx := pat.get("resumed")) and (m := rx.search(line)):
            p.resumed_epoch = int(m["epoch"])
            p.resumed_from = (_group(m, "path") or "").strip() or None
            p.epoch = p.epochs_done = p.resumed_epoch
        elif (rx := pat.get("error")) and (m := rx.search(line)):
            p.errors.append(m["message"].strip())
        elif (rx := pat.get("activity")) and (m := rx.search(line)):
            p.activity = m["activity"].strip()
    return p


def loss_series(text: str, patterns: dict[str, re.Pattern] | None = None) -> list[tuple[int, float]]:
    """(global step, loss) of every progress line; a step logged again by a later run keeps the later value.
    The global step counts the epochs before (steps per epoch x finished epochs of that run)."""
    by_step: dict[int, float] = {}
    for step, _epoch, loss, _valid in _walk(text, patterns or {}):
        if loss is not None:
            by_step[step] = loss
    return sorted(by_step.items())


def validation_series(text: str, patterns: dict[str, re.Pattern] | None = None) -> list[tuple[int, int, float]]:
    """(epoch, global step at its end, validation loss) of every epoch summary, the last run winning per epoch."""
    out: dict[int, tuple[int, float]] = {}
    for step, epoch, _loss, valid in _walk(text, patterns or {}):
        if valid is not None and epoch is not None:
            out[epoch] = (step, valid)
    return [(e, s, v) for e, (s, v) in sorted(out.items())]


def _walk(text: str, pat: dict[str, re.Pattern]):
    """(global step, finished epoch or None, loss or None, validation or None) per progress line and epoch summary."""
    done, steps, step = 0, 0, 0
    for raw in text.splitlines():
        line = raw.rstrip()
        if _JOBSTART.match(line):
            done, steps, step = 0, 0, 0
        elif (rx := pat.get("progress")) and (m := rx.search(line)):
            s = _group(m, "steps")
            steps = int(s) if s and s.isdigit() else steps
            step = done * steps + int(m["step"])
            yield step, None, _num(m["loss"]), None
        elif (rx := pat.get("epoch")) and (m := rx.search(line)):
            done = int(m["epoch"])
            total = _group(m, "total_steps")
            step = int(total) if total and total.isdigit() else done * steps
            yield step, done, None, _num(_group(m, "valid"))
        elif (rx := pat.get("resumed")) and (m := rx.search(line)):
            done = int(m["epoch"])


def iso_ts(value: str | None) -> float | None:
    """'2025-01-31T12:00:00Z' -> epoch seconds (None for empty or unparsable)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def eta_seconds(epochs: int | None, checkpoints: dict[int, float], now: float, since: float | None = None,
                epoch_seconds: list[float] | None = None) -> float | None:
    """Seconds left, from epoch timing: checkpoints maps epoch -> time its checkpoint was written.

    An epoch lasts the mean of epoch_seconds (the binary's own epoch times of the current run) when there are any,
    else of the gaps between consecutive epochs' checkpoints written after `since` (the current attempt's start;
    a gap across a restart would count the downtime), plus the first such epoch measured from `since`. None until
    one epoch of this run has finished; 0 when every epoch is done.
    """
    if not epochs or not checkpoints:
        return None
    recent = sorted((e, t) for e, t in checkpoints.items() if since is None or t >= since)
    if not recent:
        return None
    last = recent[-1][0]
    if last >= epochs:
        return 0.0
    durations = list(epoch_seconds or [])
    if not durations:
        durations = [t2 - t1 for (e1, t1), (e2, t2) in zip(recent, recent[1:], strict=False) if e2 == e1 + 1 and t2 >= t1]
        if since is not None and recent[0][1] >= since:
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
