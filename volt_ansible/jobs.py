"""Watch the training jobs on the instance: state, progress, ETA, GPU and CPU, warnings; logs; loss data.

The jobs are those of group_vars/all.yml (volt_phase03, volt_curriculum) as volt_ansible.curriculum resolves them
and roles/training_tmux runs them: each appends its output to its log and keeps `<status_dir>/<job>.status` (key=value lines) up to date.
Everything here (and in joblog, the parsing) is a pure function of text read from the instance, except the few that run ssh
(`snapshot`, `fetch_logs`, `read_remote`) with the campaign's key and pinned host key (volt_ansible.ssh).

    lay = layout(root)                                  # what to look at: group_vars, resolved
    snap = snapshot(volt_dir, host, port, lay)          # one ssh round trip -> Snapshot
    print("\\n".join(format_snapshot(snap)))
    os.execvp(*logs_command(volt_dir, host, port, "stage1", follow=True, layout=lay)[:1], ...)
    plot.write_png(fetch_logs(volt_dir, host, port, lay), Path("loss.png"), lay)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from volt_ansible import curriculum, ssh
from volt_ansible.errors import VoltError
from volt_ansible.joblog import (
    Gpu,
    LogProgress,
    eta_seconds,
    fmt_duration,
    iso_ts,
    loss_series,
    parse_gpu,
    parse_loadavg,
    parse_log,
    parse_status,
    validation_series,
)

__all__ = ["GPU_LOW_PCT", "MARK", "STALL_S", "Gpu", "JobDef", "JobState", "Layout", "LogProgress", "Snapshot", "check_host_key", "eta_seconds",
           "fetch_logs", "fmt_duration", "format_snapshot", "iso_ts", "layout", "layout_from", "logs_command", "loss_series", "parse_gpu",
           "parse_loadavg", "parse_log", "parse_snapshot", "parse_status", "read_remote", "remote_script", "resolve_job", "snapshot",
           "validation_series"]

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
    epoch: dict | None = None   # where its epoch checkpoints are (volt_ansible.curriculum: dir, prefix, suffix, glob, owner, archive)


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
    epoch_archive: str = "epochs"  # a finished job's epoch checkpoints: <epoch_dir>/<epoch_archive>/<job>/

    def job(self, name: str) -> JobDef:
        for j in [*self.jobs, self.chain]:
            if j.name == name:
                return j
        raise KeyError(name)

    @property
    def stages(self) -> list[JobDef]:
        return [j for j in self.jobs if j.stage is not None]


def layout_from(group_vars: dict, settings: dict | None = None) -> Layout:
    """The jobs and paths to watch, from group_vars (volt_phase03, volt_curriculum, training_tmux_* overrides) and
    training_tmux's settings (default: the role's defaults file, volt_ansible.curriculum.role_defaults)."""
    s = curriculum.settings_from(group_vars, settings)
    try:
        p03, cur = group_vars["volt_phase03"], group_vars["volt_curriculum"]
        cur["stages"]
    except (KeyError, TypeError) as e:
        raise VoltError(f"group_vars/all.yml has no training jobs ({e} missing): add volt_phase03 and volt_curriculum") from None
    resolved = curriculum.resolve(p03, cur, s, check_names=False)
    jobs = []
    for j in resolved:
        epochs = curriculum.flag_values(j["args"], "--epochs")[:1] if j["epoch"] else []
        jobs.append(JobDef(j["name"], j["title"], j["log"], j["status"], j["output"], j["script_path"], j["gpu"], j["stage"],
                           int(epochs[0]) if epochs and epochs[0].isdigit() else None, j["epoch"]))
    c = curriculum.chain(s)
    chain = JobDef(c["name"], "Phase 2.1 chain", c["log"], c["status"], "", c["script_path"], False)
    lay = Layout(str(s["dest"]), str(s["session"]), jobs, chain, epoch_archive=str(s["epoch_archive"]))
    epoch = next((j.epoch for j in reversed(jobs) if j.epoch), None)
    if epoch:
        lay.epoch_dir, lay.epoch_prefix, lay.epoch_suffix, lay.epoch_owner = epoch["dir"], epoch["prefix"], epoch["suffix"], epoch["owner"]
    return lay


def layout(root: Path | None = None) -> Layout:
    """layout_from(group_vars/all.yml of the project at root)."""
    root = root or Path.cwd()
    gv = root / "group_vars" / "all.yml"
    try:
        data = yaml.safe_load(gv.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise VoltError(f"cannot read {gv}: {e}: run from the project root") from None
    return layout_from(data)


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
    conn = ssh.connection(volt_dir, host, port)
    return [*ssh.argv(conn, connect_timeout=10), f"{conn['user']}@{conn['host']}"]


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
