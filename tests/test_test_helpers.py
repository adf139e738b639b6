"""The test world's own helpers that other tests rely on to clean up after themselves."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from procs import run_group


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is dead, just not reaped yet
    except OSError:
        return False


def test_a_timed_out_command_takes_its_whole_process_group_with_it(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        run_group(["sh", "-c", script], timeout=1)
    child = int(pidfile.read_text())
    deadline = time.time() + 5
    while time.time() < deadline and alive(child):
        time.sleep(0.05)
    assert not alive(child)  # the sleep the shell started went with it
    done = run_group(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
