#!/usr/bin/env python3
"""Benchmark data_sync against the guide's way (sequential scp) and plain rsync over a shaped link.

Run by hand from the project root, as root, with .venv active (see bench/README.md):

    python bench/sync.py [--rate-mbit 40] [--scale 0.00333] [--binary-mb 100]

It starts one podman test host, shapes ONLY that container's host-side veth (found through the
container's eth0 iflink; egress of that veth = traffic to the container) with a tbf at a fixed rate,
and in one run measures:

- line: the shaped link's TCP payload rate, measured with a raw TCP stream to the container;
- the guide's sequence (Step 2 + Step 3): scp VoltStaging.tar.gz, scp python_sample.jsonl,
  scp -r the_stack_full, then extract, move into place and `ls` the files; stage 1 is "in place and
  checked" only at the end of it, because the guide verifies and launches after all uploads;
- plain rsync (no compression) of the JSONL and of the binary;
- data_sync (the role, through ansible-playbook) of the same guide-shaped tree, returning at stage 1
  while the rest keeps moving; a raw safetensors-like file alone; the same file with the SSH
  connection killed at ~50% (bytes counted on the veth's tx counter, not from rsync).

The guide-shaped tree is the guide's File Reference sizes times --scale (default 1/300: Stack Python
50 GB -> 167 MB, Stack Full 120 GB -> 400 MB, the ~1.3 GB of checkpoints and APPS files -> 4.3 MB),
so the proportions of the guide hold. JSONL is real code (the stdlib's .py files as {"content": ...}).

The last line of output is one JSON object with effective_vs_line_jsonl, effective_vs_line_binary,
resume_extra_bytes_pct and stage1_verified_speedup (plus the raw figures).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("CONTAINERS_CONF", str(REPO / "volt_ansible/local/containers.conf"))

import yaml  # noqa: E402
from procs import children, comm  # noqa: E402
from testhost import TestHost, start, stop  # noqa: E402

from volt_ansible import datasync  # noqa: E402
from volt_ansible.local import podman  # noqa: E402
from volt_ansible.local.link import Model  # noqa: E402
from volt_ansible.local.link import Veth as Link  # noqa: E402  (the host-side veth of one container: tbf, tx bytes)

_spec = importlib.util.spec_from_file_location("make_data", REPO / "roles/data_sync/molecule/default/make_data.py")
make_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_data)

# The guide's File Reference (MB). "Checkpoints and Phase 2 datasets are tiny (~1.3 GB)": the APPS files
# ("varies") carry the rest of that 1.3 GB.
GUIDE_MB = {
    "checkpoints/code_tokenizer.json": 2.3,
    "checkpoints/code_encoder.safetensors": 20.6,
    "checkpoints/code_decoder.safetensors": 21.0,
    "phase0/code_training_combined.jsonl": 0.3,
    "phase0/humaneval/data/humaneval.jsonl": 0.2,
    "phase0/mbpp/data/mbpp.jsonl": 0.1,
    "phase2/apps/data/apps_introductory_train.jsonl": 400.0,
    "phase2/apps/data/apps_interview_train.jsonl": 450.0,
    "phase2/apps/data/apps_competition_train.jsonl": 400.0,
}
STACK_PYTHON_MB = 50_000.0
STACK_FULL_MB = 120_000.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, shell=isinstance(cmd, str), **kw)


# ---------------------------------------------------------------------------------------------
# the link


def measure_line(container: str, ip: str, nbytes: int) -> float:
    """TCP payload bytes/s the shaped link carries: a raw stream to a sink in the container that
    answers once it has read every byte."""
    port = 5599
    sink = (f"import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', {port})); "
            f"s.listen(1); c,_=s.accept(); n=0\nwhile n < {nbytes}:\n  b=c.recv(1<<20)\n  if not b: break\n  n+=len(b)\nc.sendall(b'ok'); c.close()")
    podman.run("exec", "-d", container, "python3", "-c", sink)
    payload = os.urandom(1 << 20)
    for _ in range(50):
        try:
            s = socket.create_connection((ip, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit("bench: the TCP sink in the container never answered")
    t0 = time.time()
    sent = 0
    while sent < nbytes:
        chunk = payload[: min(len(payload), nbytes - sent)]
        s.sendall(chunk)
        sent += len(chunk)
    s.settimeout(120)
    assert s.recv(2) == b"ok"
    seconds = time.time() - t0
    s.close()
    return nbytes / seconds


# ---------------------------------------------------------------------------------------------
# data


def make_tree(root: Path, scale: float) -> dict[str, int]:
    sizes = {}
    for i, (rel, mb) in enumerate(GUIDE_MB.items()):
        size = max(1000, int(mb * scale * 1e6))
        if rel.endswith(".safetensors"):
            make_data.write_safetensors(root / rel, size, seed=i)
        else:
            make_data.write_jsonl(root / rel, size, offset=i * 97)
        sizes[rel] = (root / rel).stat().st_size
    make_data.write_jsonl(root / make_data.STACK_PYTHON, int(STACK_PYTHON_MB * scale * 1e6), offset=1000)
    sizes[make_data.STACK_PYTHON] = (root / make_data.STACK_PYTHON).stat().st_size
    for k in range(4):  # per-language files of the curated Stack Full
        rel = f"{make_data.STACK_FULL}/lang_{k}.jsonl"
        make_data.write_jsonl(root / rel, int(STACK_FULL_MB * scale * 1e6 / 4), offset=3000 + 400 * k)
        sizes[rel] = (root / rel).stat().st_size
    return sizes


def guide_volt_data(local_root: Path) -> dict:
    vd = yaml.safe_load((REPO / "group_vars/all.yml").read_text())["volt_data"]
    vd["local_root"] = str(local_root)
    for it in vd["items"]:
        it["enabled"] = True  # the guide uploads Stack Full too
    return vd


# ---------------------------------------------------------------------------------------------
# transfers


class Remote:
    def __init__(self, host: TestHost):
        self.host = host
        self.ssh = ["ssh", "-i", str(host.key), "-p", str(host.port), "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
                    "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "root@127.0.0.1"]
        self.scp = ["scp", "-q", "-i", str(host.key), "-P", str(host.port), "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]
        self.rsh = shlex.join(self.ssh[:-1])

    def run(self, cmd: str) -> None:
        sh([*self.ssh, cmd])

    def timed(self, argv: list[str]) -> float:
        t0 = time.time()
        sh(argv)
        return time.time() - t0


def guide_sequence(r: Remote, data: Path, staging_tgz: Path) -> dict:
    """Step 2 (Terminal 2's three scp, one after another) and Step 3 (move into place, ls checks)."""
    r.run("rm -rf /root/guide && mkdir -p /root/guide")
    t0 = time.time()
    t_tgz = r.timed([*r.scp, str(staging_tgz), "root@127.0.0.1:/root/guide/"])
    t_py = r.timed([*r.scp, str(data / make_data.STACK_PYTHON), "root@127.0.0.1:/root/guide/python_sample.jsonl"])
    t_full = r.timed([*r.scp, "-r", str(data / make_data.STACK_FULL), "root@127.0.0.1:/root/guide/the_stack_full"])
    r.run("set -e; cd /root/guide && tar -xzf VoltStaging.tar.gz && mkdir -p volt-x/checkpoints volt-x/data volt-x/logs && "
          "cp VoltStaging/checkpoints/* volt-x/checkpoints/ && cp VoltStaging/data/* volt-x/data/ && "
          "mv python_sample.jsonl volt-x/data/ && mv the_stack_full volt-x/data/the_stack_full && cd volt-x && "
          "ls -lh checkpoints/ data/code_training_combined.jsonl data/humaneval.jsonl data/mbpp.jsonl data/apps_introductory_train.jsonl "
          "data/apps_interview_train.jsonl data/apps_competition_train.jsonl data/python_sample.jsonl data/the_stack_full/ && du -sh data/")
    return {"seconds": time.time() - t0, "tgz_s": t_tgz, "python_sample_s": t_py, "stack_full_s": t_full}


ROLE_PLAY = """
- hosts: volt
  gather_facts: false
  tasks:
    - name: data_sync
      ansible.builtin.include_role:
        name: data_sync
      vars:
        data_sync_poll_s: 1
        data_sync_retry_delay_s: 1
        data_sync_disk_margin_gb: 1
        data_sync_wait_jobs: {wait}
"""


def status_file(volt_dir: Path, host: TestHost) -> Path:
    return volt_dir / "data-sync" / f"{host.name}.json"


def wait_driver(volt_dir: Path, host: TestHost, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = json.loads(status_file(volt_dir, host).read_text())
        if st["state"] != "running":
            return st
        time.sleep(0.2)
    raise SystemExit("bench: the data_sync driver did not finish")


def data_sync_guide(host: TestHost, volt_dir: Path, vd: dict) -> dict:
    """The role on the guide-shaped tree: time to stage1.ready (watched inside the container), then to everything verified."""
    marker = f"{vd['root_remote']}/.volt-sync/stage1.ready"
    watcher = subprocess.Popen([podman.require(), "exec", host.name, "sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done"],
                               env=podman.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # the watcher is in its loop
    t0 = time.time()
    seen = {}
    t = threading.Thread(target=lambda: (watcher.wait(), seen.setdefault("stage1", time.time())))
    t.start()
    host.playbook(ROLE_PLAY.format(wait="[stage1]"), extravars={"volt_data": vd}, check=True)
    t_play = time.time() - t0
    st = wait_driver(volt_dir, host)
    t_all = time.time() - t0
    t.join(30)
    if st["state"] != "done":
        raise SystemExit(f"bench: data_sync failed: {st['error']}")
    return {"stage1_s": seen["stage1"] - t0, "play_returned_s": t_play, "all_verified_s": t_all, "status": st}


def data_sync_one(host: TestHost, volt_dir: Path, src: Path, root_remote: str, link: Link, kill_at: float | None = None) -> dict:
    """The role on one raw file; kill_at: bytes on the veth after which the rsync's SSH connection is killed."""
    vd = {"root_remote": root_remote, "local_root": str(src.parent),
          "items": [{"name": "weights", "src": src.name, "dest": f"checkpoints/{src.name}", "kind": "file", "jobs": ["stage1"]}]}
    b0 = link.tx_bytes()
    killed = {}
    if kill_at is not None:
        def killer() -> None:
            while link.tx_bytes() - b0 < kill_at:
                time.sleep(0.01)
            st = json.loads(status_file(volt_dir, host).read_text())
            for r in children(st["pid"]):
                if comm(r) == "rsync":
                    for c in children(r):
                        if comm(c) == "ssh":
                            os.kill(c, signal.SIGKILL)
                            killed["at"] = link.tx_bytes() - b0
                            return
        k = threading.Thread(target=killer, daemon=True)
        k.start()
    host.playbook(ROLE_PLAY.format(wait="all"), extravars={"volt_data": vd}, check=True)
    wire = link.tx_bytes() - b0
    st = json.loads(status_file(volt_dir, host).read_text())
    item = st["items"]["weights"]
    return {"wire_bytes": wire, "attempts": item["attempts"], "killed_at": killed.get("at"),
            "transfer_s": sum(a["seconds"] for a in item["attempts"])}






# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate-mbit", type=float, default=40.0, help="tbf rate on the container's veth (default 40)")
    ap.add_argument("--scale", type=float, default=1 / 300, help="the guide's sizes times this (default 1/300)")
    ap.add_argument("--binary-mb", type=float, default=100.0, help="the raw safetensors-like file (default 100 MB)")
    ap.add_argument("--workdir", default="/tmp/volt-bench")
    ap.add_argument("--keep", action="store_true", help="keep the workdir and the test host")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tc"):
        raise SystemExit("bench: run as root with tc (iproute2): it shapes the test container's veth")

    load0 = round(os.getloadavg()[0], 2)
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    data = work / "VoltData"
    volt_dir = work / "volt"
    log(f"making the data: the guide's sizes x {a.scale:.5f}, plus a {a.binary_mb:.0f} MB raw file")
    sizes = make_tree(data, a.scale)
    binary = work / "raw" / "weights.safetensors"
    make_data.write_safetensors(binary, int(a.binary_mb * 1e6), seed=42)
    jsonl = data / make_data.STACK_PYTHON
    jsonl_size, binary_size = jsonl.stat().st_size, binary.stat().st_size
    staging = work / "VoltStaging"  # the guide's pre-flight step 1, done before renting: not timed
    for rel in GUIDE_MB:
        dst = staging / ("checkpoints" if rel.startswith("checkpoints/") else "data") / Path(rel).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data / rel, dst)
    staging_tgz = work / "VoltStaging.tar.gz"
    sh(["tar", "-czf", str(staging_tgz), "-C", str(work), "VoltStaging"])
    vd = guide_volt_data(data)
    report = datasync.preflight(vd, volt_dir)  # `volt-ansible check`, before renting: fills the digest cache
    log(f"data: {datasync.human(sum(sizes.values()))} guide-shaped ({datasync.human(jsonl_size)} Stack Python JSONL), "
        f"tar.gz {datasync.human(staging_tgz.stat().st_size)}; pre-flight hashed {datasync.human(report.hashed_bytes)}")

    host = start("volt-bench-sync")
    host.env["VOLT_DIR"] = str(volt_dir)
    link = Link(host.name)
    r = Remote(host)
    out: dict = {}
    try:
        r.run("true")
        link.shape(Model(rate_mbit=a.rate_mbit))
        tc_rate = a.rate_mbit * 1e6 / 8
        line = measure_line(host.name, link.ip, int(min(20e6, tc_rate * 4)))
        log(f"link: tbf {a.rate_mbit:g} Mbit/s on {link.dev} ({tc_rate / 1e6:.2f} MB/s of frames); TCP payload {line / 1e6:.2f} MB/s")

        log("the guide's sequence: scp tar.gz, scp python_sample, scp -r the_stack_full, extract + ls")
        guide = guide_sequence(r, data, staging_tgz)
        log(f"  stage-1 set in place and checked after {guide['seconds']:.1f}s (python_sample scp {guide['python_sample_s']:.1f}s)")

        log("plain rsync (no compression): the JSONL, then the raw file")
        r.run("mkdir -p /root/plain")
        rsync_jsonl = r.timed(["rsync", "-t", "--partial", "-e", r.rsh, str(jsonl), "root@127.0.0.1:/root/plain/"])
        rsync_bin = r.timed(["rsync", "-t", "--partial", "-e", r.rsh, str(binary), "root@127.0.0.1:/root/plain/"])
        log(f"  JSONL {rsync_jsonl:.1f}s, raw {rsync_bin:.1f}s")

        log("data_sync on the guide's tree (returns at stage 1, the rest in the background)")
        ds = data_sync_guide(host, volt_dir, vd)
        items = ds["status"]["items"]
        ds_jsonl_s = items["python_sample"]["transfer_seconds"]
        log(f"  stage1.ready after {ds['stage1_s']:.1f}s (play returned {ds['play_returned_s']:.1f}s), "
            f"everything verified after {ds['all_verified_s']:.1f}s; python_sample sent in {ds_jsonl_s:.1f}s")

        log("data_sync on the raw file")
        clean = data_sync_one(host, volt_dir, binary, "/root/ds-clean", link)
        log(f"  sent in {clean['transfer_s']:.1f}s, {datasync.human(clean['wire_bytes'])} on the veth for the whole play")

        log("data_sync on the raw file, SSH connection killed at ~50%")
        resumed = data_sync_one(host, volt_dir, binary, "/root/ds-resume", link, kill_at=clean["wire_bytes"] * 0.5)
        extra = resumed["wire_bytes"] - clean["wire_bytes"]
        log(f"  killed at {datasync.human(resumed['killed_at'] or 0)}, {len(resumed['attempts'])} attempts, "
            f"{datasync.human(resumed['wire_bytes'])} on the veth ({extra:+,} bytes vs the clean run)")
        if not resumed["killed_at"] or len(resumed["attempts"]) < 2:
            raise SystemExit("bench: the kill did not interrupt the transfer")

        out = {
            "effective_vs_line_jsonl": round(jsonl_size / ds_jsonl_s / line, 3),
            "effective_vs_line_binary": round(binary_size / clean["transfer_s"] / line, 3),
            "resume_extra_bytes_pct": round(100 * extra / binary_size, 3),
            "stage1_verified_speedup": round(guide["seconds"] / ds["stage1_s"], 1),
            "line_MBps": round(line / 1e6, 3),
            "tc_rate_mbit": a.rate_mbit,
            "line_vs_tc_rate": round(line / tc_rate, 3),
            "scp_jsonl_vs_line": round(jsonl_size / guide["python_sample_s"] / line, 3),
            "rsync_jsonl_vs_line": round(jsonl_size / rsync_jsonl / line, 3),
            "rsync_binary_vs_line": round(binary_size / rsync_bin / line, 3),
            "data_sync_binary_vs_tc_rate": round(binary_size / clean["transfer_s"] / tc_rate, 3),
            "data_sync_jsonl_vs_tc_rate": round(jsonl_size / ds_jsonl_s / tc_rate, 3),
            "guide_stage1_s": round(guide["seconds"], 1),
            "data_sync_stage1_s": round(ds["stage1_s"], 1),
            "data_sync_all_verified_s": round(ds["all_verified_s"], 1),
            "jsonl_bytes": jsonl_size,
            "binary_bytes": binary_size,
            "resume_killed_at_bytes": resumed["killed_at"],
            "resume_second_attempt_literal_bytes": resumed["attempts"][-1]["literal"],
            "scale": a.scale,
            "loadavg_1m_start_end": [load0, round(os.getloadavg()[0], 2)],  # the machine's other work skews CPU-bound ratios
        }
    finally:
        link.unshape()
        if not a.keep:
            stop(host)
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
