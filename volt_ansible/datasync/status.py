"""Where the transfer for one host stands: what `tasks_from: wait` polls (`python -m volt_ansible.datasync status`),
read from the driver's own status file and its lock (held while the driver runs)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from volt_ansible.datasync.preflight import human

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl; run the controller in WSL
    fcntl = None  # type: ignore[assignment]


def host_lock(path: Path, blocking: bool):
    """An exclusive lock held while a driver runs for this host; None when not acquired."""
    if fcntl is None:
        return open(path, "a")  # noqa: SIM115
    f = open(path, "a")  # noqa: SIM115 - held for the life of the driver
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return f
    except OSError:
        f.close()
        return None


def driver_running(lock_path: Path) -> bool:
    """Whether a driver holds this host's lock now."""
    if not lock_path.exists():
        return False
    held = host_lock(lock_path, blocking=False)
    if held:
        held.close()
    return held is None


def status(status_path: Path, wanted: list[str] | None, run_id: str | None = None, started: float | None = None,
           start_grace_s: float = 60) -> dict:
    """Where the driver for one host stands. wanted: jobs to wait for (None: everything).

    finished: stop waiting. satisfied: True/False, or None when no driver says (the markers decide).
    """
    lock_path = status_path.with_suffix(".lock")
    running = driver_running(lock_path)
    try:
        st = json.loads(status_path.read_text())
    except (OSError, ValueError):
        st = None
    if run_id and (st is None or str(st.get("run_id")) != str(run_id)):
        if running or (started and time.time() - started < start_grace_s):
            return {"finished": False, "satisfied": False, "state": "starting", "error": None, "summary": "waiting for the transfer to start"}
        return {"finished": True, "satisfied": False, "state": "missing", "summary": "",
                "error": f"the data_sync transfer did not start (no status in {status_path}): see {status_path.with_suffix('.log')}"}
    if st is None:
        return {"finished": True, "satisfied": None, "state": "none", "error": None, "summary": "no transfer recorded"}
    items = st.get("items", {})
    verified = sum(1 for s in items.values() if s.get("state") == "verified")
    summary = f"{verified}/{len(items)} items verified, {human(st.get('bytes_sent', 0))} sent, ready: {', '.join(st.get('ready_jobs', [])) or 'none'}"
    state = st.get("state")
    if state == "running" and not running:
        state = "stopped"
        st["error"] = st.get("error") or (f"the transfer (pid {st.get('pid')}) stopped before it finished (killed or timed out): "
                                          "run the data_sync role again: it resumes where it stopped")
    ready = set(st.get("ready_jobs", []))
    satisfied = (state == "done") if wanted is None else set(wanted) <= ready
    finished = satisfied or state != "running"
    return {"finished": finished, "satisfied": satisfied, "state": state, "error": None if satisfied else st.get("error"),
            "summary": summary, "ready": sorted(ready)}


def wait(status_path: Path, wanted: list[str] | None, run_id: str | None = None, started: float | None = None,
         wait_s: float = 0, step_s: float = 0.2) -> dict:
    """status(), looked at again every step_s until it is finished or wait_s have passed: what one check of
    `tasks_from: wait` runs, so the end of a transfer is seen within step_s while each check (a process started
    through Ansible, ~0.5 s of CPU) comes only every wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        st = status(status_path, wanted, run_id, started)
        if st["finished"] or time.monotonic() + step_s > deadline:
            return st
        time.sleep(step_s)


def stop_driver(status_path: Path, timeout_s: float = 10) -> int | None:
    """Stop the transfer driver of one host (SIGTERM: its rsyncs end, partial files kept), e.g. once the instance is
    destroyed or lost, where it would otherwise retry for data_sync_outage_s. Only a driver that holds this host's lock
    and runs volt_ansible.datasync is signalled. Its pid, or None when none was running."""
    lock_path = status_path.with_suffix(".lock")
    if not driver_running(lock_path):
        return None
    try:
        pid = int(json.loads(status_path.read_text()).get("pid") or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if Path("/proc").is_dir() else []
    except (OSError, ValueError):
        return None
    if not pid or (cmdline and b"volt_ansible.datasync" not in cmdline):
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout_s
    while time.time() < deadline and driver_running(lock_path):
        time.sleep(0.1)
    return pid
