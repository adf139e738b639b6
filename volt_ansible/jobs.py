"""Watch the training jobs on the instance: state, progress, ETA, GPU and CPU, warnings; logs; loss data.

The jobs are those of group_vars/all.yml (volt_phase03, volt_curriculum) as roles/training_tmux runs them:
each appends its output to its log and keeps `<status_dir>/<job>.status` (key=value lines) up to date.
Everything here is a pure function of text read from the instance, except the few that run ssh
(`snapshot`, `fetch_logs`, `read_remote`) with the campaign's key and pinned host key (volt_ansible.ssh).

    lay = layout(root)                                  # what to look at, from group_vars + the role's defaults
    snap = snapshot(volt_dir, host, port, lay)          # one ssh round trip -> Snapshot
    print("\\n".join(format_snapshot(snap)))
    os.execvp(*logs_command(volt_dir, host, port, "stage1", follow=True, layout=lay)[:1], ...)
    plot.write_png(fetch_logs(volt_dir, host, port, lay), Path("loss.png"), lay)
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from volt_ansible import ssh
from volt_ansible.errors import VoltError

# roles/training_tmux/defaults/main.yml is the source of these; used when the role is not beside us.
ROLE_DEFAULTS = {
    "training_tmux_dest": "/root/volt-x",
    "training_tmux_session": "training",
    "training_tmux_chain_name": "phase21",
    "training_tmux_status_dir": "logs",
    "training_tmux_script_dir": ".volt-train",
    "training_tmux_epoch_owner_file": ".volt-epochs",
}
GPU_LOW_PCT = 50          # the guide: "If it shows <50%, ... data loading is the bottleneck"
STALL_S = 15 * 60         # a running job's log that has not moved for this long is reported
MARK = "@@volt-watch@@"   # section marker of the remote snapshot script's output

# --- what to watch ----------------------------------------------------------------------------------


@dataclass
class JobDef:
    name: str
    title: str
    log: str
    status: str
    output: str
    script: str                 # absolute path of the job's script (its process is `bash <script>`)
    gpu: bool
    stage: int | None = None    # 1-based curriculum index; None for Phase 0.3
    epochs: int | None = None   # the configured --epochs, when the job has epoch checkpoints


@dataclass
class Layout:
    dest: str
    session: str
    jobs: list[JobDef]
    chain: JobDef
    epoch_dir: str = "checkpoints"
    epoch_prefix: str = "scaled_vfn_epoch_"
    epoch_suffix: str = ".safetensors"
    epoch_owner: str = "checkpoints/.volt-epochs"

    def job(self, name: str) -> JobDef:
        for j in [*self.jobs, self.chain]:
            if j.name == name:
                return j
        raise KeyError(name)

    @property
    def stages(self) -> list[JobDef]:
        return [j for j in self.jobs if j.stage is not None]


def _first(args: dict, flag: str | None) -> str | None:
    if not flag or args.get(flag) in (None, False, True):
        return None
    value = args[flag]
    return str(value[0] if isinstance(value, list) else value)


def layout_from(group_vars: dict, role_defaults: dict | None = None) -> Layout:
    """The jobs and paths to watch, from group_vars (volt_phase03, volt_curriculum, training_tmux_* overrides)."""
    knobs = {**ROLE_DEFAULTS, **(role_defaults or {}), **{k: v for k, v in group_vars.items() if k.startswith("training_tmux_")}}
    dest, sdir, script_dir = str(knobs["training_tmux_dest"]), str(knobs["training_tmux_status_dir"]), str(knobs["training_tmux_script_dir"])
    try:
        p03, cur = group_vars["volt_phase03"], group_vars["volt_curriculum"]
        stages = cur["stages"]
    except (KeyError, TypeError) as e:
        raise VoltError(f"group_vars/all.yml has no training jobs ({e} missing): add volt_phase03 and volt_curriculum") from None

    def script(name: str) -> str:
        return posixpath.join(dest, script_dir, f"{name}.sh")

    jobs = [JobDef(p03["name"], p03.get("title", p03["name"]), p03["log"], posixpath.join(sdir, f"{p03['name']}.status"),
                   _first(p03.get("args") or {}, p03.get("output")) or "", script(p03["name"]), bool(p03.get("gpu", False)))]
    common = cur.get("args") or {}
    output_dir = "checkpoints"
    for i, st in enumerate(stages, 1):
        args = {**common, **(st.get("args") or {})}
        epochs = _first(args, "--epochs")
        out = _first(args, cur.get("output")) or ""
        output_dir = posixpath.dirname(out) or "."
        jobs.append(JobDef(st["name"], st.get("title", st["name"]), st["log"], posixpath.join(sdir, f"{st['name']}.status"), out,
                           script(st["name"]), bool(cur.get("gpu", True)), i, int(epochs) if epochs and epochs.isdigit() else None))
    cname = str(knobs["training_tmux_chain_name"])
    chain = JobDef(cname, "Phase 2.1 chain", posixpath.join(sdir, f"{cname}.log"), posixpath.join(sdir, f"{cname}.status"), "",
                   script(cname), False)
    prefix, _, suffix = str(cur.get("epoch_checkpoint", "scaled_vfn_epoch_{epoch}.safetensors")).partition("{epoch}")
    return Layout(dest, str(knobs["training_tmux_session"]), jobs, chain, output_dir, prefix, suffix,
                  posixpath.join(output_dir, str(knobs["training_tmux_epoch_owner_file"])))


def layout(root: Path | None = None) -> Layout:
    """layout_from(group_vars/all.yml of the project at root, the role's defaults)."""
    root = root or Path.cwd()
    gv = root / "group_vars" / "all.yml"
    try:
        data = yaml.safe_load(gv.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise VoltError(f"cannot read {gv}: {e}: run from the project root") from None
    defaults_file = root / "roles" / "training_tmux" / "defaults" / "main.yml"
    defaults = {}
    if defaults_file.exists():
        raw = yaml.safe_load(defaults_file.read_text()) or {}
        defaults = {k: v for k, v in raw.items() if k in ROLE_DEFAULTS and "{{" not in str(v)}
    return layout_from(data, defaults)


# --- parsing (pure) ----------------------------------------------------------------------------------

_PROGRESS = re.compile(r"^epoch (\d+)/(\d+) step (\d+) loss ([-+0-9.eE]+|nan|inf)\s*$")
_VALID = re.compile(r"^validation epoch (\d+) mse ([-+0-9.eE]+) cos_sim ([-+0-9.eE]+) dir_acc ([-+0-9.eE]+)")
_CKPT = re.compile(r"^checkpoint epoch (\d+) -> (\S+)")
_RESUMED = re.compile(r"^train-vfn: resumed from (\S+) at epoch (\d+)")
_JOBSTART = re.compile(r"^volt-job: (\S+) start (\S+) attempt (\d+)(?: batch (\d+))?")
_CODEBOOK = re.compile(r"^codebook-init: (encoded \d+/\d+ files|kmeans iter \d+/\d+.*|wrote .*)$")


def parse_status(text: str) -> dict[str, str]:
    """A <job>.status file (key=value lines) -> dict. Unknown lines are ignored."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass
class LogProgress:
    epoch: int | None = None            # epoch of the last progress line
    epochs: int | None = None
    step: int | None = None
    loss: float | None = None
    last_checkpoint: int | None = None  # last epoch whose checkpoint was written
    validation: dict[str, float] = field(default_factory=dict)  # last validation line
    resumed_from: str | None = None
    resumed_epoch: int | None = None
    attempts: int = 0                   # "volt-job: ... start" lines
    batch_size: int | None = None       # of the last attempt
    errors: list[str] = field(default_factory=list)
    oom: int = 0                        # out-of-memory failures
    activity: str | None = None         # last progress line of a job without epochs (codebook-init)


def parse_log(text: str) -> LogProgress:
    """Progress of one job from its log (appended across restarts: the last run counts)."""
    p = LogProgress()
    for line in text.splitlines():
        line = line.strip()
        if m := _PROGRESS.match(line):
            p.epoch, p.epochs, p.step, p.loss = int(m[1]), int(m[2]), int(m[3]), float(m[4])
        elif m := _VALID.match(line):
            p.validation = {"epoch": int(m[1]), "mse": float(m[2]), "cos_sim": float(m[3]), "dir_acc": float(m[4])}
        elif m := _CKPT.match(line):
            p.last_checkpoint = int(m[1])
        elif m := _RESUMED.match(line):
            p.resumed_from, p.resumed_epoch = m[1], int(m[2])
        elif m := _JOBSTART.match(line):
            p.attempts += 1
            p.batch_size = int(m[4]) if m[4] else None
        elif line.startswith("ERROR:"):
            p.errors.append(line)
            if "out of memory" in line:
                p.oom += 1
        elif m := _CODEBOOK.match(line):
            p.activity = m[1]
    return p


def loss_series(text: str) -> list[tuple[int, float]]:
    """(step, loss) of every progress line, by step; a step logged again after a resume keeps the later value."""
    by_step: dict[int, float] = {}
    for line in text.splitlines():
        if m := _PROGRESS.match(line.strip()):
            by_step[int(m[3])] = float(m[4])
    return sorted(by_step.items())


def validation_series(text: str) -> list[tuple[int, int, float]]:
    """(epoch, step at that epoch's end, validation mse), the last run winning per epoch."""
    out: dict[int, tuple[int, float]] = {}
    step = 0
    for line in text.splitlines():
        line = line.strip()
        if m := _PROGRESS.match(line):
            step = int(m[3])
        elif m := _VALID.match(line):
            out[int(m[1])] = (step, float(m[2]))
    return [(e, s, mse) for e, (s, mse) in sorted(out.items())]


def iso_ts(value: str | None) -> float | None:
    """'2025-01-31T12:00:00Z' -> epoch seconds (None for empty or unparsable)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def eta_seconds(epochs: int | None, checkpoints: dict[int, float], now: float, since: float | None = None) -> float | None:
    """Seconds left, from epoch timing: checkpoints maps epoch -> time its checkpoint was written.

    Epoch durations are the gaps between consecutive epochs' checkpoints written after `since` (the current
    attempt's start; a gap across a restart would count the downtime), plus the first such epoch measured
    from `since`. None until one epoch of this run has finished; 0 when every epoch is done.
    """
    if not epochs or not checkpoints:
        return None
    last = max(checkpoints)
    if last >= epochs:
        return 0.0
    recent = sorted((e, t) for e, t in checkpoints.items() if since is None or t >= since)
    durations = [t2 - t1 for (e1, t1), (e2, t2) in zip(recent, recent[1:], strict=False) if e2 == e1 + 1 and t2 >= t1]
    if since is not None and recent and recent[0][1] >= since:
        durations.append(recent[0][1] - since)
    if not durations:
        return None
    per_epoch = sum(durations) / len(durations)
    return max(0.0, (epochs - last) * per_epoch - max(0.0, now - checkpoints[last]))


@dataclass
class Gpu:
    index: int
    util_pct: float
    mem_used_mib: float
    mem_total_mib: float


def parse_gpu(samples: list[str]) -> list[Gpu] | None:
    """nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits output, one text per
    sample -> per GPU the mean utilization and the last memory; None when there is no usable output (no nvidia-smi)."""
    per_gpu: dict[int, list[tuple[float, float, float]]] = {}
    for text in samples:
        rows = [ln for ln in text.splitlines() if ln.strip()]
        for i, row in enumerate(rows):
            parts = [p.strip() for p in row.split(",")]
            try:
                util, used, total = (float(x) for x in parts[:3])
            except ValueError:
                continue  # "[N/A]", an error message
            per_gpu.setdefault(i, []).append((util, used, total))
    if not per_gpu:
        return None
    return [Gpu(i, sum(v[0] for v in vals) / len(vals), vals[-1][1], vals[-1][2]) for i, vals in sorted(per_gpu.items())]


def parse_loadavg(text: str) -> tuple[float, float, float] | None:
    try:
        a, b, c = text.split()[:3]
        return float(a), float(b), float(c)
    except ValueError:
        return None


# --- the snapshot ----------------------------------------------------------------------------------


@dataclass
class JobState:
    name: str
    title: str
    stage: int | None
    state: str                  # running | done | failed | interrupted | waiting | queued | pending
    status: dict[str, str]
    progress: LogProgress
    epoch: int | None = None    # epochs finished (checkpoint written) or in progress
    epochs: int | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    log_age_s: float | None = None
    detail: str = ""            # reason of a failure, what a waiting stage waits for


@dataclass
class Snapshot:
    now: float
    jobs: list[JobState]
    chain: dict[str, str]
    gpus: list[Gpu] | None      # None: no nvidia-smi (shown as n/a)
    load: tuple[float, float, float] | None
    cpus: int | None
    warnings: list[str]
    reachable_repo: bool = True

    def job(self, name: str) -> JobState:
        return next(j for j in self.jobs if j.name == name)


def remote_script(lay: Layout, log_lines: int = 200, gpu_samples: int = 3, gpu_interval_s: float = 0.5) -> str:
    """POSIX sh run on the instance (ssh ... sh -s): prints the sections parse_snapshot reads."""
    q = shlex.quote
    lines = [f"M={q(MARK)}", f'cd {q(lay.dest)} 2>/dev/null || {{ echo "$M norepo"; }}', 'echo "$M now $(date +%s)"']
    for j in [*lay.jobs, lay.chain]:
        n = q(j.name)
        lines += [
            f'echo "$M status "{n}; cat -- {q(j.status)} 2>/dev/null',
            f'pid=$(sed -n "s/^pid=//p" {q(j.status)} 2>/dev/null); alive=0',
            f'[ -n "$pid" ] && [ -r /proc/$pid/cmdline ] && tr "\\0" "\\n" < /proc/$pid/cmdline | grep -qxF -- {q(j.script)} && alive=1',
            f'echo "$M alive "{n}" $alive"',
            f'echo "$M logmeta "{n}" $(stat -c "%s %Y" -- {q(j.log)} 2>/dev/null)"',
            f'echo "$M log "{n}; tail -n {int(log_lines)} -- {q(j.log)} 2>/dev/null',
        ]
        if j.output:
            lines.append(f'[ -f {q(j.output)} ] && echo "$M output "{n}" 1"')
    lines += [
        f'echo "$M owner $(cat {q(lay.epoch_owner)} 2>/dev/null)"',
        'echo "$M epochs"',
        f'for f in {q(lay.epoch_dir)}/{q(lay.epoch_prefix)}*{q(lay.epoch_suffix)}; do [ -f "$f" ] && stat -c "%Y %n" "$f"; done',
        "if command -v nvidia-smi >/dev/null 2>&1; then",
        f"  i=0; while [ $i -lt {int(gpu_samples)} ]; do",
        '    echo "$M gpu"; nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits 2>&1',
        f'    i=$((i + 1)); [ $i -lt {int(gpu_samples)} ] && sleep {gpu_interval_s:g}',
        "  done",
        "fi",
        'echo "$M load $(cat /proc/loadavg 2>/dev/null)"',
        'echo "$M nproc $(nproc 2>/dev/null)"',
        'echo "$M end"',
    ]
    return "\n".join(lines) + "\n"


def _sections(text: str) -> list[tuple[list[str], list[str]]]:
    out: list[tuple[list[str], list[str]]] = []
    for line in text.splitlines():
        if line.startswith(MARK + " "):
            out.append((line[len(MARK) + 1:].split(" "), []))
        elif out:
            out[-1][1].append(line)
    return out


def parse_snapshot(text: str, lay: Layout, stall_s: float = STALL_S, gpu_low_pct: float = GPU_LOW_PCT) -> Snapshot:
    """The remote script's output -> Snapshot: per-job state, progress, ETA; GPU, CPU; warnings."""
    status: dict[str, dict[str, str]] = {}
    alive: dict[str, bool] = {}
    logmeta: dict[str, tuple[int, float]] = {}
    logs: dict[str, str] = {}
    outputs: set[str] = set()
    gpu_samples: list[str] = []
    epochs_at: dict[int, float] = {}
    owner, load, cpus, now, repo = "", None, None, time.time(), True
    ep_re = re.compile(re.escape(lay.epoch_prefix) + r"(\d+)" + re.escape(lay.epoch_suffix) + "$")
    for head, body in _sections(text):
        kind, args = head[0], head[1:]
        if kind == "norepo":
            repo = False
        elif kind == "now" and args and args[0].isdigit():
            now = float(args[0])
        elif kind == "status":
            status[args[0]] = parse_status("\n".join(body))
        elif kind == "alive":
            alive[args[0]] = args[1:2] == ["1"]
        elif kind == "logmeta" and len(args) >= 3 and args[1].isdigit():
            logmeta[args[0]] = (int(args[1]), float(args[2]))
        elif kind == "log":
            logs[args[0]] = "\n".join(body)
        elif kind == "output":
            outputs.add(args[0])
        elif kind == "owner":
            owner = " ".join(args).strip()
        elif kind == "epochs":
            for row in body:
                t, _, path = row.partition(" ")
                if (m := ep_re.search(path)) and t.isdigit():
                    epochs_at[int(m[1])] = float(t)
        elif kind == "gpu":
            gpu_samples.append("\n".join(body))
        elif kind == "load":
            load = parse_loadavg(" ".join(args))
        elif kind == "nproc" and args and args[0].isdigit():
            cpus = int(args[0])

    chain = status.get(lay.chain.name, {})
    chain_alive = alive.get(lay.chain.name, False)
    jobs: list[JobState] = []
    warnings: list[str] = []
    gpus = parse_gpu(gpu_samples)
    for j in lay.jobs:
        st = status.get(j.name, {})
        prog = parse_log(logs.get(j.name, ""))
        state, detail = st.get("state", ""), st.get("reason", "")
        if state == "running" and not alive.get(j.name, False):
            state = "interrupted"
            detail = "its process is gone (tmux server killed, instance restarted?): re-run train to resume"
        elif not state:
            if j.name in outputs:
                state = "done"
            elif chain_alive and chain.get("current") == j.name and chain.get("waiting_for"):
                state, detail = "waiting", f"waiting for {chain['waiting_for'].strip()}"
            elif chain_alive and j.stage is not None and j.stage > _stage_no(lay, chain.get("current")):
                state = "queued"
            else:
                state = "pending"
        started, finished = iso_ts(st.get("started")), iso_ts(st.get("finished"))
        elapsed = None
        if started is not None:
            elapsed = max(0.0, (finished if state in ("done", "failed") and finished else now) - started)
        js = JobState(j.name, j.title, j.stage, state, st, prog, epochs=prog.epochs or j.epochs, elapsed_s=elapsed, detail=detail)
        mine = owner == j.name or (not owner and state == "running")
        if j.stage is not None:
            js.epoch = prog.epoch
            if state == "running" and mine and epochs_at:
                js.eta_s = eta_seconds(js.epochs, epochs_at, now, iso_ts(st.get("attempt_started")))
            elif state == "done":
                js.eta_s = 0.0
        if j.name in logmeta:
            js.log_age_s = max(0.0, now - logmeta[j.name][1])
        jobs.append(js)

        if state == "running" and js.log_age_s is not None and js.log_age_s > stall_s:
            warnings.append(f"{j.name}: its log has not moved for {fmt_duration(js.log_age_s)} (more than {fmt_duration(stall_s)}): is it stuck?")
        if state == "interrupted":
            warnings.append(f"{j.name}: interrupted ({detail})")
        if state == "failed":
            warnings.append(f"{j.name}: failed (exit {st.get('exit_code') or '?'}{': ' + detail if detail else ''}; see {j.log})")
    gpu_running = [js.name for js, j in zip(jobs, lay.jobs, strict=True) if js.state == "running" and j.gpu]
    if gpu_running and gpus:
        low = [g for g in gpus if g.util_pct < gpu_low_pct]
        if low:
            utils = ", ".join(f"GPU {g.index} {g.util_pct:.0f}%" for g in low)
            warnings.append(f"GPU utilization under {gpu_low_pct:.0f}% ({utils}) while {', '.join(gpu_running)} runs: "
                            "data loading may be the bottleneck, or the batch size too small (guide, Step 7)")
    return Snapshot(now, jobs, chain, gpus, load, cpus, warnings, repo)


def _stage_no(lay: Layout, name: str | None) -> int:
    for j in lay.stages:
        if j.name == name:
            return j.stage or 0
    return 10**6


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def format_snapshot(snap: Snapshot, stages_total: int | None = None) -> list[str]:
    """Plain text lines: one per job, then GPU and CPU, then the warnings ("warning: ...")."""
    total = stages_total or sum(1 for j in snap.jobs if j.stage is not None)
    rows = []
    if not snap.reachable_repo:
        rows.append("the Volt-X repository is not on the instance yet (run: volt-ansible run prepare)")
    for j in snap.jobs:
        where = f"stage {j.stage}/{total}" if j.stage is not None else "phase 0.3"
        parts = [f"{j.name:<8} {j.state:<11} {where:<10}"]
        p = j.progress
        if j.stage is not None and (p.epoch is not None or j.epochs):
            parts.append(f"epoch {p.epoch if p.epoch is not None else '-'}/{j.epochs or '?'}")
            if p.step is not None:
                parts.append(f"step {p.step}")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.6g}")
        if j.stage is None and p.activity:
            parts.append(p.activity)
        if j.elapsed_s is not None:
            parts.append(f"elapsed {fmt_duration(j.elapsed_s)}")
        if j.state == "running" and j.stage is not None:
            parts.append(f"ETA {fmt_duration(j.eta_s)}" if j.eta_s is not None else "ETA n/a (after the first epoch)")
        if j.status.get("batch_size"):
            batch = f"batch {j.status['batch_size']}"
            if j.status.get("oom_retries", "0") not in ("", "0"):
                batch += f" (after {j.status['oom_retries']} OOM retr{'y' if j.status['oom_retries'] == '1' else 'ies'})"
            parts.append(batch)
        if j.status.get("resumed_epoch"):
            parts.append(f"resumed at epoch {j.status['resumed_epoch']}")
        if j.detail and j.state in ("failed", "waiting"):
            parts.append(j.detail)
        rows.append("  ".join(parts))
    if snap.gpus is None:
        rows.append("GPU: n/a (no nvidia-smi)")
    else:
        for g in snap.gpus:
            rows.append(f"GPU {g.index}: {g.util_pct:.0f}% utilization, memory {g.mem_used_mib:.0f}/{g.mem_total_mib:.0f} MiB")
    if snap.load:
        cores = f" on {snap.cpus} cores" if snap.cpus else ""
        rows.append(f"CPU load {snap.load[0]:.2f} {snap.load[1]:.2f} {snap.load[2]:.2f}{cores}")
    else:
        rows.append("CPU load n/a")
    rows += [f"warning: {w}" for w in snap.warnings]
    return rows


# --- over ssh ------------------------------------------------------------------------------------


def _ssh(volt_dir: Path, host: str, port: int) -> list[str]:
    cmd = ssh.command(volt_dir, host, port)
    cmd[1:1] = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    return cmd


def read_remote(volt_dir: Path, host: str, port: int, script: str, timeout: float = 60) -> str:
    """Run a sh script on the instance (campaign key, pinned host key); its stdout."""
    try:
        proc = subprocess.run([*_ssh(volt_dir, host, port), "sh -s"], input=script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VoltError(f"ssh to {host}:{port} did not answer within {timeout:.0f} s: is the instance up (volt-ansible status)?") from None
    if proc.returncode == 255:
        raise VoltError(_refused(volt_dir, host, port, proc.stderr) or f"ssh to {host}:{port} failed: {proc.stderr.strip() or 'no message'}")
    return proc.stdout


def _refused(volt_dir: Path, host: str, port: int, stderr: str) -> str | None:
    return ssh.host_key_line(stderr, f"the instance at {host}:{port}", ssh.known_hosts_path(volt_dir))


def check_host_key(volt_dir: Path, host: str, port: int, timeout: float = 30) -> None:
    """Before an ssh that is exec'd (`logs`): a changed host key stops here with one line instead of ssh's
    block of @s. Other failures are left to that ssh to report."""
    try:
        proc = subprocess.run([*_ssh(volt_dir, host, port), "true"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return
    line = _refused(volt_dir, host, port, proc.stderr) if proc.returncode == 255 else None
    if line:
        raise VoltError(line)


def snapshot(volt_dir: Path, host: str, port: int, lay: Layout | None = None, *, gpu_samples: int = 3,
             stall_s: float = STALL_S) -> Snapshot:
    """One ssh round trip: the state of every job, GPU (nvidia-smi, sampled gpu_samples times) and CPU load."""
    lay = lay or layout()
    text = read_remote(volt_dir, host, port, remote_script(lay, gpu_samples=gpu_samples))
    if MARK + " end" not in text:
        raise VoltError(f"could not read the training state from {host}:{port} (incomplete answer)")
    return parse_snapshot(text, lay, stall_s=stall_s)


def resolve_job(lay: Layout, job: str) -> JobDef:
    """A job by name (phase03, stage1), stage number (1), log name (phase21_stage1) or the chain's name."""
    j = str(job).strip()
    for d in [*lay.jobs, lay.chain]:
        if j in (d.name, Path(d.log).stem) or (d.stage is not None and j == str(d.stage)):
            return d
    names = ", ".join([d.name for d in lay.jobs] + [lay.chain.name])
    raise VoltError(f"no job {job!r}: choose one of {names} (or a stage number)")


def logs_command(volt_dir: Path, host: str, port: int, job: str | None = None, follow: bool = False, lines: int = 50,
                 lay: Layout | None = None, tty: bool = False) -> list[str]:
    """argv of `ssh ... tail -n LINES [-F] LOG` for one job, or every job's log (with headers) when job is None."""
    lay = lay or layout()
    logs = [resolve_job(lay, job).log] if job else [d.log for d in lay.jobs]
    script = (f"cd {shlex.quote(lay.dest)} || exit 1; set --; for f in {' '.join(shlex.quote(x) for x in logs)}; "
              'do [ -e "$f" ] && set -- "$@" "$f"; done; '
              f'if [ $# -eq 0 ]; then printf "no job log yet (%s): start training first\\n" {shlex.quote(" ".join(logs))} >&2; exit 1; fi; '
              f'exec tail -n {int(lines)}{" -F" if follow else ""} -- "$@"')
    cmd = _ssh(volt_dir, host, port)
    if tty:
        cmd.insert(1, "-t")
    return [*cmd, script]


def fetch_logs(volt_dir: Path, host: str, port: int, lay: Layout | None = None) -> dict[str, str]:
    """Every job's full log ({job: text}; jobs without a log yet are left out), e.g. for plot.write_png."""
    lay = lay or layout()
    script = f"cd {shlex.quote(lay.dest)} || exit 0\n" + "".join(
        f'[ -f {shlex.quote(j.log)} ] && {{ echo {shlex.quote(MARK + " log " + j.name)}; cat -- {shlex.quote(j.log)}; }}\n' for j in lay.jobs)
    text = read_remote(volt_dir, host, port, script, timeout=300)
    return {head[1]: "\n".join(body) for head, body in _sections(text) if head[:1] == ["log"] and len(head) > 1}
