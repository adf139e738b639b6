#!/usr/bin/env python3
"""Time from "instance running" to "GPU training job started": the guide's sequence vs `volt-ansible up`, cold and warm.

Run by hand from the project root, as root, with .venv active (see bench/README.md):

    python bench/time_to_gpu.py [--rate-mbit 50] [--build-delay-ms 100000] [--stack-python-mb 480] [--stack-full-mb 1150] [--keep]

On the embedded local backend (Vast API double + podman container as the instance), in one run and under the
same link shaping (a tbf on the instance container's host-side veth, egress = traffic to the instance), each
method on its own fresh instance:

1. guide: the operator guide's Step 2 replayed as scripted shell over SSH: Terminal 1 scp's the setup script
   and runs it (Rust from the local world's download server, as the guide's rustup download comes from
   static.rust-lang.org over the instance's own network; apt; git clone --depth 1; cargo build of codebook-init +
   train-vfn), while Terminal 2
   scp's the staging tar.gz, Stack Python and Stack Full (scp -r), one after another; after all uploads AND the
   build: extract, move into place, the Step 3 checks, and Step 4's tmux with Phase 0.3 and stage 1 (the exact
   command lines of group_vars, as target/release binaries, logs/phase03.log and logs/phase21_stage1.log);
2. up cold: `volt-ansible up --yes` with a fresh HOME (the controller's build cache empty; repo_build_cache on,
   so this campaign fills it);
3. up warm: `volt-ansible up --yes` for a second campaign in the same project (same HOME, same fixture commit),
   whose build is restored from that cache (the log says whether it was);
4. `volt-ansible up --yes` again on the warm instance (ready, jobs done or running): its wall time and changed=N.

t0 = when `volt-ansible provision --backend local` returns (sshd accepts the campaign key). "Started" = the first
line of the job's log on the instance (a watcher polls it from inside the container every 0.1 s and reports the
container's clock, which is the host's). Bytes = the host-side veth's tx counter (everything sent to the
instance) from t0 to the end of the method (guide: its last command; up: up returned and its background data
transfer finished).

The last line of output is one JSON object (guide_s, cold_s, warm_s, ratio_cold, ratio_warm, ... ).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# bench/sync.py: the tc Link (shapes only the container's bridged veth), the JSONL generator, log/sh.
# Loading it puts REPO and REPO/tests on sys.path and sets CONTAINERS_CONF.
sync = _load("bench_sync", REPO / "bench" / "sync.py")

import yaml  # noqa: E402
from conftest import Project  # noqa: E402  (tests/conftest.py: the throwaway project the tests use)
from ttg_instances import DEST, Watch, destroy, new_project, provision, publish  # noqa: E402
from up_profile import build_span, by_role, cache_hit, first_start, playbook_log, playbook_total, slowest, task_times  # noqa: E402

from volt_ansible import datasync  # noqa: E402
from volt_ansible.local.double import LocalVast  # noqa: E402
from volt_ansible.local.toolchain import ensure_archive as toolchain_archive  # noqa: E402

argv_of = _load("training_tmux_filters", REPO / "roles/training_tmux/filter_plugins/training_tmux.py").training_tmux_argv

log = sync.log
STACK_FULL_FILES = 4


# ---------------------------------------------------------------------------------------------
# the guide


SETUP = """#!/usr/bin/env bash
# The guide's cloud_setup.sh (Pre-Flight step 4), on the local world: Rust is downloaded and unpacked from the
# world's download server (the guide's curl | sh rustup: the instance's own network, not the operator's uplink),
# the repository is the world's. Marks (epoch seconds) time each step.
set -euo pipefail
mark() {{ echo "guide-mark $1 $(date +%s.%N)"; }}
mark start
echo "=== [1/5] Installing Rust toolchain ==="
# the stand-in for rustup's download is a .tar.zst: an image like nvidia/cuda:*-devel has no zstd (rustup needs only curl)
command -v zstd >/dev/null || {{ apt-get update -qq && apt-get install -y -qq --no-install-recommends zstd > /dev/null 2>&1; }}
mkdir -p {prefix}
zstd -dcq {archive} | tar -xf - -C {prefix}
export PATH={prefix}/bin:$PATH
echo "Rust version: $(rustc --version)"
mark rust
echo "=== [2/5] Installing system dependencies ==="
apt-get update -qq && apt-get install -y -qq build-essential pkg-config libssl-dev git tmux > /dev/null 2>&1  # tmux: Step 4 (the image has none)
echo "System deps installed."
mark apt
echo "=== [3/5] Cloning repository ==="
git clone -q --depth 1 {repo} ~/volt-x
echo "Repo cloned."
mark clone
echo "=== [4/5] Creating directory structure ==="
mkdir -p ~/volt-x/checkpoints ~/volt-x/data ~/volt-x/logs
echo "=== [5/5] Building training binaries ==="
cd ~/volt-x
export VOLT_FIXTURE_BUILD_DELAY_MS={delay_ms}
cargo build --release -p volt-learn --features vfn-training \\
  --bin codebook-init --bin train-vfn 2>&1 | tail -5
mark build
echo "  BUILD COMPLETE"
ls -lh target/release/codebook-init target/release/train-vfn
"""


def job_commands(spec: dict) -> dict[str, dict]:
    """Phase 0.3 and stage 1 exactly as roles/training_tmux runs them (same argv function, same merge)."""
    p03, cur = spec["volt_phase03"], spec["volt_curriculum"]
    st1 = cur["stages"][0]
    args1 = {**(cur.get("args") or {}), **(st1.get("args") or {})}
    return {
        "phase03": {"log": p03["log"], "argv": [f"target/release/{p03['bin']}", *argv_of(p03["args"])]},
        st1["name"]: {"log": st1["log"], "argv": [f"target/release/{cur['bin']}", *argv_of(args1)]},
    }


def finish_script(staging: list[str], jobs: dict[str, dict]) -> str:
    """Step 2's end (after ALL uploads: extract, move into place), Step 3's checks, Step 4's tmux."""
    data = " ".join(f"data/{Path(n).name}" for n in staging if n.startswith("data/"))

    def pane(name: str) -> str:
        j = jobs[name]  # the guide's `... 2>&1 | tee logs/<log>`, with a first line written before exec
        return (f"cd ~/volt-x && {{ echo \"volt-job: $(date -u +%FT%TZ) start {name} (guide)\"; exec {shlex.join(j['argv'])}; }} "
                f"2>&1 | tee {shlex.quote(j['log'])}")

    stage1 = next(n for n in jobs if n != "phase03")
    return f"""set -e
cd /root
ls -lh /root/VoltStaging.tar.gz
tar -xzf VoltStaging.tar.gz
mkdir -p ~/volt-x/checkpoints ~/volt-x/data
cp /root/VoltStaging/checkpoints/* ~/volt-x/checkpoints/
cp /root/VoltStaging/data/*        ~/volt-x/data/
mv /root/python_sample.jsonl ~/volt-x/data/python_sample.jsonl
mv /root/the_stack_full ~/volt-x/data/the_stack_full
echo "All files in place:"
ls -lh ~/volt-x/checkpoints/
ls -lh ~/volt-x/data/
du -sh ~/volt-x/data/
cd ~/volt-x
ls -lh target/release/codebook-init target/release/train-vfn
nvidia-smi
ls -lh checkpoints/
ls -lh {data}
ls -lh data/python_sample.jsonl
ls -lh data/the_stack_full/
du -sh data/
echo "All checks passed. Ready to train."
apt-get install -y -qq tmux > /dev/null
tmux new-session -d -s training
tmux send-keys -t training {shlex.quote(pane('phase03'))} Enter
tmux split-window -v -t training
tmux send-keys -t training {shlex.quote(pane(stage1))} Enter
"""


def timed(argv: list[str], what: str, timeout: float = 900) -> tuple[float, str]:
    t = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"guide: {what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}")
    return time.time() - t, proc.stdout


def run_guide(p: Project, a, work: Path, staging_tgz: Path, staging: list[str], python_sample: Path, stack_full: Path,
              jobs: dict[str, dict]) -> dict:
    inst, t0, tx0 = provision(p, a.rate_mbit, a.rtt_ms)
    res: dict = {}
    watches: list[Watch] = []
    try:
        archive = inst.host_vars["rust_toolchain_archive"].removeprefix("file://")  # what `up` downloads, on the instance
        setup = work / "cloud_setup.sh"
        setup.write_text(SETUP.format(prefix="/opt/rust", archive=shlex.quote(archive), repo=inst.host_vars["repo_build_repo"],
                                      delay_ms=a.build_delay_ms))
        w_s1, w_p3 = Watch(inst, f"{DEST}/{jobs['stage1']['log']}"), Watch(inst, f"{DEST}/{jobs['phase03']['log']}")
        watches += [w_s1, w_p3]
        start = time.time()
        out: dict = {}

        def terminal1() -> None:  # scp the setup script, then run it
            try:
                out["t1_scp_script_s"], _ = timed([*inst.scp, str(setup), inst.dst("/root/")], "scp cloud_setup.sh")
                _, text = timed([*inst.ssh, "chmod +x /root/cloud_setup.sh && /root/cloud_setup.sh"], "cloud_setup.sh")
                out["marks"] = {m.group(1): float(m.group(2)) for m in re.finditer(r"^guide-mark (\S+) (\S+)$", text, re.M)}
                out["build_end"] = time.time()
            except Exception as e:  # reported below
                out["error1"] = str(e)

        def terminal2() -> None:  # the three uploads, one after another
            try:
                out["t2_tgz_s"], _ = timed([*inst.scp, str(staging_tgz), inst.dst("/root/")], "scp VoltStaging.tar.gz")
                out["t2_python_sample_s"], _ = timed([*inst.scp, str(python_sample), inst.dst("/root/python_sample.jsonl")],
                                                     "scp python_sample.jsonl")
                out["t2_stack_full_s"], _ = timed([*inst.scp, "-r", str(stack_full), inst.dst("/root/the_stack_full")], "scp -r the_stack_full")
                out["upload_end"] = time.time()
            except Exception as e:
                out["error2"] = str(e)

        threads = [threading.Thread(target=terminal1), threading.Thread(target=terminal2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if "error1" in out or "error2" in out:
            raise SystemExit(f"bench: {out.get('error1') or out.get('error2')}")
        both = time.time()
        finish_s, _ = timed([*inst.ssh, finish_script(staging, jobs)], "extract, checks, tmux")
        done = time.time()
        s1, p3 = w_s1.wait(60), w_p3.wait(60)
        if s1 is None or p3 is None:
            raise SystemExit(f"bench: the guide's jobs did not start (stage1 {s1}, phase03 {p3}); tmux shows:\n"
                             + inst.exec("tmux capture-pane -p -t training 2>&1 | tail -20"))
        marks = out["marks"]
        res = {
            "stage1_s": s1 - t0, "phase03_s": p3 - t0, "start_after_t0_s": start - t0,
            "build_s": out["build_end"] - start, "upload_s": out["upload_end"] - start, "both_done_s": both - t0, "finish_s": finish_s,
            "unpack_s": marks["rust"] - marks["start"], "apt_s": marks["apt"] - marks["rust"],
            "clone_s": marks["clone"] - marks["apt"],
            "cargo_s": marks["build"] - marks["clone"], "tgz_s": out["t2_tgz_s"], "python_sample_s": out["t2_python_sample_s"],
            "stack_full_s": out["t2_stack_full_s"], "stage1_bytes": w_s1.bytes - tx0, "bytes": inst.link.tx_bytes() - tx0,
            "end_s": done - t0,
            "heads": inst.exec(f"cd {DEST} && head -n 2 {jobs['stage1']['log']} {jobs['phase03']['log']}"),
        }
    finally:
        for w in watches:
            w.stop()
        destroy(p, inst)
    return res


# ---------------------------------------------------------------------------------------------
# volt-ansible up


def up_env(a) -> dict[str, str]:
    env = {"COLUMNS": "200"}
    if not a.no_profile_tasks:  # per-task times in .volt/logs/*-up.log (a callback that only prints)
        env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
    return env


def run_up(p: Project, a, label: str, rerun: bool = False) -> dict:
    inst, t0, tx0 = provision(p, a.rate_mbit, a.rtt_ms)
    res: dict = {}
    watches: list[Watch] = []
    try:
        lay = job_commands(yaml.safe_load((p.root / "group_vars/all.yml").read_text()))
        w_s1, w_p3 = Watch(inst, f"{DEST}/{lay['stage1']['log']}"), Watch(inst, f"{DEST}/{lay['phase03']['log']}")
        watches += [w_s1, w_p3]
        start = time.time()
        proc = p.cli("up", "--yes", check=False, timeout=a.up_timeout_s, **up_env(a))
        up_s = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench: up ({label}) failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        s1, p3 = w_s1.wait(60), w_p3.wait(120)
        if s1 is None or p3 is None:
            raise SystemExit(f"bench: up ({label}) returned but its jobs did not start (stage1 {s1}, phase03 {p3})")
        status = p.volt_dir / "data-sync" / f"volt-{inst.id}.json"  # the background transfer: count its bytes too
        deadline = time.time() + 120
        while time.time() < deadline and status.exists() and json.loads(status.read_text()).get("state") == "running":
            time.sleep(0.5)
        text = playbook_log(proc.stdout).read_text() if playbook_log(proc.stdout) else ""
        times = task_times(text)
        launch = first_start(times, "training_tmux : Start each job")
        changed = re.search(r"up ok: changed=(\d+)", proc.stdout)
        build = inst.exec(f"grep '^volt-build:' {DEST}/logs/build.log 2>/dev/null")
        stamps = re.findall(r"volt-build: (\S+) (start|done)", build)
        res = {
            "stage1_s": s1 - t0, "phase03_s": p3 - t0, "start_after_t0_s": start - t0, "up_wall_s": up_s,
            "stage1_bytes": w_s1.bytes - tx0, "bytes": inst.link.tx_bytes() - tx0, "changed": int(changed.group(1)) if changed else None,
            "cache_hit": cache_hit(text), "slowest": slowest(times, a.top), "log": str(playbook_log(proc.stdout)),
            "playbook_s": playbook_total(text), "stage1_launch_at": launch, "roles_to_stage1": by_role(times, launch),
            "build_started_at": first_start(times, "repo_build : Start cargo build") or first_start(times, "repo_build : Restore the cached"),
            "toolchain_s": round(sum(d for n, _, d in times if n.startswith("rust_toolchain : ")), 1),
            "build_log": [s for s, _ in stamps],
            "exec_lines": inst.exec(f"cd {DEST} && grep -h '^volt-job: .* exec ' {lay['stage1']['log']} {lay['phase03']['log']}"),
        }
        if rerun:
            deadline = time.time() + a.settle_s  # let the jobs finish: on this machine they share the controller's 2 cores
            while time.time() < deadline and set(inst.job_states().values()) & {"running", "waiting", "queued"}:
                time.sleep(2)
            res["rerun_job_states"] = inst.job_states()
            t = time.time()
            again = p.cli("up", "--yes", check=False, timeout=300, **up_env(a))
            res["rerun_s"] = time.time() - t
            if again.returncode != 0:
                raise SystemExit(f"bench: the rerun of up failed ({again.returncode}):\n{again.stdout[-3000:]}\n{again.stderr[-3000:]}")
            m = re.search(r"up ok: changed=(\d+)", again.stdout)
            res["rerun_changed"] = int(m.group(1)) if m else None
            rlog = playbook_log(again.stdout)
            rtext = rlog.read_text() if rlog else ""
            res["rerun_slowest"] = slowest(task_times(rtext), a.top)
            res["rerun_playbook_s"] = playbook_total(rtext)
            res["rerun_roles"] = by_role(task_times(rtext))
            res["rerun_log"] = str(rlog)
    finally:
        for w in watches:
            w.stop()
        destroy(p, inst)
    return res


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate-mbit", type=float, default=50.0, help="tbf rate on each instance's veth (default 50)")
    ap.add_argument("--rtt-ms", type=float, default=80.0, help="each instance's round-trip time (default 80; a real one: 20-150)")
    ap.add_argument("--build-delay-ms", type=int, default=100000,
                    help="VOLT_FIXTURE_BUILD_DELAY_MS of every build (default 100000: cargo ~90%% of Terminal 1, as in the guide)")
    ap.add_argument("--stack-python-mb", type=float, default=480.0, help="Stack Python JSONL (default 480; the guide: 50 GB)")
    ap.add_argument("--stack-full-mb", type=float, default=1150.0, help="Stack Full, 4 JSONL files (default 1150; the guide: 120 GB)")
    ap.add_argument("--settle-s", type=float, default=150.0, help="before the rerun, wait this long at most for the jobs to finish")
    ap.add_argument("--up-timeout-s", type=float, default=600.0)
    ap.add_argument("--top", type=int, default=8, help="slowest tasks shown per up run")
    ap.add_argument("--no-profile-tasks", action="store_true", help="do not enable the profile_tasks callback in up's runs")
    ap.add_argument("--keep", action="store_true", help="keep the work dir, the project dirs and their logs")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tc"):
        raise SystemExit("bench: run as root with tc (iproute2): it shapes the instance containers' veths")

    wall0, load0 = time.time(), round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="volt-ttg-", dir="/tmp"))
    projects: list[Project] = []
    out: dict = {}
    try:
        # Pre-flight, before renting (not timed): the data, the guide's staging tar.gz, the up projects' digests.
        data = work / "VoltData"
        python_sample = data / sync.make_data.STACK_PYTHON
        stack_full = data / sync.make_data.STACK_FULL
        log(f"making the data: Stack Python {a.stack_python_mb:g} MB, Stack Full {a.stack_full_mb:g} MB in {STACK_FULL_FILES} files")
        sync.make_data.write_jsonl(python_sample, int(a.stack_python_mb * 1e6), offset=1000)
        for k in range(STACK_FULL_FILES):
            sync.make_data.write_jsonl(stack_full / f"lang_{k}.jsonl", int(a.stack_full_mb * 1e6 / STACK_FULL_FILES), offset=3000 + 400 * k)
        stack_full_bytes = sum(f.stat().st_size for f in stack_full.iterdir())

        guide_p = new_project(work / "guide")
        camp_p = new_project(work / "campaign")  # cold, then warm: a second campaign of the same project
        projects += [guide_p, camp_p]
        camp_p.spec(repo_build_cache=True, repo_build_env={"VOLT_FIXTURE_BUILD_DELAY_MS": str(a.build_delay_ms)})
        spec = yaml.safe_load((camp_p.root / "group_vars/all.yml").read_text())
        jobs = job_commands(spec)
        publish(guide_p, python_sample)
        vroot = publish(camp_p, python_sample)
        report = datasync.check(camp_p.root / "group_vars/all.yml", camp_p.volt_dir, local_root=vroot)  # = `volt-ansible check`
        staging_dir = work / "VoltStaging"  # the guide's Pre-Flight step 1: checkpoints + the small JSONL
        staging = []
        for it in spec["volt_data"]["items"]:
            if it["enabled"] and it["name"] != "python_sample":
                rel = ("checkpoints/" if it["dest"].startswith("checkpoints/") else "data/") + Path(it["src"]).name
                (staging_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(vroot / it["src"], staging_dir / rel)
                staging.append(rel)
        staging_tgz = work / "VoltStaging.tar.gz"
        sync.sh(["tar", "-czf", str(staging_tgz), "-C", str(work), "VoltStaging"])
        toolchain_bytes = toolchain_archive().stat().st_size
        log(f"data: Stack Python {datasync.human(python_sample.stat().st_size)}, Stack Full {datasync.human(stack_full_bytes)}, "
            f"staging tar.gz {datasync.human(staging_tgz.stat().st_size)}; Rust archive {datasync.human(toolchain_bytes)}; "
            f"pre-flight hashed {datasync.human(report.hashed_bytes)}; link {a.rate_mbit:g} Mbit/s, RTT {a.rtt_ms:g} ms; "
            f"build delay {a.build_delay_ms} ms")

        log("1/4 guide: Terminal 1 (scp the setup script, run it: Rust download, apt, clone, cargo) || "
            "Terminal 2 (scp tar.gz, python_sample, -r the_stack_full); then extract, checks, tmux")
        g = run_guide(guide_p, a, work, staging_tgz, staging, python_sample, stack_full, jobs)
        log(f"  stage1 after {g['stage1_s']:.1f}s, phase03 {g['phase03_s']:.1f}s; build (Terminal 1) {g['build_s']:.1f}s "
            f"[Rust download+unpack {g['unpack_s']:.1f} + apt {g['apt_s']:.1f} + clone {g['clone_s']:.1f} + "
            f"cargo {g['cargo_s']:.1f}], "
            f"uploads (Terminal 2) {g['upload_s']:.1f}s [tgz {g['tgz_s']:.1f} + python_sample {g['python_sample_s']:.1f} + "
            f"stack_full {g['stack_full_s']:.1f}], extract..tmux {g['finish_s']:.1f}s")

        builds = Path(camp_p.home) / ".cache" / "volt-ansible" / "builds"
        log(f"2/4 up cold (HOME {camp_p.home}: build cache {builds} empty, repo_build_cache on)")
        cold = run_up(camp_p, a, "cold")
        cached = sorted(p.name for p in builds.glob("*")) if builds.is_dir() else []
        log(f"  stage1 after {cold['stage1_s']:.1f}s, phase03 {cold['phase03_s']:.1f}s, up returned after {cold['up_wall_s']:.1f}s; "
            f"build cache now: {cached or 'EMPTY'}")

        log("3/4 up warm (second campaign, same project and HOME: the build comes from the cache)")
        warm = run_up(camp_p, a, "warm", rerun=True)
        log(f"  stage1 after {warm['stage1_s']:.1f}s, phase03 {warm['phase03_s']:.1f}s; cache hit: {warm['cache_hit']}")
        log(f"4/4 rerun on the warm instance (jobs: {warm['rerun_job_states']}): {warm['rerun_s']:.1f}s, changed={warm['rerun_changed']}")

        same_cmds = all(" ".join(j["argv"]) in cold["exec_lines"] for j in jobs.values())
        r = 3
        out = {
            "guide_s": round(g["stage1_s"], 1), "cold_s": round(cold["stage1_s"], 1), "warm_s": round(warm["stage1_s"], 1),
            "ratio_cold": round(g["stage1_s"] / cold["stage1_s"], 2), "ratio_warm": round(g["stage1_s"] / warm["stage1_s"], 2),
            "guide_phase03_s": round(g["phase03_s"], 1), "cold_phase03_s": round(cold["phase03_s"], 1),
            "warm_phase03_s": round(warm["phase03_s"], 1),
            "guide_bytes": g["bytes"], "cold_bytes": cold["bytes"], "warm_bytes": warm["bytes"],
            "rerun_s": round(warm["rerun_s"], 1), "rerun_changed": warm["rerun_changed"],
            "guide_build_s": round(g["build_s"], 1), "guide_upload_s": round(g["upload_s"], 1),
            "upload_vs_build": round(g["upload_s"] / g["build_s"], 2), "rate_mbit": a.rate_mbit, "rtt_ms": a.rtt_ms,
            "warm_cache_hit": warm["cache_hit"],
            "guide_stage1_bytes": g["stage1_bytes"], "cold_stage1_bytes": cold["stage1_bytes"], "warm_stage1_bytes": warm["stage1_bytes"],
            "cold_up_wall_s": round(cold["up_wall_s"], 1), "warm_up_wall_s": round(warm["up_wall_s"], 1),
            "rerun_playbook_s": warm["rerun_playbook_s"], "cold_changed": cold["changed"], "warm_changed": warm["changed"],
            "guide_steps_s": {k: round(g[k], r) for k in ("unpack_s", "apt_s", "clone_s", "cargo_s", "tgz_s", "python_sample_s",
                                                           "stack_full_s", "finish_s")},
            "guide_upload_MBps": round((staging_tgz.stat().st_size + python_sample.stat().st_size + stack_full_bytes) / g["upload_s"] / 1e6, 2),
            "build_delay_ms": a.build_delay_ms, "stack_python_bytes": python_sample.stat().st_size, "stack_full_bytes": stack_full_bytes,
            "toolchain_bytes": toolchain_bytes, "same_command_lines": same_cmds, "build_cache_files": cached,
            "cold_roles_to_stage1_s": cold["roles_to_stage1"], "warm_roles_to_stage1_s": warm["roles_to_stage1"],
            "cold_compile_s": build_span(cold["build_log"]), "cold_toolchain_s": cold["toolchain_s"], "warm_toolchain_s": warm["toolchain_s"],
            "cold_slowest": cold["slowest"][:3], "warm_slowest": warm["slowest"][:3], "rerun_slowest": warm["rerun_slowest"][:3],
            "loadavg_1m_start_end": [load0, round(os.getloadavg()[0], 2)], "bench_wall_s": round(time.time() - wall0, 1),
        }
        print_table(out, g, cold, warm, a)
    finally:
        for p in projects:
            if (p.volt_dir / "state.json").exists() and p.state().get("instance"):
                p.cli("destroy", "--yes", "--force", check=False, timeout=120)
            if (p.volt_dir / "local").exists():
                LocalVast(p.volt_dir / "local").clean()
            if not a.keep:
                shutil.rmtree(p.home, ignore_errors=True)
        if a.keep:
            log(f"kept {work} (projects: guide/, campaign/; playbook logs in campaign/.volt/logs)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


def print_table(o: dict, g: dict, cold: dict, warm: dict, a) -> None:
    mb = 1e6
    rows = [("guide (Step 2-4 scripted)", g, o["guide_bytes"]), ("up cold", cold, o["cold_bytes"]), ("up warm (build cache)", warm, o["warm_bytes"])]
    print()
    print(f"link {a.rate_mbit:g} Mbit/s on each instance's veth, RTT {a.rtt_ms:g} ms; t0 = `volt-ansible provision` returned; seconds from t0")
    print(f"{'method':<26} {'stage1 started':>14} {'phase03 started':>15} {'vs guide':>9} {'MB sent by stage1':>18} {'MB sent in all':>15}")
    for name, r, total in rows:
        print(f"{name:<26} {r['stage1_s']:>14.1f} {r['phase03_s']:>15.1f} {g['stage1_s'] / r['stage1_s']:>8.2f}x "
              f"{r['stage1_bytes'] / mb:>18.1f} {total / mb:>15.1f}")
    print(f"rerun of up on the warm instance: {o['rerun_s']:.1f} s wall (playbook {o['rerun_playbook_s']} s), changed={o['rerun_changed']}")
    print(f"guide: build (Terminal 1) {o['guide_build_s']} s, uploads (Terminal 2) {o['guide_upload_s']} s, uploads/build {o['upload_vs_build']}; "
          f"steps {o['guide_steps_s']}")
    print(f"warm build cache hit: {o['warm_cache_hit']}; same job command lines as up: {o['same_command_lines']}")
    for name, r in (("cold", cold), ("warm", warm)):
        print(f"up {name}: up returned after {r['up_wall_s']:.1f} s (changed={r['changed']}); playbook {r['playbook_s']} s: build started at "
              f"{r['build_started_at']} s (build.log {r['build_log'] or 'none: restored'}), rust_toolchain tasks {r['toolchain_s']} s, "
              f"stage-1 launch task began at {r['stage1_launch_at']} s; task seconds per role before it: {r['roles_to_stage1']}; slowest tasks:")
        for task, s in r["slowest"]:
            print(f"    {s:7.2f} s  {task}")
    print(f"rerun: task seconds per role: {warm['rerun_roles']}; slowest tasks:")
    for task, s in warm["rerun_slowest"]:
        print(f"    {s:7.2f} s  {task}")
    print()


if __name__ == "__main__":
    sys.exit(main())
