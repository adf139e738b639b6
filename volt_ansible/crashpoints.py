"""Named points where a test kills this process outright (VOLT_CRASH_AT=<name>): the SIGKILL that a power cut, an OOM
kill or a closed laptop sends, at a fixed and replayable place instead of a random moment."""

from __future__ import annotations

import os
import signal


def here(name: str) -> None:
    if os.environ.get("VOLT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
