"""One playbook at a time per campaign, and none outliving the controller that started it.

ansible-runner starts ansible-playbook in a session of its own that ignores SIGHUP, so a controller killed by
SIGKILL, an OOM kill or a power cut leaves it running, blocked mid-task or, worse, racing the next command's
playbook on the same instance. Each run holds an flock (released by the kernel when its holder dies, however it
dies) and records a token that is also on the playbook's command line. A run that takes the lock and finds a record
left behind ends every process carrying the old token (its whole process group) before it starts its own; a run that
ends by an exception (Ctrl-C) ends its own playbook the same way on its way out."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write

TOKEN_VAR = "volt_run_token"


def _paths(volt_dir: Path) -> tuple[Path, Path]:
    return volt_dir / "playbook.lock", volt_dir / "playbook.json"


def carriers(token: str) -> list[tuple[int, int]]:
    """(pid, process group) of every process whose command line holds the token (ps works on Linux, macOS and WSL)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,pgid=,command="], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and f"{TOKEN_VAR}={token}" in parts[2] and int(parts[0]) != os.getpid():
            found.append((int(parts[0]), int(parts[1])))
    return found


def _end(token: str, grace_s: float = 10.0) -> list[int]:
    procs = carriers(token)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in {g for _, g in procs} - {os.getpgrp()}:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + grace_s
        while carriers(token) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not carriers(token):
            break
    return [p for p, _ in procs]


@contextmanager
def held(volt_dir: Path, playbook: str, say: Callable[[str], None]) -> Iterator[str]:
    """Run a playbook under the campaign's lock; yields the token to put on its command line (-e volt_run_token=...)."""
    lock, record = _paths(volt_dir)
    volt_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = read_record(record)
            raise VoltError(
                f"playbook {other.get('playbook', '?')} is already running against this campaign's instance (volt-ansible pid "
                f"{other.get('controller_pid', '?')}): two playbooks never run at once; wait for it to end, or stop that command"
            ) from None
        old = read_record(record)
        if old.get("token"):
            ended = _end(old["token"])
            if ended:
                say(f"ended playbook {old.get('playbook')} (pid {', '.join(map(str, ended))}) left running by a volt-ansible that died "
                    f"(pid {old.get('controller_pid')}): it must not race this one")
        token = secrets.token_hex(8)
        _write(record, {"token": token, "playbook": playbook, "controller_pid": os.getpid(), "started_at": time.time()})
        try:
            yield token
        finally:
            # Ctrl-C reaches this process only (ansible-playbook has a session of its own): end it here, not never.
            ended = _end(token)
            if ended:
                say(f"ended playbook {playbook} (pid {', '.join(map(str, ended))}): it must not outlive the command that started it")
            record.unlink(missing_ok=True)
    finally:
        os.close(fd)


def read_record(record: Path) -> dict:
    """A small JSON record of ours as a dict ({} when absent, unreadable or not a mapping)."""
    try:
        data = json.loads(record.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(record: Path, data: dict) -> None:
    atomic_write(record, json.dumps(data), mode=0o600)
