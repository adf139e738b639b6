"""Processes under a pid, read from /proc: tests and benchmarks find the rsync/ssh a run started, to kill it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def run_group(cmd: list[str] | str, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(..., capture_output=True, text=True) in a session of its own; on a timeout the whole group is
    killed (ansible-playbook's workers and ssh, the CLI's playbook) before TimeoutExpired is raised, so a test that
    timed out leaves nothing burning CPU beside the tests after it. Detached jobs (setsid, async) are not in it."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
