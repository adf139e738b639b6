"""The training binaries' log formats as data: a job's `log_patterns` (group_vars) checked and compiled.

Each pattern is a Python regex matched against one log line; its named groups are what is read:

    progress    step, steps (per epoch), loss[, lr]       a line inside an epoch
    epoch       epoch, epochs[, train, valid, seconds]    the summary after an epoch (the real epoch number)
    checkpoint  path                                      an epoch checkpoint written
    resumed     epoch[, path]                             a run that resumed after that epoch
    error       message                                   a failure the binary reports
    activity    activity                                  what a job without epochs is doing (codebook-init)

A changed Volt-X log format is an edit of group_vars, not of this code.
"""

from __future__ import annotations

import re

from volt_ansible.errors import VoltError

REQUIRED = {
    "progress": ("step", "loss"),
    "epoch": ("epoch", "epochs"),
    "checkpoint": ("path",),
    "resumed": ("epoch",),
    "error": ("message",),
    "activity": ("activity",),
}


def compile_patterns(raw, where: str) -> dict[str, re.Pattern]:
    """{kind: compiled regex} of a job table's log_patterns (absent: {}), or one line naming the bad entry."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise VoltError(f"{where}.log_patterns must be a mapping of {' | '.join(REQUIRED)}: regex, got {type(raw).__name__}")
    out: dict[str, re.Pattern] = {}
    for kind, text in raw.items():
        if kind not in REQUIRED:
            raise VoltError(f"{where}.log_patterns.{kind} is not a known pattern: use {', '.join(REQUIRED)}")
        if text is None:
            continue
        try:
            rx = re.compile(str(text))
        except re.error as e:
            raise VoltError(f"{where}.log_patterns.{kind} = {text!r} is not a valid regex ({e}): fix it in group_vars/all.yml") from None
        missing = [g for g in REQUIRED[kind] if g not in rx.groupindex]
        if missing:
            raise VoltError(f"{where}.log_patterns.{kind} = {text!r} has no named group {', '.join(f'(?P<{g}>...)' for g in missing)}: "
                            "add it (that is what is read from the line)")
        out[str(kind)] = rx
    return out
