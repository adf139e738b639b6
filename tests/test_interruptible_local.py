"""Interruptible campaigns on the local backend, issue 17's drills on one campaign (one setup for all of them):
A: outbid -> the bid raised -> the same instance runs again -> stage 1 continues from the newest epoch on its own disk,
   nothing sent again; then a pause nobody watched (outbid, the competitor gone) caught up by the next round;
B: outbid at the bid cap -> after run_again_wait_s a replacement, filled host to host from the paused disk, resumes
   from an epoch newer than home's; the paused instance destroyed;
C: outbid, and the paused instance disappears -> a replacement fed from home;
then stage 1 finishes and its output comes home verified."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime

import pytest
import yaml
from conftest import REPO
from test_recover_local import DEST, drill_spec, epochs_on_disk, on_instance

from volt_ansible.local import link

pytestmark = pytest.mark.podman

BIG_MB = 400  # stage 1's corpus: what moves dwarfs the playbooks' own traffic (~3 MB of modules), as real data (tens of GB) does


def stage1_epochs_home(project) -> list[int]:
    path = project.root / "runs" / "volt-x-phase21" / "home.json"
    files = json.loads(path.read_text())["files"] if path.exists() else {}
    return sorted(e["epoch"] for e in files.values() if e.get("kind") == "epoch" and e.get("job") == "stage1")


def record(project, iid: int) -> dict:
    return json.loads((project.volt_dir / "local" / "vast.json").read_text())["instances"][str(iid)]


def to_instance(project, iid: int) -> int:
    """Bytes the controller sent the instance (its SSH, through its link's relay) since that relay started."""
    return link.relay_bytes(project.volt_dir / "local", record(project, iid)["container"])[0]


def last_start(project) -> tuple[str, float]:
    """(stage 1's log, when its latest attempt started)."""
    log = on_instance(project, f"cat {DEST}/logs/phase21_stage1.log")
    starts = re.findall(r"^volt-job: (\S+) start stage1 attempt", log, re.M)
    return log, datetime.fromisoformat(starts[-1].replace("Z", "+00:00")).timestamp()


def wait_for(cond, seconds: float, what, step=None) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, what()
        (step or (lambda: time.sleep(1)))()


def resumed_from(log: str) -> int:
    found = re.findall(r"Resumed from checkpoints/scaled_vfn_stage1_epoch_(\d+)\.safetensors", log)
    assert found, log
    return int(found[-1])


@pytest.mark.reuse_build  # needs the binaries, does not test building them (tests/buildshare.py)
def test_outbid_drills_a_b_c_resume_on_the_same_instance_migrate_from_the_paused_disk_or_recover_from_home(project):
    # 40 epochs: however slow the machine, stage 1 is still training when drill C comes (C's replacement runs them quickly)
    drill_spec(project, epochs=40, epoch_ms=2500, features=["vfn-training", "resume"])
    data = yaml.safe_load((REPO / "group_vars/all.yml").read_text())["volt_data"]
    big = project.volt_dir / "local" / "data" / "VoltData" / "phase21" / "stage1_corpus.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:  # incompressible: no compression hides a re-send
        for _ in range(BIG_MB):
            f.write(os.urandom(1 << 20))
    data["items"].append({"name": "stage1_corpus", "src": "phase21/stage1_corpus.bin", "dest": "data/stage1_corpus.bin", "kind": "file",
                          "jobs": ["stage1"], "compress": "auto", "enabled": True})
    project.spec(volt_instance={"pricing": "interruptible", "bid_dph": 0.1},
                 volt_interruptible={"bid_max_dph": 0.2, "run_again_wait_s": 1, "fallback": "interruptible"}, volt_data=data)
    project.cli("up", "--yes", "--stage", "1", timeout=900)  # the separate steps are test_campaign_local's subject
    iid = project.state()["instance"]["id"]
    wait_for(lambda: len(epochs_on_disk(project)) >= 2, 120, lambda: epochs_on_disk(project))
    sync_status = project.volt_dir / "data-sync" / f"volt-{iid}.json"
    # up returns once stage 1 runs; the later stages' items may still be moving in the background: all of it is there
    # before the outbid, so that "nothing sent again" means what it says
    wait_for(lambda: json.loads(sync_status.read_text())["state"] == "done", 60, lambda: sync_status.read_text())
    first_run = json.loads(sync_status.read_text())["run_id"]

    # -- A: outbid ($0.01/h above); the bid is raised; it runs again; the jobs restart there ------------------------
    # the newest with its digest (one more may land before the outbid: the resume is from that one or newer; one whose
    # digest the outbid cut off is set aside)
    newest = max(epochs_on_disk(project, digested=True))
    project.cli("local", "outbid")
    outbid_at = time.time()
    first = project.cli("watch", "--once", "--no-finish").stdout
    assert f"instance {iid} was stopped by Vast (outbid" in first, first
    raised = re.search(r"bid raised \$([0-9.]+) -> \$([0-9.]+)/h", first)
    assert raised and float(raised[1]) == 0.1 and 0.1 < float(raised[2]) <= 0.2, first
    st = project.state()
    assert st["instance"]["paused_since"] is not None and st["instance"]["bid_dph"] == float(raised[2]) and len(st["ledger"]) == 1
    assert st["ledger"][0]["changes"][0][1:] == [st["ledger"][0]["storage_dph"], "paused"]  # its storage billed while paused
    before = to_instance(project, iid)  # the relay restarted with the container: this run's count
    second = project.cli("watch", "--once", "--no-finish", timeout=600).stdout
    assert f"instance {iid} runs again after " in second and "nothing sent again" in second, second
    sent_a = to_instance(project, iid) - before
    log, started = last_start(project)
    assert resumed_from(log) >= newest  # from its own disk: nothing came from home
    last = json.loads(sync_status.read_text())
    assert last["run_id"] == first_run or last["bytes_sent"] == 0, last  # the transfer found all of it there
    assert sent_a < 0.01 * BIG_MB * 2**20, sent_a  # the playbook's own traffic: none of the 400 MB went again
    print(f"\ndrill A: outbid -> stage 1 training again on the same instance: {started - outbid_at:.0f} s; "
          f"{sent_a / 1e6:.2f} MB from the controller; resumed from epoch {resumed_from(log)}")
    assert project.state()["instance"]["paused_since"] is None and project.state()["instance"]["id"] == iid
    assert re.search(r"interruptible: bid \$[0-9.]+/h \(on demand \$0\.1800/h\); paused 0\.\d\d h", project.cli("status").stdout)

    # a pause nobody watched (outbid, then the competitor gone): the next round finds the jobs' processes gone on a
    # running instance and starts them again there, renting nothing
    project.cli("local", "outbid")
    project.cli("local", "competitor-leaves")
    caught_up = project.cli("watch", "--once", "--no-finish", timeout=600).stdout
    assert re.search(rf"^restarted stage1 on instance {iid} \(their processes were gone\)", caught_up, re.M), caught_up
    assert len(project.state()["ledger"]) == 1

    # -- B: outbid above the cap; after run_again_wait_s a replacement filled from the paused disk -----------------
    backup = lambda: project.cli("watch", "--once", "--interval", "0.01", "--no-finish")  # noqa: E731
    wait_for(lambda: stage1_epochs_home(project), 120, lambda: stage1_epochs_home(project), backup)
    home_newest = max(stage1_epochs_home(project))
    wait_for(lambda: max(epochs_on_disk(project) or [0]) >= home_newest + 2, 120, lambda: epochs_on_disk(project))
    disk_newest = max(epochs_on_disk(project))
    project.spec(volt_interruptible={"bid_max_dph": project.state()["instance"]["bid_dph"], "run_again_wait_s": 1})  # at the cap
    # the replacement's stage 1 (launched from the spec as it is then) takes 6-s epochs: still training when drill C comes,
    # however slow the machine running these steps is
    project.spec(training_tmux_env={"VOLT_FIXTURE_EPOCH_MS": 6000})
    project.cli("local", "outbid", "--price", "0.5")
    outbid_at = time.time()
    paused = project.cli("watch", "--once", "--no-finish").stdout
    assert "was stopped by Vast (outbid" in paused and re.search(r"the bid \$[0-9.]+/h is at its cap", paused), paused
    time.sleep(1.2)  # run_again_wait_s
    migrated = project.cli("watch", "--once", "--no-finish", timeout=900).stdout
    old_id, iid = iid, project.state()["instance"]["id"]
    assert iid != old_id and f"recovered: instance {iid} replaces {old_id} (paused for " in migrated, migrated
    assert record(project, iid)["offer_id"] != record(project, old_id)["offer_id"]  # not the machine it lost
    sent_b = to_instance(project, iid)
    copies = [c for c in project.double().copy_jobs() if c["dst_id"] == iid]
    rescued = sum(c["bytes"] for c in copies)
    assert copies and all(c["ok"] for c in copies) and rescued > BIG_MB * 2**20, copies
    log, started = last_start(project)
    assert resumed_from(log) > home_newest, (resumed_from(log), home_newest, disk_newest)  # newer than home: the paused disk's
    assert sent_b <= 0.01 * rescued, (sent_b, rescued)
    st = project.state()
    rented = next(e for e in st["ledger"] if e["instance_id"] == iid)["started_at"] - outbid_at
    print(f"drill B: outbid at the cap -> stage 1 training on the replacement: {started - outbid_at:.0f} s (rented after {rented:.0f} s, "
          f"the copy {sum(c['finished_at'] - c['started_at'] for c in copies):.1f} s); {rescued / 1e6:.1f} MB host to host, "
          f"{sent_b / 1e6:.2f} MB from the controller ({100 * sent_b / rescued:.2f} %); resumed from epoch {resumed_from(log)} "
          f"(home had {home_newest}, the paused disk {disk_newest}+)")
    assert project.double().instance(old_id) is None and st["retired"] == [] and st["recovery"] is None  # it billed storage
    entry = next(e for e in st["ledger"] if e["instance_id"] == old_id)
    assert entry["end_reason"] == "destroyed: paused, its disk copied to its replacement" and entry["changes"][-1][2] == "paused"

    # -- C: outbid, then the paused instance disappears: nothing to copy from, a replacement fed from home ----------
    wait_for(lambda: max(stage1_epochs_home(project)) > resumed_from(log), 120, lambda: stage1_epochs_home(project), backup)
    home_newest = max(stage1_epochs_home(project))
    project.spec(training_tmux_env={"VOLT_FIXTURE_EPOCH_MS": 500})  # C's replacement finishes quickly
    # the 400 MB item was there to size drill B's ratio: from here on nothing needs it (the fixture never reads it), and
    # C's replacement is fed from home without it
    data["items"] = [i for i in data["items"] if i["name"] != "stage1_corpus"]
    project.spec(volt_data=data)
    project.cli("local", "outbid", "--price", "0.5")
    assert "was stopped by Vast (outbid" in project.cli("watch", "--once", "--no-finish").stdout
    project.double().destroy(iid)
    gone_at = time.time()
    gone = project.cli("watch", "--once", "--no-finish", timeout=900).stdout
    old_id, iid = iid, project.state()["instance"]["id"]
    assert f"recovered: instance {iid} replaces {old_id} (gone from the Vast API)" in gone, gone
    log, started = last_start(project)
    assert resumed_from(log) == home_newest
    print(f"drill C: the paused instance gone -> stage 1 training on a replacement fed from home: {started - gone_at:.0f} s")

    # ("finished" alone also matches the cost line's "per finished epoch"); no backup until the round that finds stage 1
    # done (--interval 60): that one backs up, then finishes
    ended = lambda: re.search(r"^campaign \S+ finished: ", project.cli("watch", "--once", "--interval", "60").stdout, re.M)  # noqa: E731
    wait_for(ended, 300, lambda: "not finished")
    files = json.loads((project.root / "runs" / "volt-x-phase21" / "home.json").read_text())["files"]
    assert "checkpoints/scaled_vfn_stage1.safetensors" in files and project.double().containers() == []
    assert [e["end_reason"] for e in project.state()["ledger"]][-1] == "finished"
