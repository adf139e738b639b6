"""data_sync: the manifest and pre-flight (pure Python), and the role on real SSH test hosts
(transfer, markers, idempotence, not enough disk, resume after a dropped connection, digest mismatch)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from procs import children, comm

from volt_ansible import datasync, fileops
from volt_ansible.errors import VoltError

HASHER = fileops._m  # the one digest code (roles/volt_fileops/module_utils/volt_fileops.py), as the controller loaded it

_spec = importlib.util.spec_from_file_location("make_data", REPO / "roles/data_sync/molecule/default/make_data.py")
make_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_data)


def guide_volt_data(local_root: Path, **changes) -> dict:
    """The project's volt_data (group_vars/all.yml) pointed at local_root; changes: item name -> {key: value}."""
    vd = yaml.safe_load((REPO / "group_vars/all.yml").read_text())["volt_data"]
    vd["local_root"] = str(local_root)
    for it in vd["items"]:
        it.update(changes.get(it["name"], {}))
    return vd


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "VoltData"
    make_data.make(root, scale=0.01, stack_python_mb=1.0, stack_full_mb=0.3)
    return root


# ----------------------------------------------------------------------------------------------
# manifest and pre-flight


def test_defaults_reproduce_the_guides_file_table():
    m = datasync.parse_manifest(yaml.safe_load((REPO / "group_vars/all.yml").read_text())["volt_data"])
    assert m.root_remote == "/root/volt-x"
    assert m.local_root == os.path.expanduser("~/VoltData")
    dests = {i.name: i.dest for i in m.items}
    assert [d for d in dests.values() if d.startswith("checkpoints/")] == [
        "checkpoints/code_tokenizer.json", "checkpoints/code_encoder.safetensors", "checkpoints/code_decoder.safetensors"]
    assert sorted(d for d in dests.values() if d.startswith("data/")) == sorted([
        "data/code_training_combined.jsonl", "data/humaneval.jsonl", "data/mbpp.jsonl", "data/apps_introductory_train.jsonl",
        "data/apps_interview_train.jsonl", "data/apps_competition_train.jsonl", "data/python_sample.jsonl", "data/the_stack_full"])
    ckpt = {"code_tokenizer", "code_encoder", "code_decoder"}
    jobs = {j: set(names) for j, names in m.jobs().items()}
    assert jobs["stage1"] == ckpt | {"code_training_combined"}
    assert jobs["stage2"] == jobs["stage1"] | {"apps_introductory_train", "apps_interview_train"}
    assert jobs["stage3"] == jobs["stage2"] | {"apps_competition_train"}
    assert jobs["phase03"] == ckpt | {"python_sample"}
    full = next(i for i in m.items if i.name == "the_stack_full")
    assert (full.kind, full.jobs, full.enabled) == ("dir", [], False)
    assert all(i.enabled for i in m.items if i is not full)


def test_missing_source_is_named_with_its_path_and_job(tree: Path, tmp_path: Path):
    (tree / make_data.STACK_PYTHON).unlink()
    with pytest.raises(VoltError) as e:
        datasync.preflight(guide_volt_data(tree), tmp_path / "volt")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{tree / make_data.STACK_PYTHON} does not exist" in msg
    assert "python_sample (needed by phase03)" in msg


def test_several_missing_sources_are_one_line(tmp_path: Path):
    with pytest.raises(VoltError) as e:
        datasync.preflight(guide_volt_data(tmp_path / "nowhere"), tmp_path / "volt")
    assert "\n" not in str(e.value)
    assert "code_tokenizer (needed by phase03, stage1, stage2, stage3)" in str(e.value) and "(and 9 more problems)" in str(e.value)


def test_file_where_a_dir_is_declared_and_the_reverse(tree: Path, tmp_path: Path):
    with pytest.raises(VoltError, match=r"the_stack_full .*the_stack_full is a directory but the item says kind: file: set kind: dir"):
        datasync.preflight(guide_volt_data(tree, the_stack_full={"enabled": True, "kind": "file"}), tmp_path / "volt")
    with pytest.raises(VoltError, match=r"python_sample \(needed by phase03\): .*python_sample.jsonl is a file but the item says kind: dir"):
        datasync.preflight(guide_volt_data(tree, python_sample={"kind": "dir"}), tmp_path / "volt")


@pytest.mark.parametrize("change, message", [
    ({"kind": "folder"}, "volt_data.items[9] (python_sample).kind = 'folder': use file or dir"),
    ({"dest": "../etc/x"}, "volt_data.items[9] (python_sample).dest = '../etc/x': must be a path relative to root_remote"),
    ({"dest": "data/mbpp.jsonl"}, "volt_data.items[9] (python_sample).dest = 'data/mbpp.jsonl' is also the dest of mbpp"),
    ({"name": "mbpp"}, "volt_data.items[9] (mbpp).name = 'mbpp' is used twice"),
    ({"jobs": "phase03"}, "volt_data.items[9] (python_sample).jobs = 'phase03': must be a list of job names"),
    ({"size": 3}, "volt_data.items[9] (python_sample).size is not a known key"),
])
def test_bad_items_are_one_line_with_the_key(tree: Path, tmp_path: Path, change: dict, message: str):
    with pytest.raises(VoltError) as e:
        datasync.preflight(guide_volt_data(tree, python_sample=change), tmp_path / "volt")
    assert message in str(e.value)


def test_a_job_that_needs_a_disabled_item_cannot_be_waited_for(tree: Path, tmp_path: Path):
    vd = guide_volt_data(tree, python_sample={"enabled": False})
    with pytest.raises(VoltError, match="job phase03 needs python_sample, which is disabled"):
        datasync.preflight(vd, tmp_path / "volt", jobs=["phase03"])
    with pytest.raises(VoltError, match="job 'stage9' is needed by no item"):
        datasync.preflight(vd, tmp_path / "volt", jobs=["stage9"])
    report = datasync.preflight(vd, tmp_path / "volt")  # not waiting for it: a warning
    assert any("phase03" in w for w in report.warnings)


def test_digest_cache_second_check_reads_no_file(tree: Path, tmp_path: Path, monkeypatch):
    reads: list[str] = []
    real = HASHER._chunk_digest

    def counting(path, index, size):
        reads.append(path)
        return real(path, index, size)

    monkeypatch.setattr(HASHER, "_chunk_digest", counting)
    vd = guide_volt_data(tree, the_stack_full={"enabled": True})
    first = datasync.preflight(vd, tmp_path / "volt")
    assert len(set(reads)) == 13 and first.hashed_bytes == first.total_bytes
    manifest = json.loads((tmp_path / "volt" / "data-manifest.json").read_text())
    assert manifest["items"]["python_sample"]["digest"] == next(i.digest for i in first.items if i.name == "python_sample")

    reads.clear()
    second = datasync.preflight(vd, tmp_path / "volt")
    assert reads == [] and second.hashed_bytes == 0 and second.cached_bytes == second.total_bytes
    assert [(i.name, i.digest) for i in second.items] == [(i.name, i.digest) for i in first.items]

    sample = tree / make_data.STACK_PYTHON  # a new mtime (same size and content): hashed again, same digest
    st = sample.stat()
    os.utime(sample, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = datasync.preflight(vd, tmp_path / "volt")
    assert set(reads) == {str(sample)} and third.hashed_bytes == st.st_size
    assert [i.digest for i in third.items] == [i.digest for i in first.items]


def test_digest_is_sha256_over_64mib_chunk_digests(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(HASHER, "DIGEST_CHUNK", 1000)
    data = os.urandom(2500)
    f = tmp_path / "x.bin"
    f.write_bytes(data)
    chunks = b"".join(hashlib.sha256(data[i:i + 1000]).digest() for i in (0, 1000, 2000))
    expect = "sha256t:" + hashlib.sha256(b"volt-sha256t-v1\0" + (2500).to_bytes(8, "big") + chunks).hexdigest()
    assert fileops.file_digest(f) == expect
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert fileops.file_digest(empty) == "sha256t:" + hashlib.sha256(b"volt-sha256t-v1\0" + bytes(8) + hashlib.sha256().digest()).hexdigest()
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a").write_bytes(b"a")
    before = fileops.path_digest(str(d), "dir")
    (d / "sub" / "a").rename(d / "sub" / "b")
    assert fileops.path_digest(str(d), "dir") != before  # names are part of a directory's digest


def test_transfer_order_is_needed_first_then_small_first(tree: Path, tmp_path: Path):
    report = datasync.preflight(guide_volt_data(tree, the_stack_full={"enabled": True}), tmp_path / "volt")
    order = [(i.tier, i.name) for i in report.items]
    assert {n for t, n in order if t == 0} == {"code_training_combined", "code_tokenizer", "code_encoder", "code_decoder"}
    sizes = [i.size for i in report.items]
    assert all(sizes[k] <= sizes[k + 1] for k in range(len(sizes) - 1) if report.items[k].tier == report.items[k + 1].tier)
    assert [n for t, n in order if t == 1] == ["python_sample"]
    assert {n for t, n in order if t == 2} == {"apps_introductory_train", "apps_interview_train"}
    assert [n for t, n in order if t == 3] == ["apps_competition_train"]
    assert {n for t, n in order if t == 5} == {"humaneval", "mbpp", "the_stack_full"}
    assert [t for t, _ in order] == sorted(t for t, _ in order)
    compress = {i.name: i.compress_on for i in report.items}
    assert compress["python_sample"] and compress["the_stack_full"] and compress["code_tokenizer"]
    assert not compress["code_encoder"] and not compress["code_decoder"]


def test_check_reads_the_spec_and_reports(tree: Path, tmp_path: Path):
    spec = tmp_path / "all.yml"
    data = yaml.safe_load((REPO / "group_vars/all.yml").read_text())
    data["volt_data"]["local_root"] = str(tree)
    spec.write_text(yaml.safe_dump(data))
    seen = []
    report = datasync.check(spec, tmp_path / "volt", jobs=["stage1"], progress=lambda done, total: seen.append((done, total)))
    assert [i.name for i in report.items] == ["code_training_combined", "code_tokenizer", "code_encoder", "code_decoder"]
    assert seen and seen[-1][0] == seen[-1][1] == report.total_bytes
    lines = report.lines()
    assert lines[0].startswith("4 items, ") and any(ln.strip().startswith("job stage1: 4 items") for ln in lines)
    spec.write_text("volt_campaign: x\n")
    with pytest.raises(VoltError, match="has no volt_data section"):
        datasync.check(spec, tmp_path / "volt")


# ----------------------------------------------------------------------------------------------
# the role on this machine (connection local): contracts, the controller package, the instance side


def local_play(tmp_path: Path, text: str, **extravars) -> subprocess.CompletedProcess:
    (tmp_path / "play.yml").write_text(text)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1"}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", json.dumps({"ansible_python_interpreter": sys.executable, **extravars}), str(tmp_path / "play.yml")]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


LOCAL_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Include
      ansible.builtin.include_role:
        name: data_sync
        tasks_from: {tasks_from}
{more}"""


def test_transfer_without_the_preflight_says_run_start_first(tmp_path: Path):
    proc = local_play(tmp_path, LOCAL_PLAY.format(tasks_from="transfer", more=""), volt_data={"items": []})
    assert proc.returncode == 2
    fatal = [ln for ln in proc.stdout.splitlines() if ln.startswith("fatal:")]
    assert len(fatal) == 1 and fatal[0].endswith('"msg": "data_sync: run tasks_from: start first"}'), proc.stdout[-3000:]
    tasks = [ln for ln in proc.stdout.splitlines() if ln.startswith("TASK [")]
    assert tasks[-1].startswith("TASK [data_sync : This entry point needs tasks_from start first]")  # its first task, nothing after
    assert "ok=2    changed=0    unreachable=0    failed=1" in proc.stdout, proc.stdout  # include + its argument check


def test_a_controller_python_without_the_package_is_one_line(tree: Path, tmp_path: Path):
    bare = tmp_path / "bare-python"  # this Python without site-packages (so without the editable install) nor the cwd
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    bare.chmod(0o755)
    proc = local_play(tmp_path, LOCAL_PLAY.format(tasks_from="start", more=""), volt_data=guide_volt_data(tree), data_sync_python=str(bare),
                      data_sync_volt_dir=str(tmp_path / "volt"), data_sync_root_remote=str(tmp_path / "remote"))
    assert proc.returncode != 0
    assert (f"data_sync: {bare} has no volt_ansible.datasync (the role's controller side): install the project into that Python "
            "(pip install -e <the volt-ansible checkout>) or set data_sync_python to the Python that has it") in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "remote").exists()


def test_the_instance_side_probes_marks_installs_and_verifies_with_volt_fileops(tree: Path, tmp_path: Path):
    """The modules over Ansible's connection, then the helper they installed as the driver runs it (argv, no stdin)."""
    root, volt_dir = tmp_path / "remote", tmp_path / "volt"
    vd = guide_volt_data(tree)
    role_vars = {"volt_data": vd, "data_sync_volt_dir": str(volt_dir), "data_sync_root_remote": str(root)}
    report = datasync.preflight(vd, volt_dir)
    for it in report.items:  # what rsync would have landed
        (root / it.dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(it.src, root / it.dest)
    mark = """    - name: Mark
      data_sync_mark:
        root: "{{ data_sync_root_remote }}"
        send: "{{ __data_sync_send | map(attribute='name') | list }}"
        jobs: "{{ __data_sync_plan.jobs }}"
        digests: "{{ _data_sync_digests }}"
        install: true
      register: marked
    - name: Show
      ansible.builtin.debug:
        msg: "SEND={{ __data_sync_send | length }} INSTALLED={{ marked.installed | join(',') }}"
"""
    play_text = LOCAL_PLAY.format(tasks_from="preflight", more=mark).replace("include_role", "import_role")  # static: the module is known
    first = local_play(tmp_path, play_text, **role_vars)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"SEND={len(report.items)} INSTALLED=data_sync_remote.py,volt_fileops.py" in first.stdout
    lib = root / ".volt-sync/lib"
    assert (lib / "volt_fileops.py").read_text() == (REPO / "roles/volt_fileops/module_utils/volt_fileops.py").read_text()
    assert (lib / "data_sync_remote.py").read_text() == (REPO / "roles/data_sync/module_utils/data_sync_remote.py").read_text()

    digests = {i.name: i.digest for i in report.items}
    args = {"root": str(root), "items": [{"name": i.name, "dest": i.dest, "kind": i.kind, "expect": i.digest} for i in report.items],
            "reject": False, "jobs": report.manifest.jobs(), "digests": digests}
    out = subprocess.run([sys.executable, "-B", str(lib / "data_sync_remote.py"), "verify", json.dumps(args)], capture_output=True,
                         text=True, check=True, stdin=subprocess.DEVNULL)
    res = json.loads(out.stdout)
    assert all(r["ok"] for r in res["results"].values()) and res["ready"] == ["phase03", "stage1", "stage2", "stage3"]
    for i in report.items:
        assert (root / ".volt-sync" / f"{i.name}.verified").read_text().strip() == fileops.path_digest(str(root / i.dest), i.kind)
    assert sorted(p.name for p in lib.iterdir()) == ["data_sync_remote.py", "volt_fileops.py"]  # -B: no __pycache__

    second = local_play(tmp_path, play_text, **role_vars)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "SEND=0 INSTALLED=" in second.stdout and "changed=0" in second.stdout  # verified and unchanged; lib as it was


# ----------------------------------------------------------------------------------------------
# the role on a real SSH test host

ROLE_PLAY = """
- hosts: volt
  gather_facts: false
  tasks:
    - name: Sync
      ansible.builtin.include_role:
        name: data_sync
      vars:
        data_sync_poll_s: 1
        data_sync_retry_delay_s: 1
{extra}
    - name: Show the ready jobs
      ansible.builtin.debug:
        msg: "READY={{{{ data_sync_ready_jobs | join(',') }}}}"
"""


def play(**role_vars) -> str:
    return ROLE_PLAY.format(extra="".join(f"        {k}: {json.dumps(v)}\n" for k, v in role_vars.items()))


def recap(proc) -> str:
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith("vt-"))


def ready(proc) -> list[str]:
    line = next(ln for ln in proc.stdout.splitlines() if "READY=" in ln)
    return [j for j in line.split("READY=")[1].strip().strip('"').split(",") if j]


def sha256_local(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256_remote(host, path: str) -> str:
    return host.exec(f"sha256sum {path}").stdout.split()[0]


def status_of(volt_dir: Path, host) -> dict:
    return json.loads((volt_dir / "data-sync" / f"{host.name}.json").read_text())


@pytest.fixture
def synced_host(make_host, tmp_path: Path):
    """A test host, its VOLT_DIR, and a small guide-shaped tree."""
    host = make_host()
    volt_dir = tmp_path / "volt"
    host.env["VOLT_DIR"] = str(volt_dir)
    root = tmp_path / "VoltData"
    make_data.make(root, scale=0.02, stack_python_mb=2.0, stack_full_mb=0.5)
    return host, volt_dir, root


@pytest.mark.podman
def test_sends_verifies_marks_and_a_second_run_moves_nothing(synced_host):
    host, volt_dir, root = synced_host
    vd = guide_volt_data(root, the_stack_full={"enabled": True})
    dry = host.playbook(play(), extravars={"volt_data": vd}, check=True, args=["--check"])
    assert "11 of 11 items to send" in dry.stdout and "changed=0" in recap(dry)
    assert host.exec("test -e /root/volt-x", check=False).returncode != 0  # check mode touched nothing
    first = host.playbook(play(), extravars={"volt_data": vd}, check=True)
    assert ready(first) == ["phase03", "stage1", "stage2", "stage3"]
    manifest = json.loads((volt_dir / "data-manifest.json").read_text())
    for name, item in manifest["items"].items():
        assert host.exec(f"cat /root/volt-x/.volt-sync/{name}.verified").stdout.strip() == item["digest"]
    assert sha256_remote(host, "/root/volt-x/data/python_sample.jsonl") == sha256_local(root / make_data.STACK_PYTHON)
    assert sha256_remote(host, "/root/volt-x/checkpoints/code_encoder.safetensors") == sha256_local(root / "checkpoints/code_encoder.safetensors")
    assert host.exec("ls /root/volt-x/data/the_stack_full").stdout.split() == ["lang_0.jsonl", "lang_1.jsonl", "lang_2.jsonl"]
    st = status_of(volt_dir, host)
    assert st["state"] == "done"
    wire = {n: s["attempts"][-1]["sent"] for n, s in st["items"].items()}
    assert wire["python_sample"] < 0.4 * st["items"]["python_sample"]["size"]  # zstd on JSONL
    assert wire["code_encoder"] > 0.99 * st["items"]["code_encoder"]["size"]  # raw safetensors

    status_mtime = (volt_dir / "data-sync" / f"{host.name}.json").stat().st_mtime_ns
    second = host.playbook(play(), extravars={"volt_data": vd}, check=True)
    assert "changed=0" in recap(second), second.stdout[-3000:]
    assert ready(second) == ["phase03", "stage1", "stage2", "stage3"]
    assert "skipping: [" in second.stdout.split("Start the transfer (rsync, verify, markers) in the background")[1].split("TASK")[0]
    assert (volt_dir / "data-sync" / f"{host.name}.json").stat().st_mtime_ns == status_mtime  # no rsync ran


@pytest.mark.podman
def test_not_enough_disk_fails_before_anything_moves(synced_host):
    host, volt_dir, root = synced_host
    proc = host.playbook(play(data_sync_disk_margin_gb=10**7), extravars={"volt_data": guide_volt_data(root)})
    assert proc.returncode != 0
    assert "data_sync: not enough disk on vt-" in proc.stdout and "GB margin (data_sync_disk_margin_gb)" in proc.stdout
    assert "nothing was sent" in proc.stdout
    assert host.exec("test -e /root/volt-x", check=False).returncode != 0  # not a byte, not a marker
    assert not (volt_dir / "data-sync").exists()


@pytest.mark.podman
def test_missing_source_stops_the_role_before_the_instance(synced_host):
    host, volt_dir, root = synced_host
    (root / "phase0/code_training_combined.jsonl").unlink()
    proc = host.playbook(play(), extravars={"volt_data": guide_volt_data(root)})
    assert proc.returncode != 0
    assert (f"data_sync: data item code_training_combined (needed by stage1, stage2, stage3): {root}/phase0/code_training_combined.jsonl "
            "does not exist") in proc.stdout
    assert host.exec("test -e /root/volt-x", check=False).returncode != 0






@pytest.mark.podman
def test_dropped_connection_resumes_from_the_partial_file(synced_host, tmp_path: Path):
    host, volt_dir, root = synced_host
    big = root / "checkpoints/big.safetensors"
    size = 12_000_000
    make_data.write_safetensors(big, size, seed=7)
    size = big.stat().st_size
    vd = {"local_root": str(root), "items": [{"name": "big", "src": str(big), "dest": "checkpoints/", "kind": "file", "jobs": ["stage1"]}]}
    result = {}
    t = threading.Thread(target=lambda: result.update(proc=host.playbook(play(data_sync_bwlimit_kbps=2500), extravars={"volt_data": vd})))
    t.start()
    # wait until about half the file has landed in rsync's temporary file, then cut the SSH connection
    deadline = time.time() + 60
    landed = 0
    while time.time() < deadline and landed < size * 0.45:
        out = host.exec("stat -c %s /root/volt-x/checkpoints/.big.safetensors.* 2>/dev/null || echo 0", check=False).stdout.split()
        landed = int(out[0]) if out else 0
        time.sleep(0.1)
    assert landed >= size * 0.45, "the transfer never got half way"
    driver = status_of(volt_dir, host)["pid"]
    rsyncs = [p for p in children(driver) if comm(p) == "rsync"]
    sshs = [c for r in rsyncs for c in children(r) if comm(c) == "ssh"]
    assert sshs, f"no ssh under the driver's rsync ({rsyncs})"
    os.kill(sshs[0], signal.SIGKILL)  # the connection drops mid-file
    t.join(120)
    proc = result["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:]
    attempts = status_of(volt_dir, host)["items"]["big"]["attempts"]
    assert len(attempts) == 2 and attempts[0]["rc"] != 0 and attempts[1]["rc"] == 0
    resent = attempts[1]["literal"]
    assert resent < size * 0.6, attempts  # the rest of the file, not the whole file again
    assert attempts[1]["matched"] >= size * 0.4  # what had landed was reused from the partial file
    assert sha256_remote(host, "/root/volt-x/checkpoints/big.safetensors") == sha256_local(big)
    assert host.exec("ls -A /root/volt-x/checkpoints").stdout.split() == ["big.safetensors"]  # no partial left
    assert ready(proc) == ["stage1"]


@pytest.mark.podman
def test_a_corrupted_copy_is_sent_again_and_verified(synced_host):
    host, volt_dir, root = synced_host
    vd = guide_volt_data(root)
    host.playbook(play(), extravars={"volt_data": vd}, check=True)
    dest = "/root/volt-x/data/python_sample.jsonl"
    # silent corruption: same size, same mtime, so rsync's quick check alone would never notice
    host.exec(f"python3 -c \"import os; p='{dest}'; st=os.stat(p); f=open(p,'r+b'); f.seek(1000); f.write(b'XXXX'); f.close(); "
              "os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))\"")
    assert sha256_remote(host, dest) != sha256_local(root / make_data.STACK_PYTHON)
    proc = host.playbook(play(data_sync_reverify=True), extravars={"volt_data": vd}, check=True)
    st = status_of(volt_dir, host)["items"]
    assert st["python_sample"]["resent"] and st["python_sample"]["attempts"][-1]["force"]
    assert not any(s["resent"] for n, s in st.items() if n != "python_sample")
    assert sha256_remote(host, dest) == sha256_local(root / make_data.STACK_PYTHON)
    assert ready(proc) == ["phase03", "stage1", "stage2", "stage3"]


@pytest.mark.podman
def test_a_mismatch_after_the_resend_fails_loudly_and_leaves_nothing_looking_complete(synced_host):
    host, volt_dir, root = synced_host
    vd = guide_volt_data(root)
    host.playbook(play(), extravars={"volt_data": vd}, check=True)
    # the controller's manifest now disagrees with the file's real content (say, the cache is stale)
    mpath = volt_dir / "data-manifest.json"
    manifest = json.loads(mpath.read_text())
    src = str(root / "phase0/code_training_combined.jsonl")
    bogus = "sha256t:" + "0" * 64
    manifest["files"][src]["digest"] = bogus
    mpath.write_text(json.dumps(manifest))
    proc = host.playbook(play(), extravars={"volt_data": vd})
    assert proc.returncode != 0
    assert ("data_sync: code_training_combined: digest mismatch after a re-send: the instance has sha256t:" in proc.stdout
            and f"the local manifest says {bogus}" in proc.stdout), proc.stdout[-3000:]
    st = status_of(volt_dir, host)["items"]["code_training_combined"]
    assert st["state"] == "failed" and st["resent"]
    marks = host.exec("ls /root/volt-x/.volt-sync").stdout.split()
    assert "code_training_combined.verified" not in marks
    assert "stage1.ready" not in marks and "stage2.ready" not in marks and "stage3.ready" not in marks
    assert "phase03.ready" in marks  # does not need that item
    assert host.exec("test -e /root/volt-x/data/code_training_combined.jsonl", check=False).returncode != 0
    assert host.exec("test -s /root/volt-x/data/.rsync-partial/code_training_combined.jsonl", check=False).returncode == 0

    wait = host.playbook("""
- hosts: volt
  gather_facts: false
  tasks:
    - name: Wait for stage1
      ansible.builtin.include_role:
        name: data_sync
        tasks_from: wait
      vars:
        data_sync_wait_jobs: [stage1]
""", extravars={"volt_data": vd})
    assert wait.returncode != 0 and "digest mismatch after a re-send" in wait.stdout


@pytest.mark.podman
def test_first_jobs_start_while_later_items_still_move(synced_host):
    host, volt_dir, root = synced_host
    vd = guide_volt_data(root)
    for rel in ("checkpoints/code_encoder.safetensors", "checkpoints/code_decoder.safetensors"):
        make_data.write_safetensors(root / rel, 100_000, seed=1)
    make_data.write_jsonl(root / make_data.STACK_PYTHON, 12_000_000)  # ~2.5 MB with zstd: ~10 s at 256 KiB/s
    proc = host.playbook(play(data_sync_wait_jobs=["stage1"], data_sync_bwlimit_kbps=256) + """
    - name: Stage 1 could start now; Phase 0.3's corpus is still on its way
      ansible.builtin.stat:
        path: /root/volt-x/.volt-sync/phase03.ready
      register: early
    - name: Wait for Phase 0.3's items
      ansible.builtin.include_role:
        name: data_sync
        tasks_from: wait
      vars:
        data_sync_wait_jobs: [phase03]
        data_sync_poll_s: 1
    - name: Show the ready jobs again
      ansible.builtin.debug:
        msg: "EARLY={{ early.stat.exists }} LATER={{ data_sync_ready_jobs | join(',') }}"
""", extravars={"volt_data": vd}, check=True)
    assert ready(proc) == ["stage1"]
    assert "EARLY=False LATER=phase03,stage1" in proc.stdout
    # the background transfer goes on after the play and finishes the rest
    deadline = time.time() + 60
    while time.time() < deadline and status_of(volt_dir, host)["state"] == "running":
        time.sleep(0.5)
    assert status_of(volt_dir, host)["state"] == "done"
    assert sorted(host.exec("ls /root/volt-x/.volt-sync | grep ready$").stdout.split()) == [
        "phase03.ready", "stage1.ready", "stage2.ready", "stage3.ready"]
