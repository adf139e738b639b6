"""backup through playbooks/backup.yml on real SSH test hosts: pull, verify, idempotence, unwritable or full local
disk, digest mismatch retried or refused, a killed download resumed, an interrupted backup leaving home.json valid."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from backup_support import PLAYBOOK, SPEC, legacy_sha
from conftest import REPO
from procs import comm, descendants

from volt_ansible import fileops, home

SEED = """
import os, sys, json, time
root, spec = sys.argv[1], json.loads(sys.argv[2])
now = time.time()
for rel, (size, age) in spec.get("files", {}).items():
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
    os.utime(p, (now - age, now - age))
for rel, text in spec.get("text", {}).items():
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)
"""
ROOT = "/root/volt-x"


def seed(host, files: dict[str, tuple[int, float]] | None = None, text: dict[str, str] | None = None) -> None:
    """Write files of random bytes (size, age in seconds) and text files under /root/volt-x on the test host."""
    host.put(SEED, "/tmp/seed.py", mode="0644")
    host.exec(f"python3 /tmp/seed.py {ROOT} '{json.dumps({'files': files or {}, 'text': text or {}})}'")


FILEOPS = (REPO / "roles/volt_fileops/module_utils/volt_fileops.py").read_text()


def remote_sha(host, rel: str) -> str:
    """The file's digest computed on the test host itself (volt_fileops run there by python3)."""
    host.put(FILEOPS, "/tmp/volt_fileops.py", mode="0644")
    return host.exec(f"python3 -c 'import sys; sys.path.insert(0, \"/tmp\"); import volt_fileops; print(volt_fileops.file_digest(sys.argv[1]))' "
                     f"{ROOT}/{rel}").stdout.strip()


def local_sha(path: Path) -> str:
    return fileops.file_digest(path)


def recap(proc) -> str:
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith("vt-"))


def fatal(proc) -> str:
    return "\n".join(ln for ln in proc.stdout.splitlines() if ln.startswith("fatal:"))


def manifest(local: Path) -> dict:
    return json.loads((local / "home.json").read_text())


def backup(host, local: Path, check: bool = False, **knobs):
    return host.playbook(PLAYBOOK, extravars={"backup_local_dir": str(local), "backup_stable_s": 30, **knobs}, check=check)


TRAINING = {  # mid stage 2: stage 1 finished (its epochs archived), Phase 0.3 finished; ages in seconds
    "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors": (400_000, 9000),
    "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_2.safetensors": (400_000, 8000),
    "checkpoints/scaled_vfn_stage1.safetensors": (400_000, 7900),
    "checkpoints/scaled_vfn_stage2_epoch_1.safetensors": (400_000, 4000),
    "checkpoints/codebook_code.bin": (100_000, 5000),
    "logs/phase03.log": (3000, 5000),
    "logs/phase21_stage1.log": (3000, 7900),
}


@pytest.mark.podman
def test_backup_pulls_complete_files_verified_and_a_second_run_moves_nothing(make_host, tmp_path: Path):
    host = make_host()
    local = tmp_path / "runs" / "c"
    seed(host, {**TRAINING, "checkpoints/scaled_vfn_stage2_epoch_2.safetensors": (400_000, 2), "checkpoints/scaled_vfn.safetensors.tmp": (10, 300)},
         {"checkpoints/.volt-epochs": "stage2\n", "logs/phase03.status": "job=phase03\nstate=running\n"})
    first = backup(host, local, check=True, backup_stable_s=3600)  # epoch 2 stays "being written" during the test
    m = manifest(local)
    assert sorted(m["files"]) == sorted([
        "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors", "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_2.safetensors",
        "checkpoints/scaled_vfn_stage1.safetensors", "checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_1.safetensors",
        "logs/phase03.log", "logs/phase21_stage1.log"])
    for path, e in m["files"].items():
        assert local_sha(local / path) == e["digest"] == remote_sha(host, e["src"]), path
    assert m["files"]["checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_1.safetensors"]["src"] == "checkpoints/scaled_vfn_stage2_epoch_1.safetensors"
    assert "checkpoints/codebook_code.bin (job phase03 is not done (logs/phase03.status: state=running))" in first.stdout
    assert re.search(r"checkpoints/scaled_vfn_stage2_epoch_2.safetensors \(modified \d+s ago \(still being written\?\), backup_stable_s=3600\)",
                     first.stdout)
    assert not (local / "checkpoints/scaled_vfn_stage2_epoch_2.safetensors").exists() and not list(local.rglob("*.tmp"))
    assert [p for p in (local / home.STAGING).rglob("*") if p.is_file()] == []

    before = (local / "home.json").read_bytes()
    second = backup(host, local, check=True, backup_stable_s=3600)
    assert "changed=0" in recap(second), second.stdout[-3000:]
    rsync_task = second.stdout.split("TASK [backup : Pull the files with rsync")
    assert len(rsync_task) == 1, "rsync ran although nothing was new"
    assert (local / "home.json").read_bytes() == before

    # Phase 0.3 finishes, stage 2 moves on: exactly the new files come home
    host.exec(f"printf 'job=phase03\\nstate=done\\n' > {ROOT}/logs/phase03.status")
    host.exec(f"touch -d '-2 hours' {ROOT}/checkpoints/scaled_vfn_stage2_epoch_2.safetensors")
    third = backup(host, local, check=True, backup_stable_s=3600)
    new = set(manifest(local)["files"]) - set(json.loads(before)["files"])
    assert new == {"checkpoints/codebook_code.bin", "checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_2.safetensors"}
    assert "2 file(s) came home" in third.stdout


@pytest.mark.podman
def test_unwritable_local_dir_stops_before_any_download(make_host, tmp_path: Path):
    host = make_host()
    seed(host, TRAINING)
    (tmp_path / "file").write_text("")
    proc = backup(host, tmp_path / "file" / "runs")
    assert proc.returncode != 0
    assert (f'"msg": "backup: backup directory {tmp_path}/file/runs is not writable (Not a directory): fix its permissions or set '
            'backup_local_dir to a writable directory; nothing was downloaded"') in fatal(proc)
    assert "Pull the files with rsync" not in proc.stdout

    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here (root writes anywhere else)")
    try:
        proc = backup(host, locked / "runs")
        assert proc.returncode != 0
        assert f"backup: backup directory {locked}/runs is not writable (Operation not permitted)" in fatal(proc)
        assert "Pull the files with rsync" not in proc.stdout
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert list(locked.iterdir()) == []


@pytest.mark.podman
def test_full_local_disk_stops_before_any_download(make_host, tmp_path: Path):
    host = make_host()
    seed(host, TRAINING)
    local = tmp_path / "runs"
    proc = backup(host, local, backup_min_free_mb=10**9)
    assert proc.returncode != 0
    assert re.search(r"backup: not enough local disk for the backup: \S+ has [\d.]+ MiB free, it needs 1000000000 MiB to spare "
                     r"\(backup_min_free_mb\): free some space or set backup_local_dir to a bigger disk; nothing was downloaded", fatal(proc))
    assert not (local / "home.json").exists() and [p for p in local.rglob("*") if p.is_file()] == []
    # what the new files need counts too: 48 MiB of checkpoints where 32 MiB of a 64 MiB disk must stay free. The disk
    # is this test's own tmpfs: on the shared /tmp, the tests running beside this one write and free space meanwhile.
    seed(host, {"checkpoints/scaled_vfn_stage1_epoch_3.safetensors": (48 << 20, 300)})
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)
    try:
        proc = backup(host, small / "runs", backup_min_free_mb=32)
        assert proc.returncode != 0 and "MiB of new files +" in fatal(proc) and "nothing was downloaded" in fatal(proc), fatal(proc)
        assert [p for p in small.rglob("*") if p.is_file()] == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


CORRUPTING_RSYNC = """#!/usr/bin/env python3
# rsync, then (for the first LIMIT transfers) flip bytes in every staged checkpoint, keeping size and mtime:
# silent corruption that rsync's quick check (size + mtime) would never notice on the next run.
import glob, os, subprocess, sys
rc = subprocess.call(["rsync", *sys.argv[1:]])
count_file = "COUNT"
if "--files-from=-" in sys.argv:
    n = int(open(count_file).read()) if os.path.exists(count_file) else 0
    if n < LIMIT:
        open(count_file, "w").write(str(n + 1))
        for p in glob.glob("STAGING/checkpoints/**/*.safetensors", recursive=True):
            st = os.stat(p)
            with open(p, "r+b") as f:
                f.seek(1000)
                f.write(b"corrupt!")
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
sys.exit(rc)
"""


def corrupting_rsync(tmp_path: Path, local: Path, limit: int) -> Path:
    script = tmp_path / "rsync-corrupt"
    script.write_text(CORRUPTING_RSYNC.replace("COUNT", str(tmp_path / "count")).replace("LIMIT", str(limit))
                      .replace("STAGING", str(local / home.STAGING)))
    script.chmod(0o755)
    return script


@pytest.mark.podman
def test_a_corrupted_download_is_downloaded_again_and_only_then_home(make_host, tmp_path: Path):
    host = make_host()
    local = tmp_path / "runs"
    seed(host, {"checkpoints/scaled_vfn_stage1_epoch_1.safetensors": (300_000, 300), "logs/phase21_stage1.log": (2000, 300)},
         {"checkpoints/.volt-epochs": "stage1\n"})
    proc = backup(host, local, check=True, backup_rsync=str(corrupting_rsync(tmp_path, local, limit=1)))
    assert "Pull the files with rsync (attempt 2)" in proc.stdout
    attempt2 = proc.stdout.split("TASK [backup : Pull the files with rsync (attempt 2)]")[1].split("TASK [")[0]
    assert "changed:" in attempt2  # the retry re-sent the corrupted blocks
    e = manifest(local)["files"]["checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors"]
    assert e["digest"] == remote_sha(host, "checkpoints/scaled_vfn_stage1_epoch_1.safetensors")
    assert local_sha(local / e["path"]) == e["digest"]
    assert manifest(local)["last_run"]["attempt"] == 2 and manifest(local)["last_run"]["home"] == 2


@pytest.mark.podman
def test_a_download_that_stays_corrupted_fails_loudly_and_is_never_home(make_host, tmp_path: Path):
    host = make_host()
    local = tmp_path / "runs"
    seed(host, {"checkpoints/scaled_vfn_stage1_epoch_1.safetensors": (300_000, 300), "logs/phase21_stage1.log": (2000, 300)},
         {"checkpoints/.volt-epochs": "stage1\n"})
    proc = backup(host, local, backup_rsync=str(corrupting_rsync(tmp_path, local, limit=99)), backup_retries=1)
    assert proc.returncode != 0
    msg = fatal(proc)
    assert ("backup: checkpoints/scaled_vfn_stage1_epoch_1.safetensors still differ(s) from the copy on vt-" in msg
            and "after 2 downloads (home sha256t:" in msg and "not marked home" in msg), proc.stdout[-3000:]
    assert remote_sha(host, "checkpoints/scaled_vfn_stage1_epoch_1.safetensors") in msg
    files = manifest(local)["files"]
    assert list(files) == ["logs/phase21_stage1.log"]  # the good file is home, the bad one is not
    assert not home.is_home(local, "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors")
    assert not (local / "checkpoints").exists()
    assert not (local / home.STAGING / "checkpoints/scaled_vfn_stage1_epoch_1.safetensors").exists()






def _wait_for_landing(local: Path, name: str, size: int, fraction: float, timeout: float = 60) -> int:
    """Bytes of `name` rsync has written so far (its in-flight temp file), once past `fraction` of `size`."""
    deadline = time.time() + timeout
    landed = 0
    while time.time() < deadline and landed < size * fraction:
        for p in (local / home.STAGING / "checkpoints").glob(f".{name}.*"):
            with contextlib.suppress(OSError):
                landed = max(landed, p.stat().st_size)
        time.sleep(0.1)
    assert landed >= size * fraction, f"the transfer never got to {fraction:.0%} ({landed} bytes)"
    return landed


BIG = 12_000_000


@pytest.mark.podman
def test_a_killed_download_resumes_from_the_partial_file(make_host, tmp_path: Path):
    host = make_host()
    local = tmp_path / "runs"
    seed(host, {"checkpoints/scaled_vfn_stage1_epoch_3.safetensors": (BIG, 300)}, {"checkpoints/.volt-epochs": "stage1\n"})
    result = {}
    t = threading.Thread(target=lambda: result.update(proc=backup(host, local, backup_bwlimit_kbps=2500, backup_rsync_retries=0)))
    t.start()
    _wait_for_landing(local, "scaled_vfn_stage1_epoch_3.safetensors", BIG, 0.4)
    mine = descendants(os.getpid())
    rsyncs = [p for p in mine if comm(p) == "rsync" and not any(p in descendants(q) for q in mine if comm(q) == "rsync")]
    assert len(rsyncs) == 1, f"not one rsync client running: {rsyncs}"
    os.kill(rsyncs[0], signal.SIGTERM)  # the client rsync (it stops its receiver, which keeps the partial file)
    t.join(120)
    proc = result["proc"]
    assert proc.returncode != 0
    assert "backup: rsync from vt-" in fatal(proc) and "run the backup again: it resumes from the partial file" in fatal(proc)
    partial = local / home.STAGING / "checkpoints/.rsync-partial/scaled_vfn_stage1_epoch_3.safetensors"
    kept = partial.stat().st_size
    assert kept >= BIG * 0.4
    assert not home.is_home(local, "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_3.safetensors")

    again = backup(host, local, check=True)
    run = manifest(local)["last_run"]
    assert run["literal_bytes"] <= BIG - kept + 64 * 1024, run  # the rest of the file, not all of it again
    assert run["wire_bytes"] < BIG * 0.65, run
    e = manifest(local)["files"]["checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_3.safetensors"]
    assert e["size"] == BIG and e["digest"] == remote_sha(host, "checkpoints/scaled_vfn_stage1_epoch_3.safetensors") == local_sha(local / e["path"])
    assert not partial.exists()
    assert f"{run['wire_bytes']} bytes received over the wire" in again.stdout


def start_backup(host, local: Path, **knobs) -> subprocess.Popen:
    """playbooks/backup.yml in a session of its own (like `volt-ansible watch` running it), so the test can kill it all."""
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(host.inventory), str(PLAYBOOK),
           "-e", json.dumps({"backup_local_dir": str(local), "backup_stable_s": 30, **knobs})]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CONTROL_PATH_DIR": str(host.workdir / "cp"), **host.env}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.podman
def test_a_backup_killed_mid_download_leaves_home_json_valid_and_the_next_one_finishes(make_host, tmp_path: Path):
    host = make_host()
    local = tmp_path / "runs"
    seed(host, {"logs/phase21_stage1.log": (2000, 300)})
    backup(host, local, check=True)
    before = (local / "home.json").read_bytes()
    seed(host, {"checkpoints/scaled_vfn_stage1_epoch_1.safetensors": (BIG, 300), "logs/phase03.log": (1000, 300)},
         {"checkpoints/.volt-epochs": "stage1\n"})
    proc = start_backup(host, local, backup_bwlimit_kbps=2500)
    try:
        _wait_for_landing(local, "scaled_vfn_stage1_epoch_1.safetensors", BIG, 0.4)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the whole backup: ansible-playbook, its rsync and ssh
        proc.wait(30)
    assert (local / "home.json").read_bytes() == before  # still the last complete manifest
    assert list(json.loads(before)["files"]) == ["logs/phase21_stage1.log"]
    assert not home.is_home(local, "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors")

    backup(host, local, check=True)
    files = manifest(local)["files"]
    assert set(files) == {"logs/phase21_stage1.log", "logs/phase03.log", "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors"}
    e = files["checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors"]
    assert e["digest"] == remote_sha(host, "checkpoints/scaled_vfn_stage1_epoch_1.safetensors") == local_sha(local / e["path"])
    assert manifest(local)["last_run"]["wire_bytes"] < BIG * 0.75  # resumed, not started over


@pytest.mark.podman
def test_volt_ansible_run_backup_uses_the_campaigns_pinned_connection(project):
    """Through the CLI on a local-backend instance: the dynamic inventory's key, port and pinned known_hosts
    (StrictHostKeyChecking=yes) carry rsync too, and the default directory is <project>/runs/<campaign>."""
    # dev, not the default bare image: this test is about the connection backup.yml uses, not the bootstrap's apt
    # (backup.yml's bare path, bootstrap play first, runs in the drill and the up tests); ~10 s of dpkg less on 2 cores
    project.cli("provision", VOLT_LOCAL_IMAGE="dev")
    project.cli("ssh", "--", f"mkdir -p {ROOT}/logs && head -c 50000 /dev/urandom > {ROOT}/logs/phase03.log && "
                             f"touch -d '-1 hour' {ROOT}/logs/phase03.log && sha256sum {ROOT}/logs/phase03.log > /tmp/sum")
    out = project.cli("run", "backup").stdout
    assert "backup ok" in out, out
    local = project.root / "runs" / SPEC["volt_campaign"]
    e = manifest(local)["files"]["logs/phase03.log"]
    assert legacy_sha((local / "logs/phase03.log").read_bytes()) == "sha256:" + project.cli("ssh", "--", "cat /tmp/sum").stdout.split()[0]
    assert e["digest"] == local_sha(local / "logs/phase03.log")
    assert e["host"] == f"volt-{project.state()['instance']['id']}"
    assert "backup ok: changed=0" in project.cli("run", "backup").stdout


def test_volt_ansible_backup_reports_what_is_home(project):
    """`volt-ansible backup`: the same playbook, plus what is home and what is still missing."""
    # dev, not the default bare image: this test is about what `backup` reports, not the bootstrap's apt
    # (backup.yml's bare path, bootstrap play first, runs in the drill and the up tests); ~10 s of dpkg less on 2 cores
    project.cli("provision", VOLT_LOCAL_IMAGE="dev")
    project.cli("ssh", "--", f"mkdir -p {ROOT}/checkpoints && head -c 30000 /dev/urandom > {ROOT}/checkpoints/scaled_vfn_stage1_epoch_1.safetensors"
                             f" && echo stage1 > {ROOT}/checkpoints/.volt-epochs && touch -d '-1 hour' {ROOT}/checkpoints/*")
    out = project.cli("backup").stdout
    assert "backup ok" in out and "home: 1 file(s)" in out, out
    assert "newest epoch checkpoint: epoch 1" in out
    assert "still missing: checkpoints/codebook_code.bin" in out


def test_pull_alone_says_to_run_main_first(tmp_path: Path):
    play = tmp_path / "pull.yml"
    play.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                     "tasks": [{"ansible.builtin.include_role": {"name": "backup", "tasks_from": "pull"}}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(play)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and '"msg": "backup: run tasks_from: main first' in fatal(proc), proc.stdout[-3000:]


# ----------------------------------------------------------------------------------------------
# the role on a real SSH test host (through playbooks/backup.yml, group_vars included)
