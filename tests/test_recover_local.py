"""Never lose a checkpoint: the preemption drill, recover's refusals and faults, and the budget stop, on the local backend."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
import yaml
from conftest import REPO

from volt_ansible import fileops

pytestmark = pytest.mark.podman

DEST = "/root/volt-x"
GATE = "/tmp/volt-test-last-epoch"  # VOLT_FIXTURE_LAST_EPOCH_GATE (tests/fixtures/volt-x/README.md)


def one_line_error(proc) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def drill_spec(project, epochs: int, epoch_ms: int, features: list[str] | None = None) -> None:
    """Stage 1 only (Phase 0.3 beside it), slow enough to be preempted between epochs; quick rounds of watch."""
    cur = yaml.safe_load((REPO / "group_vars/all.yml").read_text())["volt_curriculum"]
    project.spec(
        volt_curriculum={"stages": cur["stages"][:1], "args": {**cur["args"], "--epochs": epochs}},
        volt_watch={"poll_s": 1, "api_retry_delay_s": 0},
        training_tmux_env={"VOLT_FIXTURE_EPOCH_MS": epoch_ms},
        backup_stable_s=1,
        **({"repo_build_features": features} if features else {}),
    )


def home(project) -> dict:
    path = project.root / "runs" / "volt-x-phase21" / "home.json"
    return json.loads(path.read_text())["files"] if path.exists() else {}


def stage1_epochs_home(project) -> list[int]:
    return sorted(e["epoch"] for e in home(project).values() if e.get("kind") == "epoch" and e.get("job") == "stage1")


def on_instance(project, command: str) -> str:
    return project.cli("ssh", "--", command).stdout


def migrate_from_the_stopped_disk(project, old_id: int, home_newest: int) -> int:
    """Stopped in the API (not by the campaign): after run_again_wait_s a replacement is filled from the stopped disk; a
    stage that cannot resume restarts from epoch 1, and both the recovery and `status` say how many epochs the disk held
    (at least home's) are trained again. Returns the replacement's id."""
    on_disk = epochs_on_disk(project)
    project.spec(volt_interruptible={"run_again_wait_s": 1})
    project.double().set_state(old_id, "stopped")
    assert f"instance {old_id} was stopped by Vast (" in project.cli("watch", "--once", "--no-finish").stdout
    time.sleep(1.2)  # run_again_wait_s
    out = project.cli("watch", "--once", "--no-finish", timeout=900).stdout
    new_id = project.state()["instance"]["id"]
    assert f"recovered: instance {new_id} replaces {old_id} (paused for " in out, out
    redo = re.search(r"stage1 restarts from epoch 1 \(train-vfn has no --resume in its --help\): (\d+) finished epoch\(s\)", out)
    # the stopped disk's count, not home's (one less when the stop came as the newest was written: set aside, unverified)
    assert redo and int(redo[1]) >= max(on_disk) - 1 and int(redo[1]) >= home_newest, (out, on_disk, home_newest)
    assert f"restarted from epoch 1 ({redo[1]} epoch(s) trained again)" in project.cli("status").stdout
    assert any(c["dst_id"] == new_id and c["ok"] for c in project.double().copy_jobs())  # host to host
    assert project.double().instance(old_id) is None  # destroyed once the replacement runs
    assert project.double().instance(new_id)["is_bid"] is False  # an on-demand instance's replacement stays on demand
    return new_id


def epochs_on_disk(project, digested: bool = False) -> list[int]:
    """Stage 1's epoch checkpoints on the instance; digested: those that have their digest file beside them."""
    out = on_instance(project, f"ls -1 {DEST}/checkpoints/ 2>/dev/null || true")
    suffix = r"\.safetensors\.sha256" if digested else r"\.safetensors"
    return sorted(int(m) for m in re.findall(rf"^scaled_vfn_stage1_epoch_(\d+){suffix}$", out, re.M))


@pytest.mark.reuse_build  # needs the binaries, does not test building them (tests/buildshare.py)
@pytest.mark.parametrize("resumable", [
    # a Volt-X whose train-vfn has a resume option (the fixture's cargo feature `resume`): the newest epoch home is resumed
    pytest.param(True, id="resumable"),
    # Volt-X's main: no resume option; the stage restarts from epoch 1, says what that costs, loses nothing finished
    pytest.param(False, id="non-resumable"),
])
def test_preemption_drill_resumes_from_the_newest_epoch_home_and_ends_like_an_uninterrupted_run(project, resumable):
    # still training when `finish` is tried right after the recovery
    drill_spec(project, epochs=10, epoch_ms=3000 if resumable else 4000, features=["vfn-training", "resume"] if resumable else None)
    project.cli("up", "--yes", "--stage", "1", timeout=900)  # the separate steps are test_campaign_local's subject

    # watch backs up every round (--interval 0.01 min) until two epoch checkpoints of stage 1 are home
    deadline = time.monotonic() + 120
    while len(stage1_epochs_home(project)) < 2:
        assert time.monotonic() < deadline, home(project)
        project.cli("watch", "--once", "--interval", "0.01", "--no-finish")
    state = project.state()
    assert state["home"]["newest_epoch"]["job"] == "stage1" and state["home"]["newest_epoch"]["epoch"] >= 2
    assert "checkpoints/scaled_vfn_stage1.safetensors" not in home(project)  # stage 1 is still training
    newest = max(stage1_epochs_home(project))
    old_id = state["instance"]["id"]
    assert state["resume"] == {"stage1": resumable}  # read from the built train-vfn's --help, recorded for the recovery
    if not resumable:
        assert "resume: stage1: train-vfn has no --resume (its --help): if the instance is lost, stage1 restarts from epoch 1" in \
            project.cli("status").stdout

    refused = one_line_error(project.cli("destroy", "--yes", check=False))
    assert f"not destroying instance {old_id}: on the instance, " in refused and "not home yet" in refused  # training goes on

    if not resumable:  # an on-demand instance its host stops (disk kept): replaced from its own disk, host to host
        old_id = migrate_from_the_stopped_disk(project, old_id, newest)

    # the replacement's stage 1 (launched from the spec as it is then): quicker epochs; its last one waits for GATE, so it is
    # still training when finish is tried however slow the recovery's end is
    project.spec(training_tmux_env={"VOLT_FIXTURE_EPOCH_MS": 1000, "VOLT_FIXTURE_LAST_EPOCH_GATE": GATE})
    project.cli("local", "preempt")
    preempted = time.time()
    out = project.cli("recover", timeout=900).stdout
    new_id = project.state()["instance"]["id"]
    assert f"instance {new_id} replaces {old_id}" in out and "exited in the Vast API" in out
    log = on_instance(project, f"cat {DEST}/logs/phase21_stage1.log")
    first_exec = re.findall(r"^volt-job: \S+ exec (.*)$", log, re.M)[0]
    if resumable:
        assert f"stage1 resumes from epoch {newest}" in out
        # the replacement's stage 1 started from the newest epoch at home, not from zero
        assert f"Resumed from checkpoints/scaled_vfn_stage1_epoch_{newest}.safetensors (epoch {newest}," in log, log
        assert first_exec.endswith(f" --resume checkpoints/scaled_vfn_stage1_epoch_{newest}.safetensors")
    else:
        # said before anything is rented, with what it costs; no epoch checkpoint is sent to a binary that cannot use it
        assert re.search(rf"stage1 restarts from epoch 1 \(train-vfn has no --resume in its --help\): {newest} finished epoch\(s\), "
                         r"~[0-9.]+ GPU-hours \(~\$[0-9.]+\) trained again", out), out
        assert "--resume" not in first_exec and "Resumed from" not in log
        # never pushed back: the job found no epoch checkpoint at its start (else its start line says "trained again")
        assert re.search(r"^volt-job: \S+ start stage1 attempt 1 batch 32$", log, re.M), log
    start = re.search(r"^volt-job: (\S+) start stage1 attempt 1", log, re.M)
    gpu_busy = datetime.fromisoformat(start[1].replace("Z", "+00:00")).timestamp() - preempted
    print(f"\ndrill: preempt -> GPU job running again: {gpu_busy:.0f} s (recover reported {out.split('after ')[-1].split()[0]} s)")

    err = one_line_error(project.cli("finish", check=False))
    assert "still running: " in err and "stage1" in err
    on_instance(project, f"touch {GATE}")

    # watch (not finishing) until Phase 0.3 and stage 1 are done; no backup before then (--interval 60): the rounds only
    # read the jobs, and the round that finds them done backs up
    deadline = time.monotonic() + 300
    while True:
        rnd = project.cli("watch", "--once", "--no-finish", "--interval", "60").stdout
        if {"phase03", "stage1"} <= set(re.findall(r"^(\S+) +done\b", rnd, re.M)):
            break
        assert time.monotonic() < deadline, rnd
        time.sleep(2)

    # same epochs completed as a run that was never interrupted: the output is byte-identical
    exec_line = re.findall(r"^volt-job: \S+ exec (.*)$", log, re.M)[-1]
    ref = exec_line.split(" --resume ")[0].replace("checkpoints/scaled_vfn_stage1.safetensors", "/tmp/ref.safetensors")
    sums = on_instance(project, f"cd {DEST} && {ref} >/dev/null 2>&1 && sha256sum checkpoints/scaled_vfn_stage1.safetensors /tmp/ref.safetensors")
    got, want = sums.split()[0], sums.split()[2]
    assert got == want

    # watch finishes by itself once the last stage is home: destroys (both instances), prints the summary
    fin = project.cli("watch", "--once", "--interval", "60").stdout
    assert re.search(r"^campaign \S+ finished: ", fin, re.M) and f"{old_id}" in fin and f"{new_id}" in fin, fin
    files = home(project)
    came_home = project.root / "runs" / "volt-x-phase21" / "checkpoints/scaled_vfn_stage1.safetensors"
    assert hashlib.sha256(came_home.read_bytes()).hexdigest() == got  # the bytes the instance has
    assert files["checkpoints/scaled_vfn_stage1.safetensors"]["digest"] == fileops.file_digest(came_home)  # recorded in the one scheme
    assert "checkpoints/codebook_code.bin" in files
    state = project.state()
    assert state["instance"] is None and state["retired"] == [] and state["recovery"] is None
    reasons = [e["end_reason"] for e in state["ledger"]]
    migrated = [] if resumable else ["destroyed: paused, its disk copied to its replacement"]  # the stopped one, then its replacement
    assert reasons[:-2] == migrated and reasons[-2].startswith("lost: exited in the Vast API") and reasons[-1] == "finished", reasons
    assert project.double().containers() == []


def test_recover_refuses_without_backup_and_keeps_the_lost_instance_when_the_api_fails(project):
    project.spec(volt_watch={"api_retries": 2, "api_retry_delay_s": 0})
    project.cli("provision")
    old_id = project.state()["instance"]["id"]
    assert "nothing to recover" in one_line_error(project.cli("recover", check=False))

    project.cli("local", "preempt")
    err = one_line_error(project.cli("recover", check=False))
    assert "holds no backup of this campaign" in err and "recover --from-scratch" in err
    assert project.state()["instance"]["id"] == old_id  # nothing changed

    project.double().add_http_fault(500, count=10, path_prefix="/api/v0/asks/")
    err = one_line_error(project.cli("recover", "--from-scratch", check=False))
    assert "renting a replacement failed 2 times" in err and f"instance {old_id} is kept (not destroyed)" in err
    assert "recover` again" in err
    state = project.state()
    assert state["instance"] is None and state["recovery"]["lost_id"] == old_id
    assert [r["id"] for r in state["retired"]] == [old_id]
    assert project.double().instance(old_id) is not None  # still in the API: not destroyed
    assert "recovery under way" in project.cli("status").stdout

    refused = one_line_error(project.cli("destroy", "--yes", check=False))
    assert f"not destroying instance {old_id}" in refused
    forced = project.cli("destroy", "--yes", "--force").stdout
    assert f"instance(s) {old_id} destroyed" in forced and "lost (not home)" in forced
    assert project.state()["retired"] == [] and project.state()["recovery"] is None


def test_budget_crossed_backs_up_then_destroys_with_the_reason(project):
    project.spec(volt_watch={"budget_usd": 0.000001})
    # dev, not the default bare image: this test is about the budget stop, not the bootstrap's apt
    # (backup.yml's bare path, bootstrap play first, runs in the drill and the up tests); ~10 s of dpkg less on 2 cores
    project.cli("provision", VOLT_LOCAL_IMAGE="dev")
    iid = project.state()["instance"]["id"]
    out = project.cli("watch", "--once").stdout
    assert "budget: spent $" in out and f"instance(s) {iid} destroyed" in out, out
    assert "cost so far $" in out  # the ledger line of every round
    state = project.state()
    assert state["stopped"].startswith("budget: spent $") and state["instance"] is None
    assert state["ledger"][0]["end_reason"].startswith("budget: spent $")
    assert state["home"] is not None  # the backup ran before the destroy
    assert project.double().containers() == []
    assert "the campaign was stopped: budget" in project.cli("watch").stdout


def test_watch_killed_mid_download_restarts_and_finishes_the_backup(project):
    big = 30 * 1024 * 1024
    project.spec(backup_bwlimit_kbps=2500, backup_stable_s=1)
    # dev, not the default bare image: this test is about a backup restarted after its watch is killed, not the bootstrap's apt
    # (backup.yml's bare path, bootstrap play first, runs in the drill and the up tests); ~10 s of dpkg less on 2 cores
    project.cli("provision", VOLT_LOCAL_IMAGE="dev")
    on_instance(project, f"mkdir -p {DEST}/checkpoints && cd {DEST}/checkpoints && "
                         f"head -c {big} /dev/urandom > scaled_vfn_stage1_epoch_1.safetensors "
                         "&& echo stage1 > .volt-epochs && touch -d '-1 min' scaled_vfn_stage1_epoch_1.safetensors")
    incoming = project.root / "runs" / "volt-x-phase21" / ".incoming"
    watch = subprocess.Popen([sys.executable, "-m", "volt_ansible", "watch", "--once", "--interval", "0.01"], cwd=project.root,
                             env=project.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while sum(f.stat().st_size for f in incoming.rglob("*") if f.is_file()) < big * 0.3 if incoming.exists() else True:
            assert time.monotonic() < deadline and watch.poll() is None, "the download never got going"
            time.sleep(0.2)
    finally:
        os.killpg(watch.pid, signal.SIGKILL)  # the hardest stop: no handler runs
        watch.wait(30)
    state = project.state()  # parses: the state file is never half-written
    assert state["instance"] is not None and state["home"] is None
    assert "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors" not in home(project)

    out = project.cli("watch", "--once", "--interval", "0.01", timeout=300).stdout
    entry = home(project)["checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors"]
    remote = on_instance(project, f"sha256sum {DEST}/checkpoints/scaled_vfn_stage1_epoch_1.safetensors").split()[0]
    came_home = project.root / "runs" / "volt-x-phase21" / "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors"
    assert hashlib.sha256(came_home.read_bytes()).hexdigest() == remote and entry["size"] == big
    assert entry["digest"] == fileops.file_digest(came_home)
    assert project.state()["home"]["newest_epoch"]["epoch"] == 1, out
    project.cli("destroy", "--yes", "--force")
