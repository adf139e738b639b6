"""The guide's two contenders in bench/time_to_gpu.py, as scripted shell over SSH on a fresh local instance:

- literal: the operator guide's Step 2 as written. Terminal 1 scp's cloud_setup.sh and runs it (Rust from the
  local world's download server, apt, git clone --depth 1, cargo build); Terminal 2 scp's the staging tar.gz, then
  Stack Python; only after every upload AND the build: extract, move into place, Step 3's checks, Step 4's tmux.
- informed: the same commands and tools, its three terminals in parallel, with zero reaction time: Terminal 3
  extracts the tar.gz the instant its scp returns and copies the small files in as soon as the clone made ~/volt-x;
  stage 1 starts the instant its binary is built and its files are in place, Phase 0.3 the instant Stack Python is.

Stack Full is sent by neither (nor by `up`): no job reads it. GPU busy = the first training-step line of stage 1
in its log, seen by a watcher inside the container.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

from ttg_instances import DEST, Watch, destroy, provision, timed

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

# What the informed operator's eyes stand for: a file the instant Terminal 1 prints BUILD COMPLETE, etc.
SEEN = "/root/.seen"


def pane(name: str, jobs: dict[str, dict]) -> str:
    """The guide's `... 2>&1 | tee logs/<log>` for one job, with a first line written before exec."""
    j = jobs[name]
    return (f"cd ~/volt-x && {{ echo \"volt-job: $(date -u +%FT%TZ) start {name} (guide)\"; exec {shlex.join(j['argv'])}; }} "
            f"2>&1 | tee {shlex.quote(j['log'])}")


def stage1_name(jobs: dict[str, dict]) -> str:
    return next(n for n in jobs if n != "phase03")


def finish_script(staging: list[str], jobs: dict[str, dict]) -> str:
    """The literal guide after ALL uploads: extract, move into place, Step 3's checks, Step 4's tmux."""
    data = " ".join(f"data/{Path(n).name}" for n in staging if n.startswith("data/"))
    return f"""set -e
cd /root
ls -lh /root/VoltStaging.tar.gz
tar -xzf VoltStaging.tar.gz
mkdir -p ~/volt-x/checkpoints ~/volt-x/data
cp /root/VoltStaging/checkpoints/* ~/volt-x/checkpoints/
cp /root/VoltStaging/data/*        ~/volt-x/data/
mv /root/python_sample.jsonl ~/volt-x/data/python_sample.jsonl
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
du -sh data/
echo "All checks passed. Ready to train."
tmux new-session -d -s training
tmux send-keys -t training {shlex.quote(pane('phase03', jobs))} Enter
tmux split-window -v -t training
tmux send-keys -t training {shlex.quote(pane(stage1_name(jobs), jobs))} Enter
"""


def launcher_script(jobs: dict[str, dict]) -> str:
    """The informed operator's hands on the instance: each job starts the instant what it needs is there."""
    return f"""set -e
until [ -e {SEEN}/build ] && [ -e {SEEN}/small ]; do sleep 0.05; done
tmux new-session -d -s training
tmux send-keys -t training {shlex.quote(pane(stage1_name(jobs), jobs))} Enter
until [ -e {SEEN}/python_sample ]; do sleep 0.05; done
tmux split-window -v -t training
tmux send-keys -t training {shlex.quote(pane('phase03', jobs))} Enter
"""


# Terminal 3 of the guide: extract, wait for the clone's directories (git clone refuses a non-empty ~/volt-x, so the
# guide waits for them: "while [ ! -d ~/volt-x/data ]; do sleep 5; done"), copy the small files in.
EXTRACT = f"""set -e
cd /root && tar -xzf VoltStaging.tar.gz
until [ -d ~/volt-x/data ] && [ -d ~/volt-x/checkpoints ]; do sleep 0.05; done
cp /root/VoltStaging/checkpoints/* ~/volt-x/checkpoints/
cp /root/VoltStaging/data/*        ~/volt-x/data/
mkdir -p {SEEN} && touch {SEEN}/small
"""
MOVE_STACK = f"""set -e
until [ -d ~/volt-x/data ]; do sleep 0.05; done
mv /root/python_sample.jsonl ~/volt-x/data/python_sample.jsonl
mkdir -p {SEEN} && touch {SEEN}/python_sample
"""


def _marks(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^guide-mark (\S+) (\S+)$", text, re.M)}


def run(p, cfg, informed: bool, work: Path, staging_tgz: Path, staging: list[str], python_sample: Path,
        jobs: dict[str, dict], step_re: str) -> dict:
    """One guide contender on its own fresh instance; seconds from t0 (provision returned)."""
    inst, t0, tx0 = provision(p, cfg["rate_mbit"], cfg["rtt_ms"], cfg["image"])
    watches: list[Watch] = []
    try:
        archive = inst.host_vars["rust_toolchain_archive"].removeprefix("file://")  # what `up` downloads, on the instance
        setup = work / "cloud_setup.sh"
        marker = f"\nmkdir -p {SEEN} && touch {SEEN}/build\n" if informed else ""
        setup.write_text(SETUP.format(prefix="/opt/rust", archive=shlex.quote(archive), repo=inst.host_vars["repo_build_repo"],
                                      delay_ms=int(cfg["build_s"] * 1000)) + marker)
        s1 = stage1_name(jobs)
        w_s1 = Watch(inst, f"{DEST}/{jobs[s1]['log']}", step_re)
        w_p3 = Watch(inst, f"{DEST}/{jobs['phase03']['log']}")
        watches += [w_s1, w_p3]
        out: dict = {}
        threads: list[threading.Thread] = []

        def guarded(key: str, fn) -> None:
            try:
                fn()
            except Exception as e:  # reported after the join
                out.setdefault("errors", []).append(f"{key}: {e}")

        def terminal1() -> None:  # scp the setup script, then run it
            out["t1_scp_script_s"], _ = timed([*inst.scp, str(setup), inst.dst("/root/")], "scp cloud_setup.sh")
            _, text = timed([*inst.ssh, "chmod +x /root/cloud_setup.sh && /root/cloud_setup.sh"], "cloud_setup.sh")
            out["marks"], out["build_end"] = _marks(text), time.time()

        def terminal3() -> None:
            out["extract_s"], _ = timed([*inst.ssh, EXTRACT], "extract the tar.gz, copy the small files")

        def terminal2() -> None:  # the uploads, one after another
            out["tgz_s"], _ = timed([*inst.scp, str(staging_tgz), inst.dst("/root/")], "scp VoltStaging.tar.gz")
            if informed:
                t3 = threading.Thread(target=guarded, args=("terminal 3", terminal3))
                t3.start()
                threads.append(t3)
            out["python_sample_s"], _ = timed([*inst.scp, str(python_sample), inst.dst("/root/python_sample.jsonl")],
                                              "scp python_sample.jsonl")
            if informed:
                timed([*inst.ssh, MOVE_STACK], "move Stack Python into place")
            out["upload_end"] = time.time()

        start = time.time()
        launcher = None
        if informed:
            launcher = subprocess.Popen([*inst.ssh, launcher_script(jobs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threads += [threading.Thread(target=guarded, args=("terminal 1", terminal1)),
                    threading.Thread(target=guarded, args=("terminal 2", terminal2))]
        for t in threads[-2:]:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in list(threads):
                t.join(0.2)
        if out.get("errors"):
            raise SystemExit(f"bench: {'; '.join(out['errors'])}")
        finish_s = 0.0
        if not informed:
            finish_s, _ = timed([*inst.ssh, finish_script(staging, jobs)], "extract, checks, tmux")
        else:
            launcher.wait(120)
            if launcher.returncode != 0:
                raise SystemExit(f"bench: the informed launcher failed: {launcher.stderr.read()[-600:]}")
        t_s1, t_p3 = w_s1.wait(120), w_p3.wait(120)
        if t_s1 is None or t_p3 is None:
            raise SystemExit(f"bench: the guide's jobs did not start (stage1 {t_s1}, phase03 {t_p3}); tmux shows:\n"
                             + inst.exec("tmux capture-pane -p -t training 2>&1 | tail -20"))
        marks = out["marks"]
        return {
            "stage1_s": t_s1 - t0, "phase03_s": t_p3 - t0, "start_after_t0_s": start - t0,
            "build_s": out["build_end"] - start, "upload_s": out["upload_end"] - start, "finish_s": finish_s,
            "unpack_s": marks["rust"] - marks["start"], "apt_s": marks["apt"] - marks["rust"], "clone_s": marks["clone"] - marks["apt"],
            "cargo_s": marks["build"] - marks["clone"], "tgz_s": out["tgz_s"], "python_sample_s": out["python_sample_s"],
            "extract_s": out.get("extract_s"), "stage1_bytes": w_s1.bytes - tx0, "bytes": inst.link.tx_bytes() - tx0,
        }
    finally:
        for w in watches:
            w.stop()
        destroy(p, inst)
