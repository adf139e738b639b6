"""Who watches this campaign: one `watch` at a time (an flock the kernel releases however its holder dies) and its
heartbeat (when its last round ended and what it said), so `status` can tell whether anything is watching."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write
from volt_ansible.runlock import read_record


def _paths(volt_dir: Path) -> tuple[Path, Path]:
    return volt_dir / "watch.lock", volt_dir / "watch.json"


@dataclass
class Beat:
    running: bool
    pid: int | None = None
    started_at: float | None = None
    last_round_at: float | None = None
    last_lines: tuple[str, ...] = ()

    def line(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        last = (f"last round {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.last_round_at))} "
                f"({now - self.last_round_at:.0f} s ago)") if self.last_round_at else "no round finished yet"
        if self.running:
            return f"watch: running (pid {self.pid}), {last}"
        return f"watch: not running ({last}): `volt-ansible watch --install` keeps one running across reboots"


def read(volt_dir: Path) -> Beat:
    lock, beat = _paths(volt_dir)
    data = read_record(beat)
    running = False
    if lock.exists():
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                running = True
    return Beat(running, data.get("pid") if running else None, data.get("started_at"), data.get("last_round_at"),
                tuple(data.get("last_lines") or ()))


@contextmanager
def hold(volt_dir: Path) -> Iterator[None]:
    """The campaign's watch lock for the life of one `watch`; a second one is refused in one line (two watches would
    each recover a lost instance: two replacements billing)."""
    lock, beat = _paths(volt_dir)
    volt_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        other = read_record(beat).get("pid")
        raise VoltError(f"a watch is already running for this campaign (pid {other}): one is enough; "
                        "`volt-ansible status` says when its last round was") from None
    try:
        previous = read_record(beat)
        atomic_write(beat, json.dumps({"pid": os.getpid(), "started_at": time.time(),
                                       "last_round_at": previous.get("last_round_at"), "last_lines": previous.get("last_lines") or []}),
                     mode=0o600, durable=False)
        yield
    finally:
        os.close(fd)


def beat(volt_dir: Path, lines: list[str]) -> None:
    """A round ended: record when, and its lines (status shows them)."""
    _, path = _paths(volt_dir)
    data = read_record(path)
    data.update(pid=os.getpid(), last_round_at=time.time(), last_lines=lines[-20:])
    atomic_write(path, json.dumps(data), mode=0o600, durable=False)
