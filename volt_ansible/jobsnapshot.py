"""The training jobs' state read in one ssh round trip: the instance-side script, its output parsed into a Snapshot
(state, progress, ETA, resume capability, stalls, CPU fallback, GPU and CPU load) and the lines `status` prints.
Pure functions of text; volt_ansible.jobs runs the script over ssh."""

from __future__ import annotations

import posixpath
import shlex
import time
from dataclasses import dataclass, field

from volt_ansible.joblayout import JobDef, Layout, epoch_number, help_lists
from volt_ansible.joblog import Gpu, LogProgress, eta_seconds, fmt_duration, iso_ts, parse_gpu, parse_loadavg, parse_log, parse_status

GPU_LOW_PCT = 50          # the guide: "If it shows <50%, ... data loading is the bottleneck"
STALL_S = 15 * 60         # a running job's log that has not moved for this long is stalled (volt_watch.stall_min)
MARK = "@@volt-watch@@"   # section marker of the remote snapshot script's output

@dataclass
class JobState:
    name: str
    title: str
    stage: int | None
    state: str                  # running | done | failed | interrupted | waiting | queued | pending
    status: dict[str, str]
    progress: LogProgress
    epoch: int | None = None    # the epoch in progress (or the last finished)
    epochs: int | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    log_age_s: float | None = None
    detail: str = ""            # reason of a failure, what a waiting stage waits for
    stalled: bool = False       # running, but its log has not moved for stall_s
    resumable: bool | None = None  # its binary's --help lists the resume flag (None: not known yet)
    redo_epochs: int = 0        # not resumable: the finished epochs of this run that a restart trains again
    redo_s: float | None = None  # ... and their time, from the binary's epoch times


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
    notes: list[str] = field(default_factory=list)  # what a preemption would cost (stages that cannot resume)

    def job(self, name: str) -> JobState:
        return next(j for j in self.jobs if j.name == name)

    def resume(self) -> dict[str, bool]:
        """{job: can resume} for the jobs whose binary's --help was read."""
        return {j.name: j.resumable for j in self.jobs if j.resumable is not None}


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
        if j.epoch:
            e = j.epoch
            lines += [f'echo "$M epochs "{n}',
                      f'for f in {q(e["dir"])}/{q(e["prefix"])}*{q(e["suffix"])}; do [ -f "$f" ] && stat -c "%Y %n" "$f"; done']
        if j.resume_flag:  # the --help saved after the build; binaries from an older cache entry are asked directly
            lines += [f'echo "$M help "{n}',
                      f'cat -- {q(j.help)} 2>/dev/null || {{ [ -x {q(j.bin)} ] && {q(j.bin)} --help 2>&1 | head -c 65536; }}']
    lines += [
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


@dataclass
class _Read:
    """The remote script's sections, by job."""

    status: dict[str, dict[str, str]] = field(default_factory=dict)
    alive: dict[str, bool] = field(default_factory=dict)
    logmeta: dict[str, tuple[int, float]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    epochs_at: dict[str, dict[int, float]] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    gpu_samples: list[str] = field(default_factory=list)
    load: tuple[float, float, float] | None = None
    cpus: int | None = None
    now: float = field(default_factory=time.time)
    repo: bool = True


def _read(text: str, lay: Layout) -> _Read:
    r = _Read()
    for head, body in _sections(text):
        kind, args = head[0], head[1:]
        if kind == "norepo":
            r.repo = False
        elif kind == "now" and args and args[0].isdigit():
            r.now = float(args[0])
        elif kind == "status":
            r.status[args[0]] = parse_status("\n".join(body))
        elif kind == "alive":
            r.alive[args[0]] = args[1:2] == ["1"]
        elif kind == "logmeta" and len(args) >= 3 and args[1].isdigit():
            r.logmeta[args[0]] = (int(args[1]), float(args[2]))
        elif kind == "log":
            r.logs[args[0]] = "\n".join(body)
        elif kind == "output":
            r.outputs.add(args[0])
        elif kind == "epochs" and args:
            try:
                job = lay.job(args[0])
            except KeyError:
                continue
            for row in body:
                stamp, _, path = row.partition(" ")
                if (n := epoch_number(job, path)) is not None and stamp.isdigit():
                    r.epochs_at.setdefault(job.name, {})[n] = float(stamp)
        elif kind == "help" and args:
            r.helps[args[0]] = "\n".join(body)
        elif kind == "gpu":
            r.gpu_samples.append("\n".join(body))
        elif kind == "load":
            r.load = parse_loadavg(" ".join(args))
        elif kind == "nproc" and args and args[0].isdigit():
            r.cpus = int(args[0])
    return r


def _resumable(j: JobDef, st: dict[str, str], help_text: str | None) -> bool | None:
    if not j.epoch or not j.resume_flag:
        return False if j.epoch else None
    if st.get("resume") in ("yes", "no"):  # what the job's own launch found in its binary's --help
        return st["resume"] == "yes"
    if help_text and help_text.strip():
        return help_lists(help_text, j.resume_flag)
    return None


def parse_snapshot(text: str, lay: Layout, stall_s: float = STALL_S, gpu_low_pct: float = GPU_LOW_PCT) -> Snapshot:
    """The remote script's output -> Snapshot: per-job state, progress, ETA, resume capability; GPU, CPU; warnings."""
    r = _read(text, lay)
    now = r.now
    chain = r.status.get(lay.chain.name, {})
    chain_alive = r.alive.get(lay.chain.name, False)
    jobs: list[JobState] = []
    warnings: list[str] = []
    notes: list[str] = []
    gpus = parse_gpu(r.gpu_samples)
    for j in lay.jobs:
        st = r.status.get(j.name, {})
        prog = parse_log(r.logs.get(j.name, ""), j.patterns, j.oom_pattern, j.cpu_fallback)
        state, detail = st.get("state", ""), st.get("reason", "")
        if state == "running" and not r.alive.get(j.name, False):
            state = "interrupted"
            detail = "its process is gone (tmux server killed, instance restarted?): re-run train to continue"
        elif not state:
            if j.name in r.outputs:
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
        js.resumable = _resumable(j, st, r.helps.get(j.name))
        if j.stage is not None:
            js.epoch = prog.epoch
            if state == "running":
                js.eta_s = eta_seconds(js.epochs, r.epochs_at.get(j.name, {}), now, iso_ts(st.get("attempt_started")), prog.epoch_seconds)
            elif state == "done":
                js.eta_s = 0.0
        if j.name in r.logmeta:
            js.log_age_s = max(0.0, now - r.logmeta[j.name][1])
        jobs.append(js)

        if state == "running" and js.log_age_s is not None and js.log_age_s > stall_s:
            js.stalled = True
            warnings.append(f"{j.name}: stalled: its log has not moved for {fmt_duration(js.log_age_s)} (volt_watch.stall_min = "
                            f"{stall_s / 60:g} min): look at `volt-ansible logs {j.name}`")
        if state == "running" and prog.cpu_fallback:
            warnings.append(f"{j.name}: training on the CPU on a GPU instance: {prog.cpu_fallback}")
        if state == "interrupted":
            warnings.append(f"{j.name}: interrupted ({detail})")
        if state == "failed":
            warnings.append(f"{j.name}: failed (exit {st.get('exit_code') or '?'}{': ' + detail if detail else ''}; see {j.log})")
        if j.epoch and js.resumable is False and state in ("running", "interrupted", "failed"):
            js.redo_epochs = prog.epochs_done or 0
            if prog.epoch_seconds:
                js.redo_s = js.redo_epochs * sum(prog.epoch_seconds) / len(prog.epoch_seconds)
            notes.append(restart_line(j, js))
    gpu_running = [js.name for js, j in zip(jobs, lay.jobs, strict=True) if js.state == "running" and j.gpu]
    if gpu_running and gpus:
        low = [g for g in gpus if g.util_pct < gpu_low_pct]
        if low:
            utils = ", ".join(f"GPU {g.index} {g.util_pct:.0f}%" for g in low)
            warnings.append(f"GPU utilization under {gpu_low_pct:.0f}% ({utils}) while {', '.join(gpu_running)} runs: "
                            "data loading may be the bottleneck, or the batch size too small (guide, Step 7)")
    return Snapshot(now, jobs, chain, gpus, r.load, r.cpus, warnings, r.repo, notes)


def restart_line(j: JobDef, js: JobState) -> str:
    """One line: this stage cannot resume, and what losing the instance now would cost."""
    flag = j.resume_flag or "resume option"
    cost = f"{js.redo_epochs} finished epoch(s)"
    if js.redo_s is not None:
        cost += f", ~{js.redo_s / 3600:.2f} GPU-hours"
    return (f"{j.name}: {posixpath.basename(j.bin)} has no {flag} (its --help): if the instance is lost, {j.name} restarts from "
            f"epoch 1 and {cost} are trained again")


def _stage_no(lay: Layout, name: str | None) -> int:
    for j in lay.stages:
        if j.name == name:
            return j.stage or 0
    return 10**6


def format_snapshot(snap: Snapshot, stages_total: int | None = None) -> list[str]:
    """Plain text lines: one per job, then GPU and CPU, then what a preemption would cost ("resume: ..."), then the
    warnings ("warning: ...")."""
    total = stages_total or sum(1 for j in snap.jobs if j.stage is not None)
    rows = []
    if not snap.reachable_repo:
        rows.append("the Volt-X repository is not on the instance yet (run: volt-ansible run prepare)")
    for j in snap.jobs:
        where = f"stage {j.stage}/{total}" if j.stage is not None else "phase 0.3"
        parts = [f"{j.name:<8} {('stalled' if j.stalled else j.state):<11} {where:<10}"]
        p = j.progress
        if j.stage is not None and (p.epoch is not None or j.epochs):
            parts.append(f"epoch {p.epoch if p.epoch is not None else '-'}/{j.epochs or '?'}")
            if p.step is not None:
                parts.append(f"step {p.step}/{p.steps}" if p.steps else f"step {p.step}")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.6g}")
        if p.validation.get("valid") is not None:
            parts.append(f"valid {p.validation['valid']:.6g} (epoch {p.validation['epoch']})")
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
        elif j.status.get("restarted_after"):
            parts.append(f"restarted from epoch 1 ({j.status['restarted_after']} epoch(s) trained again)")
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
    rows += [f"resume: {n}" for n in snap.notes]
    rows += [f"warning: {w}" for w in snap.warnings]
    return rows
