#!/usr/bin/env python3
"""Time from "instance running" to "stage 1's GPU job training": `volt-ansible up` against the guide, an informed
operator and the physical floor.

Run by hand from the project root, as root, with .venv active (see bench/README.md):

    python bench/time_to_gpu.py [--sweep] [--keep]        # defaults: bench/ttg.yml (frozen)

On the embedded local backend (Vast API double + podman container as the instance, the bare CUDA-devel-like image,
RTT and a tbf rate on each instance's host-side veth), each contender on its own fresh instance, `repetitions` times,
interleaved (the order rotates each repetition), medians reported:

1. literal: the operator guide's Step 2-4 as written (bench/ttg_guide.py);
2. informed: the guide's commands and tools, three terminals in parallel, zero reaction time (bench/ttg_guide.py);
3. up cold: `volt-ansible up --yes` with an empty build cache (a fresh HOME, repo_build_cache on);
4. up warm: a second campaign of the same project: the build comes from that cache;
5. floors, on one more fresh instance (bench/ttg_floors.py): toolchain + build alone, stage-1 data alone,
   bootstrap packages + restoring the binaries alone. floor_cold = max(build, data); floor_warm = max(boot, data).

t0 = `volt-ansible provision` returned (sshd accepts the campaign key). GPU busy = the first training-step line of
stage 1 (group_vars' volt_curriculum.log_patterns.progress, the real train-vfn's format) in its log, seen by a
watcher inside the container. Bytes = the veth's tx counter (everything sent to the instance).

The last line of output is one JSON object: overhead_cold_s, overhead_warm_s, ratio_informed_cold,
ratio_informed_warm, ratio_literal_cold, ratio_literal_warm and the raw medians (with --sweep: those of every point
under "points", and the worst of each over the points at the top level).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# bench/sync.py: the JSONL generator, log/sh. Loading it puts REPO and REPO/tests on sys.path, sets CONTAINERS_CONF.
sync = _load("bench_sync", REPO / "bench" / "sync.py")

import ttg_floors  # noqa: E402
import ttg_guide  # noqa: E402
import yaml  # noqa: E402
from conftest import Project  # noqa: E402  (tests/conftest.py: the throwaway project the tests use)
from ttg_instances import DEST, Watch, destroy, new_project, provision, publish  # noqa: E402
from up_profile import by_role, cache_hit, first_start, playbook_log, playbook_total, slowest, task_times  # noqa: E402

from volt_ansible import buildcache, datasync  # noqa: E402
from volt_ansible.local.double import LocalVast  # noqa: E402

argv_of = _load("training_tmux_filters", REPO / "roles/training_tmux/filter_plugins/training_tmux.py").training_tmux_argv
log = sync.log
CONFIG = REPO / "bench" / "ttg.yml"


def job_commands(spec: dict) -> dict[str, dict]:
    """Phase 0.3 and stage 1 exactly as roles/training_tmux runs them (same argv function, same merge)."""
    p03, cur = spec["volt_phase03"], spec["volt_curriculum"]
    st1 = cur["stages"][0]
    args1 = {**(cur.get("args") or {}), **(st1.get("args") or {})}
    return {
        "phase03": {"log": p03["log"], "argv": [f"target/release/{p03['bin']}", *argv_of(p03["args"])]},
        st1["name"]: {"log": st1["log"], "argv": [f"target/release/{cur['bin']}", *argv_of(args1)]},
    }


def up_env(a) -> dict[str, str]:
    env = {"COLUMNS": "200"}
    if not a.no_profile_tasks:  # per-task times in .volt/logs/*-up.log (a callback that only prints)
        env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
    return env


def run_up(p: Project, cfg: dict, a, label: str, step_re: str, rerun: bool = False) -> dict:
    inst, t0, tx0 = provision(p, cfg["rate_mbit"], cfg["rtt_ms"], cfg["image"])
    watches: list[Watch] = []
    try:
        lay = job_commands(yaml.safe_load((p.root / "group_vars/all.yml").read_text()))
        s1 = ttg_guide.stage1_name(lay)
        w_s1, w_p3 = Watch(inst, f"{DEST}/{lay[s1]['log']}", step_re), Watch(inst, f"{DEST}/{lay['phase03']['log']}")
        watches += [w_s1, w_p3]
        start = time.time()
        proc = p.cli("up", "--yes", check=False, timeout=a.up_timeout_s, **up_env(a))
        up_s = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench: up ({label}) failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        t_s1, t_p3 = w_s1.wait(120), w_p3.wait(300)
        if t_s1 is None or t_p3 is None:
            raise SystemExit(f"bench: up ({label}) returned but its jobs did not start (stage1 {t_s1}, phase03 {t_p3})")
        status = p.volt_dir / "data-sync" / f"volt-{inst.id}.json"  # the background transfer: count its bytes too
        deadline = time.time() + 300
        while time.time() < deadline and status.exists() and json.loads(status.read_text()).get("state") == "running":
            time.sleep(0.5)
        text = playbook_log(proc.stdout).read_text() if playbook_log(proc.stdout) else ""
        times = task_times(text)
        launch = first_start(times, "training_tmux : Start each job")
        res = {
            "stage1_s": t_s1 - t0, "phase03_s": t_p3 - t0, "up_wall_s": up_s, "stage1_bytes": w_s1.bytes - tx0,
            "bytes": inst.link.tx_bytes() - tx0, "cache_hit": cache_hit(text), "slowest": slowest(times, a.top),
            "playbook_s": playbook_total(text), "stage1_launch_at": launch, "roles_to_stage1": by_role(times, launch),
        }
        execs = inst.exec(f"cd {DEST} && grep -h '^volt-job: .* exec ' {lay[s1]['log']} {lay['phase03']['log']}")
        res["same_command_lines"] = all(" ".join(j["argv"]) in execs for j in lay.values())  # the guide's contenders run these
        if rerun:  # `up` again on the ready instance, its jobs running: nothing to change
            t = time.time()
            again = p.cli("up", "--yes", check=False, timeout=300, **up_env(a))
            res["rerun_s"] = time.time() - t
            if again.returncode != 0:
                raise SystemExit(f"bench: the rerun of up failed ({again.returncode}):\n{again.stdout[-3000:]}\n{again.stderr[-3000:]}")
            m = re.search(r"up ok: changed=(\d+)", again.stdout)
            res["rerun_changed"] = int(m.group(1)) if m else None
        return res
    finally:
        for w in watches:
            w.stop()
        destroy(p, inst)


class Data:
    """Made once, before anything is rented (not timed): Stack Python, the guide's staging tar.gz, stage 1's files."""

    def __init__(self, work: Path, stack_python_mb: float):
        self.work = work
        self.python_sample = work / "VoltData" / sync.make_data.STACK_PYTHON
        log(f"making the data: Stack Python {stack_python_mb:g} MB (Stack Full: sent by no contender)")
        sync.make_data.write_jsonl(self.python_sample, int(stack_python_mb * 1e6), offset=1000)

    def stage(self, p: Project) -> None:
        """The project's data root (the local world's), the guide's staging tree + tar.gz and stage 1's input tree."""
        self.vroot = publish(p, self.python_sample)
        spec = yaml.safe_load((p.root / "group_vars/all.yml").read_text())
        staging_dir, self.stage1_dir, self.staging = self.work / "VoltStaging", self.work / "stage1", []
        stage1 = spec["volt_curriculum"]["stages"][0]["name"]
        for it in spec["volt_data"]["items"]:
            if not it["enabled"] or it["name"] == "python_sample":
                continue
            rel = ("checkpoints/" if it["dest"].startswith("checkpoints/") else "data/") + Path(it["src"]).name
            (staging_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.vroot / it["src"], staging_dir / rel)
            self.staging.append(rel)
            if stage1 in it["jobs"]:
                (self.stage1_dir / it["dest"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.vroot / it["src"], self.stage1_dir / it["dest"])
        self.staging_tgz = self.work / "VoltStaging.tar.gz"
        sync.sh(["tar", "-czf", str(self.staging_tgz), "-C", str(self.work), "VoltStaging"])


def med(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def spread(values: list[float]) -> list[float]:
    return [round(min(values), 1), round(max(values), 1)]


def run_point(cfg: dict, a, work: Path, data: Data, step_re: str) -> dict:
    """Every contender `repetitions` times at one (rate, build) point, interleaved; medians and spreads."""
    runs: dict[str, list[dict]] = {k: [] for k in ("literal", "informed", "cold", "warm", "floors")}
    rerun: dict = {}
    for rep in range(cfg["repetitions"]):
        repetition(cfg, a, work / f"r{cfg['rate_mbit']:g}-b{cfg['build_s']:g}-{rep}", data, step_re, rep, runs, rerun)
        r = {k: round(v[-1]["stage1_s"], 1) for k, v in runs.items() if k != "floors"}
        f = runs["floors"][-1]
        log(f"  -> stage 1 training after: {r}; floors: build {f['build_s']:.1f}, data {f['data_s']:.1f}, boot {f['boot_s']:.1f}")
    return summarize(cfg, runs, rerun)


def repetition(cfg: dict, a, base: Path, data: Data, step_re: str, rep: int, runs: dict[str, list[dict]], rerun: dict) -> None:
    """One run of each contender, in an order that rotates with rep; then the floors."""
    guide_p, camp_p, floor_p = (new_project(base / n) for n in ("guide", "campaign", "floors"))
    try:
        data.stage(guide_p)
        publish(camp_p, data.python_sample)
        publish(floor_p, data.python_sample)
        camp_p.spec(repo_build_cache=True, repo_build_env={"VOLT_FIXTURE_BUILD_DELAY_MS": str(int(cfg["build_s"] * 1000))})
        datasync.check(camp_p.root / "group_vars/all.yml", camp_p.volt_dir,
                       local_root=camp_p.volt_dir / "local" / "data" / "VoltData")  # the operator ran `check` before renting
        jobs = job_commands(yaml.safe_load((camp_p.root / "group_vars/all.yml").read_text()))
        last = rep == cfg["repetitions"] - 1

        def literal() -> None:
            runs["literal"].append(ttg_guide.run(guide_p, cfg, False, base, data.staging_tgz, data.staging, data.python_sample,
                                                 jobs, step_re))

        def informed() -> None:
            runs["informed"].append(ttg_guide.run(guide_p, cfg, True, base, data.staging_tgz, data.staging, data.python_sample,
                                                  jobs, step_re))

        def up_pair() -> None:  # warm is the second campaign of the project whose cold run filled the build cache
            runs["cold"].append(run_up(camp_p, cfg, a, "cold", step_re))
            runs["warm"].append(run_up(camp_p, cfg, a, "warm", step_re, rerun=last))
            if last:
                rerun.update(s=runs["warm"][-1]["rerun_s"], changed=runs["warm"][-1]["rerun_changed"])

        order = [literal, informed, up_pair]
        for fn in order[rep % 3:] + order[:rep % 3]:
            log(f"  rate {cfg['rate_mbit']:g} Mbit, build {cfg['build_s']:g} s, repetition {rep + 1}: {fn.__name__}")
            fn()
        # the warm floor restores the binaries this repetition's cold `up` built (its build cache entry)
        cache = Path(camp_p.home) / ".cache" / "volt-ansible" / "builds"
        entries = [e for e in buildcache.entries(cache) if not e.problem]
        if not entries:
            raise SystemExit(f"bench: no entry in {cache} (the up project's build cache) for the warm floor")
        log(f"  rate {cfg['rate_mbit']:g} Mbit, build {cfg['build_s']:g} s, repetition {rep + 1}: floors")
        runs["floors"].append(ttg_floors.run(floor_p, cfg, data.stage1_dir, buildcache.archive_path(cache, entries[0].key)))
    finally:
        for p in (guide_p, camp_p, floor_p):
            cleanup(p, a.keep)


def summarize(cfg: dict, runs: dict[str, list[dict]], rerun: dict) -> dict:
    s1 = {k: [r["stage1_s"] for r in v] for k, v in runs.items() if k != "floors"}
    fl = {k: [r[k] for r in runs["floors"]] for k in ("floor_cold_s", "floor_warm_s", "build_s", "data_s", "boot_s", "boot_apt_s")}
    m = {k: med(v) for k, v in s1.items()}
    fc, fw = med(fl["floor_cold_s"]), med(fl["floor_warm_s"])
    cold, warm = runs["cold"], runs["warm"]
    mid = lambda rs: sorted(rs, key=lambda r: r["stage1_s"])[len(rs) // 2]  # noqa: E731  (the median run's profile)
    return {
        "rate_mbit": cfg["rate_mbit"], "build_s": cfg["build_s"], "rtt_ms": cfg["rtt_ms"], "repetitions": cfg["repetitions"],
        "overhead_cold_s": round(m["cold"] - fc, 1), "overhead_warm_s": round(m["warm"] - fw, 1),
        "ratio_informed_cold": round(m["informed"] / m["cold"], 2), "ratio_informed_warm": round(m["informed"] / m["warm"], 2),
        "ratio_literal_cold": round(m["literal"] / m["cold"], 2), "ratio_literal_warm": round(m["literal"] / m["warm"], 2),
        "literal_s": m["literal"], "informed_s": m["informed"], "cold_s": m["cold"], "warm_s": m["warm"],
        "floor_cold_s": fc, "floor_warm_s": fw, "floor_build_s": med(fl["build_s"]), "floor_data_s": med(fl["data_s"]),
        "floor_boot_s": med(fl["boot_s"]), "floor_boot_apt_s": med(fl["boot_apt_s"]),
        "spread_s": {**{k: spread(v) for k, v in s1.items()}, "floor_cold": spread(fl["floor_cold_s"]), "floor_warm": spread(fl["floor_warm_s"])},
        "phase03_s": {k: med([r["phase03_s"] for r in v]) for k, v in runs.items() if k != "floors"},
        "MB_sent": {k: round(statistics.median([r["bytes"] for r in v]) / 1e6, 1) for k, v in runs.items() if k != "floors"},
        "MB_sent_by_stage1": {k: round(statistics.median([r["stage1_bytes"] for r in v]) / 1e6, 1) for k, v in runs.items() if k != "floors"},
        "guide_steps_s": {k: med([r[k] for r in runs["literal"]]) for k in ("unpack_s", "apt_s", "clone_s", "cargo_s", "tgz_s", "python_sample_s")},
        "warm_cache_hit": all(r["cache_hit"] for r in warm), "rerun_s": round(rerun.get("s", 0), 1), "rerun_changed": rerun.get("changed"),
        "cold_roles_to_stage1_s": mid(cold)["roles_to_stage1"], "warm_roles_to_stage1_s": mid(warm)["roles_to_stage1"],
        "cold_slowest": mid(cold)["slowest"], "warm_slowest": mid(warm)["slowest"],
        "cold_up_wall_s": med([r["up_wall_s"] for r in cold]), "warm_up_wall_s": med([r["up_wall_s"] for r in warm]),
        "same_command_lines": all(r["same_command_lines"] for r in cold + warm),
    }


def cleanup(p: Project, keep: bool) -> None:
    if (p.volt_dir / "state.json").exists() and p.state().get("instance"):
        p.cli("destroy", "--yes", "--force", check=False, timeout=120)
    if (p.volt_dir / "local").exists():
        LocalVast(p.volt_dir / "local").clean()
    if not keep:
        shutil.rmtree(p.home, ignore_errors=True)


WORST = {"overhead_cold_s": max, "overhead_warm_s": max, "ratio_informed_cold": min, "ratio_informed_warm": min,
         "ratio_literal_cold": min, "ratio_literal_warm": min}
GOALS = {"overhead_cold_s": ("<=", 10), "overhead_warm_s": ("<=", 10), "ratio_informed_cold": (">=", 1.0), "ratio_informed_warm": (">=", 5)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="frozen defaults (default bench/ttg.yml)")
    ap.add_argument("--sweep", action="store_true", help="every point of the config's sweep grid (rate x build)")
    ap.add_argument("--repetitions", type=int, help="override the config's repetitions (a quick look; the figure says so)")
    ap.add_argument("--point", metavar="RATE,BUILD", help="one point of the sweep grid instead of the default (e.g. 1000,30)")
    ap.add_argument("--up-timeout-s", type=float, default=900.0)
    ap.add_argument("--top", type=int, default=8, help="slowest tasks shown per up run")
    ap.add_argument("--no-profile-tasks", action="store_true", help="do not enable the profile_tasks callback in up's runs")
    ap.add_argument("--keep", action="store_true", help="keep the work dir, the project dirs and their logs")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tc"):
        raise SystemExit("bench: run as root with tc (iproute2): it shapes the instance containers' veths")
    cfg = yaml.safe_load(a.config.read_text())
    if a.repetitions:
        cfg["repetitions"] = a.repetitions
    grid = [{**cfg, "rate_mbit": r, "build_s": b} for r in cfg["sweep"]["rate_mbit"] for b in cfg["sweep"]["build_s"]]
    if a.point:
        names = [f"{g['rate_mbit']:g},{g['build_s']:g}" for g in grid]
        if a.point.replace(" ", "") not in names:
            raise SystemExit(f"bench: --point {a.point!r} is not in the sweep grid: choose RATE,BUILD from {', '.join(names)}")
        points = [grid[names.index(a.point.replace(" ", ""))]]
    else:
        points = grid if a.sweep else [cfg]
    spec = yaml.safe_load((REPO / "group_vars/all.yml").read_text())
    step_re = spec["volt_curriculum"]["log_patterns"]["progress"]
    commit = os.popen(f"git -C {REPO} log -1 --format=%h -- {a.config}").read().strip()
    wall0, load0 = time.time(), round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="volt-ttg-", dir="/tmp"))
    results = []
    try:
        data = Data(work, cfg["stack_python_mb"])
        for pt in points:
            log(f"point: link {pt['rate_mbit']:g} Mbit/s, RTT {pt['rtt_ms']:g} ms, build {pt['build_s']:g} s, "
                f"{pt['repetitions']} repetition(s), image {pt['image']}")
            results.append(run_point(pt, a, work, data, step_re))
            print_point(results[-1])
    finally:
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = dict(results[0]) if not a.sweep else {k: f(r[k] for r in results) for k, f in WORST.items()}
    if a.sweep:
        out["points"] = results
    out["goals_met"] = {k: (out[k] <= v if op == "<=" else out[k] >= v) for k, (op, v) in GOALS.items()}
    out.update(config=str(a.config.relative_to(REPO)) if a.config.is_relative_to(REPO) else str(a.config), config_commit=commit,
               stack_python_mb=cfg["stack_python_mb"], loadavg_1m_start_end=[load0, round(os.getloadavg()[0], 2)],
               bench_wall_s=round(time.time() - wall0, 1))
    print(json.dumps(out))
    return 0


def print_point(r: dict) -> None:
    print()
    print(f"link {r['rate_mbit']:g} Mbit/s, RTT {r['rtt_ms']:g} ms, build {r['build_s']:g} s; medians of {r['repetitions']} "
          "(min-max); seconds from `provision` returned to stage 1's first training step")
    print(f"{'contender':<22} {'stage 1 training':>17} {'min-max':>13} {'phase03 started':>15} {'MB sent':>9}")
    for k, name in (("literal", "guide, literal"), ("informed", "informed operator"), ("cold", "up cold"), ("warm", "up warm")):
        lo, hi = r["spread_s"][k]
        print(f"{name:<22} {r[k + '_s']:>17.1f} {f'{lo:g}-{hi:g}':>13} {r['phase03_s'][k]:>15.1f} {r['MB_sent'][k]:>9.1f}")
    for k, name in (("floor_cold", "floor cold"), ("floor_warm", "floor warm")):
        lo, hi = r["spread_s"][k]
        print(f"{name:<22} {r[k + '_s']:>17.1f} {f'{lo:g}-{hi:g}':>13}")
    print(f"floors: build {r['floor_build_s']} s, stage-1 data {r['floor_data_s']} s, boot {r['floor_boot_s']} s (apt {r['floor_boot_apt_s']})")
    print(f"overhead cold {r['overhead_cold_s']} s, warm {r['overhead_warm_s']} s; informed/up cold {r['ratio_informed_cold']}, "
          f"informed/up warm {r['ratio_informed_warm']}; literal/up cold {r['ratio_literal_cold']}, warm {r['ratio_literal_warm']}")
    print(f"up cold, task seconds per role before stage 1's launch: {r['cold_roles_to_stage1_s']}; slowest: {r['cold_slowest'][:4]}")
    print(f"up warm, task seconds per role before stage 1's launch: {r['warm_roles_to_stage1_s']}; slowest: {r['warm_slowest'][:4]}")
    print()


if __name__ == "__main__":
    sys.exit(main())
