#!/usr/bin/env python3
"""Benchmark ansible.cfg settings (pipelining, ControlPersist, fact caching) on a 30-task playbook.

Run by hand from the project root with .venv active (see bench/README.md):

    python bench/ansible_cfg.py [--repeat 3] [--keep]

It starts one podman test host (sshd on 127.0.0.1) and generates, in a temp dir, a playbook of 30
tasks of the kinds the roles use (command, stat, file, copy of a small content, lineinfile; no
templates) on a play with `gather_facts: true`, plus one ansible.cfg per configuration (pointed to
with ANSIBLE_CONFIG):

- baseline: no pipelining, no persistent connection (ssh_args = -o ControlMaster=no);
- pipelining: + pipelining;
- controlpersist: + ControlMaster=auto, ControlPersist=120s (control_path under /tmp, < 108 bytes);
- factcache: + gathering = smart, fact_caching = jsonfile (a temp dir), fact_caching_timeout = 86400;
  measured with an empty cache (factcache_first: gathers and fills it) and with a filled one
  (factcache_warm: no fact gathering, facts read from the cache).

Each configuration runs --repeat times, interleaved round by round (baseline, pipelining,
controlpersist, factcache first, factcache warm, then again) so the machine's other work skews them
alike; an untimed warm-up run first brings the host's files to their steady state (every timed run
finds the same files, so the same tasks report changed/ok). Every run gets a fresh ControlPath
directory and its control master is closed after it: a run never reuses the previous run's
connection (see the README for what reuse across runs would add).

It prints a table (median wall seconds of `ansible-playbook`, start-up included, and that / 30 in
ms per task) and, as the last line, one JSON object with tasks, baseline_s, pipelining_s,
controlpersist_s, factcache_first_s, factcache_warm_s and speedup_all (= baseline / factcache warm),
plus the other ratios, factcache_warm_saving_s_paired (median over rounds of controlpersist minus
factcache warm in the same round) and every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("CONTAINERS_CONF", str(REPO / "volt_ansible/local/containers.conf"))

from testhost import TestHost, start, stop  # noqa: E402

TASKS = 30
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
ANSIBLE_CONFIG_BIN = str(Path(sys.executable).parent / "ansible-config")

# name -> (label, extra [defaults] lines, [ssh_connection] lines)
NO_CP = ["ssh_args = -o ControlMaster=no"]
CP = ["ssh_args = -o ControlMaster=auto -o ControlPersist=120s", "control_path = {cpdir}/%%C"]
CONFIGS: dict[str, tuple[str, list[str], list[str]]] = {
    "baseline": ("no pipelining, ControlMaster=no", [], ["pipelining = False", *NO_CP]),
    "pipelining": ("+ pipelining", [], ["pipelining = True", *NO_CP]),
    "controlpersist": ("+ pipelining + ControlPersist=120s", [], ["pipelining = True", *CP]),
    "factcache": (
        "+ pipelining + ControlPersist + jsonfile fact cache",
        ["gathering = smart", "fact_caching = jsonfile", "fact_caching_connection = {facts}", "fact_caching_timeout = 86400"],
        ["pipelining = True", *CP],
    ),
}
# what `ansible-config dump --only-changed` must show for each (the cfg really was read)
EXPECT = {
    "baseline": ["pipelining(", "ControlMaster=no"],
    "pipelining": ["pipelining(", "= True", "ControlMaster=no"],
    "controlpersist": ["ControlPersist=120s", "control_path("],
    "factcache": ["ControlPersist=120s", "CACHE_PLUGIN(", "DEFAULT_GATHERING("],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_playbook() -> str:
    """30 tasks, six of each kind the roles use; idempotent, so every run after the first does the same work."""
    d = "/root/vbench"
    kinds = [
        lambda i: {"name": f"command {i}", "ansible.builtin.command": f"cat /proc/loadavg {d}/f{i}.conf", "changed_when": False},
        lambda i: {"name": f"stat {i}", "ansible.builtin.stat": {"path": f"{d}/f{i - 1}.conf"}},
        lambda i: {"name": f"file {i}", "ansible.builtin.file": {"path": f"{d}/dir{i}", "state": "directory", "mode": "0755"}},
        lambda i: {
            "name": f"copy {i}",
            "ansible.builtin.copy": {"dest": f"{d}/f{i + 1}.conf", "content": f"# volt bench {i}\nkey_{i} = 1\n", "mode": "0644"},
        },
        lambda i: {"name": f"lineinfile {i}", "ansible.builtin.lineinfile": {"path": f"{d}/f{i}.conf", "line": f"extra_{i} = yes"}},
    ]
    # the first task makes the directory and the files that command/stat/lineinfile read
    tasks: list[dict] = [
        {"name": "base dir", "ansible.builtin.file": {"path": d, "state": "directory", "mode": "0755"}},
        {
            "name": "seed files",
            "ansible.builtin.shell": f"for i in $(seq 0 40); do [ -e {d}/f$i.conf ] || echo seed > {d}/f$i.conf; done",
            "changed_when": False,
        },
    ]
    i = 0
    while len(tasks) < TASKS:
        tasks.append(kinds[i % len(kinds)](i + 2))
        i += 1
    play = [{"name": "ansible.cfg bench", "hosts": "volt", "gather_facts": True, "tasks": tasks}]
    return json.dumps(play, indent=1)  # JSON is YAML


def write_cfg(path: Path, name: str, cpdir: Path, facts: Path) -> None:
    _, defaults, ssh = CONFIGS[name]
    fmt = {"cpdir": cpdir, "facts": facts}
    lines = ["[defaults]", "interpreter_python = auto_silent", "retry_files_enabled = False", "forks = 10"]
    lines += [x.format(**fmt) for x in defaults]
    lines += ["", "[ssh_connection]"] + [x.format(**fmt) for x in ssh]
    path.write_text("\n".join(lines) + "\n")


class Bench:
    def __init__(self, host: TestHost, work: Path):
        self.host = host
        self.work = work
        self.inventory = host.inventory
        self.play = work / "play.yml"
        self.play.write_text(make_playbook())
        self.facts = work / "facts"
        self.runs = 0

    def env(self, cfg: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        return {**env, "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_NOCOLOR": "1"}

    def check_cfg(self, name: str) -> None:
        cfg = self.work / f"{name}.cfg"
        write_cfg(cfg, name, self.work / "cpx", self.facts)
        out = subprocess.run(
            [ANSIBLE_CONFIG_BIN, "dump", "--only-changed", "-t", "all"], cwd=self.work, env=self.env(cfg), capture_output=True, text=True, check=True
        ).stdout
        missing = [s for s in EXPECT[name] if s not in out]
        if missing or f"CONFIG_FILE() = {cfg}" not in out:
            raise SystemExit(f"bench: {cfg} not in effect (missing {missing}):\n{out}")

    def run(self, name: str, gather: bool = True) -> float:
        """One timed ansible-playbook run with `name`'s ansible.cfg; `gather`: whether it must gather facts.
        Its control master (if any) is closed afterwards, so no run reuses another's connection."""
        self.runs += 1
        cpdir = self.work / f"c{self.runs}"  # short: /tmp/vth-XXXXXXXX/cNN/<40 hex> stays far under 108 bytes
        cpdir.mkdir()
        cfg = self.work / f"{name}.cfg"
        write_cfg(cfg, name, cpdir, self.facts)
        t0 = time.monotonic()
        proc = subprocess.run(
            [ANSIBLE_PLAYBOOK, "-i", str(self.inventory), str(self.play)],
            cwd=self.work,
            env=self.env(cfg),
            capture_output=True,
            text=True,
            timeout=900,
        )
        seconds = time.monotonic() - t0
        sockets = list(cpdir.iterdir())
        for sock in sockets:
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True, timeout=30)
        if proc.returncode != 0 or "failed=0" not in proc.stdout or "unreachable=0" not in proc.stdout:
            raise SystemExit(f"bench: {name} run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
        if proc.stdout.count("\nTASK [") != TASKS + gather:
            raise SystemExit(f"bench: {name}: expected {TASKS} tasks{' + fact gathering' if gather else ''}:\n{proc.stdout[-4000:]}")
        if bool(sockets) != (name in ("controlpersist", "factcache")):
            raise SystemExit(f"bench: {name}: control master {'present' if sockets else 'missing'} in {cpdir}")
        return seconds


def fmt_row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True))).rstrip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and the test host")
    a = ap.parse_args()
    if a.repeat < 1:
        raise SystemExit("bench: --repeat must be >= 1")

    load0 = round(os.getloadavg()[0], 2)
    log("starting the test host")
    host = start("volt-bench-cfg")
    work = host.workdir  # /tmp/vth-XXXXXXXX: short, so ControlPath sockets fit in 108 bytes; removed by stop()
    out: dict = {}
    try:
        b = Bench(host, work)
        for name in CONFIGS:
            b.check_cfg(name)
        log(f"playbook: {TASKS} tasks + fact gathering, {work / 'play.yml'}; configs checked with ansible-config dump")
        log("warm-up run (untimed, controlpersist config): creates the host's files")
        b.run("controlpersist")

        samples: dict[str, list[float]] = {k: [] for k in ("baseline", "pipelining", "controlpersist", "factcache_first", "factcache_warm")}
        for r in range(a.repeat):
            for name in ("baseline", "pipelining", "controlpersist"):
                samples[name].append(b.run(name))
            shutil.rmtree(b.facts, ignore_errors=True)
            samples["factcache_first"].append(b.run("factcache"))
            if not any(b.facts.glob("*")):
                raise SystemExit("bench: the first fact-cache run left no cache file")
            before = {p: p.stat().st_mtime_ns for p in b.facts.iterdir()}
            t = b.run("factcache", gather=False)
            if {p: p.stat().st_mtime_ns for p in b.facts.iterdir()} != before:
                raise SystemExit("bench: the warm fact-cache run rewrote the cache (it gathered facts)")
            samples["factcache_warm"].append(t)
            log(f"round {r + 1}/{a.repeat}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items()))

        med = {k: statistics.median(v) for k, v in samples.items()}
        base = med["baseline"]
        labels = {
            "baseline": CONFIGS["baseline"][0],
            "pipelining": CONFIGS["pipelining"][0],
            "controlpersist": CONFIGS["controlpersist"][0],
            "factcache_first": "+ fact cache, first run (empty cache: gathers, fills it)",
            "factcache_warm": "+ fact cache, warm (no gathering)",
        }
        widths = [16, 54, 9, 8, 11, 26]
        print()
        print(fmt_row(["config", "settings", "median s", "ms/task", "vs baseline", "runs (s)"], widths))
        print(fmt_row(["-" * w for w in widths], widths))
        for k, v in samples.items():
            print(
                fmt_row(
                    [k, labels[k], f"{med[k]:.2f}", f"{1000 * med[k] / TASKS:.0f}", f"{base / med[k]:.2f}x", " ".join(f"{x:.2f}" for x in v)], widths
                )
            )
        # the machine's other work drifts between rounds: a fixed saving shows better in same-round differences
        saving = statistics.median(c - w for c, w in zip(samples["controlpersist"], samples["factcache_warm"], strict=True))
        print(f"\n{TASKS} tasks; wall time of ansible-playbook (start-up and fact gathering included), median of {a.repeat}")
        print(f"warm fact cache vs controlpersist, same round: median saving {saving:.2f}s")
        print()

        out = {
            "tasks": TASKS,
            "baseline_s": round(med["baseline"], 3),
            "pipelining_s": round(med["pipelining"], 3),
            "controlpersist_s": round(med["controlpersist"], 3),
            "factcache_warm_s": round(med["factcache_warm"], 3),
            "factcache_first_s": round(med["factcache_first"], 3),
            "speedup_all": round(base / med["factcache_warm"], 2),
            "speedup_pipelining": round(base / med["pipelining"], 2),
            "speedup_controlpersist": round(base / med["controlpersist"], 2),
            "factcache_warm_vs_controlpersist": round(med["controlpersist"] / med["factcache_warm"], 2),
            "factcache_first_vs_controlpersist": round(med["controlpersist"] / med["factcache_first"], 2),
            "factcache_warm_saving_s_paired": round(saving, 3),
            "per_task_ms": {k: round(1000 * v / TASKS, 1) for k, v in med.items()},
            "repeat": a.repeat,
            "runs_s": {k: [round(x, 3) for x in v] for k, v in samples.items()},
            "loadavg_1m_start_end": [load0, round(os.getloadavg()[0], 2)],  # the machine's other work skews the times
        }
    finally:
        if not a.keep:
            stop(host)
        else:
            log(f"kept: test host {host.name} (port {host.port}), {host.workdir}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
