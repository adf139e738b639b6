"""backup, the pure-Python half: the home manifest (volt_ansible.home: promote, verify, atomic write, old sha256
entries) and the instance-side listing (backup_scan), its resolved jobs and its ssh command line."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backup_support import SPEC, backup_scan, filters, legacy_sha, sha

from volt_ansible import home, ssh
from volt_ansible.errors import VoltError

# ----------------------------------------------------------------------------------------------
# volt_ansible.home: the manifest


def stage(local: Path, src: str, data: bytes, mtime_ns: int = 1_700_000_000_000_000_000) -> dict:
    """A downloaded file in .incoming/, and the item promote() gets for it (remote side matching)."""
    p = local / home.STAGING / src
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))
    return {"src": src, "dest": src, "size": len(data), "mtime_ns": mtime_ns, "kind": "file",
            "remote": {"exists": True, "size": len(data), "mtime_ns": mtime_ns, "digest": sha(data)}}


def test_promote_moves_verified_files_home_and_records_them(tmp_path: Path):
    good = stage(tmp_path, "logs/phase03.log", b"codebook-init: done\n")
    res = home.promote(tmp_path, [good], host="volt-1", run={"attempt": 1, "home_before": 0})
    assert [e["path"] for e in res["home"]] == ["logs/phase03.log"] and not res["mismatch"]
    assert (tmp_path / "logs/phase03.log").read_bytes() == b"codebook-init: done\n"
    assert not (tmp_path / home.STAGING / "logs/phase03.log").exists()
    assert (tmp_path / "logs/phase03.log").stat().st_mtime_ns == good["mtime_ns"]  # the instance's mtime
    m = json.loads((tmp_path / "home.json").read_text())
    e = m["files"]["logs/phase03.log"]
    assert (e["size"], e["digest"], e["src"], e["host"], e["mtime_ns"]) == (20, sha(b"codebook-init: done\n"), "logs/phase03.log", "volt-1",
                                                                             good["mtime_ns"])
    assert e["home_at"] > 0 and m["last_run"]["home"] == 1 and "home_before" not in m["last_run"]
    assert home.is_home(tmp_path, "logs/phase03.log")
    assert home.is_home(tmp_path, "logs/phase03.log", sha(b"codebook-init: done\n"), verify=True)
    assert e["digest"].startswith("sha256t:")
    assert home.is_home(tmp_path, "logs/phase03.log", sha(b"codebook-init: done\n").split(":", 1)[1])  # bare hex works
    assert not home.is_home(tmp_path, "logs/phase03.log", sha(b"other"))
    assert not home.is_home(tmp_path, "logs/nothing.log")


def test_promote_never_records_a_mismatch_a_changed_or_a_missing_file(tmp_path: Path):
    bad = stage(tmp_path, "checkpoints/a.safetensors", b"A" * 100)
    bad["remote"]["digest"] = sha(b"B" * 100)  # the instance has other bytes: a corrupted download
    moved = stage(tmp_path, "checkpoints/b.safetensors", b"B" * 100)
    moved["remote"]["mtime_ns"] += 1  # rewritten on the instance after it was listed
    gone = stage(tmp_path, "checkpoints/c.safetensors", b"C")
    gone["remote"] = {"exists": False}
    lost = {**stage(tmp_path, "checkpoints/d.safetensors", b"D"), "src": "checkpoints/never.safetensors", "dest": "checkpoints/never.safetensors"}
    res = home.promote(tmp_path, [bad, moved, gone, lost])
    assert [m["src"] for m in res["mismatch"]] == ["checkpoints/a.safetensors"]
    assert res["mismatch"][0]["local_digest"] == sha(b"A" * 100) and res["mismatch"][0]["remote_digest"] == sha(b"B" * 100)
    assert [c["src"] for c in res["changed"]] == ["checkpoints/b.safetensors", "checkpoints/c.safetensors"]
    assert [c["src"] for c in res["missing"]] == ["checkpoints/never.safetensors"]
    assert res["home"] == [] and not (tmp_path / "home.json").exists()
    assert not (tmp_path / "checkpoints").exists()  # nothing looks complete
    assert (tmp_path / home.STAGING / "checkpoints/a.safetensors").exists()  # the basis of the retry's delta transfer


def test_promote_refuses_paths_outside_the_backup_dir(tmp_path: Path):
    item = stage(tmp_path, "logs/x.log", b"x")
    with pytest.raises(VoltError, match="must stay inside the backup directory"):
        home.promote(tmp_path, [{**item, "dest": "../../etc/x"}])


def test_manifest_write_is_atomic(tmp_path: Path, monkeypatch):
    home.merge(tmp_path, [{"path": "logs/a.log", "size": 1, "digest": sha(b"a")}])
    before = (tmp_path / "home.json").read_bytes()

    def crash(*_a, **_k):
        raise KeyboardInterrupt  # killed between writing the temp file and the rename

    monkeypatch.setattr(home.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        home.merge(tmp_path, [{"path": "logs/b.log", "size": 1, "digest": sha(b"b")}])
    assert (tmp_path / "home.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left behind


def test_corrupt_manifest_is_refused_and_never_overwritten(tmp_path: Path):
    (tmp_path / "home.json").write_text('{"files": {"a": ')
    with pytest.raises(VoltError) as e:
        home.merge(tmp_path, [{"path": "logs/b.log", "size": 1, "digest": sha(b"b")}])
    assert "home.json is corrupt" in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "home.json").read_text() == '{"files": {"a": '
    proc = subprocess.run([sys.executable, "-m", "volt_ansible.home", "show", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("backup: ") and "home.json is corrupt" in proc.stderr


def test_a_deleted_or_truncated_local_file_is_not_home(tmp_path: Path):
    home.promote(tmp_path, [stage(tmp_path, "logs/a.log", b"aaaa"), stage(tmp_path, "logs/b.log", b"bbbb")])
    (tmp_path / "logs/a.log").unlink()
    (tmp_path / "logs/b.log").write_bytes(b"bb")
    assert not home.is_home(tmp_path, "logs/a.log") and not home.is_home(tmp_path, "logs/b.log")
    assert home.known(tmp_path) == {}  # so the next backup fetches them again


def epoch_item(local: Path, job: str, n: int, data: bytes, mtime_ns: int) -> dict:
    src = f"checkpoints/scaled_vfn_epoch_{n}.safetensors"
    it = stage(local, src, data, mtime_ns)
    return {**it, "dest": f"checkpoints/epochs/{job}/scaled_vfn_epoch_{n}.safetensors", "kind": "epoch", "job": job, "epoch": n}


def test_newest_epoch_checkpoint_is_per_job_and_verified(tmp_path: Path):
    assert home.newest_epoch_checkpoint(tmp_path) is None
    t = 1_700_000_000_000_000_000
    home.promote(tmp_path, [epoch_item(tmp_path, "stage1", n, bytes([n]) * 64, t + n) for n in (1, 2, 10)])
    home.promote(tmp_path, [epoch_item(tmp_path, "stage2", n, bytes([20 + n]) * 64, t + 100 + n) for n in (1, 2)])
    # job=None: the job that wrote last on the instance (stage 2), its highest epoch (not "10" of stage 1)
    assert home.newest_epoch_checkpoint(tmp_path) == (2, tmp_path / "checkpoints/epochs/stage2/scaled_vfn_epoch_2.safetensors")
    assert home.newest_epoch_checkpoint(tmp_path, job="stage1") == (10, tmp_path / "checkpoints/epochs/stage1/scaled_vfn_epoch_10.safetensors")
    assert home.newest_epoch_checkpoint(tmp_path, job="stage3") is None
    # a checkpoint that no longer matches its digest is passed over for the one before it
    (tmp_path / "checkpoints/epochs/stage1/scaled_vfn_epoch_10.safetensors").write_bytes(b"\0" * 64)
    assert home.newest_epoch_checkpoint(tmp_path, job="stage1")[0] == 2
    assert home.newest_epoch_checkpoint(tmp_path, job="stage1", verify=False)[0] == 10


def test_required_outputs_and_missing_follow_the_spec(tmp_path: Path):
    required = home.required_outputs(SPEC["volt_phase03"], SPEC["volt_curriculum"])
    assert required == ["checkpoints/codebook_code.bin", "checkpoints/scaled_vfn_stage1.safetensors",
                        "checkpoints/scaled_vfn_stage2.safetensors", "checkpoints/scaled_vfn.safetensors"]
    home.promote(tmp_path, [stage(tmp_path, "checkpoints/codebook_code.bin", b"VCBK")])
    assert home.missing(tmp_path, required) == required[1:]
    s = home.summary(tmp_path, required)
    assert (s["files"], s["bytes"], s["missing"], s["newest_epoch"]) == (1, 4, required[1:], None)
    assert home.default_dir("/p", "volt-x-phase21") == Path("/p/runs/volt-x-phase21")


def test_check_dir_errors_are_one_line(tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(VoltError) as e:
        home.check_dir(tmp_path / "file" / "runs")
    assert str(e.value) == (f"backup directory {tmp_path}/file/runs is not writable (Not a directory): fix its permissions or set "
                            "backup_local_dir to a writable directory; nothing was downloaded")
    with pytest.raises(VoltError, match=r"not enough local disk for the backup: .* it needs 3.0 MiB of new files \+ 1000000000 MiB to spare"):
        home.check_dir(tmp_path / "runs", min_free_mb=10**9, need_bytes=3 << 20)
    ok = home.check_dir(tmp_path / "runs", min_free_mb=1)
    assert ok["free_bytes"] > 1 << 20 and (tmp_path / "runs" / home.STAGING).is_dir()


def test_check_dir_drops_rsync_temps_of_a_killed_rsync(tmp_path: Path):
    d = tmp_path / home.STAGING / "checkpoints"
    d.mkdir(parents=True)
    old, fresh, partial = d / ".scaled_vfn_epoch_3.safetensors.a1B2c3", d / ".scaled_vfn_epoch_4.safetensors.x9Y8z7", d / "keep.bin"
    for p in (old, fresh, partial):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(partial, (time.time() - 7200, time.time() - 7200))
    home.check_dir(tmp_path)
    assert not old.exists() and fresh.exists() and partial.exists()


# ----------------------------------------------------------------------------------------------
# backup_scan: what the instance offers (run here on a local tree)


def make_tree(root: Path, files: dict[str, tuple[int, float]], now: float) -> dict[str, bytes]:
    out = {}
    for rel, (size, age) in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        p.write_bytes(data)
        os.utime(p, (now - age, now - age))
        out[rel] = data
    return out


def scan_params(root: Path, **kw) -> dict:
    p = {"root": str(root), "jobs": filters.backup_jobs(SPEC["volt_phase03"], SPEC["volt_curriculum"]), "globs": ["logs/*.log"],
         "stable_s": 60, "known": {}}
    p.update(kw)
    return p


def test_scan_takes_only_complete_files_and_keeps_epochs_per_job(tmp_path: Path):
    now = time.time()
    make_tree(tmp_path, {
        "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors": (10, 900),
        "checkpoints/scaled_vfn_stage1.safetensors": (10, 800),
        "checkpoints/scaled_vfn_stage2_epoch_1.safetensors": (10, 300),
        "checkpoints/scaled_vfn_stage2_epoch_2.safetensors": (10, 5),  # being written
        "checkpoints/scaled_vfn_stage2.safetensors.tmp": (10, 300),
        "checkpoints/scaled_vfn_stage2_epoch_x.safetensors": (10, 300),  # not an epoch number
        "checkpoints/codebook_code.bin": (10, 300),
        "checkpoints/code_encoder.safetensors": (10, 900),  # an input, not a result
        "logs/phase21_stage2.log": (10, 120),
        "logs/phase03.status": (0, 0),
    }, now)
    (tmp_path / "checkpoints/.volt-epochs").write_text("stage2\n")
    (tmp_path / "logs/phase03.status").write_text("job=phase03\nstate=running\npid=1\n")
    files, waiting, n_home = backup_scan.scan(scan_params(tmp_path), now)
    got = {f["src"]: (f["dest"], f["kind"], f["job"], f["epoch"]) for f in files}
    assert got == {
        "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors": ("checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors",
                                                                            "epoch", "stage1",
                                                                     1),
        "checkpoints/scaled_vfn_stage1.safetensors": ("checkpoints/scaled_vfn_stage1.safetensors", "output", "stage1", None),
        "checkpoints/scaled_vfn_stage2_epoch_1.safetensors": ("checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_1.safetensors", "epoch",
                                                              "stage2", 1),
        "logs/phase21_stage2.log": ("logs/phase21_stage2.log", "log", None, None),
    }
    assert [f["src"] for f in files][0] == "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors"  # oldest first
    why = {w["src"]: w["reason"] for w in waiting}
    assert why["checkpoints/codebook_code.bin"] == "job phase03 is not done (logs/phase03.status: state=running)"
    assert why["checkpoints/scaled_vfn_stage2_epoch_2.safetensors"].startswith("modified 5s ago")
    assert set(why) == {"checkpoints/codebook_code.bin", "checkpoints/scaled_vfn_stage2_epoch_2.safetensors"}  # the .tmp is never even listed
    assert n_home == 0

    # the codebook once Phase 0.3 is done (a JSON status works too); what is home (same size + mtime) is not listed again
    (tmp_path / "logs/phase03.status").write_text('{"job": "phase03", "state": "done"}')
    known = {f["dest"]: [f["size"], f["mtime_ns"]] for f in files}
    files2, _, n_home2 = backup_scan.scan(scan_params(tmp_path, known=known), now)
    assert [f["src"] for f in files2] == ["checkpoints/codebook_code.bin"] and n_home2 == 4

    # stage 2 finishes: training_tmux archives its epochs; the archived copy is the one already home
    (tmp_path / "checkpoints/epochs/stage2").mkdir()
    os.rename(tmp_path / "checkpoints/scaled_vfn_stage2_epoch_1.safetensors",
              tmp_path / "checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_1.safetensors")
    files3, _, _ = backup_scan.scan(scan_params(tmp_path, known=known), now)
    assert "checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_1.safetensors" not in [f["src"] for f in files3]


def test_scan_digest_reports_the_current_state(tmp_path: Path):
    data = make_tree(tmp_path, {"checkpoints/a.bin": (1000, 100)}, time.time())
    d = backup_scan.digest(str(tmp_path), ["checkpoints/a.bin", "checkpoints/gone.bin"])
    assert d["checkpoints/a.bin"]["digest"] == sha(data["checkpoints/a.bin"]) and d["checkpoints/a.bin"]["size"] == 1000
    assert d["checkpoints/gone.bin"] == {"exists": False}
    legacy = backup_scan.digest(str(tmp_path), ["checkpoints/a.bin"], {"checkpoints/a.bin": "sha256"})  # an older home.json entry
    assert legacy["checkpoints/a.bin"]["digest"] == legacy_sha(data["checkpoints/a.bin"])


def test_a_manifest_with_plain_sha256_entries_is_still_verified_with_sha256(tmp_path: Path):
    """home.json written before sha256t: each entry is verified with the algorithm it names; new entries are sha256t."""
    t = 1_700_000_000_000_000_000
    old = {"logs/a.log": b"aaaa", "checkpoints/epochs/stage1/scaled_vfn_epoch_1.safetensors": b"e1" * 50,
           "checkpoints/epochs/stage1/scaled_vfn_epoch_2.safetensors": b"e2" * 50}
    for rel, data in old.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    epoch = {"kind": "epoch", "job": "stage1"}
    home.merge(tmp_path, [{"path": "logs/a.log", "size": 4, "digest": legacy_sha(b"aaaa")},
                          {"path": "checkpoints/epochs/stage1/scaled_vfn_epoch_1.safetensors", "size": 100, "digest": legacy_sha(b"e1" * 50),
                           "epoch": 1, "mtime_ns": t, **epoch},
                          {"path": "checkpoints/epochs/stage1/scaled_vfn_epoch_2.safetensors", "size": 100, "digest": legacy_sha(b"e2" * 50),
                           "epoch": 2, "mtime_ns": t + 1, **epoch}])
    assert home.is_home(tmp_path, "logs/a.log", verify=True)
    assert home.is_home(tmp_path, "logs/a.log", legacy_sha(b"aaaa"))
    assert home.is_home(tmp_path, "logs/a.log", hashlib.sha256(b"aaaa").hexdigest())  # bare hex: the entry's algorithm
    assert not home.is_home(tmp_path, "logs/a.log", sha(b"aaaa"))  # another algorithm's digest is another digest
    assert home.newest_epoch_checkpoint(tmp_path, job="stage1")[0] == 2
    (tmp_path / "checkpoints/epochs/stage1/scaled_vfn_epoch_2.safetensors").write_bytes(b"XX" * 50)  # same size, other bytes
    assert home.newest_epoch_checkpoint(tmp_path, job="stage1")[0] == 1
    (tmp_path / "logs/a.log").write_bytes(b"aaab")
    assert not home.is_home(tmp_path, "logs/a.log", verify=True)
    # a new download of the same path is recorded with sha256t, the other old entries keep theirs
    home.promote(tmp_path, [stage(tmp_path, "logs/a.log", b"aaaa")])
    files = json.loads((tmp_path / "home.json").read_text())["files"]
    assert files["logs/a.log"]["digest"] == sha(b"aaaa") and files["logs/a.log"]["digest"].startswith("sha256t:")
    assert files["checkpoints/epochs/stage1/scaled_vfn_epoch_1.safetensors"]["digest"].startswith("sha256:")
    assert home.is_home(tmp_path, "logs/a.log", verify=True)
    with pytest.raises(VoltError, match="unknown digest algorithm 'md5'"):
        home.digest_of(tmp_path / "logs/a.log", "md5")


def test_backup_jobs_are_the_resolved_curriculum():
    """The role's filter hands backup_scan the curriculum's jobs; training_tmux settings that differ carry through."""
    jobs = filters.backup_jobs(SPEC["volt_phase03"], SPEC["volt_curriculum"])
    assert [(j["name"], j["output"], j["status"], j["log"]) for j in jobs] == [
        ("phase03", "checkpoints/codebook_code.bin", "logs/phase03.status", "logs/phase03.log"),
        ("stage1", "checkpoints/scaled_vfn_stage1.safetensors", "logs/stage1.status", "logs/phase21_stage1.log"),
        ("stage2", "checkpoints/scaled_vfn_stage2.safetensors", "logs/stage2.status", "logs/phase21_stage2.log"),
        ("stage3", "checkpoints/scaled_vfn.safetensors", "logs/stage3.status", "logs/phase21_stage3.log")]
    assert jobs[0]["epoch"] is None and jobs[1]["epoch"] == {"dir": "checkpoints", "prefix": "scaled_vfn_stage1_epoch_", "suffix": ".safetensors",
                                                             "owner": "checkpoints/.volt-epochs", "archive_dir": "checkpoints/epochs"}
    moved = filters.backup_jobs(SPEC["volt_phase03"], SPEC["volt_curriculum"], {"status_dir": "state", "epoch_archive": "done"})
    assert moved[1]["status"] == "state/stage1.status" and moved[1]["epoch"]["archive_dir"] == "checkpoints/done"
    assert filters.backup_jobs({}, {}) == []
    bad = {**SPEC["volt_phase03"], "output": "--nope"}
    with pytest.raises(filters.AnsibleFilterError, match=r"^backup: volt_phase03: the output flag '--nope' must have exactly one value"):
        filters.backup_jobs(bad, SPEC["volt_curriculum"])


def test_rsync_ssh_is_the_one_ssh_builder():
    conn = {"host": "203.0.113.7", "port": 2200, "user": "root", "key": "/k/id", "args": ["-o ForwardAgent=no -o ControlMaster=auto", "", None]}
    cmd = filters.backup_ssh(conn)
    assert shlex.split(cmd) == ssh.argv({**conn, "args": ["-o ForwardAgent=no -o ControlMaster=auto"]})
    assert cmd.startswith("ssh -o ControlMaster=no -o ControlPath=none -o BatchMode=yes") and "-p 2200 -i /k/id -l root" in cmd
