"""Interruptible campaigns on the local backend: an outbid seen from the API fields, the bid raised, the same instance
running again and its jobs restarted from the newest epoch on its own disk, with nothing sent again (drill A)."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_recover_local import DEST, drill_spec, on_instance

pytestmark = pytest.mark.podman

BIG_MB = 400


def epochs_on_disk(project) -> list[int]:
    out = on_instance(project, f"ls {DEST}/checkpoints/ 2>/dev/null || true")
    return sorted(int(m) for m in re.findall(r"scaled_vfn_stage1_epoch_(\d+)\.safetensors", out))


def veth_tx(project, iid: int) -> tuple[str, int]:
    """(the instance's host-side veth, the bytes it has sent into the container): what reached the instance."""
    dev = json.loads((project.volt_dir / "local" / "vast.json").read_text())["instances"][str(iid)]["link"]["dev"]
    return dev, int(Path(f"/sys/class/net/{dev}/statistics/tx_bytes").read_text())


@pytest.mark.reuse_build  # needs the binaries, does not test building them (tests/buildshare.py)
def test_drill_a_outbid_raises_the_bid_and_training_continues_on_the_same_instance_with_nothing_sent_again(project):
    drill_spec(project, epochs=10, epoch_ms=3000, features=["vfn-training", "resume"])
    project.spec(volt_instance={"pricing": "interruptible", "bid_dph": "auto"})
    project.cli("provision")
    iid = project.state()["instance"]["id"]
    bid = project.state()["instance"]["bid_dph"]
    project.cli("run", "prepare", timeout=900)
    project.cli("run", "sync")
    project.cli("train", "--stage", "1")
    deadline = time.monotonic() + 120
    while len(epochs_on_disk(project)) < 2:
        assert time.monotonic() < deadline
        time.sleep(1)
    sync_status = project.volt_dir / "data-sync" / f"volt-{iid}.json"
    first_run = json.loads(sync_status.read_text())["run_id"]

    newest = max(epochs_on_disk(project))  # (one more may land before the outbid: the resume is from that one or newer)
    project.cli("local", "outbid")  # a competitor bids $0.01/h above: stopped at once, its processes killed, its disk kept
    outbid_at = time.time()
    first = project.cli("watch", "--once", "--no-finish").stdout
    assert f"instance {iid} was stopped by Vast (outbid" in first, first
    raised = re.search(r"bid raised \$([0-9.]+) -> \$([0-9.]+)/h", first)
    assert raised and float(raised[1]) == bid and bid < float(raised[2]) <= 0.2, first
    st = project.state()
    assert st["instance"]["paused_since"] is not None and st["instance"]["bid_dph"] == float(raised[2])
    assert st["ledger"][0]["changes"][0][1:] == [st["ledger"][0]["storage_dph"], "paused"]  # storage billed while paused
    assert len(st["ledger"]) == 1  # nothing rented

    # the raised bid won the machine back (the double restarted it): the next round restarts the jobs there
    dev, before = veth_tx(project, iid)
    second = project.cli("watch", "--once", "--no-finish", timeout=600).stdout
    assert f"instance {iid} runs again after " in second and "nothing sent again" in second, second
    _, after = veth_tx(project, iid)
    log = on_instance(project, f"cat {DEST}/logs/phase21_stage1.log")
    resumed = re.findall(r"Resumed from checkpoints/scaled_vfn_stage1_epoch_(\d+)\.safetensors", log)
    on_disk = epochs_on_disk(project)
    assert resumed and int(resumed[-1]) >= newest, log  # from its own disk: no epoch came from home
    # nothing of the data or the checkpoints went again: the transfer found everything there, and the instance's veth
    # carried only the playbook's own traffic (modules, a few MB at most)
    last = json.loads(sync_status.read_text())
    assert last["run_id"] == first_run or last["bytes_sent"] == 0, last
    assert after - before < 8_000_000, (dev, after - before)
    starts = re.findall(r"^volt-job: (\S+) start stage1 attempt", log, re.M)
    gpu_busy = datetime.fromisoformat(starts[-1].replace("Z", "+00:00")).timestamp() - outbid_at
    print(f"\ndrill A: outbid -> stage 1 training again on the same instance: {gpu_busy:.0f} s; "
          f"{(after - before) / 1e6:.2f} MB to the instance after it ran again; resumed from epoch {resumed[-1]} (on disk: {on_disk})")
    assert project.state()["instance"]["paused_since"] is None and project.state()["instance"]["id"] == iid
    assert re.search(r"interruptible: bid \$[0-9.]+/h \(on demand \$0\.1800/h\); paused 0\.\d\d h", project.cli("status").stdout)

    # drill C: outbid again, and this time the paused instance disappears (its host gone): nothing to copy from, so the
    # recovery is today's: a replacement fed from home (the newest epoch backed up), no second instance left behind
    deadline = time.monotonic() + 120
    while not stage1_epochs_home(project):
        assert time.monotonic() < deadline
        project.cli("watch", "--once", "--interval", "0.01", "--no-finish")
    home_newest = max(stage1_epochs_home(project))
    project.cli("local", "outbid", "--price", "0.5")
    assert "was stopped by Vast (outbid" in project.cli("watch", "--once", "--no-finish").stdout
    project.double().destroy(iid)
    gone_at = time.time()
    gone = project.cli("watch", "--once", "--no-finish", timeout=900).stdout
    assert project.state()["instance"] is not None, gone
    new_id = project.state()["instance"]["id"]
    assert f"recovered: instance {new_id} replaces {iid} (gone from the Vast API)" in gone, gone
    log = on_instance(project, f"cat {DEST}/logs/phase21_stage1.log")
    assert f"Resumed from checkpoints/scaled_vfn_stage1_epoch_{home_newest}.safetensors" in log, log
    starts = re.findall(r"^volt-job: (\S+) start stage1 attempt", log, re.M)
    print(f"drill C: the paused instance gone -> stage 1 training on a replacement fed from home: "
          f"{datetime.fromisoformat(starts[-1].replace('Z', '+00:00')).timestamp() - gone_at:.0f} s")
    assert project.state()["retired"] == [] and project.double().containers() == [project.double().instance(new_id) and
                                                                                    _container(project, new_id)]


def _container(project, iid: int) -> str:
    return json.loads((project.volt_dir / "local" / "vast.json").read_text())["instances"][str(iid)]["container"]


def stage1_epochs_home(project) -> list[int]:
    path = project.root / "runs" / "volt-x-phase21" / "home.json"
    files = json.loads(path.read_text())["files"] if path.exists() else {}
    return sorted(e["epoch"] for e in files.values() if e.get("kind") == "epoch" and e.get("job") == "stage1")


@pytest.mark.reuse_build
def test_drill_b_outbid_at_the_cap_migrates_filling_the_replacement_from_the_paused_disk(project):
    """The bid is at its cap: after run_again_wait_s a replacement is rented and filled host to host from the paused
    instance's disk (binaries, data, every epoch checkpoint, newer than home's too); stage 1 resumes there from an epoch
    newer than the last one home; the operator's link carries a small fraction of what the copy moved; the paused
    instance is destroyed; stage 1 finishes and its output comes home verified."""
    from volt_ansible.local import link

    drill_spec(project, epochs=12, epoch_ms=2500, features=["vfn-training", "resume"])
    data = yaml.safe_load((REPO / "group_vars/all.yml").read_text())["volt_data"]
    # stage 1's corpus at a size where what moves dwarfs the playbooks' own traffic (~3 MB of modules), as real data
    # (tens of GB) does: incompressible, so no compression hides a re-send
    big = project.volt_dir / "local" / "data" / "VoltData" / "phase21" / "stage1_corpus.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        for _ in range(BIG_MB):
            f.write(os.urandom(1 << 20))
    data["items"].append({"name": "stage1_corpus", "src": "phase21/stage1_corpus.bin", "dest": "data/stage1_corpus.bin", "kind": "file",
                          "jobs": ["stage1"], "compress": "auto", "enabled": True})
    project.spec(volt_instance={"pricing": "interruptible", "bid_dph": 0.1},
                 volt_interruptible={"bid_max_dph": 0.1, "run_again_wait_s": 1, "fallback": "interruptible"}, volt_data=data)
    project.cli("provision")
    old_id = project.state()["instance"]["id"]
    project.cli("run", "prepare", timeout=900)
    project.cli("run", "sync")
    project.cli("train", "--stage", "1")
    deadline = time.monotonic() + 120
    while not stage1_epochs_home(project):  # a backup with an epoch home, then more epochs on the disk only
        assert time.monotonic() < deadline
        project.cli("watch", "--once", "--interval", "0.01", "--no-finish")
    home_newest = max(stage1_epochs_home(project))
    while max(epochs_on_disk(project) or [0]) < home_newest + 2:
        assert time.monotonic() < deadline
        time.sleep(1)
    disk_newest = max(epochs_on_disk(project))

    project.cli("local", "outbid", "--price", "0.15")  # above the cap: the bid cannot win it back
    outbid_at = time.time()
    first = project.cli("watch", "--once", "--no-finish").stdout
    assert "was stopped by Vast (outbid" in first and "the bid is at its cap $0.1000/h" in first, first
    time.sleep(1.2)  # run_again_wait_s
    second = project.cli("watch", "--once", "--no-finish", timeout=900).stdout
    new_id = project.state()["instance"]["id"]
    assert new_id != old_id and f"recovered: instance {new_id} replaces {old_id} (paused for " in second, second
    st = project.state()
    to_new, _ = link.relay_bytes(project.volt_dir / "local", _container(project, new_id))
    copies = [c for c in project.double().copy_jobs() if c["dst_id"] == new_id]
    rescued = sum(c["bytes"] for c in copies)
    assert copies and all(c["ok"] for c in copies) and rescued > 0, copies
    log = on_instance(project, f"cat {DEST}/logs/phase21_stage1.log")
    resumed = re.findall(r"Resumed from checkpoints/scaled_vfn_stage1_epoch_(\d+)\.safetensors", log)
    assert resumed and int(resumed[-1]) > home_newest, (resumed, home_newest, disk_newest)  # newer than home: from the paused disk
    starts = re.findall(r"^volt-job: (\S+) start stage1 attempt", log, re.M)
    gpu_busy = datetime.fromisoformat(starts[-1].replace("Z", "+00:00")).timestamp() - outbid_at
    rented = next(e for e in st["ledger"] if e["instance_id"] == new_id)["started_at"] - outbid_at
    copy_s = sum(c["finished_at"] - c["started_at"] for c in copies)
    print(f"\ndrill B: outbid -> stage 1 training on the replacement: {gpu_busy:.0f} s (replacement rented after {rented:.0f} s, "
          f"the copy took {copy_s:.1f} s); host to host {rescued / 1e6:.1f} MB; "
          f"controller -> replacement {to_new / 1e6:.2f} MB ({100 * to_new / rescued:.2f} %); resumed from epoch {resumed[-1]} "
          f"(home had {home_newest}, the paused disk {disk_newest}+)")
    # the paused instance is gone (it billed storage), its ledger closed with the reason
    assert project.double().instance(old_id) is None and st["retired"] == [] and st["recovery"] is None
    entry = next(e for e in st["ledger"] if e["instance_id"] == old_id)
    assert entry["end_reason"] == "destroyed: paused, its disk copied to its replacement" and entry["changes"][-1][2] == "paused"

    deadline = time.monotonic() + 300
    while True:  # stage 1 finishes on the replacement; watch finishes the campaign, the output home verified
        rnd = project.cli("watch", "--once", "--interval", "0.01").stdout
        if "finished" in rnd:
            break
        assert time.monotonic() < deadline, rnd
    files = json.loads((project.root / "runs" / "volt-x-phase21" / "home.json").read_text())["files"]
    assert "checkpoints/scaled_vfn_stage1.safetensors" in files and project.double().containers() == []
    assert to_new <= 0.01 * rescued, (to_new, rescued)
