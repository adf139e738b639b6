#!/usr/bin/env python3
"""How close is data_sync to the link, and is it ever slower than the obvious alternative (plain rsync, scp)?

Run by hand from the project root, as root, with .venv active, under the shared bench lock (see bench/README.md):

    flock /tmp/volt-bench.lock python bench/sync.py [--repetitions N] [--rates 50,200] [--keep]   # defaults: bench/sync.yml

On the embedded local backend: one instance (`volt-ansible provision --backend local`, the bare CUDA-devel-like image,
RTT `rtt_ms` through the local world's relay), rsync and python3 put there by the product's bootstrap role (untimed),
the instance's host-side veth shaped with tbf at each rate in turn. Everything is timed by this bench's clock:

- line: raw TCP to a sink in the instance through the same path (a relay like the instance's, the same veth), and
  straight to the container (no relay) beside it, so a relay that caps the rate shows; and one ssh stream (raw bytes
  through `ssh ... python3` over the instance's relay): over a long path OpenSSH's channel window caps it below the
  line, and rsync -e ssh and scp ride it. Files are sized from the lower of line and ssh stream;
- per rate, interleaved, `repetitions` times: plain rsync (`rsync -t`, no compression), scp, and data_sync's driver
  (`python -m volt_ansible.datasync sync`, the plan the role would give it: its compression probe and decision, the
  transfer, the digest verified on the instance), on the JSONL corpus (code, stdlib .py files as JSONL records) and
  on an incompressible safetensors file; time from the start command to its exit (data_sync: the file verified on
  the instance; rsync and scp: no check after, which favours them); bytes from the veth's tx counter. Each file is
  sized so that its contender's transfer lasts about `transfer_s`;
- silent drops (data_sync, at `silent_drop.rate_mbit`): at `points` random points (20-80 % of the file landed) per kind
  (JSONL compressed, safetensors raw), the link is cut for `cut_s` (link.cut: nothing passes, nothing is closed), then
  restored: when the driver noticed (its first attempt's end - the cut), the bytes sent beyond a clean run of the same
  file (veth), and that it completed verified without a human;
- the SIGKILL case: the rsync's ssh killed at ~50 % of the safetensors file;
- stage 1's inputs (the guide's files at their real sizes: tokenizer, encoder, decoder, code_training_combined): the
  guide's Terminal-3 path (their tar.gz, made beforehand, scp'd, then `tar -xzf` on the instance) vs data_sync, the
  role (`ansible-playbook playbooks/sync.yml`, waiting for stage 1: start to `stage1.ready` seen in the instance)
  and its driver alone.

The last line of output is one JSON object: jsonl_vs_line_{50,200,1000}, jsonl_vs_plain_{...}, binary_vs_plain_{...},
silent_drop_detect_s, silent_drop_extra_pct_jsonl, silent_drop_extra_pct_binary, kill_extra_pct, stage1_vs_tarball,
and the raw medians.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("CONTAINERS_CONF", str(REPO / "volt_ansible/local/containers.conf"))

import yaml  # noqa: E402

_spec = importlib.util.spec_from_file_location("make_data", REPO / "roles/data_sync/molecule/default/make_data.py")
make_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_data)

CONFIG = REPO / "bench" / "sync.yml"
DEST = "/root/volt-x"
# stage 1's inputs at the guide's File Reference sizes (MB)
STAGE1_MB = {"code_tokenizer": ("checkpoints/code_tokenizer.json", 2.3), "code_encoder": ("checkpoints/code_encoder.safetensors", 20.6),
             "code_decoder": ("checkpoints/code_decoder.safetensors", 21.0),
             "code_training_combined": ("data/code_training_combined.jsonl", 0.3)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, shell=isinstance(cmd, str), **kw)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the instance


class World:
    """The project, its instance (container, pinned ssh), the veth and the relay that makes the RTT."""

    def __init__(self, work: Path, rtt_ms: float, image: str):
        from ttg_instances import new_project

        from volt_ansible import ssh as ssh_mod
        from volt_ansible.local import aptcache
        from volt_ansible.local.link import Veth

        self.p = new_project(work / "project")
        self.p.cli("provision", "--backend", "local", timeout=300, VOLT_LOCAL_RTT_MS=f"{rtt_ms:g}", VOLT_LOCAL_IMAGE=image)
        st = self.p.state()["instance"]
        self.id, self.port = st["id"], st["ssh_port"]
        with self.p.double().store() as s:
            rec = s["instances"][str(self.id)]
        self.container, self.link_rec = rec["container"], rec["link"]
        self.relay_pid = self.link_rec.get("relay_pid")
        if self.link_rec.get("delay_by") != "relay":
            raise SystemExit("bench: this kernel has netem, the delay is not made by the relay: the silent-drop cut needs the relay")
        self.veth = Veth(self.container)
        self.link = self.veth  # what ttg_instances.Watch counts bytes on
        self.exempt = aptcache.endpoint()
        self.opts = [*ssh_mod.options(self.p.volt_dir), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
        self.ssh = ["ssh", *self.opts, "-p", str(self.port), "root@127.0.0.1"]
        self.scp = ["scp", "-q", *self.opts, "-P", str(self.port)]
        self.rsh = shlex.join(["ssh", *self.opts, "-p", str(self.port)])
        self.conn = ssh_mod.connection(self.p.volt_dir, "127.0.0.1", self.port)

    def shape(self, rate_mbit: float) -> None:
        from volt_ansible.local.link import Model

        self.veth.shape(Model(rate_mbit=rate_mbit), exempt=self.exempt)

    def exec(self, cmd: str, timeout: float = 120) -> str:
        """A look inside the container (not over the shaped link): measuring and cleaning up, never a contender."""
        from volt_ansible.local import podman

        return podman.run("exec", self.container, "sh", "-c", cmd, check=False, timeout=timeout).stdout.decode(errors="replace")

    def playbook(self, play: Path, extravars: dict) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "ansible-playbook"), str(play), "-e", json.dumps(extravars)]
        return subprocess.run(cmd, cwd=self.p.root, env=self.p.env(), capture_output=True, text=True, timeout=900)

    def destroy(self) -> None:
        self.veth.unshape()
        self.p.cli("destroy", "--yes", "--force", check=False, timeout=120)


def measure_line(w: World, rtt_ms: float, seconds: float = 3.5) -> dict:
    """Raw TCP payload rate into the instance: through a relay like the instance's (the path data_sync's ssh takes) and
    straight to the container; the sink counts what arrives after the first second (slow start left out)."""
    from volt_ansible.local import link, podman

    port = 5599
    sink = ("import socket, time\ns = socket.create_server(('0.0.0.0', PORT))\nfor _ in range(2):\n    c, _ = s.accept()\n"
            "    n = 0; t0 = None; n1 = t1 = None\n    while (b := c.recv(1 << 20)):\n        now = time.monotonic(); n += len(b)\n"
            "        if t0 is None: t0 = now\n        if t1 is None and now - t0 >= 1.0: n1, t1 = n, now\n"
            "        last = now\n    c.sendall(str((n - n1) / (last - t1) if t1 and last > t1 else 0).encode()); c.close()\n")
    sink = sink.replace("PORT", str(port))
    podman.run("exec", "-d", w.container, "python3", "-c", sink)
    time.sleep(0.5)
    rport, rpid = link.start_relay(Path(tempfile.mkdtemp(prefix="vsr-")), "line", w.veth.ip, rtt_ms, port=port)
    out = {}
    block = os.urandom(1 << 20)
    try:
        for name, addr in (("relay", ("127.0.0.1", rport)), ("direct", (w.veth.ip, port))):
            s = socket.create_connection(addr, timeout=10)
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(60)
            out[name] = float(s.recv(64).decode() or 0)
            s.close()
    finally:
        link.stop_relay(rpid)
    return out


# ---------------------------------------------------------------------------------------------
# the contenders


def plain_rsync(w: World, src: Path, dest: str) -> float:
    t0 = time.time()
    sh(["rsync", "-t", "-e", w.rsh, str(src), f"root@127.0.0.1:{dest}"])
    return time.time() - t0


def scp(w: World, src: Path, dest: str) -> float:
    t0 = time.time()
    sh([*w.scp, str(src), f"root@127.0.0.1:{dest}"])
    return time.time() - t0


class DataSync:
    """data_sync's driver on one item, with the plan the role would give it (pre-flight untimed, as `volt-ansible
    check` runs before renting); the instance side was installed by the role once (setup)."""

    def __init__(self, w: World, work: Path):
        self.w = w
        self.volt_dir = work / "ds-volt"
        self.state = work / "ds-state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.defaults = yaml.safe_load((REPO / "roles/data_sync/defaults/main.yml").read_text())

    def plan(self, items: list[dict], local_root: Path) -> dict:
        from volt_ansible import datasync

        vd = {"root_remote": DEST, "local_root": str(local_root), "items": items}
        report = datasync.preflight(vd, self.volt_dir)
        plan = report.plan()
        d = self.defaults
        options = {"parallel": d["data_sync_parallel"], "retries": d["data_sync_retries"], "retry_delay_s": d["data_sync_retry_delay_s"],
                   "io_timeout_s": d["data_sync_io_timeout_s"], "keepalive_s": d["data_sync_keepalive_s"],
                   "keepalive_count": d["data_sync_keepalive_count"], "compression": d["data_sync_compression"],
                   "zstd_level": d["data_sync_zstd_level"], "bwlimit_kbps": d["data_sync_bwlimit_kbps"], "remote_python": "python3"}
        return {"root": DEST, "ssh": self.w.conn, "items": plan["items"], "verified": [], "jobs": plan["jobs"],
                "digests": {i["name"]: i["digest"] for i in plan["items"]}, "options": options, "run_id": f"bench-{time.time()}"}

    def start(self, plan: dict, tag: str) -> tuple[subprocess.Popen, Path]:
        status = self.state / f"{tag}.json"
        status.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "volt_ansible.datasync", "sync", "--status", str(status), "--log", str(self.state / f"{tag}.log"),
                "--plan-json", json.dumps(plan)]
        return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), status

    def run(self, plan: dict, tag: str) -> tuple[float, dict]:
        t0 = time.time()
        proc, status = self.start(plan, tag)
        out, err = proc.communicate(timeout=1800)
        seconds = time.time() - t0
        st = json.loads(status.read_text())
        if proc.returncode != 0 or st["state"] != "done":
            raise SystemExit(f"bench: data_sync {tag} failed: {st.get('error')} {err[-800:]}")
        return seconds, st


def clean(w: World, *paths: str) -> None:
    w.exec("rm -rf " + " ".join(shlex.quote(p) for p in paths) + f" {DEST}/.volt-sync/*.verified {DEST}/.volt-sync/*.stat "
           f"{DEST}/.volt-sync/*.ready; find {DEST} -name .rsync-partial -prune -exec rm -rf {{}} + 2>/dev/null; sync")


# ---------------------------------------------------------------------------------------------
# data


def make_files(work: Path, name: str, kind: str, size: int, seed: int) -> Path:
    path = work / "data" / name
    if kind == "jsonl":
        make_data.write_jsonl(path, size, offset=seed * 131, vary=True)
    else:
        make_data.write_safetensors(path, size, seed=seed)
    return path


def landed(w: World, dest_dir: str, name: str) -> int:
    out = w.exec(f"stat -c %s {dest_dir}/.{name}.* 2>/dev/null | head -1 || true").split()
    return int(out[0]) if out else 0


def driver_pid_rsync_ssh(status: Path) -> list[int]:
    from procs import children, comm

    try:
        pid = json.loads(status.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return []
    return [c for r in children(pid) if comm(r) == "rsync" for c in children(r) if comm(c) == "ssh"]


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repetitions", type=int, help="override the config's repetitions")
    ap.add_argument("--rates", help="comma-separated Mbit/s, override the config's rates")
    ap.add_argument("--transfer-s", type=float, help="override the config's transfer_s (a quick smoke run; figures need >= 10)")
    ap.add_argument("--no-drops", action="store_true", help="skip the silent drops and the kill")
    ap.add_argument("--workdir", default="/tmp/volt-bench-sync")
    ap.add_argument("--keep", action="store_true", help="keep the workdir and the instance")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tc"):
        raise SystemExit("bench: run as root with tc (iproute2): it shapes the instance's veth")
    cfg = yaml.safe_load(CONFIG.read_text())
    reps = a.repetitions or cfg["repetitions"]
    rates = [float(r) for r in a.rates.split(",")] if a.rates else [float(r) for r in cfg["rates_mbit"]]
    target = float(a.transfer_s or cfg["transfer_s"])
    rng = random.Random(cfg["seed"])
    t_start = time.time()
    load0 = round(os.getloadavg()[0], 2)
    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(CONFIG)], cwd=REPO, capture_output=True, text=True).stdout.strip()

    from volt_ansible.datasync import compress
    from volt_ansible.local import link

    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    log(f"config {CONFIG.name} ({commit or 'uncommitted'}): rates {rates} Mbit/s, RTT {cfg['rtt_ms']} ms, {reps} repetitions, "
        f"~{target:g} s per transfer")

    # the corpus's own compressibility (printed beside the results) and this controller's zstd speeds
    probe_src = make_files(work, "probe.jsonl", "jsonl", 64 << 20, 0)
    levels = compress.probe_levels(str(probe_src), str(work), levels=(1, 3, 6))
    zstd3 = subprocess.run(f"zstd -3 -c {shlex.quote(str(probe_src))} | wc -c", shell=True, capture_output=True, text=True).stdout.strip()
    corpus_ratio = probe_src.stat().st_size / int(zstd3) if zstd3.isdigit() and int(zstd3) else None
    probe_src.unlink()
    log("corpus: zstd -3 ratio " + (f"{corpus_ratio:.2f}" if corpus_ratio else "n/a (no zstd CLI)") + "; this controller's rsync: "
        + ", ".join(f"zstd-{s.level} {s.rate / 1e6:.0f} MB/s x{s.ratio:.2f}" for s in levels))

    w = World(work, cfg["rtt_ms"], cfg["image"])
    out: dict = {}
    try:
        # untimed: rsync + python3 the way the product puts them there (bootstrap), the role's instance side
        play = work / "project" / "playbooks" / "sync.yml"
        seed_item = make_files(work, "seed.jsonl", "jsonl", 1000, 99)
        setup = w.playbook(play, {"volt_data": {"root_remote": DEST, "local_root": str(seed_item.parent),
                                                "items": [{"name": "seed", "src": seed_item.name, "dest": "data/seed.jsonl", "kind": "file",
                                                           "jobs": ["stage1"]}]},
                                  "data_sync_local_root": str(seed_item.parent)})
        if setup.returncode != 0:
            raise SystemExit(f"bench: the bootstrap + data_sync setup play failed:\n{setup.stdout[-3000:]}")
        log(f"instance volt-{w.id} ({cfg['image']}), relay pid {w.relay_pid}; bootstrap + data_sync installed (untimed)")

        # the line at each rate, then the files sized from it
        lines, sizes = {}, {}
        for r in rates:
            w.shape(r)
            lines[r] = measure_line(w, cfg["rtt_ms"])
            # one ssh stream (what rsync -e ssh and scp ride): over a long path its channel window caps it below the line
            lines[r]["ssh"] = compress.probe_link(["ssh", *w.opts, "-p", str(w.port)], "root@127.0.0.1", seconds=4, skip=1)
            line, stream = lines[r]["relay"], min(lines[r]["relay"], lines[r]["ssh"])
            # data_sync's JSONL: the link x the ratio, or ~0.35 x this controller's zstd-1 speed alone, whichever is lower:
            # what it reached on this 2-core machine, where the instance's sshd and rsync share the cores (first runs:
            # 63-74 MB/s at 200 and 1000 Mbit with zstd-1 at ~200 MB/s alone; link-bound at 50)
            best = min(compress.decide(stream, levels).predicted_Bps, 0.35 * max(s.rate for s in levels))
            sizes[r] = {"jsonl_plain": int(stream * target), "jsonl_ds": int(best * target), "binary": int(stream * target)}
            log(f"{r:g} Mbit/s: line {line / 1e6:.2f} MB/s through the relay, {lines[r]['direct'] / 1e6:.2f} MB/s straight "
                f"({line * 8 / 1e6 / r:.3f} of the tbf rate), one ssh stream {lines[r]['ssh'] / 1e6:.2f} MB/s; files: JSONL "
                f"{sizes[r]['jsonl_plain'] / 1e6:.0f} MB (plain, scp), {sizes[r]['jsonl_ds'] / 1e6:.0f} MB (data_sync), safetensors "
                f"{sizes[r]['binary'] / 1e6:.0f} MB")
        files = {}
        for r in rates:
            for key, kind in (("jsonl_plain", "jsonl"), ("jsonl_ds", "jsonl"), ("binary", "binary")):
                files[(r, key)] = make_files(work, f"{key}_{r:g}.{'jsonl' if kind == 'jsonl' else 'safetensors'}", kind, sizes[r][key],
                                             int(r) + len(key))
        ds = DataSync(w, work)
        plans = {}
        for r in rates:
            for key in ("jsonl_ds", "binary"):
                f = files[(r, key)]
                plans[(r, key)] = ds.plan([{"name": f.stem.replace(".", "_"), "src": f.name, "dest": f"data/{f.name}", "kind": "file",
                                            "jobs": ["stage1"]}], f.parent)
        log("pre-flight digests done (untimed)")

        # the rates, interleaved
        runs: dict = {}
        digests: dict = {}
        contenders = ["plain", "scp", "data_sync"]
        for rep in range(reps):
            for r in rates:
                w.shape(r)
                order = contenders[rep % 3:] + contenders[: rep % 3]
                for kind in ("jsonl", "binary"):
                    for c in order:
                        f = files[(r, "binary" if kind == "binary" else ("jsonl_ds" if c == "data_sync" else "jsonl_plain"))]
                        dest = f"{DEST}/data/{f.name}"
                        clean(w, dest)
                        b0 = w.veth.tx_bytes()
                        detail = ""
                        if c == "plain":
                            w.exec(f"mkdir -p {DEST}/data")
                            seconds = plain_rsync(w, f, dest)
                            # what checking it by digest would add (not counted in plain's rate: rsync checked its own
                            # transfer; data_sync's time includes its digest check on the instance)
                            t_check = time.time()
                            got = sh([*w.ssh, f"sha256sum {shlex.quote(dest)}"]).stdout.split()[0]
                            runs.setdefault((r, kind, "plain_check"), []).append(time.time() - t_check)
                            if got != digests.setdefault(f, sha256(f)):
                                raise SystemExit(f"bench: plain rsync's copy of {f.name} does not match")
                        elif c == "scp":
                            w.exec(f"mkdir -p {DEST}/data")
                            seconds = scp(w, f, dest)
                        else:
                            seconds, st = ds.run(plans[(r, "binary" if kind == "binary" else "jsonl_ds")], f"{kind}-{r:g}-{rep}")
                            detail = f" [{st['items'][next(iter(st['items']))].get('compression')}]"
                            runs.setdefault((r, kind, "ds_decision"), []).append(st.get("compression", {}))
                        wire = w.veth.tx_bytes() - b0
                        size = f.stat().st_size
                        runs.setdefault((r, kind, c), []).append({"s": seconds, "Bps": size / seconds, "wire": wire, "size": size})
                        log(f"  rep {rep + 1} {r:g} Mbit {kind:6} {c:9} {size / 1e6:7.0f} MB in {seconds:5.1f}s = {size / seconds / 1e6:6.2f} MB/s, "
                            f"{wire / 1e6:.0f} MB on the veth{detail}")
                        w.exec(f"rm -f {shlex.quote(dest)}")  # the next run cleans the rest

        for r in rates:
            line = lines[r]["relay"]
            rate = {k: med([x["Bps"] for x in runs[(r, kind, c)]]) for kind in ("jsonl", "binary") for c, k in
                    ((c, f"{kind}_{c}") for c in contenders)}
            tag = f"{r:g}"
            out[f"jsonl_vs_line_{tag}"] = round(rate["jsonl_data_sync"] / line, 3)
            out[f"jsonl_vs_plain_{tag}"] = round(rate["jsonl_data_sync"] / rate["jsonl_plain"], 3)
            out[f"binary_vs_plain_{tag}"] = round(rate["binary_data_sync"] / rate["binary_plain"], 3)
            out.setdefault("raw", {})[tag] = {
                "line_MBps": round(line / 1e6, 2), "line_direct_MBps": round(lines[r]["direct"] / 1e6, 2),
                "ssh_stream_MBps": round(lines[r]["ssh"] / 1e6, 2),
                "line_vs_tbf": round(line * 8 / 1e6 / r, 3),
                **{f"{k}_MBps": round(v / 1e6, 2) for k, v in rate.items()},
                **{f"{kind}_{c}_spread_MBps": [round(min(x["Bps"] for x in runs[(r, kind, c)]) / 1e6, 2),
                                               round(max(x["Bps"] for x in runs[(r, kind, c)]) / 1e6, 2)]
                   for kind in ("jsonl", "binary") for c in contenders},
                **{f"{kind}_{c}_s": round(med([x["s"] for x in runs[(r, kind, c)]]), 1) for kind in ("jsonl", "binary") for c in contenders},
                **{f"{kind}_{c}_wire_MB": round(med([x["wire"] for x in runs[(r, kind, c)]]) / 1e6, 1) for kind in ("jsonl", "binary")
                   for c in contenders},
                "plain_sha256_check_s": round(med(runs[(r, "binary", "plain_check")]), 2),
                "binary_vs_plain_checked": round(rate["binary_data_sync"] / (files[(r, "binary")].stat().st_size / (
                    med([x["s"] for x in runs[(r, "binary", "plain")]]) + med(runs[(r, "binary", "plain_check")]))), 3),
                "jsonl_scp_vs_plain": round(rate["jsonl_scp"] / rate["jsonl_plain"], 3),
                "binary_scp_vs_plain": round(rate["binary_scp"] / rate["binary_plain"], 3),
                "ds_decisions": [f"zstd-{d['level']}" if d.get("level") is not None else "raw" for d in runs[(r, "jsonl", "ds_decision")]],
            }
        out["corpus_zstd3_ratio"] = round(corpus_ratio, 2) if corpus_ratio else None
        out["controller_zstd_MBps"] = {f"zstd-{s.level}": [round(s.rate / 1e6), round(s.ratio, 2)] for s in levels}

        # silent drops and the kill
        if not a.no_drops:
            r = float(cfg["silent_drop"]["rate_mbit"])
            if r not in rates:
                raise SystemExit(f"bench: silent_drop.rate_mbit {r:g} is not among the rates run")
            w.shape(r)
            cut_s = float(cfg["silent_drop"]["cut_s"])
            drops: dict = {"jsonl": [], "binary": []}
            # the JSONL runs here use the level the driver chose at this rate, fixed, so that no link probe's bytes
            # (~1 s of the link, a little more or less each time) are in the veth count: one clean run is the reference
            levels_here = [d.get("level") for d in runs[(r, "jsonl", "ds_decision")]]
            level = max(set(levels_here), key=levels_here.count)
            drop_plans = {"binary": plans[(r, "binary")], "jsonl": json.loads(json.dumps(plans[(r, "jsonl_ds")]))}
            drop_plans["jsonl"]["options"].update(compression="fixed", zstd_level=level if level is not None else 3)
            if level is None:
                drop_plans["jsonl"]["items"][0]["compress_on"] = False
            f = files[(r, "jsonl_ds")]
            clean(w, f"{DEST}/data/{f.name}")
            b0 = w.veth.tx_bytes()
            ds.run(drop_plans["jsonl"], "drop-jsonl-clean")
            clean_wires = {"jsonl": w.veth.tx_bytes() - b0, "binary": med([x["wire"] for x in runs[(r, "binary", "data_sync")]])}
            clean(w, f"{DEST}/data/{f.name}")
            log(f"  silent drops at {r:g} Mbit/s: JSONL at zstd-{level} fixed, its clean run {clean_wires['jsonl'] / 1e6:.1f} MB on the veth")
            for i in range(int(cfg["silent_drop"]["points"])):
                for kind in ("jsonl", "binary"):
                    key = "jsonl_ds" if kind == "jsonl" else "binary"
                    f = files[(r, key)]
                    clean_wire = clean_wires[kind]
                    at = rng.uniform(0.2, 0.8)
                    dest = f"{DEST}/data/{f.name}"
                    clean(w, dest)
                    b0 = w.veth.tx_bytes()
                    t0 = time.time()
                    proc, status = ds.start(drop_plans[kind], f"drop-{kind}-{i}")
                    size = f.stat().st_size
                    while landed(w, f"{DEST}/data", f.name) < at * size:
                        if proc.poll() is not None:
                            raise SystemExit(f"bench: the transfer ended before {at:.0%} landed: raise transfer_s")
                        time.sleep(0.05)
                    with link.cut_for(w.relay_pid, cut_s):
                        cut_wall = time.time()
                        time.sleep(cut_s)
                    proc.communicate(timeout=900)
                    total = time.time() - t0
                    wire = w.veth.tx_bytes() - b0
                    st = json.loads(status.read_text())
                    item = next(iter(st["items"].values()))
                    att = item["attempts"]
                    detect = att[0]["ended"] - cut_wall if att[0]["rc"] != 0 else float("nan")
                    rec = {"at": round(at, 3), "detect_s": round(detect, 1), "extra_pct": round(100 * (wire - clean_wire) / size, 3),
                           "attempts": len(att), "verified": st["state"] == "done" and item["state"] == "verified", "total_s": round(total, 1),
                           "first_error": att[0]["error"]}
                    drops[kind].append(rec)
                    log(f"  silent drop {kind} at {at:.0%}: noticed after {detect:.1f}s ({att[0]['error']}), {len(att)} attempts, "
                        f"{rec['extra_pct']:+.3f}% of the file beyond a clean run, verified={rec['verified']}, {total:.0f}s in all")
                    clean(w, dest)
            out["silent_drop_detect_s"] = round(max(x["detect_s"] for k in drops for x in drops[k]), 1)
            out["silent_drop_extra_pct_jsonl"] = round(max(x["extra_pct"] for x in drops["jsonl"]), 3)
            out["silent_drop_extra_pct_binary"] = round(max(x["extra_pct"] for x in drops["binary"]), 3)
            out["silent_drop_all_verified"] = all(x["verified"] for k in drops for x in drops[k])
            out["silent_drops"] = drops

            r = float(cfg["kill_rate_mbit"])
            w.shape(r)
            f = files[(r, "binary")]
            dest = f"{DEST}/data/{f.name}"
            clean(w, dest)
            b0 = w.veth.tx_bytes()
            proc, status = ds.start(plans[(r, "binary")], "kill")
            size = f.stat().st_size
            killed = None
            while killed is None and proc.poll() is None:
                if landed(w, f"{DEST}/data", f.name) >= 0.5 * size:
                    for pid in driver_pid_rsync_ssh(status):
                        os.kill(pid, signal.SIGKILL)
                        killed = pid
                time.sleep(0.05)
            proc.communicate(timeout=900)
            wire = w.veth.tx_bytes() - b0
            st = json.loads(status.read_text())
            clean_wire = med([x["wire"] for x in runs[(r, "binary", "data_sync")]])
            out["kill_extra_pct"] = round(100 * (wire - clean_wire) / size, 3)
            log(f"  SIGKILL of the rsync's ssh at 50%: {len(next(iter(st['items'].values()))['attempts'])} attempts, "
                f"{out['kill_extra_pct']:+.3f}% beyond a clean run, state {st['state']}")
            if killed is None or st["state"] != "done":
                raise SystemExit("bench: the kill did not interrupt the transfer, or it did not complete")
            clean(w, dest)

        # stage 1's inputs: the guide's tarball vs data_sync
        r = float(cfg["stage1_rate_mbit"])
        w.shape(r)
        s1 = work / "stage1"
        items = []
        for i, (name, (rel, mb)) in enumerate(STAGE1_MB.items()):
            path = s1 / rel
            if rel.endswith(".safetensors"):
                make_data.write_safetensors(path, int(mb * 1e6), seed=100 + i)
            else:  # stage 1 reads code_pairs records (the pre-flight checks them)
                make_data.write_jsonl(path, int(mb * 1e6), offset=500 * i, kind="pairs")
            items.append({"name": name, "src": rel, "dest": rel, "kind": "file", "jobs": ["stage1"]})
        tgz = work / "stage1.tar.gz"
        sh(["tar", "-czf", str(tgz), "-C", str(s1), "checkpoints", "data"])  # made beforehand, as the guide's staging step
        vd = {"root_remote": DEST, "local_root": str(s1), "items": items}
        s1_plan = ds.plan(items, s1)
        role_vars = {"volt_data": vd, "data_sync_local_root": str(s1), "data_sync_wait_jobs": ["stage1"]}
        s1_paths = [f"{DEST}/{it['dest']}" for it in items]
        from ttg_instances import Watch

        stage1: dict = {"tarball": [], "role": [], "driver": []}
        for rep in range(reps):
            for c in ["tarball", "role", "driver"][rep % 3:] + ["tarball", "role", "driver"][: rep % 3]:
                clean(w, *s1_paths, "/root/stage1.tar.gz")
                if c == "tarball":
                    t0 = time.time()
                    sh([*w.scp, str(tgz), "root@127.0.0.1:/root/stage1.tar.gz"])
                    sh([*w.ssh, f"mkdir -p {DEST} && tar -xzf /root/stage1.tar.gz -C {DEST} && ls -l {' '.join(s1_paths)} >/dev/null"])
                    stage1[c].append(time.time() - t0)
                else:
                    watch = Watch(w, f"{DEST}/.volt-sync/stage1.ready")
                    time.sleep(0.5)
                    t0 = time.time()
                    if c == "role":
                        proc = w.playbook(play, role_vars)
                        if proc.returncode != 0:
                            raise SystemExit(f"bench: the data_sync play failed:\n{proc.stdout[-3000:]}")
                    else:
                        ds.run(s1_plan, f"stage1-{rep}")
                    at = watch.wait(60)
                    watch.stop()
                    if at is None:
                        raise SystemExit("bench: stage1.ready never appeared")
                    stage1[c].append(at - t0)
                log(f"  stage 1 {c:8} {stage1[c][-1]:.1f}s")
        out["stage1_vs_tarball"] = round(med(stage1["tarball"]) / med(stage1["role"]), 3)
        out["stage1_vs_tarball_driver"] = round(med(stage1["tarball"]) / med(stage1["driver"]), 3)
        out["stage1_s"] = {k: round(med(v), 2) for k, v in stage1.items()}
        out["stage1_spread_s"] = {k: [round(min(v), 2), round(max(v), 2)] for k, v in stage1.items()}
        out["stage1_MB"] = round(sum(mb for _, mb in STAGE1_MB.values()), 1)
    finally:
        if not a.keep:
            w.destroy()
            shutil.rmtree(work, ignore_errors=True)
    out["rtt_ms"] = cfg["rtt_ms"]
    out["repetitions"] = reps
    out["config_commit"] = commit or "uncommitted"
    out["wall_s"] = round(time.time() - t_start)
    out["loadavg_1m_start_end"] = [load0, round(os.getloadavg()[0], 2)]
    keys = [k for k in out if k.startswith(("jsonl_vs", "binary_vs"))] + ["silent_drop_detect_s", "silent_drop_extra_pct_jsonl",
                                                                           "silent_drop_extra_pct_binary", "kill_extra_pct", "stage1_vs_tarball"]
    log("summary: " + ", ".join(f"{k} {out[k]}" for k in keys if k in out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
