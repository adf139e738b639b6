"""data_sync's driver on a link that stays down: it gives up only after data_sync_retries attempts in a row *and*
data_sync_outage_s of outage; an attempt that moved data restarts the count; a link back within the budget finishes.
The driver's processes and clock are stand-ins here (an outage of 15 minutes in no time); the real link's drops and
resumes are tests/test_data_sync_silent_drop.py's."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from volt_ansible import datasync
from volt_ansible.datasync import driver as driver_mod
from volt_ansible.datasync.retry import Outage
from volt_ansible.datasync.status import host_lock
from volt_ansible.errors import VoltError

DOWN = subprocess.CompletedProcess([], 255, b"", b"ssh: connect to host 10.0.0.1 port 2222: Connection timed out\n")
SENT = subprocess.CompletedProcess([], 0, b"Total bytes sent: 1,000\n", b"")


def test_it_gives_up_after_the_retries_and_the_outage_both():
    o = Outage(retries=5, outage_s=900, moving_s=30)
    t, gave_up = 0.0, []
    for _ in range(40):  # each attempt: 15 s to notice the dead link, then the delay
        gave_up.append(o.failed(t, t + 15))
        if gave_up[-1]:
            break
        t += 15 + o.delay()
    assert [Outage(5, 900, 30, failures=n).delay() for n in (1, 2, 3, 4, 5, 6)] == [5, 10, 20, 40, 60, 60]
    assert gave_up[-1] and o.failures > 5 and t + 15 >= 900
    assert not any(gave_up[:-1])
    # a short outage with many quick failures is not enough alone, nor a long one with few attempts
    assert not Outage(retries=5, outage_s=900, moving_s=30, failures=10, since=0.0).failed(100, 101)
    assert not Outage(retries=5, outage_s=900, moving_s=30, failures=2, since=0.0).failed(2000, 2001)


def test_an_attempt_that_moved_data_restarts_the_count():
    o = Outage(retries=2, outage_s=60, moving_s=30, failures=5, since=0.0)
    assert not o.failed(1000, 1100)  # ran 100 s (data moved), then dropped: a new outage starts at its end
    assert o.failures == 1 and o.since == 1100 and o.down_s(1130) == 30


def one_item_plan(tmp_path: Path, host: str, port: int) -> dict:
    """A driver plan of one 1000-byte file for root@host:port, retried as the role's defaults do."""
    data = tmp_path / "item.bin"
    data.write_bytes(b"x" * 1000)
    return {"root": "/root/t", "items": [{"name": "item", "src": str(data), "dest": "item.bin", "kind": "file", "size": 1000,
                                          "digest": "x", "jobs": []}],
            "ssh": {"host": host, "port": port, "user": "root", "key": str(tmp_path / "key"), "args": []},
            "options": {"retries": 5, "retry_delay_s": 5, "outage_s": 900, "io_timeout_s": 15}}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def time(self):
        return self.now

    def strftime(self, fmt, *args):
        return "t"


def driver_on_a_dead_link(tmp_path: Path, monkeypatch, back_after_s: float | None):
    """A Driver whose rsync/ssh fail as over a dead link (15 s to notice each time) until back_after_s, on a fake clock."""
    clock = Clock()
    monkeypatch.setattr(driver_mod, "time", clock)
    plan = one_item_plan(tmp_path, "10.0.0.1", 2222)
    d = datasync.Driver(plan, tmp_path / "status.json", tmp_path / "driver.log")
    start = clock.now

    def run(argv, timeout=None):
        clock.now += 15
        up = back_after_s is not None and clock.now - start >= back_after_s
        return SENT if up and argv[0] == "rsync" else DOWN

    monkeypatch.setattr(d, "_run", run)
    monkeypatch.setattr(d, "_sleep", lambda s: setattr(clock, "now", clock.now + s))
    return d, clock, start


def test_the_transfer_waits_out_a_ten_minute_outage(tmp_path, monkeypatch):
    d, clock, start = driver_on_a_dead_link(tmp_path, monkeypatch, back_after_s=600)
    assert d.transfer("item")
    attempts = d.status["items"]["item"]["attempts"]
    assert attempts[-1]["rc"] == 0 and len(attempts) > 6  # more than the 5 retries: the outage budget was not spent
    assert 600 <= clock.now - start < 700
    assert "resuming in 60s" in (tmp_path / "driver.log").read_text()


def test_the_transfer_gives_up_after_the_outage_with_one_line(tmp_path, monkeypatch):
    d, clock, start = driver_on_a_dead_link(tmp_path, monkeypatch, back_after_s=None)
    assert not d.transfer("item")
    err = d.status["items"]["item"]["error"]
    assert err.startswith("item: rsync to 10.0.0.1 kept failing for ") and "attempts in a row; last rc=255: ssh: connect to host" in err
    assert "run the data_sync role again: it resumes from the partial file" in err
    assert 900 <= clock.now - start < 900 + 60 + 30


def test_the_instance_side_calls_wait_out_an_outage_too(tmp_path, monkeypatch):
    d, clock, start = driver_on_a_dead_link(tmp_path, monkeypatch, back_after_s=None)
    with pytest.raises(VoltError, match=r"ssh to 10.0.0.1 kept failing for \d+ s \(\d+ attempts\): ssh: connect to host"):
        d.remote("verify", {})
    assert clock.now - start >= 900


def test_a_destroyed_instances_driver_is_stopped_not_left_retrying(tmp_path):
    """The real driver process (what the role starts) against a host that refuses connections: it holds the host's lock
    and keeps retrying; stop_driver (what destroy and recover call) ends it, its status file says so, its lock is free."""
    plan = one_item_plan(tmp_path, "127.0.0.1", 1)
    status = tmp_path / "data-sync" / "volt-7.json"
    proc = subprocess.Popen([sys.executable, "-m", "volt_ansible.datasync", "sync", "--status", str(status), "--plan-json",
                             json.dumps(plan), "--log", str(tmp_path / "volt-7.log")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        log, deadline = tmp_path / "volt-7.log", time.time() + 30
        while time.time() < deadline and "retry 1 in" not in (log.read_text(errors="replace") if log.exists() else ""):
            time.sleep(0.1)
        assert "ssh failed" in log.read_text(), log.read_text()
        assert datasync.status(status, None)["state"] == "running"
        assert datasync.stop_driver(status) == proc.pid
        assert proc.wait(timeout=10) is not None
        assert datasync.status(status, None)["finished"] and datasync.stop_driver(status) is None  # none left to stop
    finally:
        proc.kill()


def test_a_wait_check_sees_the_end_of_the_transfer_at_once_and_otherwise_reports_in_after_its_wait(tmp_path):
    """`status --wait-s` (what each check of tasks_from: wait runs): the end written by the driver is answered within a
    fraction of a second, not at the next check; while nothing changes, it answers "not finished" once wait_s is up.
    The driver's lock is held as a running driver holds it."""
    status = tmp_path / "volt-7.json"
    status.write_text(json.dumps({"run_id": "r1", "state": "running", "items": {}, "ready_jobs": []}))
    lock = host_lock(status.with_suffix(".lock"), blocking=True)
    cmd = [sys.executable, "-m", "volt_ansible.datasync", "status", "--status", str(status), "--jobs", "stage1", "--run-id", "r1"]
    try:
        t0 = time.monotonic()
        idle = json.loads(subprocess.run([*cmd, "--wait-s", "1.5"], capture_output=True, text=True, check=True).stdout)
        assert idle["finished"] is False and idle["state"] == "running" and 1.3 <= time.monotonic() - t0 < 10

        def finish_later():
            time.sleep(1.0)
            status.write_text(json.dumps({"run_id": "r1", "state": "running", "items": {}, "ready_jobs": ["stage1"]}))
            done.append(time.monotonic())

        done: list[float] = []
        writer = threading.Thread(target=finish_later)
        writer.start()
        seen = json.loads(subprocess.run([*cmd, "--wait-s", "60"], capture_output=True, text=True, check=True).stdout)
        answered = time.monotonic()
        writer.join()
        assert seen["finished"] is True and seen["satisfied"] is True and seen["ready"] == ["stage1"]
        assert answered - done[0] < 1.0, answered - done[0]  # within a few 0.2-s looks, not after the 60 s
    finally:
        lock.close()
