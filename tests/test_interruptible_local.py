"""Interruptible campaigns on the local backend: an outbid seen from the API fields, the bid raised, the same instance
running again and its jobs restarted from the newest epoch on its own disk, with nothing sent again (drill A)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_recover_local import DEST, drill_spec, on_instance

pytestmark = pytest.mark.podman


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
